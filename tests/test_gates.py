"""Reports and CI gates on the fake engine: --llm-report, --llm-soft, --llm-min-pass-rate,
--llm-repeat, JUnit properties, GITHUB_STEP_SUMMARY and models that fail to load."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.reporting.report import validate_json
from tests.conftest import write_fake_ini

# alpha answers everything right; beta gets the capital wrong (pass rate 2/3).
ANSWERS = {
    "alpha": {"capital?": "Paris", "sum?": "4", "greet": "hello there"},
    "beta": {"capital?": "London", "sum?": "4", "greet": "hello there"},
}
SUITE = """\
questions:
  - id: capital
    prompt: "capital?"
    expect: {contains: Paris}
  - id: sum
    prompt: "sum?"
    expect: {contains: "4"}
"""
PY_TESTS = """
    def test_greet(llm):
        llm.ask("greet", expect={"contains": "hello"})
"""
TWO_MODELS = "--llm-model=fake:alpha,fake:beta"
QUESTIONS = {"capital", "sum", "test_greet"}


def setup_project(fake: pytest.Pytester, answers: dict[str, Any] = ANSWERS, suite: str = SUITE) -> None:
    fake.makefile(".json", fake_answers=json.dumps(answers))
    fake.makefile(".llm.yaml", qa=suite)
    fake.makepyfile(test_py=PY_TESTS)


def run(fake: pytest.Pytester, *args: str) -> pytest.RunResult:
    # Suite questions check answer snapshots; record them so only expectations decide.
    return fake.runpytest("--snapshot-update", *args)


def load_report(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    validate_json(data)
    return data


def cases_of(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["name"], c["case_id"]): c for m in data["models"] for c in m["cases"]}


def junit_properties(path: Path) -> dict[str, dict[str, str]]:
    """Test name -> its <property> name/value pairs."""
    root = ET.parse(path).getroot()
    return {
        tc.get("name", ""): {p.get("name", ""): p.get("value", "") for p in tc.iter("property")}
        for tc in root.iter("testcase")
    }


def gate_lines(result: pytest.RunResult) -> list[str]:
    return [ln for ln in result.outlines if "llmcheck gate" in ln]


# -- report -------------------------------------------------------------------------


def test_report_written_for_two_models(fake: pytest.Pytester) -> None:
    setup_project(fake)
    result = run(fake, TWO_MODELS, "--llm-report=out")
    result.assert_outcomes(passed=5, failed=1)
    out = fake.path / "out"
    assert {p.name for p in out.iterdir()} == {"report.html", "report.md", "report.json"}

    data = load_report(out)
    assert [m["name"] for m in data["models"]] == ["alpha", "beta"]
    assert set(data["questions"]) == QUESTIONS
    cases = cases_of(data)
    assert {cid for (_, cid) in cases} == QUESTIONS
    assert len(cases) == 6  # every question on every model
    assert cases["beta", "capital"]["verdict"] == "fail"
    assert "contains 'Paris' not found" in cases["beta", "capital"]["failed_expectation"]
    assert cases["beta", "capital"]["answer"] == "London"
    assert all(c["verdict"] == "pass" for (m, cid), c in cases.items() if (m, cid) != ("beta", "capital"))
    assert cases["alpha", "capital"]["failed_expectation"] is None
    rates = {m["name"]: m["pass_rate"] for m in data["models"]}
    assert rates["alpha"] == 1.0
    assert rates["beta"] == pytest.approx(2 / 3)

    md = (out / "report.md").read_text(encoding="utf-8")
    assert "contains 'Paris' not found" in md
    assert "| alpha |" in md
    assert "| beta |" in md
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "London" in html
    assert "beta" in html


def test_report_folder_from_ini(fake: pytest.Pytester) -> None:
    write_fake_ini(fake, "llmcheck_report = from-ini")
    setup_project(fake)
    result = run(fake, "--llm-model=fake:alpha")
    result.assert_outcomes(passed=3)
    data = load_report(fake.path / "from-ini")
    assert [m["name"] for m in data["models"]] == ["alpha"]
    assert (fake.path / "from-ini" / "report.html").is_file()


def test_no_report_without_the_option(fake: pytest.Pytester) -> None:
    setup_project(fake)
    run(fake, "--llm-model=fake:alpha").assert_outcomes(passed=3)
    assert not list(fake.path.rglob("report.json"))


# -- soft mode ----------------------------------------------------------------------


def test_soft_mode_records_without_failing(fake: pytest.Pytester) -> None:
    setup_project(fake)
    result = run(fake, TWO_MODELS, "--llm-soft", "--llm-report=out", "--junitxml=out.xml")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=6)
    result.stdout.re_match_lines([r"^\s+capital\s+FAIL \(soft\)\s"])
    assert len([ln for ln in result.outlines if "FAIL (soft)" in ln]) == 1

    case = cases_of(load_report(fake.path / "out"))["beta", "capital"]
    assert (case["verdict"], case["soft"]) == ("fail", True)
    assert "contains 'Paris' not found" in case["failed_expectation"]

    props = junit_properties(fake.path / "out.xml")
    assert props["capital[beta]"]["llm_verdict"] == "fail"
    assert props["capital[alpha]"]["llm_verdict"] == "pass"


def test_strict_by_default(fake: pytest.Pytester) -> None:
    setup_project(fake)
    result = run(fake, TWO_MODELS, "--llm-report=out")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=5, failed=1)
    assert not [ln for ln in result.outlines if "(soft)" in ln]
    result.stdout.fnmatch_lines(["FAILED qa.llm.yaml::capital[[]beta[]] - Failed: LLM answer failed*"])
    assert cases_of(load_report(fake.path / "out"))["beta", "capital"]["soft"] is False


def test_soft_from_ini(fake: pytest.Pytester) -> None:
    write_fake_ini(fake, "llmcheck_soft = true")
    setup_project(fake)
    result = run(fake, "--llm-model=fake:beta")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.re_match_lines([r"^\s+capital\s+FAIL \(soft\)"])


# -- min pass rate gate -------------------------------------------------------------


def test_min_pass_rate_gate_fails_the_model_below(fake: pytest.Pytester) -> None:
    setup_project(fake)
    result = run(fake, TWO_MODELS, "--llm-soft", "--llm-min-pass-rate=0.8")
    result.assert_outcomes(passed=6)  # every test passed: only the gate fails the session
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    lines = gate_lines(result)
    assert len(lines) == 1, lines  # alpha (100%) holds the gate
    assert "--llm-min-pass-rate=0.8" in lines[0]
    assert "'beta'" in lines[0]
    assert "67%" in lines[0]
    assert "2/3" in lines[0]
    assert "alpha" not in lines[0]
    last = result.outlines[-1]
    assert "6 passed" in last
    assert "1 llm gate failed" in last


def test_min_pass_rate_gate_holds_at_and_above(fake: pytest.Pytester) -> None:
    answers = {"beta": {**ANSWERS["beta"], "sum?": "5"}}
    suite = SUITE + '  - id: sum2\n    prompt: "sum?"\n    expect: {contains: "5"}\n'
    setup_project(fake, answers, suite)
    # beta: capital fail, sum fail, sum2 pass, test_greet pass -> exactly 50%
    result = run(fake, "--llm-model=fake:beta", "--llm-soft", "--llm-min-pass-rate=0.5")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*pass rate 50% (2/4)*"])
    assert not gate_lines(result)
    assert "llm gate failed" not in result.outlines[-1]

    above = run(fake, "--llm-model=fake:beta", "--llm-soft", "--llm-min-pass-rate=0.51")
    assert above.ret == pytest.ExitCode.TESTS_FAILED
    assert len(gate_lines(above)) == 1


def test_gate_and_strict_failures_together(fake: pytest.Pytester) -> None:
    # Without --llm-soft the failed test already gives exit 1; the gate line is still shown.
    setup_project(fake)
    result = run(fake, TWO_MODELS, "--llm-min-pass-rate=0.8")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert len(gate_lines(result)) == 1
    last = result.outlines[-1]
    assert "1 failed" in last
    assert "1 llm gate failed" in last


def test_min_pass_rate_is_validated(fake: pytest.Pytester) -> None:
    setup_project(fake)
    result = run(fake, "--llm-model=fake:alpha", "--llm-min-pass-rate=80")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--llm-min-pass-rate" in result.stderr.str()
    assert "'80'" in result.stderr.str()


def test_last_line_and_exit_code_name_the_gate(fake: pytest.Pytester) -> None:
    setup_project(fake)
    result = run(fake, TWO_MODELS, "--llm-soft", "--llm-min-pass-rate=0.9")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # The gate's own line sits right above pytest's last line, between "!" markers.
    gate = result.outlines[-2]
    assert gate.startswith("!")
    assert "--llm-min-pass-rate=0.9" in gate
    assert "'beta'" in gate
    assert result.outlines[-1].startswith("=")
    assert "llm gate failed" in result.outlines[-1]


# -- repeats ------------------------------------------------------------------------

REPEAT_SUITE = """\
questions:
  - id: good
    prompt: "good?"
    min_passes: 4
    expect: {contains: Paris}
  - id: bad
    prompt: "bad?"
    min_passes: 4
    expect: {contains: Paris}
"""
REPEAT_ANSWERS = {
    "alpha": {
        "good?": {"choices": ["Paris", "Paris, France", "It is Paris"]},
        "bad?": {"choices": ["London", "Rome", "Berlin"]},
        "greet": {"choices": ["hello", "hello!"]},
    }
}
# An engine that answers a prompt's choices in order, so "4 of 5" is exact, not random.
CYCLING_CONFTEST = """
    import itertools
    import json

    import pytest

    from tests.fake_engine import FakeEngine

    SEQUENCES = {"four?": ["Paris"] * 4 + ["London"], "three?": ["Paris"] * 3 + ["London"] * 2}
    CALLS = []  # every generate() call, written to calls.json at the end


    class Cycling(FakeEngine):
        def __init__(self):
            super().__init__("cyc", {})
            self.iters = {p: itertools.cycle(s) for p, s in SEQUENCES.items()}

        def generate(self, prompt, *, system, config):
            CALLS.append(prompt)
            self.answers = {prompt: next(self.iters[prompt])}
            return super().generate(prompt, system=system, config=config)


    @pytest.hookimpl(tryfirst=True)
    def pytest_llmcheck_make_engine(ref, settings):
        return Cycling() if ref.name == "cyc" else None


    def pytest_sessionfinish(session):
        with open("calls.json", "w") as fh:
            json.dump(CALLS, fh)
"""


def test_repeat_judges_every_answer(fake: pytest.Pytester) -> None:
    setup_project(fake, REPEAT_ANSWERS, REPEAT_SUITE)
    result = run(fake, "--llm-model=fake:alpha", "--llm-repeat=5", "--llm-temperature=0.8", "--llm-report=o")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.re_match_lines(
        [r"^\s+good\s+PASS 5/5\s", r"^\s+bad\s+FAIL 0/5\s", r"^\s+test_greet\s+PASS 5/5\s"]
    )
    result.stdout.fnmatch_lines(["*0 of 5 answers met the expectations, needed 4*"])
    cases = cases_of(load_report(fake.path / "o"))
    for cid in ("good", "bad", "test_greet"):
        case = cases["alpha", cid]
        assert len(case["answers"]) == len(case["seconds"]) == len(case["tokens_per_second"]) == 5
    assert set(cases["alpha", "good"]["answers"]) <= {"Paris", "Paris, France", "It is Paris"}
    assert (cases["alpha", "good"]["passes"], cases["alpha", "good"]["required_passes"]) == (5, 4)
    assert (cases["alpha", "bad"]["passes"], cases["alpha", "bad"]["required_passes"]) == (0, 4)
    assert cases["alpha", "test_greet"]["required_passes"] == 5  # Python tests: every answer


def test_repeat_min_passes_threshold(fake: pytest.Pytester) -> None:
    fake.makeconftest(CYCLING_CONFTEST)
    suite = """\
questions:
  - id: four
    prompt: "four?"
    min_passes: 4
    expect: {contains: Paris}
  - id: three
    prompt: "three?"
    min_passes: 4
    expect: {contains: Paris}
"""
    fake.makefile(".llm.yaml", qa=suite)
    result = run(fake, "--llm-model=fake:cyc", "--llm-repeat=5", "--llm-temperature=0.8", "--llm-report=out")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.re_match_lines([r"^\s+four\s+PASS 4/5\s", r"^\s+three\s+FAIL 3/5\s"])
    result.stdout.fnmatch_lines(["*3 of 5 answers met the expectations, needed 4*"])
    # Exactly 5 generations per question (pytest-benchmark times them, adds none).
    calls = json.loads((fake.path / "calls.json").read_text(encoding="utf-8"))
    assert calls == ["four?"] * 5 + ["three?"] * 5
    cases = cases_of(load_report(fake.path / "out"))
    assert [len(cases["cyc", cid]["answers"]) for cid in ("four", "three")] == [5, 5]
    assert cases["cyc", "four"]["answers"] == ["Paris"] * 4 + ["London"]


def test_repeat_soft_counts_in_gate(fake: pytest.Pytester) -> None:
    setup_project(fake, REPEAT_ANSWERS, REPEAT_SUITE)
    result = run(
        fake, "--llm-model=fake:alpha", "--llm-repeat=4", "--llm-temperature=0.5", "--llm-soft",
        "--llm-min-pass-rate=0.7",
    )  # --llm-repeat=4: min_passes 4 must be reachable (tests/test_inputs.py)
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.re_match_lines([r"^\s+bad\s+FAIL \(soft\) 0/4\s"])
    assert "'alpha'" in gate_lines(result)[0]
    assert "2/3" in gate_lines(result)[0]


def test_repeat_needs_temperature(fake: pytest.Pytester) -> None:
    setup_project(fake)
    result = run(fake, "--llm-model=fake:alpha", "--llm-repeat=3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm-repeat=3 needs sampled decoding*--llm-temperature*"])


# -- JUnit XML ----------------------------------------------------------------------


def test_junit_properties(fake: pytest.Pytester) -> None:
    setup_project(fake)
    run(fake, TWO_MODELS, "--junitxml=out.xml")
    props = junit_properties(fake.path / "out.xml")
    llm_tests = {name: p for name, p in props.items() if "[" in name}
    assert set(llm_tests) == {f"{q}[{m}]" for q in QUESTIONS for m in ("alpha", "beta")}
    for name, p in llm_tests.items():
        assert set(p) >= {"llm_model", "llm_verdict", "llm_seconds", "llm_tokens_per_second"}, name
        assert p["llm_model"] == name.split("[")[1].rstrip("]")
        assert float(p["llm_seconds"]) == pytest.approx(0.001, abs=1e-3)
        assert float(p["llm_tokens_per_second"]) > 0
    assert llm_tests["capital[beta]"]["llm_verdict"] == "fail"
    assert llm_tests["capital[alpha]"]["llm_verdict"] == "pass"


# -- GitHub step summary ------------------------------------------------------------


def test_github_step_summary_appended(fake: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = fake.path / "step_summary.md"
    summary.write_text("## earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    setup_project(fake)
    run(fake, TWO_MODELS, "--llm-soft")
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("## earlier step\n")
    assert "# pytest-llmcheck report" in text
    assert "| alpha |" in text
    assert "| beta |" in text
    assert "fail (soft)" in text
    assert "contains 'Paris' not found" in text
    # only the failing cell is listed (beta on capital), the five passing ones are counted
    rows = [line for line in text.splitlines() if line.startswith("| **")]
    assert len(rows) == 1, text
    for part in ("**capital**", "| beta |", "London"):
        assert part in rows[0]
    assert "5 passing cells left out; the full report is in the report folder" in text

    run(fake, "--llm-model=fake:alpha")  # a second session appends again
    assert summary.read_text(encoding="utf-8").count("# pytest-llmcheck report") == 2


def test_no_step_summary_without_models(fake: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = fake.path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    fake.makepyfile("def test_plain():\n    pass\n")
    fake.runpytest().assert_outcomes(passed=1)
    assert not summary.exists()


# -- models that fail to load -------------------------------------------------------


def test_broken_model_shows_as_errors(fake: pytest.Pytester) -> None:
    setup_project(fake)
    result = run(fake, "--llm-model=fake:alpha,fake:broken", "--llm-report=out", "--llm-min-pass-rate=0.5")
    result.assert_outcomes(passed=3, errors=3)
    data = load_report(fake.path / "out")
    assert [m["name"] for m in data["models"]] == ["alpha", "broken"]
    broken = {c["case_id"]: c for c in data["models"][1]["cases"]}
    assert set(broken) == QUESTIONS
    for case in broken.values():
        assert case["verdict"] == "error"
        assert "failed to load" in case["failed_expectation"]
        assert "fake weights are corrupt" in case["failed_expectation"]
    # A model that answered nothing has no passing answers: not a perfect pass rate.
    assert data["models"][1]["pass_rate"] == 0.0
    result.stdout.re_match_lines([r"^\s+capital\s+ERROR\s"])
    result.stdout.fnmatch_lines(["broken*: not loaded"])
    lines = gate_lines(result)
    assert len(lines) == 1
    assert "'broken'" in lines[0]
    assert "0/3" in lines[0]
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_soft_failure_kept_when_the_test_asks_again(fake: pytest.Pytester) -> None:
    fake.makefile(".json", fake_answers=json.dumps(ANSWERS))
    fake.makepyfile(
        """
        def test_two_asks(llm):
            llm.ask("capital?", expect={"contains": "Paris"})
            llm.ask("sum?", expect={"contains": "4"})
        """
    )
    result = run(fake, "--llm-model=fake:beta", "--llm-soft", "--llm-report=out", "--junitxml=out.xml")
    assert result.ret == pytest.ExitCode.OK
    case = cases_of(load_report(fake.path / "out"))["beta", "test_two_asks"]
    assert (case["verdict"], case["soft"]) == ("fail", True)  # the passing 2nd ask does not hide it
    assert "contains 'Paris' not found" in case["failed_expectation"]
    assert case["answers"] == ["London", "4"]
    assert (case["passes"], case["required_passes"]) == (1, 2)
    result.stdout.re_match_lines([r"^\s+test_two_asks\s+FAIL \(soft\) 1/2\s"])


def test_junit_verdict_follows_a_later_assert(fake: pytest.Pytester) -> None:
    fake.makepyfile("def test_then_assert(llm):\n    llm.ask('hi')\n    assert False, 'checked later'\n")
    run(fake, "--llm-model=fake:alpha", "--junitxml=out.xml").assert_outcomes(failed=1)
    assert junit_properties(fake.path / "out.xml")["test_then_assert[alpha]"]["llm_verdict"] == "fail"


def test_broken_model_in_junit_and_report_source(fake: pytest.Pytester) -> None:
    setup_project(fake)
    run(fake, "--llm-model=fake:broken", "--junitxml=out.xml", "--llm-report=out")
    props = junit_properties(fake.path / "out.xml")["test_greet[broken]"]
    assert (props["llm_model"], props["llm_verdict"]) == ("broken", "error")
    assert load_report(fake.path / "out")["models"][0]["source"] == "fake:broken"
