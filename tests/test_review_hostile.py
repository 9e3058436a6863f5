"""``llmcheck review`` on untrusted input: a downloaded CI report (a fork's pull request
decides what its CI job writes) or a checkout with planted symlinks. Review writes only
``.txt`` answer snapshots inside ``__snapshots__`` folders below the checkout root; every
other candidate is refused with one line, nothing is written for it, and the valid ones
beside it are still accepted. A file that is not a pytest-llmcheck report is one line and
exit status 2."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.cli import commands as cli
from pytest_llmcheck.snapshots.extension import StoredAnswer
from pytest_llmcheck.snapshots.pending import MAX_SNAPSHOT_BYTES

SUITE = """\
questions:
  - id: q1
    prompt: "Capital of France?"
  - id: q2
    prompt: "Two plus two?"
"""
OLD = {"Capital of France?": "Paris", "Two plus two?": "4"}
NEW = {"Capital of France?": "Lyon", "Two plus two?": "four"}
SNAP = "__snapshots__/riddles.llm/{}[a].txt"


def answers(pytester: pytest.Pytester, table: dict[str, str], version: int = 1) -> None:
    data = {"a": {**table, "__version__": version}}
    (pytester.path / "fake_answers.json").write_text(json.dumps(data), encoding="utf-8")


def snapshot_answer(root: Path, qid: str) -> str:
    return StoredAnswer.parse((root / SNAP.format(qid)).read_text(encoding="utf-8")).answer


def tree(base: Path) -> dict[str, str]:
    """Every file and symlink below ``base`` (links not followed): what a review may change."""
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(base):
        for name in files + [d for d in dirs if Path(folder, d).is_symlink()]:
            path = Path(folder, name)
            key = path.relative_to(base).as_posix()
            found[key] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_bytes().hex()
    return found


@dataclass
class Ci:
    """A CI run's report (two pending answers, q1 and q2) and a clean local checkout."""

    report: dict[str, Any]
    checkout: Path
    base: Path  # holds the checkout (three levels down) and everything outside it
    ran: Path  # the CI run's own folder (its *.txt.new candidates)

    def pending(self, qid: str) -> dict[str, Any]:
        cases = [c for m in self.report["models"] for c in m["cases"] if c["case_id"] == qid]
        pending: dict[str, Any] = cases[0]["pending"]
        return pending

    def write_report(self, data: object | None = None, name: str = "report.json") -> Path:
        path = self.base / "artifact" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(self.report if data is None else data), encoding="utf-8")
        return path


@pytest.fixture
def ci(fake: pytest.Pytester, tmp_path: Path) -> Ci:
    fake.makefile(".llm.yaml", riddles=SUITE)
    answers(fake, OLD)
    fake.runpytest("--llm-model=fake:a", "--snapshot-update", "--llm-soft").assert_outcomes(passed=2)
    answers(fake, NEW, version=2)
    fake.runpytest("--llm-model=fake:a", "--llm-soft", "--llm-report=out").assert_outcomes(failed=2)
    report = json.loads((fake.path / "out/report.json").read_text(encoding="utf-8"))
    checkout = tmp_path / "work" / "repo" / "checkout"  # so "../../x" still lands inside tmp_path
    shutil.copytree(fake.path / "__snapshots__", checkout / "__snapshots__",
                    ignore=shutil.ignore_patterns("*.new"))
    (tmp_path / "outside").mkdir()
    return Ci(report, checkout, tmp_path, fake.path)


def review(ci: Ci, capsys: pytest.CaptureFixture[str], *args: str,
           report: Path | None = None) -> tuple[int, str, str]:
    source = report if report is not None else ci.write_report()
    status = cli.main(["review", str(source), "--root", str(ci.checkout), *args])
    out, err = capsys.readouterr()
    return status, out, err


def assert_refused_q1_accepted_q2(
    ci: Ci, capsys: pytest.CaptureFixture[str], path: str, reason: str, before: dict[str, str] | None = None
) -> None:
    """Accept all with q1's pending answer made hostile: one refusal line, q2 still accepted,
    nothing else changed anywhere below the test's folder (no temporary files either)."""
    ci.pending("q1")["snapshot"] = path
    report = ci.write_report()
    before = tree(ci.base) if before is None else before
    status, out, err = review(ci, capsys, "--accept-all", report=report)
    assert status == 2
    refusals = [line for line in err.splitlines() if "refused" in line]
    assert refusals == [f"llmcheck: refused {path!r}: {reason}"], err
    assert err.count("\n") == 1
    assert "accepted 1, rejected 0, skipped 0" in out
    assert snapshot_answer(ci.checkout, "q2") == "four"  # the valid sibling
    assert snapshot_answer(ci.checkout, "q1") == "Paris"
    after = tree(ci.base)
    changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    assert changed == {f"work/repo/checkout/{SNAP.format('q2')}"}, changed


def test_the_real_report_is_valid_and_reviewable(ci: Ci, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = review(ci, capsys, "--accept-all")
    assert (status, err) == (0, "")
    assert "accepted 2, rejected 0, skipped 0" in out
    assert [snapshot_answer(ci.checkout, q) for q in ("q1", "q2")] == ["Lyon", "four"]


def test_dotdot_path_is_refused(ci: Ci, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused_q1_accepted_q2(ci, capsys, "../../sec/pwned.sh", "'..' in the path")
    assert not (ci.base / "work" / "sec").exists()


def test_dotdot_inside_a_snapshots_path_is_refused(ci: Ci, capsys: pytest.CaptureFixture[str]) -> None:
    path = "__snapshots__/../../../x/__snapshots__/pwned.txt"
    assert_refused_q1_accepted_q2(ci, capsys, path, "'..' in the path")
    assert not (ci.base / "work" / "x").exists()


def test_absolute_path_is_refused(ci: Ci, capsys: pytest.CaptureFixture[str]) -> None:
    target = ci.base / "outside" / "__snapshots__" / "pwned.txt"
    reason = "absolute path (snapshot paths are relative to the checkout root)"
    assert_refused_q1_accepted_q2(ci, capsys, str(target), reason)
    assert not target.parent.exists()


def test_symlinked_snapshots_folder_out_of_the_root_is_refused(
    ci: Ci, capsys: pytest.CaptureFixture[str]
) -> None:
    (ci.checkout / "evil").mkdir()
    (ci.checkout / "evil" / "__snapshots__").symlink_to(ci.base / "outside", target_is_directory=True)
    reason = "evil/__snapshots__ is a symlink out of the checkout root"
    assert_refused_q1_accepted_q2(ci, capsys, "evil/__snapshots__/pwned.txt", reason)
    assert list((ci.base / "outside").iterdir()) == []


def test_snapshots_folder_linked_to_a_plain_folder_in_the_root_is_refused(
    ci: Ci, capsys: pytest.CaptureFixture[str]
) -> None:
    (ci.checkout / "src").mkdir()
    (ci.checkout / "lib").mkdir()
    (ci.checkout / "lib" / "__snapshots__").symlink_to(ci.checkout / "src", target_is_directory=True)
    reason = "the path resolves outside any __snapshots__ folder"
    assert_refused_q1_accepted_q2(ci, capsys, "lib/__snapshots__/module.txt", reason)
    assert list((ci.checkout / "src").iterdir()) == []


def test_path_outside_any_snapshots_folder_is_refused(ci: Ci, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused_q1_accepted_q2(ci, capsys, "src/settings.txt", "not inside a __snapshots__ folder")


def test_non_txt_name_is_refused(ci: Ci, capsys: pytest.CaptureFixture[str]) -> None:
    path = "__snapshots__/riddles.llm/hook.sh"
    assert_refused_q1_accepted_q2(ci, capsys, path, "not a .txt answer snapshot")


def test_nul_byte_is_refused(ci: Ci, capsys: pytest.CaptureFixture[str]) -> None:
    path = SNAP.format("q1") + "\x00.sh"
    assert_refused_q1_accepted_q2(ci, capsys, path, "NUL byte in the path")


def test_control_character_is_refused(ci: Ci, capsys: pytest.CaptureFixture[str]) -> None:
    path = "__snapshots__/riddles.llm/\x1b[2Kq1.txt"
    assert_refused_q1_accepted_q2(ci, capsys, path, "control character '\\x1b' in the path")


def test_huge_answer_is_refused(ci: Ci, capsys: pytest.CaptureFixture[str]) -> None:
    ci.pending("q1")["answer"] = "x" * (MAX_SNAPSHOT_BYTES + 1)
    reason = (f"the answer is {MAX_SNAPSHOT_BYTES + 1} characters, "
              f"above the {MAX_SNAPSHOT_BYTES}-byte snapshot cap")
    assert_refused_q1_accepted_q2(ci, capsys, SNAP.format("q1"), reason)


def test_target_snapshot_that_is_a_symlink_is_refused(ci: Ci, capsys: pytest.CaptureFixture[str]) -> None:
    secret = ci.base / "outside" / "secret.txt"
    secret.write_text("do not touch\n", encoding="utf-8")
    link = ci.checkout / SNAP.format("q1")
    link.unlink()
    link.symlink_to(secret)
    before = tree(ci.base)
    ci.pending("q1")["snapshot"] = SNAP.format("q1")
    report = ci.write_report()
    status, out, err = review(ci, capsys, "--accept-all", report=report)
    assert status == 2
    assert err == f"llmcheck: refused {SNAP.format('q1')!r}: the snapshot file is a symlink\n"
    assert "accepted 1, rejected 0, skipped 0" in out
    assert secret.read_text(encoding="utf-8") == "do not touch\n"
    assert link.is_symlink()
    after = tree(ci.base)
    assert {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} == {
        f"work/repo/checkout/{SNAP.format('q2')}", "artifact/report.json"
    }


def test_folder_swapped_for_a_symlink_after_the_check_is_refused(
    ci: Ci, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path is checked again right before the write: a folder swapped for a symlink
    while the reviewer looks at the answer redirects nothing."""
    folder = ci.checkout / "__snapshots__" / "riddles.llm"

    class SwapThenAccept(io.StringIO):
        def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
            if not folder.is_symlink():
                folder.rename(folder.with_name("moved"))
                folder.symlink_to(ci.base / "outside", target_is_directory=True)
            return "a\n"

    monkeypatch.setattr(sys, "stdin", SwapThenAccept())
    status, out, _ = review(ci, capsys)
    assert status == 2
    assert f"refused {SNAP.format('q1')!r}: " in out
    assert "accepted 0, rejected 0, skipped 0, refused 2" in out
    assert list((ci.base / "outside").iterdir()) == []


def test_a_planted_temporary_file_symlink_redirects_nothing(
    ci: Ci, capsys: pytest.CaptureFixture[str]
) -> None:
    """The write goes through a fresh, randomly named temporary file opened with O_EXCL."""
    target = ci.base / "outside" / "planted.txt"
    folder = ci.checkout / "__snapshots__" / "riddles.llm"
    for name in ("q1[a].txt", "q2[a].txt"):  # the names a pid-based temporary file would get
        (folder / f"{name}.{os.getpid()}.tmp").symlink_to(target)
    status, _, err = review(ci, capsys, "--accept-all")
    assert (status, err) == (0, "")
    assert not target.exists()
    for qid, answer in (("q1", "Lyon"), ("q2", "four")):
        assert not (ci.checkout / SNAP.format(qid)).is_symlink()
        assert snapshot_answer(ci.checkout, qid) == answer
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]


def test_folder_walk_refuses_a_symlinked_candidate(ci: Ci, capsys: pytest.CaptureFixture[str]) -> None:
    """A ``.txt.new`` that is a symlink (to a file outside) is refused; a symlinked
    ``__snapshots__`` folder is never walked into; the real candidate beside them is accepted."""
    outside = ci.base / "outside"
    crafted = (ci.ran / (SNAP.format("q1") + ".new")).read_text(encoding="utf-8").replace("Lyon", "pwned")
    (outside / "crafted.txt.new").write_text(crafted, encoding="utf-8")
    candidate = ci.ran / (SNAP.format("q1") + ".new")
    candidate.unlink()
    candidate.symlink_to(outside / "crafted.txt.new")
    (outside / "riddles.llm").mkdir()
    (outside / "riddles.llm" / "q2[a].txt.new").write_text(crafted, encoding="utf-8")
    (ci.ran / "linked").mkdir()
    (ci.ran / "linked" / "__snapshots__").symlink_to(outside, target_is_directory=True)
    before = tree(outside)
    status = cli.main(["review", str(ci.ran), "--accept-all"])
    out, err = capsys.readouterr()
    assert status == 2
    assert err == f"llmcheck: refused {SNAP.format('q1') + '.new'!r}: the candidate file is a symlink\n"
    assert "accepted 1, rejected 0, skipped 0" in out
    assert snapshot_answer(ci.ran, "q1") == "Paris"
    assert snapshot_answer(ci.ran, "q2") == "four"
    assert tree(outside) == before
    assert candidate.is_symlink()  # a refused candidate is left as it is


def test_answers_cannot_drive_the_terminal(
    ci: Ci, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control characters in what the reviewer sees are shown escaped, never sent raw."""
    ci.pending("q1")["answer"] = "Lyon\x1b[2K\x1b[1A\u202eParis"
    ci.pending("q1")["prompt"] = "Capital\x1b]0;title\x07?"
    monkeypatch.setattr(sys, "stdin", io.StringIO("s\ns\n"))
    status, out, err = review(ci, capsys)
    assert (status, err) == (0, "")
    assert not {"\x1b", "\u202e", "\x07"} & set(out)
    assert "Lyon\\x1b[2K\\x1b[1A\\u202eParis" in out
    assert "question: Capital\\x1b]0;title\\x07?" in out


def test_pytest_benchmark_file_is_not_a_report(ci: Ci, capsys: pytest.CaptureFixture[str]) -> None:
    data = {"machine_info": {"node": "ci"}, "commit_info": {"id": "abc"}, "benchmarks": [],
            "datetime": "2026-12-03T16:54:05", "version": "5.1.0"}
    path = ci.write_report(data, name="latency.json")
    status, out, err = review(ci, capsys, "--accept-all", report=path)
    assert status == 2
    assert out == ""
    assert err == (f'llmcheck: error: {path}: not a pytest-llmcheck report (no "tool": "pytest-llmcheck"; '
                   "is it a pytest-benchmark file?)\n")


def test_a_json_object_without_tool_is_not_a_report(ci: Ci, capsys: pytest.CaptureFixture[str]) -> None:
    path = ci.write_report({"a": 1})
    status, out, err = review(ci, capsys, "--accept-all", report=path)
    assert (status, out) == (2, "")
    assert err == f'llmcheck: error: {path}: not a pytest-llmcheck report (no "tool": "pytest-llmcheck")\n'


def test_invalid_json_is_one_line(ci: Ci, capsys: pytest.CaptureFixture[str]) -> None:
    path = ci.base / "artifact" / "report.json"
    path.parent.mkdir()
    path.write_text('{"tool": "pytest-llmcheck", ', encoding="utf-8")
    status, out, err = review(ci, capsys, "--accept-all", report=path)
    assert (status, out) == (2, "")
    assert err.startswith(f"llmcheck: error: {path}: not a pytest-llmcheck report (invalid JSON: ")
    assert err.count("\n") == 1


def test_schema_error_names_where(ci: Ci, capsys: pytest.CaptureFixture[str]) -> None:
    ci.pending("q2")["snapshot"] = ["__snapshots__", "x.txt"]
    status, out, err = review(ci, capsys, "--accept-all")
    assert (status, out) == (2, "")
    assert err.count("\n") == 1
    assert "not a valid pytest-llmcheck report: $.models[0].cases[1].pending" in err
    assert "is not of type 'string'" in err
    assert snapshot_answer(ci.checkout, "q1") == "Paris"  # nothing accepted from a broken report


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda report: [report], "a JSON array, not an object"),
        (lambda report: {**report, "tool": "pytest-benchmark"}, "its \"tool\" is 'pytest-benchmark'"),
    ],
)
def test_other_json_is_not_a_report(
    ci: Ci, capsys: pytest.CaptureFixture[str], make: Callable[[dict[str, Any]], object], why: str
) -> None:
    path = ci.write_report(make(ci.report))
    status, out, err = review(ci, capsys, "--accept-all", report=path)
    assert (status, out) == (2, "")
    assert err == f"llmcheck: error: {path}: not a pytest-llmcheck report ({why})\n"
