"""Threads that fit the machine, and CPU-time latency that holds on a busy runner."""

from __future__ import annotations

import json
import os

import pytest

from pytest_llmcheck.config import settings as settings_mod
from pytest_llmcheck.config.settings import default_threads, oversubscribed
from tests.test_checks import set_answers


@pytest.mark.parametrize(
    ("cpus", "workers", "expected"),
    [(8, None, 8), (8, "2", 4), (2, "2", 1), (2, "4", 1), (3, "2", 1), (16, "3", 5), (4, "bogus", 4)],
)
def test_default_threads_share_the_usable_cpus_among_xdist_workers(
    monkeypatch: pytest.MonkeyPatch, cpus: int, workers: str | None, expected: int
) -> None:
    monkeypatch.setattr(settings_mod, "usable_cpus", lambda: cpus)
    if workers is None:
        monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    else:
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", workers)
    assert default_threads() == expected


def test_usable_cpus_follow_the_affinity_mask() -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    assert settings_mod.usable_cpus() == len(os.sched_getaffinity(0))


def test_threads_default_and_explicit_value_reach_the_engine(
    fake: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings_mod, "usable_cpus", lambda: 6)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    fake.makepyfile(
        test_t="""
        import json
        def test_threads(llm):
            with open("threads.json", "w") as fh:
                json.dump(llm.session.generation.threads, fh)
        """
    )
    fake.runpytest("--llm-model=fake:a").assert_outcomes(passed=1)
    assert json.loads((fake.path / "threads.json").read_text()) == 6
    fake.runpytest("--llm-model=fake:a", "--llm-threads=3").assert_outcomes(passed=1)
    assert json.loads((fake.path / "threads.json").read_text()) == 3
    result = fake.runpytest("--llm-model=fake:a", "--llm-threads=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm-threads: 0 is too small; expected a whole number >= 1*"])


def test_a_cpu_clock_benchmark_timer_at_several_threads_gets_a_note(
    fake: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # no busy-machine warning beside it
    fake.makepyfile(test_t="def test_one(llm):\n    llm.ask('hi')\n")
    note = (
        "llmcheck: --benchmark-timer=time.process_time at 2 threads: CPU time also counts OpenMP spin-waits"
    )
    result = fake.runpytest("--llm-model=fake:a", "--llm-threads=2", "--benchmark-timer=time.process_time")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([note + "*; --llm-threads=1 keeps a CPU-time gate steady"])
    for args in (["--llm-threads=1", "--benchmark-timer=time.process_time"], ["--llm-threads=2"]):
        result = fake.runpytest("--llm-model=fake:a", *args)
        result.assert_outcomes(passed=1)
        assert "spin-waits" not in result.stdout.str(), args


def test_a_busy_machine_is_named_in_a_warning(fake: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_mod, "usable_cpus", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 3.0, 1.0))
    assert oversubscribed() is not None
    fake.makepyfile(test_t="def test_one(llm):\n    llm.ask('hi')\n")
    result = fake.runpytest("--llm-model=fake:a")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["llmcheck: WARNING: the load average (5.0) exceeds the 2 CPU(s)*max_cpu_seconds*"]
    )
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    result = fake.runpytest("--llm-model=fake:a", "--llm-threads=1")
    result.stdout.fnmatch_lines(["llmcheck: WARNING: the load average (5.0)*"])
    assert "spin-waits" not in result.stdout.str()
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    result = fake.runpytest("--llm-model=fake:a", "--llm-threads=2")
    result.stdout.fnmatch_lines(
        ["*; at 2 threads CPU time also counts OpenMP spin-waits, and answers are slower than at one: "
         "use --llm-threads=1 (GOMP_SPINCOUNT=3000 *"]
    )
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")  # spins harder: still named
    assert "spin-waits" in fake.runpytest("--llm-model=fake:a", "--llm-threads=2").stdout.str()
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert "spin-waits" not in fake.runpytest("--llm-model=fake:a", "--llm-threads=2").stdout.str()
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "3000")
    assert "spin-waits" not in fake.runpytest("--llm-model=fake:a", "--llm-threads=2").stdout.str()
    monkeypatch.delenv("GOMP_SPINCOUNT")
    # xdist's controller prints the header: its workers run 1 thread each on the 2 CPUs
    result = fake.runpytest("--llm-model=fake:a", "-n", "2")
    result.stdout.fnmatch_lines(["llmcheck: WARNING: the load average (5.0)*"])
    assert "spin-waits" not in result.stdout.str()
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    assert "load average" not in fake.runpytest("--llm-model=fake:a").stdout.str()


def test_cpu_time_is_recorded_apart_from_wall_time(fake: pytest.Pytester) -> None:
    """An answer that waits (like one starved by a busy neighbour) takes wall time, not CPU time."""
    set_answers(fake, a={"slow": {"text": "Paris", "sleep": 0.3, "seconds": 0.3}})
    fake.makepyfile(
        test_t="""
        import pytest

        @pytest.mark.llm_expect(max_cpu_seconds=0.2)
        def test_cpu_limit_holds(llm):
            llm.ask("slow")

        @pytest.mark.llm_expect(max_seconds=0.2)
        def test_wall_limit_fails(llm):
            llm.ask("slow")
        """
    )
    result = fake.runpytest(
        "--llm-model=fake:a", "--llm-report=out", "--benchmark-timer=time.process_time",
        "--benchmark-json=bench.json",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*max_seconds 0.2 exceeded: took 0.3*"])
    report = json.loads((fake.path / "out" / "report.json").read_text())
    cases = {c["case_id"]: c for c in report["models"][0]["cases"]}
    case = cases["test_cpu_limit_holds"]
    assert case["cpu_seconds"][0] < 0.1 <= 0.3 <= case["seconds"][0] + 1e-3
    assert report["models"][0]["median_cpu_seconds"] < 0.1
    # pytest-benchmark's own timer set to CPU time: the latency gate compares CPU with CPU
    bench = {b["name"]: b for b in json.loads((fake.path / "bench.json").read_text())["benchmarks"]}
    entry = bench["test_cpu_limit_holds[a]"]
    assert entry["stats"]["median"] < 0.1
    assert entry["extra_info"]["cpu_seconds"] < 0.1


def test_a_model_that_computes_elsewhere_has_no_cpu_time_of_pytests(fake: pytest.Pytester) -> None:
    """A server's or a worker's answer: pytest's own CPU time (waiting) is not reported as its CPU
    time, pytest-benchmark's CPU timer is named as timing the wrong process, and the threads,
    which are not ours, stay out of the snapshot's fingerprint."""
    set_answers(fake, remote={"slow": {"text": "Paris", "sleep": 0.2, "seconds": 0.2}})
    fake.makepyfile(test_t="def test_remote(llm, snapshot):\n    llm.ask('slow', snapshot=True)\n")
    result = fake.runpytest(
        "--llm-model=fake:remote", "--llm-report=out", "--benchmark-timer=time.process_time",
        "--snapshot-update", "-p", "no:randomly",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*--benchmark-timer=time.process_time times pytest's own process, but model 'remote' computes "
        "in another*",
        "  test_remote  PASS     0.20     -  *",
    ])
    (model,) = json.loads((fake.path / "out" / "report.json").read_text())["models"]
    assert model["cases"][0]["cpu_seconds"] == []
    assert model["tokens_per_cpu_second"] is None
    (snap,) = (fake.path / "__snapshots__").rglob("*.txt")
    header = snap.read_text(encoding="utf-8").split("--- answer ---")[0]
    assert '"max_new_tokens"' in header
    assert '"threads"' not in header
    # an in-process model keeps both
    set_answers(fake, a={"slow": "Paris"})
    result = fake.runpytest("--llm-model=fake:a", "--benchmark-timer=time.process_time", "--snapshot-update")
    assert "times pytest's own process" not in result.stdout.str()
    (mine,) = (fake.path / "__snapshots__").rglob("*[[]a].txt")
    assert '"threads"' in mine.read_text(encoding="utf-8")
