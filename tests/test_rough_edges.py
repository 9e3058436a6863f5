"""Rough edges a new user hit, each pinned by a test (issue: fast and steady on shared CI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmcheck.config.settings import Settings
from pytest_llmcheck.reporting.report import to_html, to_markdown
from pytest_llmcheck.reporting.results import SessionResults
from pytest_llmcheck.run.session import LlmcheckSession
from tests.test_checks import set_answers


def test_report_lists_every_failed_check(fake: pytest.Pytester) -> None:
    set_answers(fake, a={"capital?": "Lyon"})
    fake.makepyfile(
        test_t="""
        import pytest

        @pytest.mark.llm_expect(contains="Paris", regex=r"\\d+")
        def test_two_checks(llm):
            llm.ask("capital?")
        """
    )
    result = fake.runpytest("--llm-model=fake:a", "--llm-report=out")
    result.assert_outcomes(failed=1)
    case = json.loads((fake.path / "out" / "report.json").read_text())["models"][0]["cases"][0]
    assert case["failed_expectation"] == r"contains 'Paris' not found; regex /\d+/ did not match"
    html = (fake.path / "out" / "report.html").read_text()
    assert r"regex /\d+/ did not match" in html  # one backslash, as the user wrote it


def test_a_model_that_never_loaded_shows_no_made_up_latency(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_t="def test_one(llm):\n    llm.ask('hi')\n\ndef test_two(llm):\n    llm.ask('ho')\n")
    result = fake.runpytest("--llm-model=fake:broken")
    result.assert_outcomes(errors=2)
    result.stdout.re_match_lines([r"  test_one +ERROR +- +- +- +none$", r"  pass rate 0% \(0/2\)$"])
    assert "0.0 tok/s" not in result.stdout.str()


def test_cached_weights_show_as_cached_not_zero_seconds() -> None:
    results = SessionResults()
    model = results.model("m")
    model.loads, model.from_cache, model.quantize_seconds = 1, True, 0.0
    results.case("m", "q", nodeid="t::q[m]", prompt="p").verdict = "pass"
    md = to_markdown(results)
    assert "| m | – | 0.00 | cached |" in md
    assert '<td class="num">cached</td>' in to_html(results)


@pytest.mark.parametrize(("quant", "name"), [("int4", "tiny-llama"), ("int4-a8", "tiny-llama-int4a8"),
                                             ("bf16", "tiny-llama-bf16"), ("none", "tiny-llama-fp32")])
def test_other_quantizations_are_other_models_with_their_own_snapshots(
    tiny_model: Path, quant: str, name: str
) -> None:
    settings = Settings(models=(str(tiny_model),), quant=quant, models_given=True)
    session = LlmcheckSession(settings, lambda ref: None, tiny_model.parent)  # type: ignore[arg-type,return-value]
    assert [ref.name for ref in session.resolve_models()] == [name]


def test_chart_labels_of_long_ids_stay_distinct() -> None:
    from pytest_llmcheck.reporting.report import chart_labels

    ids = [
        "examples/python_api/test_riddles.py::test_riddle[riddle-1]",
        "examples/python_api/test_riddles.py::test_riddle[riddle-2]",
        "examples/riddles/riddles.llm.yaml::riddle-1",
        "short-id",
    ]
    labels = chart_labels(ids)
    assert len(set(labels)) == len(ids)
    assert labels[0] == "examples/py…le[riddle-1]"
    assert labels[3] == "short-id"
    assert all(len(label) <= 24 for label in labels)
    # ids alike at both ends still get distinct labels
    alike = ["a" * 20 + str(i) + "b" * 20 for i in range(3)]
    assert chart_labels(alike) == [f"{'a' * 11}…{'b' * 12} #{i}" for i in (1, 2, 3)]
