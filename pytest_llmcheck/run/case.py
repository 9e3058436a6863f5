"""One test's conversation with one model: ask, time, record, check.

``LLM`` is what the ``llm`` fixture gives a test. Every answer is generated exactly
once; that generation is what pytest-benchmark times, what the expectations check,
what the snapshot stores and what the report shows.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_llmcheck.checks.expect import (
    ExpectationError,
    Expectations,
    Failure,
    format_failure,
    parse_expectations,
)
from pytest_llmcheck.checks.judge import Judge
from pytest_llmcheck.checks.suite import Question, min_passes_problem
from pytest_llmcheck.checks.tolerance import Tolerance, ToleranceError, parse_tolerance
from pytest_llmcheck.config.registry import ModelRef
from pytest_llmcheck.engines.base import Answer, Engine
from pytest_llmcheck.errors import LlmcheckError
from pytest_llmcheck.reporting.results import CaseResult
from pytest_llmcheck.run.session import (
    CASES_KEY,
    INCOMPARABLE_KEY,
    UNRECORDED_KEY,
    LlmcheckSession,
    strip_model,
)
from pytest_llmcheck.run.timing import annotate, run_timed
from pytest_llmcheck.text.redact import redact_data


def marker_expectations(item: pytest.Item) -> Expectations:
    """Merge every ``llm_expect`` marker on the item (closest first); bad ones fail the test."""
    merged = Expectations()
    for mark in reversed(list(item.iter_markers("llm_expect"))):
        if mark.args:
            pytest.fail(
                f"llm_expect() takes keyword arguments only (e.g. contains='Paris'), got {mark.args!r}",
                pytrace=False,
            )
        try:
            merged = merged.merge(parse_expectations(mark.kwargs))
        except ExpectationError as exc:
            raise pytest.fail.Exception(str(exc), pytrace=False) from None
    return merged


@dataclass
class LLM:
    """The model under test, as a test sees it: ``answer = llm.ask("...")``."""

    ref: ModelRef
    engine: Engine
    session: LlmcheckSession
    request: pytest.FixtureRequest
    answers: list[Answer] = field(default_factory=list)
    _benchmark_used: bool = False

    @property
    def name(self) -> str:
        return self.ref.name

    def fingerprint(self) -> dict[str, Any]:
        generation = self.session.generation.as_dict()
        if not self.engine.facts.uses_threads:  # a server's threads are its own: not ours to record
            del generation["threads"]
        # written into snapshot headers and shown in their diffs: credentials masked
        fingerprint: dict[str, Any] = redact_data({**self.engine.fingerprint(), "generation": generation})
        return fingerprint

    def ask(
        self,
        prompt: str | Question,
        *,
        system: str | None = None,
        expect: dict[str, Any] | None = None,
        snapshot: bool | str | dict[str, Any] | None = None,
    ) -> Answer:
        """Answer ``prompt`` once (or ``--llm-repeat`` times) and check it.

        Checks: the item's ``llm_expect`` markers, the question's own expectations and
        ``expect``; and the answer snapshot when the question comes from a suite, the
        test has the ``llm_snapshot`` marker, or ``snapshot=True`` (or a tolerance:
        ``"normalized"``, ``"similar: 0.9"``; ``False`` turns it off).
        """
        item = self.request.node
        question = prompt if isinstance(prompt, Question) else None
        if question is not None and (problem := min_passes_problem(question, self.session.settings.repeat)):
            pytest.fail(problem, pytrace=False)  # a Question made in Python; suites are checked earlier
        text = question.prompt if question else str(prompt)
        system = system if system is not None else (question.system if question else None)
        expectations = self._expectations(question, expect)
        judge = self._judge(question) if expectations.judge else None
        answers = self._generate(text, system)
        self.answers.extend(answers)
        case, earlier_failed = self._record(question, text, answers)
        case.checks = expectations.describe()
        judged_before = len(case.judgements)
        failures_per_answer = [self._check(expectations, judge, a, case) for a in answers]

        problems: list[str] = []
        unrecorded: str | None = None  # no snapshot yet: the test fails, but the answer is not wrong
        incomparable: str | None = None  # a native snapshot of another CPU: the test is skipped
        tolerance = self._tolerance(question, snapshot)
        if tolerance is not None and self.session.generation.greedy:  # sampled answers differ by design
            from pytest_llmcheck.snapshots.extension import ReviewFacts, check_snapshot

            last = answers[-1]

            def verdict_of(old_text: str) -> str:
                old = dataclasses.replace(last, text=old_text)
                return "fail" if self._check(expectations, judge, old, None) else "pass"

            review = ReviewFacts(case.case_id, self.ref.name,
                                 "fail" if failures_per_answer[-1] else "pass", verdict_of)
            outcome = check_snapshot(
                self.request, last, self.fingerprint(), tolerance=tolerance, review=review
            )
            case.snapshot, case.snapshot_diff = outcome.status, outcome.diff
            case.snapshot_similarity, case.pending = outcome.similarity, outcome.pending
            if outcome.status == "missing":
                unrecorded = outcome.failure
            elif outcome.failure:
                problems.append(outcome.failure)
            incomparable = outcome.skip

        passes = sum(not f for f in failures_per_answer)
        wanted = question.min_passes if question and question.min_passes else len(answers)
        required = min(wanted, len(answers))
        case.passes += passes
        case.required_passes += required
        first_bad = next(((f, a) for f, a in zip(failures_per_answer, answers, strict=True) if f), None)
        if first_bad is not None and not earlier_failed:
            case.failed_expectation = "; ".join(f.message for f in first_bad[0])
        met = passes >= required
        case.verdict = "pass" if met and not problems and not earlier_failed else "fail"
        if not met:
            if self.session.settings.soft:
                case.soft = True
            else:
                problems.insert(0, _expectation_message(first_bad, passes, len(answers), required))
        if unrecorded is not None:
            if not problems:  # the verdict stands (see LlmcheckSession.record_outcome)
                item.stash[UNRECORDED_KEY] = unrecorded
            problems.append(unrecorded)
        item.user_properties.extend(
            [
                ("llm_model", self.ref.name),
                ("llm_verdict", case.verdict),
                ("llm_seconds", f"{statistics.median(a.seconds for a in answers):.3f}"),
                ("llm_tokens_per_second", f"{statistics.median(a.tokens_per_second for a in answers):.2f}"),
            ]
        )
        for judgement in case.judgements[judged_before:]:
            item.user_properties.append(("llm_judge_rubric", judgement["rubric"]))
            item.user_properties.append(("llm_judge_probability", f"{judgement['probability']:.4f}"))
        if problems:
            pytest.fail("\n\n".join(problems + ([incomparable] if incomparable else [])), pytrace=False)
        if incomparable is not None:  # the verdict stands (the answer's); the snapshot says nothing here
            item.stash[INCOMPARABLE_KEY] = incomparable
            pytest.skip(incomparable)
        return answers[-1]

    def _tolerance(self, question: Question | None, snapshot: bool | str | dict[str, Any] | None
                   ) -> Tolerance | None:
        """The snapshot tolerance, or None for no snapshot: ``ask(snapshot=...)``, then the
        question's ``snapshot:``, then the ``llm_snapshot`` marker, then the ini default."""
        mark = self.request.node.get_closest_marker("llm_snapshot")
        if snapshot is False or (snapshot is None and question is None and mark is None):
            return None
        try:
            if snapshot is not None and snapshot is not True:
                return parse_tolerance(snapshot, "ask(snapshot=...)")
            if question is not None and question.snapshot is not None:
                return question.snapshot
            if mark is not None and (mark.args or mark.kwargs):
                value = mark.args[0] if len(mark.args) == 1 and not mark.kwargs else dict(mark.kwargs)
                return parse_tolerance(value, "llm_snapshot()")
        except ToleranceError as exc:
            raise pytest.fail.Exception(str(exc), pytrace=False) from None
        return self.session.settings.snapshot

    def _judge(self, question: Question | None) -> Judge:
        """The judge model for this question: --llm-judge, else the suite's, else the ini's."""
        settings = self.session.settings
        spec = settings.judge
        if question is not None and question.judge_model and (spec is None or settings.judge_from_ini):
            spec = question.judge_model
        if spec is None:
            pytest.fail(
                "judge: expectations need a judge model: pass --llm-judge=MODEL "
                "(or ini llmcheck_judge, or judge_model: in the suite)",
                pytrace=False,
            )
        try:
            return self.session.judge(spec)
        except LlmcheckError as exc:
            raise pytest.fail.Exception(str(exc), pytrace=False) from None

    def _check(self, expectations: Expectations, judge: Judge | None, answer: Answer,
               case: CaseResult | None) -> list[Failure]:
        """Every unmet expectation of one answer, the judge's rubrics last."""
        failures = expectations.check(answer)
        if judge is None:
            return failures
        for rubric in expectations.judge:
            try:
                judgement = judge.grade(answer.prompt, answer.text, rubric)
            except LlmcheckError as exc:
                raise pytest.fail.Exception(str(exc), pytrace=False) from None
            if case is not None:
                case.judgements.append(judgement.to_dict())
            if not judgement.passed:
                failures.append(Failure("judge", judgement.failure()))
        return failures

    def _expectations(self, question: Question | None, expect: dict[str, Any] | None) -> Expectations:
        """The item's markers, then the question's, then ``ask(expect=...)``, merged."""
        expectations = marker_expectations(self.request.node)
        if question is not None:
            expectations = expectations.merge(question.expect)
        if expect:
            try:
                expectations = expectations.merge(parse_expectations(expect, where="ask(expect=...)"))
            except ExpectationError as exc:
                raise pytest.fail.Exception(str(exc), pytrace=False) from None
        return expectations

    def _record(
        self, question: Question | None, prompt: str, answers: list[Answer]
    ) -> tuple[CaseResult, bool]:
        """Add the answers to this (question, model) case; say whether an earlier ask failed it."""
        item = self.request.node
        case_id = question.id if question else strip_model(item.name, self.ref.name)
        known = self.session.results.model(self.ref.name).cases.get(case_id)
        if known is not None and known.nodeid != item.nodeid:  # the same id from another suite or test
            case_id = strip_model(item.nodeid, self.ref.name)
        case = self.session.results.case(self.ref.name, case_id, nodeid=item.nodeid, prompt=prompt)
        case.reference = question.reference if question else None
        cases = item.stash.setdefault(CASES_KEY, [])
        # A second ask of the same case in one test adds to it: an earlier (soft) failure stays.
        earlier_failed = case in cases and case.verdict == "fail"
        if case not in cases:
            cases.append(case)
            case.passes = case.required_passes = 0
        case.prompt_tokens = answers[-1].prompt_tokens
        for answer in answers:
            case.answers.append(answer.text)
            case.seconds.append(answer.seconds)
            case.tokens_per_second.append(answer.tokens_per_second)
            case.ttft.append(answer.ttft)
            case.new_tokens.append(answer.new_tokens)
            if answer.cpu_seconds is not None:
                case.cpu_seconds.append(answer.cpu_seconds)
        return case, earlier_failed

    def _generate(self, prompt: str, system: str | None) -> list[Answer]:
        """Generate ``repeat`` answers, timed by pytest-benchmark when it is active."""
        config = self.session.generation
        answers: list[Answer] = []

        in_process = self.engine.facts.in_process

        def once() -> None:
            # Each repeat samples with its own seed (seed, seed+1, ...): reproducible, yet N
            # different samples; a greedy answer does not depend on the seed.
            nth = dataclasses.replace(config, seed=config.seed + len(answers))
            cpu = time.process_time()
            try:
                answer = self.engine.generate(prompt, system=system, config=nth)
            except LlmcheckError as exc:  # one line (a replayed model with no recorded answer, a
                # worker's error); an engine's own log goes into the report
                if exc.details:
                    self.request.node.add_report_section("call", "llmcheck engine", exc.details)
                raise pytest.fail.Exception(f"model {self.ref.name!r}: {exc}", pytrace=False) from None
            if answer.cpu_seconds is None and in_process:
                answer = dataclasses.replace(answer, cpu_seconds=time.process_time() - cpu)
            answers.append(answer)

        used = run_timed(
            self.request,
            once,
            rounds=self.session.settings.repeat,
            group=self.ref.name,
            use_benchmark=not self._benchmark_used,
            in_process=in_process,
        )
        self._benchmark_used = self._benchmark_used or used
        if used:
            model = self.session.results.model(self.ref.name)
            annotate(self.request, answers, ref=self.ref, engine=self.engine, model=model)
        return answers


def _expectation_message(
    first_bad: tuple[list[Failure], Answer] | None, passes: int, total: int, required: int
) -> str:
    assert first_bad is not None, "fewer passes than required means some answer failed"
    failures, answer = first_bad
    message = format_failure(failures, answer)
    if total > 1:
        message = f"{passes} of {total} answers met the expectations, needed {required}\n" + message
    return message

