"""Pending answers and ``llmcheck review``: candidates beside their snapshots, reviewed one by
one through the command's input (a pipe, and once a pseudo-terminal), in bulk, and from a
CI run's report.json into another checkout."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_llmcheck.cli import commands as cli
from pytest_llmcheck.snapshots.extension import StoredAnswer
from pytest_llmcheck.snapshots.pending import find_candidates
from pytest_llmcheck.snapshots.review import Style, char_diff

SUITE = """\
questions:
  - id: q1
    prompt: "白白喜欢谁？"
    expect: {contains: "白白喜欢明明"}
  - id: q2
    prompt: "Capital of France?"
    expect: {contains: "Paris"}
  - id: q3
    prompt: "Two plus two?"
"""
OLD = {"白白喜欢谁？": "明明喜欢白白。", "Capital of France?": "Paris", "Two plus two?": "4"}
NEW = {"白白喜欢谁？": "白白喜欢明明。", "Capital of France?": "Lyon", "Two plus two?": "four"}
SNAP = "__snapshots__/riddles.llm/{}[a].txt"


def answers(pytester: pytest.Pytester, table: dict[str, str], version: int = 1) -> None:
    data = {"a": {**table, "__version__": version}}
    (pytester.path / "fake_answers.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def snapshot_answer(root: Path, qid: str) -> str:
    return StoredAnswer.parse((root / SNAP.format(qid)).read_text(encoding="utf-8")).answer


def pending(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.txt.new")}


@pytest.fixture
def drifted(fake: pytest.Pytester) -> pytest.Pytester:
    """Three recorded answers, then a session in which all three changed (three candidates)."""
    fake.makefile(".llm.yaml", riddles=SUITE)
    answers(fake, OLD)
    fake.runpytest("--llm-model=fake:a", "--snapshot-update", "--llm-soft").assert_outcomes(passed=3)
    answers(fake, NEW, version=2)
    result = fake.runpytest("--llm-model=fake:a", "--llm-soft", "--llm-report=out")
    result.assert_outcomes(failed=3)
    assert "review it with: llmcheck review" in result.stdout.str()
    return fake


def test_a_changed_answer_is_kept_beside_its_snapshot(drifted: pytest.Pytester) -> None:
    root = drifted.path
    assert pending(root) == {SNAP.format(q) + ".new" for q in ("q1", "q2", "q3")}
    assert snapshot_answer(root, "q1") == "明明喜欢白白。"  # the snapshot itself is untouched
    candidate = {c.case_id: c for c in find_candidates(root)}["q1"]
    assert candidate.answer == "白白喜欢明明。"
    assert (candidate.model, candidate.verdict_before, candidate.verdict_after) == ("a", "fail", "pass")
    assert candidate.fingerprint["answers_version"] == 2
    # the CI report carries the same candidate, and the schema accepts it
    from pytest_llmcheck.reporting.report import validate_json

    data = json.loads((root / "out/report.json").read_text(encoding="utf-8"))
    validate_json(data)
    case = next(c for c in data["models"][0]["cases"] if c["case_id"] == "q1")
    assert case["pending"]["snapshot"] == SNAP.format("q1")
    assert (case["pending"]["old_answer"], case["pending"]["answer"]) == ("明明喜欢白白。", "白白喜欢明明。")


class Keys(io.StringIO):
    """stdin for the review: hands out one key per question and records the files on disk
    each time the review asks (so the state after every decision is checked)."""

    def __init__(self, keys: list[str], root: Path) -> None:
        super().__init__()
        self.keys, self.root, self.states = keys, root, []

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        self.states.append(
            (pending(self.root), {q: snapshot_answer(self.root, q) for q in ("q1", "q2", "q3")})
        )
        return self.keys.pop(0) + "\n" if self.keys else ""


def test_review_accept_reject_skip_through_stdin(
    drifted: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = drifted.path
    keys = Keys(["a", "r", "s"], root)
    monkeypatch.setattr(sys, "stdin", keys)
    assert cli.main(["review", str(root)]) == 0
    out = capsys.readouterr().out
    states = [*keys.states, (pending(root), {q: snapshot_answer(root, q) for q in ("q1", "q2", "q3")})]
    all_new = {SNAP.format(q) + ".new" for q in ("q1", "q2", "q3")}
    # before the first key: nothing written
    assert states[0] == (all_new, {"q1": "明明喜欢白白。", "q2": "Paris", "q3": "4"})
    # after accept (q1): its snapshot holds the new answer and its candidate is gone
    assert states[1] == (
        all_new - {SNAP.format("q1") + ".new"},
        {"q1": "白白喜欢明明。", "q2": "Paris", "q3": "4"},
    )
    # after reject (q2): only its candidate is deleted, the snapshot keeps the old answer
    assert states[2] == ({SNAP.format("q3") + ".new"}, {"q1": "白白喜欢明明。", "q2": "Paris", "q3": "4"})
    # after skip (q3): the candidate stays for later
    assert states[3] == states[2]
    assert "accepted 1, rejected 1, skipped 1" in out
    # what the reviewer saw: question, model, verdicts, fingerprint change, character diff
    assert "[1/3] q1 · a" in out
    assert "question: 白白喜欢谁？" in out
    assert "verdict: fail -> pass" in out
    assert "fingerprint: changed: answers_version 1 -> 2" in out
    assert "{+白白喜欢+}明明[-喜欢白白-]。" in out
    # the accepted file is exactly what --snapshot-update writes: the next session passes it
    result = drifted.runpytest("--llm-model=fake:a", "--llm-soft", "-k", "q1")
    result.assert_outcomes(passed=1)
    assert "1 snapshot passed" in result.stdout.str()


def test_accept_all_reject_all_and_list(drifted: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    root = drifted.path
    assert cli.main(["review", str(root), "--list"]) == 0
    out = capsys.readouterr().out
    assert "3 pending answer(s)" in out
    assert "fail -> pass" in out
    assert len(pending(root)) == 3  # --list changes nothing
    assert cli.main(["review", str(root), "--reject-all"]) == 0
    assert pending(root) == set()
    assert snapshot_answer(root, "q2") == "Paris"
    # the candidates come back with the next session; accept them all
    drifted.runpytest("--llm-model=fake:a", "--llm-soft").assert_outcomes(failed=3)
    assert cli.main(["review", str(root), "--accept-all"]) == 0
    assert "accepted 3, rejected 0, skipped 0" in capsys.readouterr().out
    assert [snapshot_answer(root, q) for q in ("q1", "q2", "q3")] == ["白白喜欢明明。", "Lyon", "four"]
    drifted.runpytest("--llm-model=fake:a", "--llm-soft").assert_outcomes(passed=3)  # q2 fails softly
    assert cli.main(["review", str(root)]) == 0
    assert "no pending answers" in capsys.readouterr().out


def test_review_a_ci_report_into_another_checkout(
    drifted: pytest.Pytester,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ci = drifted.path
    local = tmp_path / "checkout"
    local.mkdir()
    shutil.copytree(
        ci / "__snapshots__", local / "__snapshots__", ignore=shutil.ignore_patterns("*.new")
    )  # a clean checkout: no candidates
    monkeypatch.setattr(sys, "stdin", io.StringIO("a\nr\nq\n"))
    assert cli.main(["review", str(ci / "out"), "--root", str(local)]) == 0
    out = capsys.readouterr().out
    assert "accepted 1, rejected 1, skipped 1" in out
    assert snapshot_answer(local, "q1") == "白白喜欢明明。"
    assert snapshot_answer(local, "q2") == "Paris"
    assert snapshot_answer(local, "q3") == "4"
    assert pending(local) == set()  # nothing but the accepted snapshot was written
    # the same bytes as the CI machine's own candidate would give
    ci_candidate = {c.case_id: c for c in find_candidates(ci)}["q1"]
    assert (local / SNAP.format("q1")).read_text("utf-8") == ci_candidate.stored().render()


def test_review_in_a_pseudo_terminal(drifted: pytest.Pytester) -> None:
    """One key press each, no Enter: the terminal is put in cbreak mode and restored."""
    root = drifted.path
    primary, secondary = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_llmcheck.cli", "review", str(root)],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
        close_fds=True,
    )
    os.close(secondary)
    seen = b""

    def read_until(done: Callable[[bytes], bool], timeout: float = 60) -> None:
        nonlocal seen
        end = time.monotonic() + timeout
        while not done(seen) and time.monotonic() < end:
            ready, _, _ = select.select([primary], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(primary, 4096)
                except OSError:  # the child closed the terminal
                    break
        assert done(seen), seen.decode("utf-8", "replace")

    prompt = b"quit (q)? "
    for count, key in enumerate((b"a", b"s", b"q"), 1):
        read_until(lambda text, n=count: text.count(prompt) >= n)  # type: ignore[misc]
        os.write(primary, key)
    read_until(lambda text: b"accepted 1, rejected 0, skipped 2" in text)
    assert proc.wait(timeout=30) == 0
    os.close(primary)
    text = seen.decode("utf-8", "replace")
    assert "\x1b[32m" in text  # colored diff on a terminal
    assert snapshot_answer(root, "q1") == "白白喜欢明明。"
    assert pending(root) == {SNAP.format(q) + ".new" for q in ("q2", "q3")}


def test_character_diff_works_for_chinese() -> None:
    plain = Style(color=False)
    assert char_diff("白白喜欢明明。", "白白不喜欢明明。", plain) == "白白{+不+}喜欢明明。"
    assert char_diff("冬天多穿", "夏天少穿", plain) == "[-冬-]{+夏+}天[-多-]{+少+}穿"


def test_review_bad_source_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["review", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no such file or folder" in err


@pytest.mark.parametrize("amber", [False, True], ids=["answers-only", "with-amber-snapshot"])
def test_pending_answers_are_not_unused_snapshots(fake: pytest.Pytester, amber: bool) -> None:
    """A kept ``*.txt.new`` is no snapshot: syrupy must not report it as unused and advise
    --snapshot-update (which would accept the drift unseen), also beside an amber snapshot."""
    fake.makefile(".llm.yaml", riddles=SUITE)
    plain = "\n\ndef test_plain(snapshot):\n    assert snapshot == 'x'\n" if amber else ""
    fake.makepyfile(test_py="import pytest\n\n@pytest.mark.llm_snapshot\ndef test_ask(llm):\n"
                    "    llm.ask('Two plus two?')\n" + plain)
    answers(fake, OLD)
    fake.runpytest("--llm-model=fake:a", "--snapshot-update", "--llm-soft").assert_outcomes(passed=4 + amber)
    answers(fake, NEW, version=2)
    kept = {SNAP.format(q) + ".new" for q in ("q1", "q2", "q3")}
    kept.add("__snapshots__/test_py/test_ask[a].txt.new")
    for args in ((), ("-k", "q1 or plain")):
        result = fake.runpytest("--llm-model=fake:a", "--llm-soft", "--snapshot-details", *args)
        out = result.stdout.str()
        assert re.search(r"\d+ snapshots? failed", out), out
        assert not re.search(r"unused snapshots?|snapshots? unused|--snapshot-update to delete", out), out
        assert pending(fake.path) == kept
