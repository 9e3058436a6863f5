"""Grade recorded answers with a suite's expectations (and a judge), without the models.

``llmcheck rescore`` uses this: each recorded answer is matched to its question (by id,
else by prompt), checked by every expectation kind on its own and by all together, and,
where the recording carries a person's verdict, compared with it: the agreement and a
confusion table per expectation kind tell whether an expectation (or a judge rubric)
says what the person says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_llmcheck.checks.judge import Judge, JudgeError, Judgement
from pytest_llmcheck.checks.suite import Question, load_suite
from pytest_llmcheck.engines.base import Answer
from pytest_llmcheck.reporting.recordings import Recorded, Recording
from pytest_llmcheck.text.tables import table

ALL = "all"


@dataclass
class Scored:
    """One recorded answer, graded."""

    recording: Recording
    question: Question | None
    kinds: dict[str, bool] = field(default_factory=dict)  # kind -> passed (judge only with a judge)
    failures: list[str] = field(default_factory=list)
    judgements: list[Judgement] = field(default_factory=list)
    ungraded: list[str] = field(default_factory=list)  # kinds left out (judge without --judge)

    @property
    def verdict(self) -> str:
        if self.question is None:
            return "no question"
        return "pass" if all(self.kinds.values()) else "fail"


def questions_of(paths: Sequence[Path]) -> dict[str, Question]:
    """Questions by id; the same id in several suites merges their expectations."""
    found: dict[str, Question] = {}
    for path in paths:
        for q in load_suite(path).questions:
            if q.id in found:
                from dataclasses import replace

                found[q.id] = replace(found[q.id], expect=found[q.id].expect.merge(q.expect),
                                      judge_model=found[q.id].judge_model or q.judge_model)
            else:
                found[q.id] = q
    return found


def _match(rec: Recording, questions: dict[str, Question]) -> Question | None:
    if rec.question is not None and rec.question in questions:
        return questions[rec.question]
    return next((q for q in questions.values() if rec.prompt is not None and q.prompt == rec.prompt), None)


def rescore(recorded: Recorded, questions: dict[str, Question], judge: Judge | None,
            models: Sequence[str] = ()) -> list[Scored]:
    scored = []
    for rec in recorded.recordings:
        if models and not any(rec.is_model(m) for m in models):
            continue
        question = _match(rec, questions)
        result = Scored(rec, question)
        scored.append(result)
        if question is None:
            continue
        answer = Answer(text=rec.answer, prompt=question.prompt, system=question.system, prompt_tokens=0,
                        new_tokens=rec.new_tokens or 0, seconds=rec.seconds or 0.0, ttft=0.0)
        expect = question.expect
        for kind in expect.kinds():
            if kind == "judge":
                if judge is None:
                    result.ungraded.append(kind)
                    continue
                grades = [judge.grade(question.prompt, rec.answer, rubric) for rubric in expect.judge]
                result.judgements.extend(grades)
                result.kinds[kind] = all(g.passed for g in grades)
                result.failures.extend(g.failure() for g in grades if not g.passed)
                continue
            failures = expect.only(kind).check(answer)
            result.kinds[kind] = not failures
            result.failures.extend(f.message for f in failures)
    return scored


@dataclass
class Confusion:
    """Person vs check: both pass, person pass / check fail, person fail / check pass, both fail."""

    pp: int = 0
    pf: int = 0
    fp: int = 0
    ff: int = 0

    def add(self, person: bool, check: bool) -> None:
        if person and check:
            self.pp += 1
        elif person:
            self.pf += 1
        elif check:
            self.fp += 1
        else:
            self.ff += 1

    @property
    def total(self) -> int:
        return self.pp + self.pf + self.fp + self.ff

    @property
    def agree(self) -> int:
        return self.pp + self.ff


def confusion(scored: Sequence[Scored]) -> dict[str, Confusion]:
    """Per kind (and ``all``), over the answers with a person's verdict whose question has that kind."""
    tables: dict[str, Confusion] = {}
    for s in scored:
        if s.recording.person is None or s.question is None:
            continue
        person = s.recording.person == "pass"
        tables.setdefault(ALL, Confusion()).add(person, s.verdict == "pass")
        for kind, passed in s.kinds.items():
            tables.setdefault(kind, Confusion()).add(person, passed)
    return tables


def report_lines(recorded: Recorded, scored: Sequence[Scored], suites: Sequence[Path],
                 judge: Judge | None) -> list[str]:
    judge_text = f"; judge {judge.name}" if judge is not None else ""
    lines = [f"rescore: {len(scored)} recorded answers from {_rel(recorded.source)}",
             f"  expectations: {', '.join(_rel(s) for s in suites) or '(none)'}{judge_text}", ""]
    rows: list[tuple[str, ...]] = [("question", "model", "person", "checks", "agree", "why")]
    for s in scored:
        qid = s.question.id if s.question else (s.recording.question or "?")
        person = s.recording.person or "-"
        agree = "-" if s.recording.person is None or s.question is None else (
            "yes" if person == s.verdict else "NO")
        why = s.failures[0] if s.failures else ""
        if s.judgements:
            why = (why + "; " if why else "") + ", ".join(f"P(yes)={j.probability:.2f}" for j in s.judgements)
        rows.append((qid, s.recording.model, person, s.verdict, agree, _short(why, 70)))
    lines += ["  " + line for line in table(rows)]
    tables = confusion(scored)
    if tables:
        overall = tables[ALL]
        lines += ["", f"agreement with the person: {overall.agree}/{overall.total} "
                      f"({100 * overall.agree / overall.total:.0f}%)", "",
                  "per expectation kind (answers with a person's verdict whose question has that kind):"]
        rows = [("kind", "answers", "agree", "both pass", "person pass, check fail",
                 "person fail, check pass", "both fail")]
        for kind in [ALL, *sorted(k for k in tables if k != ALL)]:
            c = tables[kind]
            counts = (str(c.pp), str(c.pf), str(c.fp), str(c.ff))
            rows.append((kind, str(c.total), f"{c.agree}/{c.total}", *counts))
        lines += ["  " + line for line in table(rows)]
    if any(s.ungraded for s in scored):
        lines += ["", "judge: rubrics not graded (no --judge MODEL); the table leaves them out"]
    if judge is not None:
        lines += ["", f"judge {judge.name}: {judge.asked} verdicts computed, "
                      f"{sum(len(s.judgements) for s in scored) - judge.asked} from the cache"]
    return lines


def _rel(path: Path) -> str:
    import os

    text = os.path.relpath(path)
    return text if not text.startswith("../..") else str(path)


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["Confusion", "JudgeError", "Scored", "confusion", "questions_of", "report_lines", "rescore"]
