"""Answer snapshots: record, pass, drift (with the fingerprint note), accept; and the traps.

Inner pytest sessions run the fake engine (``fake`` fixture); each test writes the
answers the fake models give to ``fake_answers.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.snapshots.extension import MARKER, StoredAnswer, fingerprint_changes, fingerprint_note

SUITE = """\
questions:
  - id: riddle-1
    prompt: "白白喜欢谁？"
  - id: capital
    prompt: "Capital of France?"
"""

PY_TEST = """\
import pytest

@pytest.mark.llm_snapshot
def test_capital(llm):
    llm.ask("Capital of France?")
    llm.ask("白白喜欢谁？")

def test_no_snapshot(llm):
    llm.ask("Capital of France?")
"""

ANSWERS = {"白白喜欢谁？": "白白喜欢明明。\n因为明明很聪明。", "Capital of France?": "Paris"}


def set_answers(pytester: pytest.Pytester, version: int = 1, **per_model: dict[str, str]) -> None:
    table: dict[str, Any] = {}
    for model in ("a", "b"):
        table[model] = {**ANSWERS, **per_model.get(model, {}), "__version__": version}
    (pytester.path / "fake_answers.json").write_text(json.dumps(table, ensure_ascii=False), encoding="utf-8")


def run(pytester: pytest.Pytester, *args: str, models: str = "fake:a,fake:b") -> pytest.RunResult:
    return pytester.runpytest("--llm-model", models, "-p", "no:randomly", *args)


def snapshot_files(pytester: pytest.Pytester) -> dict[str, bytes]:
    """The snapshot files (pending ``.txt.new`` candidates are not snapshots)."""
    root = pytester.path
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("__snapshots__/**/*"))
            if p.is_file() and p.suffix == ".txt"}


def pending_files(pytester: pytest.Pytester) -> set[str]:
    root = pytester.path
    return {p.relative_to(root).as_posix() for p in root.rglob("__snapshots__/**/*.txt.new")}


def assert_nothing_unused(result: pytest.RunResult) -> None:
    out = result.stdout.str()
    assert not re.search(r"unused snapshots?|snapshots? unused|Deleted", out), out


SUITE_A = "__snapshots__/riddles.llm/riddle-1[a].txt"
SUITE_FILES = {f"__snapshots__/riddles.llm/{q}[{m}].txt" for q in ("riddle-1", "capital") for m in ("a", "b")}
PY_FILES = {f"__snapshots__/test_py/test_capital[{m}]{i}.txt" for m in ("a", "b") for i in ("", ".1")}


@pytest.fixture
def project(fake: pytest.Pytester) -> pytest.Pytester:
    fake.makefile(".llm.yaml", riddles=SUITE)
    fake.makepyfile(test_py=PY_TEST)
    set_answers(fake)
    return fake


def test_lifecycle_suite_and_python_test(project: pytest.Pytester) -> None:
    # record
    result = run(project, "--snapshot-update")
    result.assert_outcomes(passed=8)
    assert set(snapshot_files(project)) == SUITE_FILES | PY_FILES
    text = (project.path / SUITE_A).read_text(encoding="utf-8")
    assert "白白喜欢明明。\n因为明明很聪明。\n" in text
    assert "\\u" not in text
    stored = StoredAnswer.parse(text)
    assert stored.answer == "白白喜欢明明。\n因为明明很聪明。"
    assert stored.prompt == "白白喜欢谁？"
    assert stored.fingerprint["engine"] == "fake"
    assert stored.fingerprint["answers_version"] == 1
    assert stored.fingerprint["generation"]["max_new_tokens"] > 0
    second = project.path / "__snapshots__/test_py/test_capital[b].1.txt"
    py_second = StoredAnswer.parse(second.read_text("utf-8"))
    assert py_second.answer == ANSWERS["白白喜欢谁？"]

    # unchanged: pass, nothing rewritten
    before = snapshot_files(project)
    result = run(project)
    result.assert_outcomes(passed=8)
    assert result.ret == 0
    assert_nothing_unused(result)
    assert snapshot_files(project) == before

    # the model answers differently, same fingerprint: fail with a diff and the note
    set_answers(project, a={"白白喜欢谁？": "白白喜欢明明。\n因为明明很可爱。"})
    result = run(project)
    result.assert_outcomes(passed=6, failed=2)
    out = result.stdout.str()
    assert f"answer changed from snapshot {SUITE_A}" in out
    assert "fingerprint unchanged: the model itself answers differently" in out
    result.stdout.fnmatch_lines(["*-因为明明很聪明。", "*+因为明明很可爱。"])
    assert "review it with: llmcheck review (or run pytest with --snapshot-update to accept all)" in out
    assert snapshot_files(project) == before  # trap 2: nothing rewritten without the flag
    assert pending_files(project) == {SUITE_A + ".new", "__snapshots__/test_py/test_capital[a].1.txt.new"}

    # accept
    result = run(project, "--snapshot-update")
    result.assert_outcomes(passed=8)
    assert "2 snapshots updated" in result.stdout.str()
    assert StoredAnswer.parse((project.path / SUITE_A).read_text("utf-8")).answer.endswith("很可爱。")
    assert pending_files(project) == set()  # accepted: the candidates are out of date
    run(project).assert_outcomes(passed=8)


def test_changed_fingerprint_is_named(project: pytest.Pytester) -> None:
    run(project, "--snapshot-update").assert_outcomes(passed=8)
    before = snapshot_files(project)

    # new fingerprint, same answers: pass and leave the files alone
    set_answers(project, version=2)
    result = run(project)
    result.assert_outcomes(passed=8)
    assert snapshot_files(project) == before

    # new fingerprint and a new answer: the note names the changed key
    set_answers(project, version=2, b={"Capital of France?": "Paris, of course"})
    result = run(project)
    result.assert_outcomes(passed=6, failed=2)
    out = result.stdout.str()
    assert "fingerprint changed: answers_version 1 -> 2" in out
    result.stdout.fnmatch_lines(["*-Paris", "*+Paris, of course"])
    assert snapshot_files(project) == before

    # accepting writes the new fingerprint, also where only the fingerprint changed
    run(project, "--snapshot-update").assert_outcomes(passed=8)
    for name in SUITE_FILES | PY_FILES:
        stored = StoredAnswer.parse((project.path / name).read_text("utf-8"))
        assert stored.fingerprint["answers_version"] == 2, name


def test_missing_snapshot_fails_and_writes_nothing(project: pytest.Pytester) -> None:
    result = run(project)
    result.assert_outcomes(passed=2, failed=6)
    result.stdout.fnmatch_lines([
        "*no answer snapshot __snapshots__/riddles.llm/riddle-1[[]a].txt yet; "
        "run pytest with --snapshot-update to record this answer, or review the pending answer with: "
        "llmcheck review",
        "*no answer snapshot __snapshots__/test_py/test_capital[[]a].txt yet*",
    ])
    assert snapshot_files(project) == {}  # only pending candidates, for review
    # a failed first ask() ends the test: its second answer is never asked
    assert pending_files(project) == {f"{name}.new" for name in SUITE_FILES | PY_FILES if ".1." not in name}


def test_other_models_snapshots_are_not_unused(project: pytest.Pytester) -> None:
    run(project, "--snapshot-update").assert_outcomes(passed=8)
    before = snapshot_files(project)

    result = run(project, models="fake:a")
    result.assert_outcomes(passed=4)
    assert result.ret == 0
    assert_nothing_unused(result)

    result = run(project, "--snapshot-update", models="fake:a")
    result.assert_outcomes(passed=4)
    assert_nothing_unused(result)
    assert snapshot_files(project) == before

    # -k deselection still keeps everything, with one model or two
    for models in ("fake:a", "fake:a,fake:b"):
        result = run(project, "--snapshot-update", "-k", "riddle", models=models)
        assert result.ret == 0
        assert_nothing_unused(result)
        assert snapshot_files(project) == before


def test_removed_question_is_still_unused(project: pytest.Pytester) -> None:
    run(project, "--snapshot-update").assert_outcomes(passed=8)
    project.makefile(".llm.yaml", riddles=SUITE.split("  - id: capital")[0])
    result = run(project, models="fake:a")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*2 snapshots unused*"])  # capital[a] and capital[b]
    run(project, "--snapshot-update", models="fake:a")
    assert not (project.path / "__snapshots__/riddles.llm/capital[b].txt").exists()
    assert (project.path / "__snapshots__/riddles.llm/riddle-1[b].txt").exists()


def test_a_model_that_fails_to_load_keeps_its_snapshots(project: pytest.Pytester) -> None:
    run(project, "--snapshot-update").assert_outcomes(passed=8)
    before = snapshot_files(project)
    (project.path / "fake_answers.json").unlink()
    project.path.joinpath("__snapshots__/riddles.llm/riddle-1[broken].txt").write_text(
        f"# old\n{MARKER}\nold\n", encoding="utf-8")
    before = snapshot_files(project)
    result = run(project, "--snapshot-update", models="fake:broken")
    assert result.ret == 1
    assert "fake weights are corrupt" in result.stdout.str()
    assert_nothing_unused(result)
    assert snapshot_files(project) == before


def test_snapshot_keyword_on_ask(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_kw="""
        def test_off(llm):
            llm.ask("hi", snapshot=True)
    """)
    result = fake.runpytest("--llm-model", "fake:a", "--snapshot-update")
    result.assert_outcomes(passed=1)
    stored = StoredAnswer.parse((fake.path / "__snapshots__/test_kw/test_off[a].txt").read_text("utf-8"))
    assert stored.answer == "echo: hi"


def test_file_format_round_trip_and_notes() -> None:
    stored = StoredAnswer(answer=f"两行\n{MARKER}\n尾\n", prompt="问？", system="系统",
                          fingerprint={"versions": {"transformers": "5.23.0"}})
    text = stored.render()
    assert "两行" in text
    assert "\\u" not in text
    assert StoredAnswer.parse(text) == stored
    assert StoredAnswer.parse("just an answer\n") == StoredAnswer(answer="just an answer", fingerprint={})
    new = {"versions": {"transformers": "5.24.0"}, "quant": "int4"}
    assert fingerprint_changes(stored.fingerprint, new) == [
        "quant (none) -> int4", "versions.transformers 5.23.0 -> 5.24.0"]
    assert fingerprint_note(stored.fingerprint, new).startswith(
        "fingerprint changed: quant (none) -> int4; versions.transformers 5.23.0 -> 5.24.0")
    assert fingerprint_note(new, new) == "fingerprint unchanged: the model itself answers differently"


def test_results_get_the_status(project: pytest.Pytester) -> None:
    project.makeconftest("""
        import json
        from pytest_llmcheck.run.session import SESSION_KEY

        def pytest_sessionfinish(session):
            results = session.config.stash[SESSION_KEY].results
            out = {f"{m.name}/{c.case_id}": c.snapshot
                   for m in results.models.values() for c in m.cases.values()}
            open("statuses.json", "w").write(json.dumps(out))
    """)
    run(project, "--snapshot-update", models="fake:a")
    statuses = json.loads(Path(project.path / "statuses.json").read_text())
    assert statuses["a/riddle-1"] == "new"
    set_answers(project, a={"Capital of France?": "Lyon"})
    run(project, models="fake:a")
    statuses = json.loads(Path(project.path / "statuses.json").read_text())
    assert statuses["a/riddle-1"] == "unchanged"
    assert statuses["a/capital"] == "changed"


def test_class_and_suite_parametrized_python_test_keeps_other_models(fake: pytest.Pytester) -> None:
    fake.makefile(".llm.yaml", qs=SUITE)
    fake.makepyfile(test_cls="""
        import pytest

        @pytest.mark.llm_snapshot
        class TestQs:
            @pytest.mark.llm_suite("qs.llm.yaml")
            def test_q(self, llm, llm_question):
                llm.ask(llm_question)
    """)
    set_answers(fake)
    fake.runpytest("--llm-model", "fake:a,fake:b", "--snapshot-update").assert_outcomes(passed=8)
    files = snapshot_files(fake)
    assert "__snapshots__/test_cls/TestQs.test_q[riddle-1-b].txt" in files
    result = fake.runpytest("--llm-model", "fake:b", "--snapshot-update")
    result.assert_outcomes(passed=4)
    assert_nothing_unused(result)
    assert snapshot_files(fake) == files


def test_syrupy_disabled_turns_snapshots_off_with_a_warning(fake: pytest.Pytester) -> None:
    fake.makefile(".llm.yaml", quiz="questions:\n  - id: q1\n    prompt: hi\n")
    result = fake.runpytest("--llm-model=fake:a", "-p", "no:syrupy")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*answer snapshots are off: syrupy is disabled (-p no:syrupy)*"])
    assert not (fake.path / "__snapshots__").exists()


def test_another_engines_snapshots_are_kept(project: pytest.Pytester) -> None:
    """`riddle-1[a@itrex].txt` belongs to model `a@itrex`: updating `a` alone keeps it."""
    run(project, "--snapshot-update").assert_outcomes(passed=8)
    other = project.path / "__snapshots__/riddles.llm/riddle-1[a@itrex].txt"
    other.write_text(f"# another engine\n{MARKER}\nits answer\n", encoding="utf-8")
    before = snapshot_files(project)
    result = run(project, "--snapshot-update", models="fake:a")
    result.assert_outcomes(passed=4)
    assert_nothing_unused(result)
    assert snapshot_files(project) == before
    assert other.read_text(encoding="utf-8").endswith("its answer\n")
