"""The session object: resolved models, the model pool and the results.

The plugin creates one per pytest session and keeps it in the config stash; hooks and
fixtures call its methods. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from pytest_llmcheck.checks.judge import Judge, JudgeError
from pytest_llmcheck.checks.suite import MODEL_NAME_MAX
from pytest_llmcheck.config.items import model_of
from pytest_llmcheck.config.modelref import DEFAULT_ENGINE, ModelRef, ModelRefError
from pytest_llmcheck.config.registry import resolve
from pytest_llmcheck.config.settings import QUANT_LABELS, Settings
from pytest_llmcheck.engines.base import Engine, GenerationConfig
from pytest_llmcheck.engines.registry import EngineRegistry
from pytest_llmcheck.reporting.results import CaseResult, SessionResults
from pytest_llmcheck.run.pool import ModelPool, ModelUnavailable
from pytest_llmcheck.text.redact import redact, redact_data


@dataclass
class LlmcheckSession:
    """What one pytest session knows about its models."""

    settings: Settings
    make_engine: Callable[[ModelRef], Engine]
    rootpath: Path
    engines: EngineRegistry = field(default_factory=EngineRegistry)
    results: SessionResults = field(default_factory=SessionResults)
    notify: Callable[[str], None] = lambda line: None  # progress lines for the terminal
    # Lets download bars reach a real terminal while pytest captures test output.
    uncaptured: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext
    _refs: list[ModelRef] | None = None
    _ref_error: str | None = None
    pool: ModelPool = field(init=False)
    judges: dict[str, Judge] = field(default_factory=dict)
    # One warning line per engine whose close() raised (this process's and, on the
    # xdist controller, the workers'): shown in the terminal summary, never fatal.
    close_errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pool = ModelPool(self.make_engine, on_load=self._record_load, on_close_error=self._close_failed)

    # -- models

    def resolve_models(self) -> list[ModelRef]:
        """Resolve ``--llm-model`` once; errors are usage errors (exit code 4)."""
        if self._refs is None:
            if self.settings.engine not in self.engines:
                raise pytest.UsageError(
                    f"--llm-engine: unknown engine {self.settings.engine!r}; "
                    f"allowed: {', '.join(self.engines.names)}"
                )
            refs: list[ModelRef] = []
            names: dict[str, int] = {}
            for spec in self.settings.models:
                try:
                    ref = resolve(
                        spec, root=self.rootpath, engines=self.engines, default_engine=self.settings.engine,
                        cache_dir=self.settings.cache_dir,
                    )
                except ModelRefError as exc:
                    raise pytest.UsageError(f"--llm-model: {exc}") from None
                ref = replace(ref, trust_remote_code=self.settings.trusts(ref.name))
                if ref.engine == DEFAULT_ENGINE and self.settings.quant != "int4":
                    # another quantization is another model under test: its own test ids,
                    # snapshot files and report column, never the INT4 ones
                    ref = replace(ref, name=f"{ref.name}-{QUANT_LABELS[self.settings.quant]}")
                count = names.get(ref.name, 0)
                names[ref.name] = count + 1
                if count:  # two folders named alike: keep test ids unique
                    ref = replace(ref, name=f"{ref.name}-{count + 1}")
                if len(ref.name) > MODEL_NAME_MAX:  # it names snapshot files: fail here, not on write
                    raise pytest.UsageError(
                        f"--llm-model: model name {ref.name[:40] + '...'!r} is {len(ref.name)} characters "
                        f"long; at most {MODEL_NAME_MAX} are allowed (test ids and snapshot file names "
                        "carry it): use a shorter file, folder or model name"
                    )
                refs.append(ref)
            self._refs = refs
        return self._refs

    def ref_named(self, name: str) -> ModelRef:
        for ref in self.resolve_models():
            if ref.name == name:
                return ref
        raise KeyError(name)

    def engine(self, ref: ModelRef, item: pytest.Item | None = None) -> Engine:
        """The loaded model, or fail this test with the load error (one line; more lines,
        such as a worker's log, go into the item's report)."""
        if self.pool.loaded(ref):
            return self.pool.get(ref)
        self.notify(f"llmcheck: loading {ref.name} ({ref.spec}) ...")
        try:
            with self.uncaptured() if self.settings.progress else contextlib.nullcontext():
                engine = self.pool.get(ref)
            cached = " (from cache)" if engine.facts.from_cache else ""
            self.notify(
                f"llmcheck: {ref.name} ready in {self.pool.records[ref.name].seconds:.1f}s{cached}; "
                f"{redact(engine.facts.summary)}"
            )
            return engine
        except ModelUnavailable as exc:
            reason = str(exc)
            if exc.details and item is not None:
                item.add_report_section("setup", "llmcheck engine", exc.details)
        pytest.fail(reason, pytrace=False)

    def judge(self, spec: str) -> Judge:
        """The judge model named ``spec``, made once per session and loaded on first need.

        It lives beside the model under test (see README: a small judge costs little
        memory, and swapping models per judged answer would reload the model under test),
        and borrows that model when it is the same one.
        """
        if spec not in self.judges:
            from pytest_llmcheck.checks.judge import VerdictStore, judge_identity

            engine = self.settings.engine if self.settings.engine != "replay" else "transformers"
            try:
                ref = resolve(spec, root=self.rootpath, engines=self.engines, default_engine=engine,
                              cache_dir=self.settings.cache_dir)
            except ModelRefError as exc:
                raise JudgeError(f"judge model: {exc}") from None
            ref = replace(ref, trust_remote_code=self.settings.trusts(ref.name))

            def borrow() -> Engine | None:
                current = self.pool.current
                if current is not None and (current[0].spec, current[0].engine) == (ref.spec, ref.engine):
                    return current[1]
                return None

            def load() -> Engine:
                self.notify(f"llmcheck: loading judge {ref.name} ({ref.spec}) ...")
                with self.uncaptured() if self.settings.progress else contextlib.nullcontext():
                    return self.make_engine(ref)

            self.judges[spec] = Judge(ref.name, judge_identity(ref, self.settings), load,
                                      VerdictStore(self.settings.cache_dir), borrow=borrow)
        return self.judges[spec]

    def _record_load(self, ref: ModelRef, engine: Engine, seconds: float) -> None:
        model = self.results.model(ref.name)
        model.source = ref.spec
        model.loads += 1
        model.from_cache = engine.facts.from_cache
        model.load_seconds = engine.facts.seconds
        model.quantize_seconds = engine.facts.prepare_seconds
        model.quant_summary = redact(engine.facts.summary)  # results reach reports: nothing secret
        model.engine = engine.name
        model.fingerprint = redact_data(engine.fingerprint())

    @property
    def generation(self) -> GenerationConfig:
        s = self.settings
        return GenerationConfig(
            max_new_tokens=s.max_new_tokens, seed=s.seed, threads=s.threads, temperature=s.temperature
        )

    def record_outcome(self, item: pytest.Item, report: pytest.TestReport) -> None:
        """Make each case's verdict the test's: a failing assert after ``ask`` fails it too.

        A test that failed before it could ask (its model did not load) becomes an
        ``error`` case, so the report shows the model's row instead of a gap. A test that
        failed only because its answer has no snapshot yet keeps the answer's verdict: the
        report shows the snapshot as missing and the pass rate counts the answer.
        A test skipped because its snapshot is not comparable here (native numerics of another
        CPU) is shown at the test's own location, not at the plugin line that skipped it.
        """
        if report.skipped and item.stash.get(INCOMPARABLE_KEY, None) is not None:
            if isinstance(report.longrepr, tuple):
                path, line = item.reportinfo()[:2]
                report.longrepr = (os.fspath(path), (line or 0) + 1, report.longrepr[2])
            return
        if not report.failed or report.when == "teardown":
            return
        reason = _first_line(report.longreprtext)
        cases = item.stash.get(CASES_KEY, [])
        if not cases and (model := model_of(item)) is not None:
            case_id = item.stash.get(CASE_ID_KEY, None) or strip_model(item.name, model)
            case = self.results.case(model, case_id, nodeid=item.nodeid, prompt="")
            case.verdict, case.failed_expectation = "error", reason
            item.stash[CASES_KEY] = [case]
            result = self.results.model(model)
            result.source = result.source or self.ref_named(model).spec
            item.user_properties.extend([("llm_model", model), ("llm_verdict", "error")])
            return
        unrecorded = item.stash.get(UNRECORDED_KEY, None)
        if unrecorded is not None and _first_line(report.longreprtext) == _first_line(unrecorded):
            return  # failed only because an answer has no snapshot yet: not a wrong answer
        for case in cases:
            if case.verdict in ("pass", "pending"):  # pending: the test raised before judging
                case.verdict, case.failed_expectation = "fail", reason
        # JUnit reads the properties at teardown: show the verdict the case ended with.
        item.user_properties[:] = [
            (k, "fail" if k == "llm_verdict" and v == "pass" else v) for k, v in item.user_properties
        ]

    def close(self) -> list[str]:
        """Release the model and the judges (an xdist worker's end; the controller's is ``finish``).

        Called after the results were handed over or written: an engine whose close()
        raises costs one warning line (returned, and kept in ``close_errors``), not the
        other engines' release and never the results.
        """
        before = len(self.close_errors)
        self.pool.release()  # a close() that raises lands in _close_failed
        for name, judge in self.judges.items():
            try:
                judge.close()
            except Exception as exc:  # any engine's bug: the run's outcome is already decided
                self.close_errors.append(_close_warning(f"judge {name!r}", exc))
        return self.close_errors[before:]

    def _close_failed(self, ref: ModelRef, exc: Exception) -> None:
        """A model's close() raised (at a model swap or the end): a warning, never a lost result."""
        self.close_errors.append(_close_warning(f"model {ref.name!r}", exc))

    def finish(self) -> list[str]:
        """Write the reports and return the failed gates; release the models last, whatever
        happened, so a failing close() never costs the report or the gates."""
        from pytest_llmcheck.reporting.gates import gate_failures

        try:
            if self.results.models and self.settings.report_dir is not None:
                from pytest_llmcheck.reporting.report import write_report

                write_report(self.results, self.settings.report_dir)
            summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
            if self.results.models and summary_file:
                from pytest_llmcheck.reporting.report import step_summary

                with open(summary_file, "a", encoding="utf-8") as fh:  # capped below GitHub's 1 MiB
                    fh.write(step_summary(self.results, report_dir=self.settings.report_dir) + "\n")
            return gate_failures(self.results, self.settings)
        finally:
            self.close()


def group_by_model(items: list[pytest.Item], model_of: Callable[[pytest.Item], str | None]) -> None:
    """Reorder in place so each model's items run together, keeping all other order.

    Only the slots held by model items are refilled, so unrelated tests keep their
    positions; within a model the collection order is kept.
    """
    slots = [i for i, item in enumerate(items) if model_of(item) is not None]
    if not slots:
        return
    order: dict[str, int] = {}
    for i in slots:
        order.setdefault(model_of(items[i]) or "", len(order))
    grouped = sorted((items[i] for i in slots), key=lambda it: order[model_of(it) or ""])
    for slot, item in zip(slots, grouped, strict=True):
        items[slot] = item



SESSION_KEY = pytest.StashKey[LlmcheckSession]()
ALIAS_CLASHES_KEY = pytest.StashKey[list[str]]()


CASES_KEY = pytest.StashKey[list[CaseResult]]()  # the cases a test's asks recorded
# The failure of an ask whose answers met their expectations but have no snapshot yet.
UNRECORDED_KEY = pytest.StashKey[str]()
INCOMPARABLE_KEY = pytest.StashKey[str]()  # the test skipped: its snapshot is not comparable here
CASE_ID_KEY = pytest.StashKey[str]()  # the question id of a suite item


def _close_warning(what: str, exc: Exception) -> str:
    """The one warning line for an engine's close() that raised."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    error = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return redact(f"llmcheck: WARNING: closing {what} failed: {error}")


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for line in lines:
        if line.startswith("E "):
            return line[2:].strip()
    return lines[0] if lines else "failed"


def strip_model(name: str, model: str) -> str:
    """A test's case id: its name without the model's part of the parameters."""
    for suffix in (f"[{model}]", f"-{model}]"):
        if name.endswith(suffix):
            return name[: -len(suffix)] + ("]" if suffix.startswith("-") else "")
    return name
