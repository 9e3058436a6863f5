"""A right answer that merely has no snapshot yet: its test fails (record it with
--snapshot-update or ``llmcheck review``), but it is not a wrong answer. The reports say
"snapshot missing" and --llm-min-pass-rate counts the answer by its expectations."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.reporting.report import validate_json

SUITE = """\
questions:
  - id: capital
    prompt: "capital?"
    expect: {contains: Paris}
"""


def project(fake: pytest.Pytester, answer: str = "Paris") -> pytest.Pytester:
    fake.makefile(".json", fake_answers=json.dumps({"a": {"capital?": answer}}))
    fake.makefile(".llm.yaml", qa=SUITE)
    return fake


def report_case(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    data: dict[str, Any] = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    validate_json(data)
    model = data["models"][0]
    return model, model["cases"][0]


def test_a_passing_answer_without_snapshot_is_reported_missing_and_counts_as_passed(
    fake: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project(fake)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(fake.path / "step.md"))
    result = fake.runpytest("--llm-model=fake:a", "--llm-min-pass-rate=1.0", "--llm-report=out",
                            "--junitxml=junit.xml")
    result.assert_outcomes(failed=1)  # still failed: nothing to compare the next run with
    result.stdout.fnmatch_lines(["*no answer snapshot __snapshots__/qa.llm/capital[[]a].txt yet; *"])
    assert not [ln for ln in result.outlines if "llmcheck gate" in ln]  # the pass rate holds
    result.stdout.re_match_lines([
        r"^\s+capital\s+PASS\s.*missing \(none recorded yet, pending review\)$",
        r"^\s+pass rate 100% \(1/1\).*; 1 answer snapshot\(s\) missing$",
    ])

    model, case = report_case(fake.path / "out")
    assert (case["verdict"], case["snapshot"], model["pass_rate"]) == ("pass", "missing", 1.0)
    assert case["pending"]["snapshot"] == "__snapshots__/qa.llm/capital[a].txt"
    md = (fake.path / "out" / "report.md").read_text(encoding="utf-8")
    assert "tok/s · snapshot missing (none recorded yet) · pending review**" in md
    step = (fake.path / "step.md").read_text(encoding="utf-8")
    assert "## Failures, changed and missing snapshots" in step
    assert "| ✅ pass · snapshot missing (none recorded yet) · pending review | – | Paris |" in step
    html = (fake.path / "out" / "report.html").read_text(encoding="utf-8")
    badge = '<span class="badge snap-missing">snapshot missing (none recorded yet) · pending review</span>'
    assert badge in html
    assert '<tr data-case="capital" class="has-problem">' in html
    assert "1 answer snapshot(s) missing" in html
    junit = ET.parse(fake.path / "junit.xml").getroot()
    props = {p.get("name"): p.get("value") for p in junit.iter("property")}
    assert props["llm_verdict"] == "pass"

    # recorded, the same answer passes and the snapshot is "new", then "unchanged"
    fake.runpytest("--llm-model=fake:a", "--snapshot-update", "--llm-report=out").assert_outcomes(passed=1)
    assert report_case(fake.path / "out")[1]["snapshot"] == "new"
    result = fake.runpytest("--llm-model=fake:a", "--llm-min-pass-rate=1.0", "--llm-report=out")
    assert result.ret == pytest.ExitCode.OK
    assert report_case(fake.path / "out")[1]["snapshot"] == "unchanged"


def test_a_wrong_answer_without_snapshot_still_fails_the_pass_rate(fake: pytest.Pytester) -> None:
    project(fake, answer="London")
    result = fake.runpytest("--llm-model=fake:a", "--llm-min-pass-rate=1.0", "--llm-report=out")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*contains 'Paris' not found*",
        "*no answer snapshot __snapshots__/qa.llm/capital[[]a].txt yet; *",
        "*llmcheck gate --llm-min-pass-rate=1 failed for model 'a': 0% (0/1 questions passed)*",
    ])
    model, case = report_case(fake.path / "out")
    assert (case["verdict"], case["snapshot"], model["pass_rate"]) == ("fail", "missing", 0.0)


def test_a_failing_assert_after_a_recorded_ask_still_fails_the_answer(fake: pytest.Pytester) -> None:
    """Only the missing-snapshot failure keeps the verdict: any other failure of the test is its."""
    fake.makefile(".json", fake_answers=json.dumps({"a": {"capital?": "Paris"}}))
    fake.makepyfile(test_py="""
        import pytest

        @pytest.mark.llm_snapshot
        def test_capital(llm):
            try:
                llm.ask("capital?", expect={"contains": "Paris"})
            except pytest.fail.Exception:
                pass
            assert False, "checked something else"
        """)
    result = fake.runpytest("--llm-model=fake:a", "--llm-min-pass-rate=1.0", "--llm-report=out")
    result.assert_outcomes(failed=1)
    assert [ln for ln in result.outlines if "llmcheck gate" in ln]
    case = report_case(fake.path / "out")[1]
    assert (case["verdict"], case["snapshot"]) == ("fail", "missing")
    assert case["failed_expectation"].startswith("AssertionError: checked something else")
