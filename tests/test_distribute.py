"""Spreading a run: xdist workers (one load per model) and ``--llm-shard`` across CI jobs,
and ``llmcheck report merge`` of the shards' reports.

Inner sessions on the fake engine; xdist workers are real processes, so load counts come
from the controller's report.json (each worker's ``loads`` summed), not from
``fake_engine.LOADS`` (which only sees this process).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from pytest_llmcheck.xdist import model_in_nodeid, wants_model_scheduling
from tests.test_checks import REPO, SUITE, run, set_answers

PY_TESTS = """
import pytest

def test_plain_llm(llm):
    llm.ask("What is the capital?")

@pytest.mark.parametrize("n", [1, 2])
def test_param(llm, n):
    llm.ask(f"count {n}")

def test_no_model():
    pass
"""

SCHED_SPY = """
import pytest
from pathlib import Path

@pytest.hookimpl(wrapper=True)
def pytest_xdist_make_scheduler(config, log):
    sched = yield
    Path("scheduler.txt").write_text(type(sched).__name__)
    return sched
"""


@pytest.fixture
def project(fake: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # workers import tests.fake_engine
    set_answers(fake, a={}, b={})
    fake.makefile(".llm.yaml", quiz=SUITE)
    fake.makepyfile(test_py=PY_TESTS, conftest=SCHED_SPY)
    return fake


def report(pytester: pytest.Pytester, folder: str = "out") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((pytester.path / folder / "report.json").read_text(encoding="utf-8"))
    return data


def workers_by_test(result: pytest.RunResult) -> dict[str, str]:
    """nodeid -> gw name, from xdist's ``-v`` lines ``[gw0] [ 50%] PASSED quiz.llm.yaml::q1[a]``."""
    found = {}
    for line in result.outlines:
        m = re.match(r"\[(gw\d+)\] .*?(?:PASSED|FAILED|ERROR|SKIPPED) (\S+)", line)
        if m:
            found[m.group(2)] = m.group(1)
    return found


# -- xdist ------------------------------------------------------------------------------------


def test_xdist_loads_each_model_once_on_one_worker(project: pytest.Pytester) -> None:
    result = run(project, "-n", "2", "-v", "--snapshot-update", "--llm-report=out", models="fake:a,fake:b")
    result.assert_outcomes(passed=11)  # (2 questions + 3 python tests) x 2 models + 1 without a model
    assert (project.path / "scheduler.txt").read_text() == "ModelScheduling"
    loads = {m["name"]: m["loads"] for m in report(project)["models"]}
    assert loads == {"a": 1, "b": 1}  # 2 loads in the whole run, not one per worker per model
    placed = workers_by_test(result)
    assert len(placed) == 11
    per_model = {
        model: {gw for nodeid, gw in placed.items() if model_in_nodeid(nodeid, ["a", "b"]) == model}
        for model in "ab"
    }
    assert all(len(workers) == 1 for workers in per_model.values()), per_model
    assert per_model["a"] != per_model["b"]  # the two models are spread over the two workers


def test_explicit_dist_mode_is_respected(project: pytest.Pytester) -> None:
    result = run(project, "-n", "2", "--dist", "load", "--snapshot-update", models="fake:a,fake:b")
    result.assert_outcomes(passed=11)
    assert (project.path / "scheduler.txt").read_text() == "LoadScheduling"
    result = run(project, "-n", "2", "--dist=loadfile", models="fake:a,fake:b")
    result.assert_outcomes(passed=11)
    assert (project.path / "scheduler.txt").read_text() == "LoadFileScheduling"


def test_dist_in_addopts_counts_as_explicit(project: pytest.Pytester) -> None:
    ini = project.path / "tox.ini"
    ini.write_text(ini.read_text().replace("no:cacheprovider", "no:cacheprovider --dist=loadscope"))
    run(project, "-n", "2", "--snapshot-update", models="fake:a,fake:b").assert_outcomes(passed=11)
    assert (project.path / "scheduler.txt").read_text() == "LoadScopeScheduling"


@pytest.mark.parametrize(
    ("nodeid", "expected"),
    [
        ("quiz.llm.yaml::q1[a]", "a"),
        ("t.py::test_x[a-1]", "a"),
        ("t.py::test_x[1-a]", "a"),
        ("t.py::TestC::test_y[b-c-1-u]", "b-c"),  # the longest name that fits whole parts
        ("t.py::test_x[b-1]", "b"),
        ("t.py::test_x[ab-1]", None),  # a part, not a substring
        ("t.py::test_plain", None),
        ("t.py::test_x[1]", None),
        ("t.py::test_x[a-a]", "a"),
    ],
)
def test_model_in_nodeid(nodeid: str, expected: str | None) -> None:
    assert model_in_nodeid(nodeid, ["a", "b", "b-c"]) == expected


def test_model_scheduling_only_for_an_implicit_load_mode() -> None:
    assert wants_model_scheduling("load", explicit=False)
    assert not wants_model_scheduling("load", explicit=True)
    for mode in ("each", "loadscope", "loadfile", "loadgroup", "worksteal", "no"):
        assert not wants_model_scheduling(mode, explicit=True)
