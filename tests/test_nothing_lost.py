"""Nothing lost: cache cleanup trusts locks, not pids; lock waits end with a line naming
the holder; results, the report and the gates survive an engine's close() that raises and
another plugin's sessionfinish hook that raises (also under xdist)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from pytest_llmcheck.checks.judge import VerdictStore
from pytest_llmcheck.cli.commands import main
from pytest_llmcheck.storage import cache as cache_module
from pytest_llmcheck.storage.cache import Cache, CacheEntry, CacheError, LockBusy
from tests.test_cache import run_python, wait_for
from tests.test_checks import REPO, set_answers
from tests.test_checks import run as run_checks
from tests.test_gates import TWO_MODELS, cases_of, load_report, setup_project
from tests.test_gates import run as run_gates

DEAD_PID = 999999  # in a temp folder's name: no such process here (or, for all we know, in another container)

HOLD_LOCK = """
    import sys, time
    from pathlib import Path
    from filelock import FileLock
    with FileLock(sys.argv[1]):
        Path(sys.argv[2]).write_text("held")
        time.sleep(60)
"""

BUILD = """
    import sys, time
    from pathlib import Path
    from pytest_llmcheck.storage.cache import Cache
    entry = Cache(Path(sys.argv[1])).entry("quantized", {"name": "big"})
    with entry.build() as tmp:
        Path(sys.argv[2]).write_text(str(tmp))
        time.sleep(60)
"""


@pytest.fixture
def hold(tmp_path: Path) -> Any:
    """Start a child process that holds a lock (or builds an entry) until the test ends."""
    children: list[subprocess.Popen[str]] = []

    def start(code: str, arg: Path) -> subprocess.Popen[str]:
        ready = tmp_path / f"ready-{len(children)}"
        child = run_python(code, str(arg), str(ready))
        children.append(child)
        wait_for(ready, child)
        return child

    yield start
    for child in children:
        child.kill()
        child.communicate(timeout=10)


def leftover(entry: CacheEntry, pid: int) -> Path:
    """A temp build folder of ``entry`` named after ``pid``, as a build makes them."""
    entry.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.path.with_name(f"{entry.path.name}.tmp-{pid}-0badc0de")
    tmp.mkdir()
    (tmp / "weights.bin").write_bytes(b"w" * 100)
    return tmp


# -- 1. cleanup judges temp folders by the entry's lock, never by pid -----------------------------


def test_a_locked_entrys_temp_folder_survives_gc_and_clear_though_its_pid_is_dead(
    tmp_path: Path, hold: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not Path(f"/proc/{DEAD_PID}").exists()
    cache = Cache(tmp_path / "c")
    entry = cache.entry("quantized", {"name": "big"})
    tmp = leftover(entry, DEAD_PID)  # e.g. built from another container: its pid is not ours to judge
    hold(HOLD_LOCK, entry.lock_path)

    removed, busy = cache.gc(older_than=0)
    assert tmp.exists()
    assert [Path(str(row["path"])) for row in busy] == [tmp]
    assert removed == []
    assert cache.clear() == 0
    assert tmp.exists()

    assert main(["gc", "--older-than", "0", "--cache-dir", str(cache.root)]) == 0
    assert "kept 1 entry being built now" in capsys.readouterr().out
    assert main(["clear", "--yes", "--cache-dir", str(cache.root)]) == 0
    assert f"kept 1 build in progress (locked): {tmp.name}" in capsys.readouterr().out
    assert tmp.exists()


@pytest.mark.parametrize("pid", [DEAD_PID, os.getpid()], ids=["dead-pid", "live-pid"])
@pytest.mark.parametrize("how", ["gc", "gc-dry-run", "clear"])
def test_a_free_entrys_temp_folder_is_a_leftover_whatever_its_pid(tmp_path: Path, pid: int, how: str) -> None:
    # A live pid proves nothing: in another container it is another process. A free lock does.
    cache = Cache(tmp_path / "c")
    entry = cache.entry("quantized", {"name": "big"})
    tmp = leftover(entry, pid)
    if how == "clear":
        assert cache.clear("quantized") >= 100
        assert not tmp.exists()
        return
    removed, busy = cache.gc(older_than=1e9, dry_run=how == "gc-dry-run")
    assert [Path(str(row["path"])) for row in removed] == [tmp]
    assert busy == []
    assert tmp.exists() is (how == "gc-dry-run")


def test_a_build_cleans_its_entrys_leftovers_under_the_lock(tmp_path: Path) -> None:
    entry = Cache(tmp_path).entry("quantized", {"name": "big"})
    mine = leftover(entry, os.getpid())  # alive, but a build holds the lock: nobody else builds it
    with entry.build() as tmp:
        assert tmp is not None
        assert not mine.exists()
    assert entry.ready


# -- 2. lock waits end, with one line naming the holder --------------------------------------------


def test_a_build_that_waits_too_long_names_the_holder(
    tmp_path: Path, hold: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "c"
    builder = hold(BUILD, root)
    cache = Cache(root)
    entry = cache.entry("quantized", {"name": "big"})
    monkeypatch.setattr(cache_module, "NOTICE_AFTER", 0.2)
    with pytest.raises(CacheError) as info, entry.build(timeout=0.6):
        pass
    message = str(info.value)
    assert "\n" not in message
    host = re.escape(socket.gethostname())
    assert re.fullmatch(
        rf"cache entry {re.escape(entry.name)} is locked by pid {builder.pid} on {host}"
        r" since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(building it\);"
        r" waited [01] s \(LLMCHECK_LOCK_TIMEOUT sets how long\);"
        rf" if that process is gone, remove {re.escape(str(entry.lock_path))}",
        message,
    ), message
    notice = capsys.readouterr().err
    assert f"llmcheck: waiting for cache entry {entry.name}, held by pid {builder.pid} on " in notice

    # what cleanup sees meanwhile: a live build, its holder record no entry
    holder_file = entry.lock_path.with_name(entry.lock_path.name + ".holder")
    assert json.loads(holder_file.read_text())["pid"] == builder.pid
    assert cache.clear() == 0
    assert holder_file.exists()
    assert not list(root.rglob("*.holder.lock"))
    assert len(entry.temp_folders()) == 1


def test_every_lock_wait_has_the_default_timeout(
    tmp_path: Path, hold: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCHECK_LOCK_TIMEOUT", "0.3")
    entry = Cache(tmp_path).entry("quantized", {"name": "big"})
    entry.path.parent.mkdir(parents=True)
    hold(HOLD_LOCK, entry.lock_path)
    with pytest.raises(LockBusy, match="is locked by another process"), entry.build():
        pass
    with pytest.raises(LockBusy, match=f"cache entry {entry.name} is locked by"):
        entry.discard()

    store = VerdictStore(tmp_path)
    store.path.parent.mkdir(parents=True)
    hold(HOLD_LOCK, store.path.with_name(store.path.name + ".lock"))
    with pytest.raises(LockBusy, match="the judge's verdict store"):
        store.put("verdicts", "k", True)


def test_the_holder_record_goes_with_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = Cache(tmp_path).entry("quantized", {"name": "big"})
    holder_file = entry.lock_path.with_name(entry.lock_path.name + ".holder")
    with entry.build() as tmp:
        assert tmp is not None
        record = json.loads(holder_file.read_text())
        assert (record["pid"], record["host"]) == (os.getpid(), socket.gethostname())
        assert record["doing"] == "building it"
    assert not holder_file.exists()
    with FileLock(str(entry.lock_path), timeout=0):  # and the lock is free
        pass

    monkeypatch.setenv("LLMCHECK_LOCK_TIMEOUT", "soon")
    with pytest.raises(CacheError, match="LLMCHECK_LOCK_TIMEOUT='soon': expected seconds >= 0"):
        entry.discard()


# -- 3. an xdist worker hands its results over before closing its engines --------------------------

CLOSE_FAILS = """
import pytest
from tests.fake_engine import load_fake

def pytest_llmcheck_make_engine(ref, settings):
    engine = load_fake(ref, settings)

    def close():
        raise RuntimeError("close failed in " + engine.model)

    engine.close = close
    return engine
"""

PY_TESTS = """
import pytest

def test_plain_llm(llm):
    llm.ask("What is the capital?")

@pytest.mark.parametrize("n", [1, 2])
def test_param(llm, n):
    llm.ask(f"count {n}")
"""


def test_xdist_workers_results_reach_the_report_when_close_raises(
    fake: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # workers import tests.fake_engine
    set_answers(fake, a={}, b={})
    fake.makepyfile(test_py=PY_TESTS, conftest=CLOSE_FAILS)
    result = run_checks(fake, "-n", "2", "--llm-report=out", models="fake:a,fake:b")
    result.assert_outcomes(passed=6)
    assert result.ret == pytest.ExitCode.OK
    data = json.loads((fake.path / "out" / "report.json").read_text(encoding="utf-8"))
    assert {m["name"]: len(m["cases"]) for m in data["models"]} == {"a": 3, "b": 3}
    assert {m["name"]: m["loads"] for m in data["models"]} == {"a": 1, "b": 1}
    result.stdout.fnmatch_lines_random([
        "llmcheck: WARNING: closing model 'a' failed: RuntimeError: close failed in a",
        "llmcheck: WARNING: closing model 'b' failed: RuntimeError: close failed in b",
    ])


# -- 4. the report and the gates survive a raising close() or sessionfinish hook ------------------


def test_close_that_raises_costs_a_warning_not_the_report_or_the_gate(fake: pytest.Pytester) -> None:
    setup_project(fake)
    fake.makeconftest(CLOSE_FAILS)
    result = run_gates(fake, TWO_MODELS, "--llm-soft", "--llm-min-pass-rate=0.8", "--llm-report=out")
    result.assert_outcomes(passed=6)  # every test passed: only the gate fails the session
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert len(cases_of(load_report(fake.path / "out"))) == 6
    result.stdout.fnmatch_lines([
        "llmcheck: WARNING: closing model 'alpha' failed: RuntimeError: close failed in alpha",
        "llmcheck: WARNING: closing model 'beta' failed: RuntimeError: close failed in beta",
    ])
    assert "1 llm gate failed" in result.outlines[-1]


@pytest.mark.parametrize("order", ["plain", "tryfirst"])
def test_another_plugins_sessionfinish_that_raises_costs_no_report(fake: pytest.Pytester, order: str) -> None:
    setup_project(fake)
    mark = "@pytest.hookimpl(tryfirst=True)\n" if order == "tryfirst" else ""
    fake.makeconftest(
        CLOSE_FAILS + f"\n{mark}def pytest_sessionfinish():\n    raise RuntimeError('boom')\n"
    )
    result = run_gates(fake, TWO_MODELS, "--llm-soft", "--llm-min-pass-rate=0.8", "--llm-report=out")
    assert "boom" in result.stdout.str() + result.stderr.str()  # pytest's own crash, not hidden
    assert set(cases_of(load_report(fake.path / "out"))) == {
        (model, case) for model in ("alpha", "beta") for case in ("capital", "sum", "test_greet")
    }
