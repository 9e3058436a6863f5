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

from pytest_llmcheck.distribution.xdist import model_in_nodeid, wants_model_scheduling
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


# -- --llm-shard ------------------------------------------------------------------------------


def passed(result: pytest.RunResult) -> set[str]:
    return {line.split()[1] for line in result.outlines if line.startswith("PASSED ")}


def test_shards_split_the_models_and_run_every_test_once(project: pytest.Pytester) -> None:
    set_answers(project, a={}, b={}, c={})
    models = "fake:a,fake:b,fake:c"
    everything = passed(run(project, "--snapshot-update", models=models))
    assert len(everything) == 16
    parts = []
    for k in (1, 2):
        result = run(project, f"--llm-shard={k}/2", f"--llm-report=s{k}", models=models)
        assert result.ret == pytest.ExitCode.OK
        parts.append(passed(result))
        result.stdout.fnmatch_lines([f"*{len(everything) - len(parts[-1])} deselected*"])
        header = {1: "llmcheck: shard 1/2 runs models a, c", 2: "llmcheck: shard 2/2 runs models b"}[k]
        assert header in result.outlines
    assert parts[0] | parts[1] == everything
    assert not parts[0] & parts[1]
    ran_models = [{m["name"] for m in report(project, f"s{k}")["models"]} for k in (1, 2)]
    assert ran_models == [{"a", "c"}, {"b"}]  # each model loaded by one job only
    assert "test_py.py::test_no_model" in parts[0] | parts[1]


def test_one_model_is_split_by_its_tests(project: pytest.Pytester) -> None:
    everything = passed(run(project, "--snapshot-update", models="fake:a"))
    parts = [passed(run(project, f"--llm-shard={k}/3", models="fake:a")) for k in (1, 2, 3)]
    assert [len(p) for p in parts] == [2, 2, 2]  # 6 tests, sorted by node id, round robin
    assert set().union(*parts) == everything
    assert sum(map(len, parts)) == len(everything)


def test_shard_applies_after_k(project: pytest.Pytester) -> None:
    parts = [
        passed(run(project, "-k", "q1 or q2", f"--llm-shard={k}/2", "--snapshot-update", models="fake:a"))
        for k in (1, 2)
    ]
    assert parts == [{"quiz.llm.yaml::q1[a]"}, {"quiz.llm.yaml::q2[a]"}]


@pytest.mark.parametrize("value", ["0/2", "3/2", "2", "a/b", "1/0", "-1/2", "1/2/3"])
def test_bad_shard_is_one_usage_line(project: pytest.Pytester, value: str) -> None:
    result = run(project, f"--llm-shard={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.stderr.lines if line.strip()]
    assert lines == [
        f"ERROR: --llm-shard: invalid value {value!r}; expected K/N with whole numbers 1 <= K <= N (e.g. 2/4)"
    ]


def test_shards_keep_the_other_parts_snapshots(fake: pytest.Pytester) -> None:
    from tests import test_snapshots as snaps

    fake.makefile(".llm.yaml", riddles=snaps.SUITE)
    fake.makepyfile(test_py=snaps.PY_TEST)
    snaps.set_answers(fake)
    snaps.run(fake, "--snapshot-update").assert_outcomes(passed=8)
    before = snaps.snapshot_files(fake)
    assert len(before) == 8
    for models, shards in (("fake:a,fake:b", 2), ("fake:a", 3)):  # a cut by models, then by tests
        for k in range(1, shards + 1):
            for update in ((), ("--snapshot-update",)):
                result = snaps.run(fake, f"--llm-shard={k}/{shards}", *update, models=models)
                assert result.ret == pytest.ExitCode.OK, result.stdout.str()
                snaps.assert_nothing_unused(result)
                assert snaps.snapshot_files(fake) == before


# -- llmcheck report merge --------------------------------------------------------------------


def test_report_merge_builds_one_report_from_the_shards(
    project: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_llmcheck.cli.commands import main
    from pytest_llmcheck.reporting.report import validate_json

    set_answers(project, a={}, b={"What is the capital?": "Berlin"}, c={})
    models = "fake:a,fake:b,fake:c"
    run(project, "--snapshot-update", "--llm-report=full", models=models)
    for k in (1, 2):
        run(project, f"--llm-shard={k}/2", f"--llm-report=s{k}", models=models)
    capsys.readouterr()
    out = project.path / "merged"
    assert main(["report", "merge", str(project.path / "s1"), str(project.path / "s2"), "-o", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"merged 2 reports: 3 models, 15 results -> {out}/report.html")
    merged, full = report(project, "merged"), report(project, "full")
    validate_json(merged)

    def cases(data: dict[str, Any]) -> dict[tuple[str, str], tuple[str, str]]:
        return {
            (m["name"], c["case_id"]): (c["verdict"], c["answer"]) for m in data["models"] for c in m["cases"]
        }

    assert cases(merged) == cases(full)
    assert {m["name"]: m["loads"] for m in merged["models"]} == {"a": 1, "b": 1, "c": 1}
    assert {m["name"]: m["pass_rate"] for m in merged["models"]} == {
        m["name"]: m["pass_rate"] for m in full["models"]
    }
    assert (out / "report.md").read_text(encoding="utf-8").count("q1") >= 1
    assert "Berlin" in (out / "report.html").read_text(encoding="utf-8")


def test_report_merge_of_one_model_split_by_tests(project: pytest.Pytester) -> None:
    from pytest_llmcheck.reporting.merge import merge_reports

    for k in (1, 2):
        run(project, f"--llm-shard={k}/2", f"--llm-report=s{k}", "--snapshot-update", models="fake:a")
    merged = merge_reports([project.path / "s1", project.path / "s2"])
    assert set(merged.models) == {"a"}
    assert merged.models["a"].loads == 2  # each job loaded it
    assert len(merged.models["a"].cases) == 5
    # the same folder twice holds the same results: taken once
    assert len(merge_reports([project.path / "s1", project.path / "s1"]).models["a"].cases) == 2


def test_report_merge_conflict_and_bad_input_are_one_line(
    project: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_llmcheck.cli.commands import main

    run(project, "--llm-report=one", models="fake:a")
    set_answers(project, a={"What is the capital?": "Berlin"})
    run(project, "--llm-report=two", models="fake:a")
    one, two = project.path / "one", project.path / "two"
    capsys.readouterr()
    assert main(["report", "merge", str(one), str(two), "-o", str(project.path / "m")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"llmcheck: error: model 'a' question 'q1' has different results in {one / 'report.json'} and "
        f"{two / 'report.json'}; each question must come from one shard\n"
    )
    assert not (project.path / "m").exists()

    assert main(["report", "merge", str(project.path / "nothing"), "-o", str(project.path / "m")]) == 2
    assert capsys.readouterr().err == (
        f"llmcheck: error: no report.json in {project.path / 'nothing'} (give the folders of --llm-report)\n"
    )
    (project.path / "bad.json").write_text('{"tool": "other"}')
    assert main(["report", "merge", str(project.path / "bad.json"), "-o", str(project.path / "m")]) == 2
    bad = project.path / "bad.json"
    assert capsys.readouterr().err == f"llmcheck: error: {bad} is not a pytest-llmcheck report\n"
    assert main(["report", "merge", str(one)]) == 2
    assert "-o/--output" in capsys.readouterr().err
