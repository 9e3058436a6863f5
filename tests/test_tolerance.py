"""Tolerant snapshot matching: exact (default), normalized, similar: 0.9 — per question
(suite ``snapshot:``), per test (``llm_snapshot`` marker) and as the ini default."""

from __future__ import annotations

import json

import pytest

from pytest_llmcheck.checks.tolerance import Tolerance, ToleranceError, parse_tolerance

OLD = "白白喜欢明明，因为明明很聪明，也很善良。"
PUNCT = "白白 喜欢 明明。因为明明很聪明；也很善良！"  # only spacing / punctuation differ
NEAR = "白白喜欢明明，因为明明很聪明，也很好。"  # one word changed
FAR = "明明喜欢白白。"


def test_compare() -> None:
    assert Tolerance().compare(OLD, OLD) == (True, 1.0)
    assert Tolerance().compare(OLD, PUNCT)[0] is False
    assert Tolerance("normalized").compare(OLD, PUNCT) == (True, 1.0)
    assert Tolerance("normalized").compare(OLD, NEAR)[0] is False
    within, score = Tolerance("similar", 0.85).compare(OLD, NEAR)
    assert within
    assert 0.85 <= score < 1
    within, score = Tolerance("similar", 0.85).compare(OLD, FAR)
    assert not within
    assert score < 0.6
    assert Tolerance("similar", 0.9).compare("ＡＢＣ１２３", "ABC123") == (True, 1.0)  # width folded


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("exact", Tolerance()),
        ("normalized", Tolerance("normalized")),
        ("similar: 0.9", Tolerance("similar", 0.9)),
        ("similar:0.85", Tolerance("similar", 0.85)),
        ({"similar": 0.9}, Tolerance("similar", 0.9)),
    ],
)
def test_parse(value: object, expected: Tolerance) -> None:
    assert parse_tolerance(value, "x") == expected


@pytest.mark.parametrize("value", ["fuzzy", "similar: 1.5", {"similar": "high"}, 3, "similar: 0"])
def test_parse_rejects_with_one_line(value: object) -> None:
    with pytest.raises(ToleranceError, match=r"^x: .*allowed: exact, normalized, or similar") as info:
        parse_tolerance(value, "x")
    assert "\n" not in str(info.value)


SUITE = """\
questions:
  - id: exact
    prompt: "p1"
  - id: normalized
    prompt: "p2"
    snapshot: normalized
  - id: similar
    prompt: "p3"
    snapshot: {similar: 0.85}
  - id: far
    prompt: "p4"
    snapshot: "similar: 0.85"
"""


def answers(pytester: pytest.Pytester, table: dict[str, str]) -> None:
    (pytester.path / "fake_answers.json").write_text(json.dumps({"a": table}, ensure_ascii=False), "utf-8")


def snapshots(pytester: pytest.Pytester) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in pytester.path.rglob("__snapshots__/**/*.txt")}


def test_suite_tolerances(fake: pytest.Pytester) -> None:
    fake.makefile(".llm.yaml", riddles=SUITE)
    answers(fake, {"p1": OLD, "p2": OLD, "p3": OLD, "p4": OLD})
    fake.runpytest("--llm-model=fake:a", "--snapshot-update").assert_outcomes(passed=4)
    before = snapshots(fake)
    answers(fake, {"p1": PUNCT, "p2": PUNCT, "p3": NEAR, "p4": FAR})
    result = fake.runpytest("--llm-model=fake:a", "-p", "no:randomly", "--llm-report=out")
    result.assert_outcomes(passed=2, failed=2)
    out = result.stdout.str()
    assert "FAILED riddles.llm.yaml::exact[a]" in out
    assert "FAILED riddles.llm.yaml::far[a]" in out
    assert "(similarity 0.17, tolerance similar: 0.85)" in out  # the far one names its score
    result.stdout.re_match_lines(
        [
            r"\s+normalized\s+PASS.*drifted within tolerance \(1\.00\)",
            r"\s+similar\s+PASS.*drifted within tolerance \(0\.9\d\)",
        ]
    )
    assert snapshots(fake) == before  # within tolerance: not rewritten
    report = json.loads((fake.path / "out/report.json").read_text("utf-8"))
    case = {c["case_id"]: c for c in report["models"][0]["cases"]}["similar"]
    assert case["snapshot"] == "drifted"
    assert 0.9 <= case["snapshot_similarity"] < 1
    assert "drifted within tolerance (0.9" in (fake.path / "out/report.html").read_text("utf-8")
    # --snapshot-update writes the changed ones, still not the drifted ones
    fake.runpytest("--llm-model=fake:a", "--snapshot-update").assert_outcomes(passed=4)
    after = snapshots(fake)
    assert after["normalized[a].txt"] == before["normalized[a].txt"]
    assert after["similar[a].txt"] == before["similar[a].txt"]
    assert after["exact[a].txt"] != before["exact[a].txt"]


def test_marker_and_ini_default(fake: pytest.Pytester) -> None:
    fake.makepyfile(
        test_t="""
        import pytest

        @pytest.mark.llm_snapshot(similar=0.85)
        def test_marker(llm):
            llm.ask("p3")

        @pytest.mark.llm_snapshot
        def test_default(llm):
            llm.ask("p2")

        def test_keyword(llm):
            llm.ask("p1", snapshot="normalized")
    """
    )
    answers(fake, {"p1": OLD, "p2": OLD, "p3": OLD})
    fake.runpytest("--llm-model=fake:a", "--snapshot-update").assert_outcomes(passed=3)
    answers(fake, {"p1": PUNCT, "p2": PUNCT, "p3": NEAR})
    result = fake.runpytest("--llm-model=fake:a")
    result.assert_outcomes(passed=2, failed=1)  # test_default is exact by default
    assert "FAILED test_t.py::test_default[a]" in result.stdout.str()
    result = fake.runpytest("--llm-model=fake:a", "--llm-snapshot=normalized")
    result.assert_outcomes(passed=3)
    bad = fake.runpytest("--llm-model=fake:a", "--llm-snapshot=fuzzy")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(
        ["*--llm-snapshot: invalid snapshot tolerance 'fuzzy'; allowed: exact, normalized*"]
    )


def test_bad_marker_tolerance_fails_the_test_in_one_line(fake: pytest.Pytester) -> None:
    fake.makepyfile(
        test_t="""
        import pytest

        @pytest.mark.llm_snapshot("roughly")
        def test_x(llm):
            llm.ask("p1")
    """
    )
    result = fake.runpytest("--llm-model=fake:a")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*llm_snapshot(): invalid snapshot tolerance 'roughly'; allowed: exact*"])
