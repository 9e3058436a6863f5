"""Replaying recorded answers (``--llm-replay``) and ``llmcheck rescore``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_llmcheck.checks.judge import Judge, VerdictStore
from pytest_llmcheck.cli import commands as cli
from pytest_llmcheck.cli.rescore import confusion, questions_of, report_lines, rescore
from pytest_llmcheck.reporting.recordings import RecordingError, load_recordings
from tests import fake_engine

RIDDLES = Path(__file__).resolve().parent.parent / "examples" / "riddles"
SUITE = """\
questions:
  - id: capital
    prompt: "Capital of France?"
    expect: {contains: "Paris"}
  - id: sum
    prompt: "Two plus two?"
"""


@pytest.fixture
def recorded(fake: pytest.Pytester) -> pytest.Pytester:
    """A session of model ``a`` with its report in out/."""
    fake.makefile(".llm.yaml", riddles=SUITE)
    capital = {"text": "Paris, France.", "seconds": 3.5, "cpu_seconds": 1.25}
    table = {"a": {"Capital of France?": capital, "Two plus two?": "4"}}
    (fake.path / "fake_answers.json").write_text(json.dumps(table), encoding="utf-8")
    fake.runpytest("--llm-model=fake:a", "--llm-report=out", "-p", "no:syrupy").assert_outcomes(passed=2)
    fake_engine.GENERATES.clear()
    fake_engine.LOADS.clear()
    return fake


def test_replay_rechecks_edited_expectations_without_the_model(recorded: pytest.Pytester) -> None:
    suite = SUITE.replace('{contains: "Paris"}', '{contains: "Lyon", max_seconds: 2, max_cpu_seconds: 1}')
    suite += '  - id: new\n    prompt: "A question nobody asked"\n'
    (recorded.path / "riddles.llm.yaml").write_text(suite, encoding="utf-8")
    result = recorded.runpytest(
        "--llm-model=replay:a", "--llm-replay=out/report.json", "-p", "no:syrupy", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "LLM answer failed expectation: contains 'Lyon' not found (and 2 more)",
            "*max_seconds 2 exceeded: took 3.50s",  # the recorded latency
            "*max_cpu_seconds 1 exceeded: used 1.25s of CPU",  # and its CPU time
            "model 'a': replay: out/report.json has no answer of model 'a' to the prompt "
            "'A question nobody asked'",
        ]
    )
    assert "capital[a]" in result.stdout.str()  # the test ids keep the recorded model's name
    assert fake_engine.GENERATES == []
    assert fake_engine.LOADS == []


def test_replay_from_the_report_folder_and_from_snapshots(recorded: pytest.Pytester) -> None:
    result = recorded.runpytest(
        "--llm-model=replay:a", "--llm-replay=out", "-p", "no:syrupy", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=2)
    # a replayed answer computed nothing here: its CPU time is the recorded one, not a lookup's
    result.stdout.fnmatch_lines(
        ["  question  verdict  seconds  cpu s  tok/s*", "  capital   PASS     3.50     1.25  *"]
    )
    recorded.runpytest("--llm-model=fake:a", "--snapshot-update").assert_outcomes(passed=2)
    shutil.rmtree(recorded.path / "out")
    result = recorded.runpytest("--llm-model=replay:a", "--llm-replay=.", "-p", "no:randomly")
    result.assert_outcomes(passed=2)  # the snapshots' own answers: unchanged


def test_replay_of_an_unknown_model_or_source_is_one_line(recorded: pytest.Pytester) -> None:
    result = recorded.runpytest("--llm-model=replay:zz", "--llm-replay=out/report.json", "-p", "no:syrupy")
    result.assert_outcomes(errors=2)  # the model does not load: its tests error with one line
    result.stdout.fnmatch_lines(["*replay: out/report.json has no answers of model 'zz'; recorded models: a"])
    result = recorded.runpytest("--llm-model=replay:a", "--llm-replay=nothing.json", "-p", "no:syrupy")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*nothing.json: no such file or folder*"])


def test_replay_the_seed_answers_through_the_riddle_suite(fake: pytest.Pytester) -> None:
    shutil.copytree(RIDDLES.parent, fake.path / "examples", ignore=shutil.ignore_patterns("__snapshots__"))
    result = fake.runpytest(
        "examples/riddles",
        "--llm-model=replay:chatglm3",
        "--llm-replay=examples/riddles/seed_answers.yaml",
        "-p",
        "no:syrupy",
        "-p",
        "no:randomly",
    )
    # chatglm3: riddle-2 passes, riddles 3-5 fail as the person said; riddle-1 was not recorded
    result.assert_outcomes(passed=1, failed=4)
    result.stdout.fnmatch_lines(
        ["model 'chatglm3': replay: examples/riddles/seed_answers.yaml has no answer of model 'chatglm3' "
         "to the prompt*"]
    )
    assert "FAILED examples/riddles/riddles.llm.yaml::riddle-2" not in result.stdout.str()


def test_rescore_the_seed_answers(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["rescore", str(RIDDLES / "seed_answers.yaml")]) == 0
    out = capsys.readouterr().out
    assert "rescore: 11 recorded answers" in out
    assert "agreement with the person: 10/11 (91%)" in out
    lines = out.splitlines()
    row = next(line for line in lines if line.split()[:2] == ["riddle-2", "qwen"])
    assert row.split()[2:5] == ["pass", "fail", "NO"]
    kinds = {
        line.split()[0]: line.split()[1:3]
        for line in lines
        if line.startswith("  ") and len(line.split()) == 7
    }
    assert kinds["all"] == ["11", "10/11"]
    assert kinds["any_of"] == ["5", "4/5"]


def test_rescore_with_a_judge_grades_rubrics(tmp_path: Path) -> None:
    suite = tmp_path / "s.llm.yaml"
    suite.write_text(
        "questions:\n  - id: q\n    prompt: 'Say hello.'\n    expect: {judge: 'The answer is a greeting.'}\n",
        encoding="utf-8",
    )
    answers = tmp_path / "answers.yaml"
    answers.write_text(
        "suite: s.llm.yaml\nanswers:\n"
        "  - {question: q, model: m, answer: 'Hello!', person: pass}\n"
        "  - {question: q, model: m, answer: 'Go away.', person: fail}\n"
        "  - {question: q, model: m, answer: 'Hi there', person: pass}\n",
        encoding="utf-8",
    )
    recorded = load_recordings(answers)
    questions = questions_of(recorded.suites)
    without = rescore(recorded, questions, judge=None)
    assert all(s.ungraded == ["judge"] for s in without)
    engine = fake_engine.FakeEngine("judge", {"__judge__": {"Answer: Hello!": 0.8, "Answer: Go away.": 0.2}})
    judge = Judge("judge", {"spec": "fake:judge"}, lambda: engine, VerdictStore(tmp_path / "cache"))
    scored = rescore(recorded, questions, judge)
    assert [s.verdict for s in scored] == ["pass", "fail", "fail"]  # "Hi there" gets the default 0.1
    table = confusion(scored)["judge"]
    assert (table.pp, table.pf, table.fp, table.ff) == (1, 1, 0, 1)
    text = "\n".join(report_lines(recorded, scored, recorded.suites, judge))
    assert "agreement with the person: 2/3 (67%)" in text
    assert "P(yes)=0.80" in text
    assert "judge judge: 3 verdicts computed, 0 from the cache" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("answers: [{model: m}]", "answers[0]: 'answer' must be a non-empty string"),
        (
            "answers: [{model: m, answer: x, person: maybe}]",
            "answers[0]: person must be pass or fail, got 'maybe'",
        ),
        ("answers: [{model: m, answer: x, colour: red}]", "answers[0]: unknown key 'colour'"),
        ("just text", "expected a mapping with an 'answers' list"),
    ],
)
def test_bad_recorded_answers_are_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(RecordingError, match=None) as info:
        load_recordings(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_rescore_needs_a_suite_for_a_report(
    recorded: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["rescore", str(recorded.path / "out")]) == 2
    assert "names no suite; pass --suite PATH" in capsys.readouterr().err
    assert (
        cli.main(["rescore", str(recorded.path / "out"), "--suite", str(recorded.path / "riddles.llm.yaml")])
        == 0
    )
    out = capsys.readouterr().out
    assert "rescore: 2 recorded answers" in out
    assert "agreement" not in out
