"""``judge:`` expectations: mechanics on the fake engine (verdict from yes/no probabilities,
Chinese rubrics, the verdict cache, one model in memory, misuse) and one real judge run on
SmolLM2."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_llmcheck.checks.judge import Judge, VerdictStore, judge_prompt, language, yes_probability
from tests import fake_engine

SUITE = """\
questions:
  - id: capital
    prompt: "What is the capital of France?"
    expect: {judge: "The answer names the capital of France."}
  - id: wrong
    prompt: "Name the capital of France, please."
    expect: {judge: ["The answer names the capital of France.", "The answer is polite."]}
  - id: zh
    prompt: "白白喜欢谁？"
    expect: {judge: "回答说白白喜欢明明。"}
"""
ANSWERS = {
    "a": {"What is the capital of France?": "Paris.", "Name the capital of France, please.": "Lyon.",
          "白白喜欢谁？": "白白喜欢明明。"},
    "judge": {"__judge__": {"Answer: Paris.": 0.9, "回答：白白喜欢明明。": 0.8}},
}


@pytest.fixture
def project(fake: pytest.Pytester) -> pytest.Pytester:
    fake_engine.JUDGED.clear()
    fake.makefile(".llm.yaml", riddles=SUITE)
    (fake.path / "fake_answers.json").write_text(json.dumps(ANSWERS, ensure_ascii=False), encoding="utf-8")
    return fake


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("--llm-model=fake:a", "-p", "no:randomly", "-p", "no:syrupy", *args)


def test_verdicts_come_from_yes_no_probabilities(project: pytest.Pytester) -> None:
    result = run(project, "--llm-judge=fake:judge", "--llm-report=out", "--junitxml=j.xml")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "LLM answer failed expectation: judge "
        "'The answer names the capital of France.': P(yes)=0.10 < 0.5 (judge judge) (and 1 more)",
    ])
    # one model under test and one judge, each loaded once; the judge stays beside the model
    assert fake_engine.LOADS == ["a", "judge"]
    assert len(fake_engine.JUDGED) == 4  # one forward pass per (answer, rubric)
    zh_prompt = next(p for p in fake_engine.JUDGED if "白白" in p)
    assert "只回答“是”或“否”" in zh_prompt
    assert "标准：回答说白白喜欢明明。" in zh_prompt
    report = json.loads((project.path / "out/report.json").read_text("utf-8"))
    cases = {c["case_id"]: c for c in report["models"][0]["cases"]}
    assert cases["capital"]["judgements"] == [{
        "rubric": "The answer names the capital of France.", "probability": 0.9, "passed": True,
        "judge": "judge", "cached": False}]
    assert cases["zh"]["judgements"][0]["probability"] == 0.8
    from pytest_llmcheck.reporting.report import validate_json

    validate_json(report)
    props = {(p.get("name"), p.get("value")) for p in ET.parse(project.path / "j.xml").iter("property")}
    assert ("llm_judge_probability", "0.9000") in props
    assert ("llm_judge_rubric", "The answer names the capital of France.") in props


def test_verdicts_are_cached_per_machine(project: pytest.Pytester) -> None:
    run(project, "--llm-judge=fake:judge").assert_outcomes(passed=2, failed=1)
    fake_engine.JUDGED.clear()
    fake_engine.LOADS.clear()
    result = run(project, "--llm-judge=fake:judge", "--llm-report=out")
    result.assert_outcomes(passed=2, failed=1)
    assert fake_engine.JUDGED == []
    assert fake_engine.LOADS == ["a"]  # every verdict cached: the judge is not even loaded
    report = json.loads((project.path / "out/report.json").read_text("utf-8"))
    assert all(j["cached"] for c in report["models"][0]["cases"] for j in c["judgements"])
    # a changed answer is a new key: judged again
    answers = {**ANSWERS, "a": {**ANSWERS["a"], "What is the capital of France?": "Paris, of course."}}
    (project.path / "fake_answers.json").write_text(json.dumps(answers, ensure_ascii=False), encoding="utf-8")
    run(project, "--llm-judge=fake:judge").assert_outcomes(passed=1, failed=2)
    assert len(fake_engine.JUDGED) == 1


def test_a_model_judging_itself_is_not_loaded_twice(project: pytest.Pytester) -> None:
    run(project, "--llm-judge=fake:a").assert_outcomes(failed=3)  # a's table has no __judge__: P(yes)=0.1
    assert fake_engine.LOADS == ["a"]
    assert all(line.startswith("a: ") for line in fake_engine.JUDGED)


def test_suite_judge_model_and_precedence(project: pytest.Pytester) -> None:
    (project.path / "riddles.llm.yaml").write_text("judge_model: fake:judge\n" + SUITE, encoding="utf-8")
    run(project).assert_outcomes(passed=2, failed=1)
    assert fake_engine.LOADS == ["a", "judge"]
    fake_engine.LOADS.clear()
    run(project, "--llm-judge=fake:other").assert_outcomes(failed=3)  # the command line wins
    assert fake_engine.LOADS == ["a", "other"]


@pytest.mark.parametrize(("args", "line"), [
    ((), "judge: expectations need a judge model: pass --llm-judge=MODEL "
         "(or ini llmcheck_judge, or judge_model: in the suite)"),
    (("--llm-judge=fake:broken",), "judge model 'broken' failed to load: CorruptWeights: "
                                   "fake weights are corrupt"),
    (("--llm-judge=fake:plain",), "judge model 'plain': its engine 'fake' cannot grade "
                                  "(it has no next_token_probs)*"),
])
def test_misuse_is_one_line(project: pytest.Pytester, args: tuple[str, ...], line: str) -> None:
    result = run(project, *args)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines([line])
    assert "Traceback" not in result.stdout.str()


def test_bad_judge_reference_is_a_usage_error(project: pytest.Pytester) -> None:
    result = run(project, "--llm-judge=no-such-model")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm-judge: judge model: unknown model 'no-such-model'*"])


def test_language_and_prompt() -> None:
    assert language("The answer is polite.") == "en"
    assert language("回答很礼貌。") == "zh"
    prompt, yes, no = judge_prompt("Q?", "A.", "回答很礼貌。")
    assert "问题：Q?" in prompt
    assert yes[0] == "是"
    assert no[0] == "否"


class _Probs:
    def __init__(self, p: dict[str, float]) -> None:
        self.p = p

    def next_token_probs(self, prompt: str, *, system: str | None, candidates: object) -> dict[str, float]:
        return self.p


def test_yes_probability_is_normalized_over_yes_and_no() -> None:
    # "Sure" takes most of the mass; only the yes and no tokens count
    assert yes_probability(_Probs({"Yes": 0.1, "yes": 0.1, "No": 0.05}), "q", "a", "r") == pytest.approx(0.8)
    assert yes_probability(_Probs({}), "q", "a", "r") == 0.0


@pytest.mark.slow
def test_smollm2_judges_an_english_rubric(tmp_path: Path) -> None:
    """The real model decides a rubric it can: is the answer a greeting?"""
    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.config.settings import Settings
    from pytest_llmcheck.engines.registry import EngineRegistry

    engines = EngineRegistry()
    ref = resolve("smollm2", engines=engines)
    settings = Settings(cache_dir=tmp_path / "cache", numerics="native")  # torch here runs natively
    judge = Judge("smollm2", {"spec": ref.spec}, lambda: engines.load(ref, settings), VerdictStore(tmp_path))
    try:
        # A bare "Hello!" sits on the threshold for this 135M judge: P(yes) 0.49 at INT4 on an
        # AMD EPYC (AVX512 BF16 VNNI), above 0.5 on the Intel AMX machines; this one it decides.
        hello = judge.grade("Say hello.", "Hello! How are you today?", "The answer is a greeting.")
        news = judge.grade("Say hello.", "The stock market fell today.", "The answer is a greeting.")
        again = judge.grade("Say hello.", "Hello! How are you today?", "The answer is a greeting.")
    finally:
        judge.close()
    assert hello.passed, (hello, news)
    assert not news.passed, (hello, news)
    assert hello.probability > news.probability + 0.1
    assert again.cached
    assert again.probability == hello.probability
    assert judge.loads == 1
    assert judge.asked == 2
