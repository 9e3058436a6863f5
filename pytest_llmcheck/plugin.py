"""pytest hooks and fixtures of pytest-llmcheck; each delegates to a plain object.

Importing this module must stay cheap: no torch, transformers or modelscope here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_llmcheck import hooks
from pytest_llmcheck.checks.suite import Question, SuiteError, check_repeat, is_suite_file, load_suite
from pytest_llmcheck.config.items import model_of
from pytest_llmcheck.config.numerics import PORTABLE, apply_portable_env, early_choice
from pytest_llmcheck.config.registry import ModelRef
from pytest_llmcheck.config.settings import Settings, add_aliases, add_options, oversubscribed, worker_threads
from pytest_llmcheck.engines.base import Engine
from pytest_llmcheck.engines.registry import EngineError, EngineRegistry
from pytest_llmcheck.errors import LlmcheckError
from pytest_llmcheck.run.case import LLM, marker_expectations
from pytest_llmcheck.run.collect import QUESTION_KEY, SuiteFile
from pytest_llmcheck.run.session import ALIAS_CLASHES_KEY, SESSION_KEY, LlmcheckSession, group_by_model
from pytest_llmcheck.run.timing import cpu_timer_note

if TYPE_CHECKING:
    from pytest_llmcheck.snapshots.extension import SnapshotGuard

MARKERS = (
    "llm_expect(**expectations): check every answer of this test: contains, all_of, any_of, "
    "not_contains, regex, max_seconds, max_cpu_seconds, max_new_tokens, ignore_case, "
    "judge (rubrics for --llm-judge)",
    "llm_suite(path): parametrize the test's llm_question fixture with the questions of a *.llm.yaml suite",
    "llm_snapshot(tolerance='exact'): compare every answer of this test with its stored syrupy snapshot; "
    "tolerance: exact, normalized, or similar=0.9",
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> Generator[None, None, None]:
    # Before any conftest can import torch: portable numerics hold its kernels to AVX2.
    if early_choice(args, early_config.getini("llmcheck_numerics")) == PORTABLE:
        apply_portable_env()
    # After every plugin and initial conftest has added its options: take the free aliases.
    yield
    early_config.stash[ALIAS_CLASHES_KEY] = add_aliases(parser)


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    for alias in config.stash.get(ALIAS_CLASHES_KEY, []):
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                f"pytest-llmcheck: {alias} belongs to another plugin; use "
                f"{alias.replace('--llm-', '--llmcheck-')} for pytest-llmcheck"
            ),
            stacklevel=2,
        )
    engines = EngineRegistry()
    try:
        for specs in config.hook.pytest_llmcheck_engines():
            for spec in specs:
                engines.add(spec)
    except EngineError as exc:
        raise pytest.UsageError(str(exc)) from None

    def make_engine(ref: ModelRef) -> Engine:
        engine: Engine | None = config.hook.pytest_llmcheck_make_engine(ref=ref, settings=session.settings)
        return engine if engine is not None else engines.load(ref, session.settings)

    session = LlmcheckSession(
        Settings.from_config(config), make_engine, config.rootpath, engines=engines
    )
    session.notify = lambda line: _progress_line(config, line)
    session.uncaptured = lambda: _uncaptured(config)
    if session.settings.models_given:
        session.resolve_models()  # bad references stop the run here, as usage errors
    if session.settings.judge is not None:
        try:
            session.judge(session.settings.judge)  # resolves the reference; loads nothing yet
        except LlmcheckError as exc:
            raise pytest.UsageError(f"--llm-judge: {exc}") from None
    config.stash[SESSION_KEY] = session
    if session.settings.shard is not None:
        from pytest_llmcheck.distribution.shard import ShardSelector

        selector = ShardSelector(
            session.settings.shard, lambda: [ref.name for ref in session.resolve_models()], model_of
        )
        config.pluginmanager.register(selector, "llmcheck-shard")
    if config.pluginmanager.hasplugin("syrupy"):
        from pytest_llmcheck.snapshots.extension import GUARD_KEY, SnapshotGuard

        config.stash[GUARD_KEY] = SnapshotGuard()


def pytest_report_header(config: pytest.Config) -> list[str]:
    # A header line, not a Python warning: it describes the machine, not the code under test.
    session = config.stash.get(SESSION_KEY, None)
    threads = worker_threads(session.settings, config.option) if session is not None else 1
    lines = []
    busy = oversubscribed(threads)
    if busy is not None:
        lines.append(f"llmcheck: WARNING: {busy}")
    gate = cpu_timer_note(config, threads)
    if gate is not None:
        lines.append(f"llmcheck: {gate}")
    return lines


def _progress_line(config: pytest.Config, line: str) -> None:
    """Loading progress on the terminal, outside captured output; quiet under -q."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or config.get_verbosity() < 0:
        return
    with _uncaptured(config):
        reporter.ensure_newline()
        reporter.write_line(line)


def _uncaptured(config: pytest.Config) -> contextlib.AbstractContextManager[object]:
    capman = config.pluginmanager.get_plugin("capturemanager")
    return capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if is_suite_file(file_path):
        return SuiteFile.from_parent(parent, path=file_path)
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    mark = metafunc.definition.get_closest_marker("llm_suite")
    if mark is not None and "llm_question" in metafunc.fixturenames:
        questions = _marker_suite(metafunc, mark)
        metafunc.parametrize("llm_question", questions, ids=[q.id for q in questions])
    if "llm" in metafunc.fixturenames:
        names = [ref.name for ref in metafunc.config.stash[SESSION_KEY].resolve_models()]
        metafunc.parametrize("llm", names, indirect=True, ids=names)


def _marker_suite(metafunc: pytest.Metafunc, mark: pytest.Mark) -> list[Question]:
    if len(mark.args) != 1 or not isinstance(mark.args[0], (str, Path)) or mark.kwargs:
        pytest.fail(f"llm_suite() takes one suite path, got {mark.args!r} {mark.kwargs!r}", pytrace=False)
    path = Path(metafunc.definition.path).parent / mark.args[0]
    try:
        suite = load_suite(path)
        check_repeat(suite, metafunc.config.stash[SESSION_KEY].settings.repeat)
        return list(suite.questions)
    except SuiteError as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselection: the snapshot guard needs every item
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    group_by_model(items, model_of)
    if (guard := _snapshot_guard(config)) is not None:
        guard.note_collected(items)


def _snapshot_guard(config: pytest.Config) -> SnapshotGuard | None:
    from pytest_llmcheck.snapshots.extension import GUARD_KEY

    return config.stash.get(GUARD_KEY, None) if config.pluginmanager.hasplugin("syrupy") else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.config.stash[SESSION_KEY].record_outcome(item, report)
    if (guard := _snapshot_guard(item.config)) is not None:
        guard.note_report(item, report)
    return report


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    # Innermost wrapper: before syrupy (a plain tryfirst hook) builds its report, and done
    # before the terminal reporter prints the last line and xdist sends worker output.
    # Every plain sessionfinish hook runs inside it, so the finally below writes the report
    # (or hands a worker's results over) even when one of them raises.
    llm_session = session.config.stash.get(SESSION_KEY, None)
    guard = _snapshot_guard(session.config)
    if llm_session is not None and guard is not None:
        guard.protect(session, [ref.name for ref in llm_session.resolve_models()])
    try:
        return (yield)
    finally:
        if llm_session is not None:
            _finish(session, llm_session)


def _finish(session: pytest.Session, llm_session: LlmcheckSession) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports and gates
        workeroutput["llmcheck"] = llm_session.results.to_dict()  # handed over before any close()
        workeroutput["llmcheck_close_errors"] = llm_session.close()
        return
    failures = llm_session.finish()
    if failures and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if failures:
        session.shouldfail = "; ".join(failures)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:  # counted in the last line: "5 passed, 1 llm gate failed"
            reporter.stats.setdefault("llm gate failed", []).extend(failures)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """xdist controller: take in what a worker's session learned."""
    workeroutput = getattr(node, "workeroutput", {})
    output = workeroutput.get("llmcheck")
    config = getattr(node, "config", None)
    if output and config is not None:
        config.stash[SESSION_KEY].results.absorb(output)
    if config is not None:
        config.stash[SESSION_KEY].close_errors.extend(workeroutput.get("llmcheck_close_errors", []))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """xdist controller: all tests of a model on one worker, so each model loads once."""
    from pytest_llmcheck.distribution.xdist import make_scheduler

    llm_session = config.stash.get(SESSION_KEY, None)
    if llm_session is None:
        return None
    engines = llm_session.engines
    models = [ref.name for ref in llm_session.resolve_models() if not engines.get(ref.engine).remote]
    return make_scheduler(config, log, models)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    llm_session = config.stash.get(SESSION_KEY, None)
    if llm_session is None:
        return
    for line in llm_session.close_errors:  # warnings only: the results below are complete
        terminalreporter.write_line(line, yellow=True)
    if not llm_session.results.models:
        return
    from pytest_llmcheck.reporting.summary import summary_lines

    terminalreporter.write_sep("=", "llmcheck summary")
    for line in summary_lines(llm_session.results):
        terminalreporter.write_line(line)
    if llm_session.settings.report_dir is not None:
        html = llm_session.settings.report_dir / "report.html"
        terminalreporter.write_line(f"report: {html} (and report.md, report.json)")


@pytest.fixture
def llm(request: pytest.FixtureRequest) -> LLM:
    """The model under test; parametrized over ``--llm-model``: ``llm.ask("...")``."""
    session = request.config.stash[SESSION_KEY]
    marker_expectations(request.node)  # a bad llm_expect marker errors here, before any model loads
    ref = session.ref_named(model_of(request.node) or "")
    return LLM(ref=ref, engine=session.engine(ref, request.node), session=session, request=request)


@pytest.fixture
def llm_question(request: pytest.FixtureRequest) -> Question:
    """The suite question of this test (from ``llm_suite`` or a ``*.llm.yaml`` file)."""
    question: Question | None = getattr(request, "param", None) or request.node.stash.get(QUESTION_KEY, None)
    if question is None:
        pytest.fail("llm_question needs @pytest.mark.llm_suite('file.llm.yaml') on the test", pytrace=False)
    return question
