"""Checks at the pytest level: ``llm_expect`` markers, suites (zero code and from Python),
pytest-benchmark, xdist and the llmcheck terminal summary.

Every test runs an inner pytest session on the fake engine (``fake`` fixture) and asserts
on outcomes, exit codes and output lines. Unit tests of the matching rules and of the
suite format live in test_expect.py and test_suite.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests import fake_engine

REPO = Path(__file__).resolve().parent.parent

ANSWERS: dict[str, Any] = {
    "What is the capital?": "Paris is the capital",
    "slow q": {"text": "ok", "seconds": 3.5},
    "riddle": "白白 喜欢 明明。ＡＢＣ１２３！",
}


def set_answers(pytester: pytest.Pytester, **per_model: dict[str, Any]) -> None:
    table = {model: {**ANSWERS, **answers} for model, answers in per_model.items()} or {"a": ANSWERS}
    (pytester.path / "fake_answers.json").write_text(json.dumps(table, ensure_ascii=False), encoding="utf-8")


def run(pytester: pytest.Pytester, *args: str, models: str = "fake:a") -> pytest.RunResult:
    fake_engine.GENERATES.clear()
    return pytester.runpytest("--llm-model", models, "-p", "no:randomly", "-rA", *args)


def section(result: pytest.RunResult, name: str) -> list[str]:
    """The lines of the failure/error section headed ``_____ name _____``."""
    lines = result.outlines
    heads = [i for i, line in enumerate(lines) if re.fullmatch(rf"_+ {re.escape(name)} _+", line)]
    assert heads, f"no section for {name}:\n" + "\n".join(lines)
    body: list[str] = []
    for line in lines[heads[0] + 1 :]:
        if re.fullmatch(r"(_{3,} .* _{3,}|[=-]{3,}.*)", line):
            break
        body.append(line)
    return [line for line in body if line.strip()]


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """nodeid -> PASSED/FAILED/ERROR, from the ``-rA`` short test summary."""
    found: dict[str, str] = {}
    for line in result.outlines:
        m = re.match(r"(PASSED|FAILED|ERROR) (\S+)", line)
        if m:
            found[m.group(2)] = m.group(1)
    return found


def ran(result: pytest.RunResult, verdict: str = "PASSED") -> list[str]:
    return [nodeid for nodeid, v in outcomes(result).items() if v == verdict]


def outcome(result: pytest.RunResult, nodeid: str) -> str:
    return outcomes(result)[nodeid]


# -- 1. llm_expect, each kind, pass and fail -----------------------------------------

KINDS = [
    # (name, marker kwargs, prompt, failure line or None for pass)
    ("contains_ok", "contains='Paris'", "What is the capital?", None),
    ("contains_bad", "contains='Berlin'", "What is the capital?", "contains 'Berlin' not found"),
    ("any_of_ok", "any_of=['Berlin', 'Paris']", "What is the capital?", None),
    (
        "any_of_bad",
        "any_of=['Berlin', 'Rome']",
        "What is the capital?",
        "any_of ['Berlin', 'Rome']: none found",
    ),
    ("all_of_ok", "all_of=['Paris', 'capital']", "What is the capital?", None),
    (
        "all_of_bad",
        "all_of=['Paris', 'Rome']",
        "What is the capital?",
        "all_of ['Paris', 'Rome']: missing 'Rome'",
    ),
    ("not_contains_ok", "not_contains='London'", "What is the capital?", None),
    ("not_contains_bad", "not_contains='paris'", "What is the capital?", "not_contains 'paris' found"),
    ("regex_ok", r"regex=r'^Paris\b'", "What is the capital?", None),
    ("regex_bad", r"regex=r'\d+'", "What is the capital?", r"regex /\d+/ did not match"),
    ("max_seconds_ok", "max_seconds=5", "slow q", None),
    ("max_seconds_bad", "max_seconds=3", "slow q", "max_seconds 3 exceeded: took 3.50s"),
    ("max_new_tokens_ok", "max_new_tokens=4", "What is the capital?", None),
    ("max_new_tokens_bad", "max_new_tokens=3", "What is the capital?", "max_new_tokens 3 exceeded: 4 tokens"),
    ("cjk_ok", "all_of=['白白喜欢明明', 'abc123'], not_contains='白白不喜欢'", "riddle", None),
    ("cjk_punct_ok", "contains='白白，喜欢 明明！'", "riddle", None),
    ("case_default_ok", "contains='PARIS'", "What is the capital?", None),
    (
        "case_sensitive_bad",
        "contains='paris', ignore_case=False",
        "What is the capital?",
        "contains 'paris' not found",
    ),
    ("case_sensitive_ok", "contains='Paris', ignore_case=False", "What is the capital?", None),
]


@pytest.fixture
def kinds_result(fake: pytest.Pytester) -> pytest.RunResult:
    set_answers(fake)
    body = ["import pytest\n"]
    for name, kwargs, prompt, _ in KINDS:
        body.append(f"@pytest.mark.llm_expect({kwargs})\ndef test_{name}(llm):\n    llm.ask({prompt!r})\n")
    fake.makepyfile(test_kinds="\n".join(body))
    return run(fake)


def test_each_expectation_kind_passes_and_fails(kinds_result: pytest.RunResult) -> None:
    bad = [k for k in KINDS if k[3] is not None]
    kinds_result.assert_outcomes(passed=len(KINDS) - len(bad), failed=len(bad))
    assert kinds_result.ret == pytest.ExitCode.TESTS_FAILED
    for name, _, _prompt, failure in KINDS:
        assert outcome(kinds_result, f"test_kinds.py::test_{name}[a]") == (
            "PASSED" if failure is None else "FAILED"
        )
        if failure is not None:
            lines = section(kinds_result, f"test_{name}[a]")
            assert lines[0] == f"LLM answer failed expectation: {failure}", lines


def test_failed_expectation_shows_answer_without_traceback(kinds_result: pytest.RunResult) -> None:
    lines = section(kinds_result, "test_all_of_bad[a]")
    assert lines == [
        "LLM answer failed expectation: all_of ['Paris', 'Rome']: missing 'Rome'",
        "  - all_of ['Paris', 'Rome']: missing 'Rome'",
        "answer:",
        "    Paris is the capital",
    ]
    out = kinds_result.stdout.str()
    assert "Traceback" not in out
    assert "pytest_llmcheck" not in out
    assert "case.py" not in out
    kinds_result.stdout.fnmatch_lines(
        ["FAILED test_kinds.py::test_contains_bad[[]a[]] - Failed: LLM answer*"]
    )


def test_several_failures_are_counted_in_the_first_line(fake: pytest.Pytester) -> None:
    set_answers(fake)
    fake.makepyfile(
        """
        import pytest

        @pytest.mark.llm_expect(contains="Berlin", max_new_tokens=1)
        def test_two(llm):
            llm.ask("What is the capital?")
        """
    )
    result = run(fake)
    result.assert_outcomes(failed=1)
    assert section(result, "test_two[a]")[:3] == [
        "LLM answer failed expectation: contains 'Berlin' not found (and 1 more)",
        "  - contains 'Berlin' not found",
        "  - max_new_tokens 1 exceeded: 4 tokens",
    ]


# -- 2. marker validation and merging ---------------------------------------------------

ALLOWED = (
    "allowed: all_of, any_of, contains, ignore_case, judge, max_cpu_seconds, max_new_tokens, max_seconds, "
    "not_contains, regex"
)
BAD_MARKERS = [
    ("unknown", "bogus=1", f"unknown expectation 'bogus' in llm_expect(); {ALLOWED}"),
    ("typo", "contain='Paris'", f"unknown expectation 'contain' in llm_expect(); {ALLOWED}"),
    (
        "not_str",
        "contains=5",
        "llm_expect(contains=...) must be a non-empty string or a non-empty list of strings, got 5",
    ),
    (
        "seconds_str",
        "max_seconds='fast'",
        "llm_expect(max_seconds=...) must be a positive number, got 'fast'",
    ),
    ("tokens_zero", "max_new_tokens=0", "llm_expect(max_new_tokens=...) must be a positive integer, got 0"),
    ("case_str", "ignore_case='no'", "llm_expect(ignore_case=...) must be true or false, got 'no'"),
    ("bad_regex", "regex='('", "llm_expect(regex=...) invalid regular expression '(': *"),
    (
        "positional",
        "'Paris'",
        "llm_expect() takes keyword arguments only (e.g. contains='Paris'), got ('Paris',)",
    ),
]


@pytest.fixture
def bad_markers_result(fake: pytest.Pytester) -> pytest.RunResult:
    set_answers(fake)
    body = ["import pytest\n"]
    for name, args, _ in BAD_MARKERS:
        body.append(
            f"@pytest.mark.llm_expect({args})\ndef test_{name}(llm):\n    llm.ask('What is the capital?')\n"
        )
    fake.makepyfile(test_bad="\n".join(body))
    return run(fake)


def test_bad_marker_errors_the_test_before_the_model_loads(bad_markers_result: pytest.RunResult) -> None:
    bad_markers_result.assert_outcomes(errors=len(BAD_MARKERS))
    assert fake_engine.LOADS == []  # a typo is reported without waiting for a model to load
    for name, _, line in BAD_MARKERS:
        first = section(bad_markers_result, f"ERROR at setup of test_{name}[a]")[0]
        assert re.fullmatch(re.escape(line).replace(r"\*", ".*"), first), (first, line)
    assert "Traceback" not in bad_markers_result.stdout.str()
    assert fake_engine.GENERATES == []  # nothing was generated for an invalid test


def test_bad_marker_error_is_one_line(bad_markers_result: pytest.RunResult) -> None:
    for name, _, _ in BAD_MARKERS:
        assert len(section(bad_markers_result, f"ERROR at setup of test_{name}[a]")) == 1, name
    assert "During handling" not in bad_markers_result.stdout.str()


def test_module_and_function_markers_both_apply_closest_first(fake: pytest.Pytester) -> None:
    set_answers(
        fake, a={"london": "Paris not London", "berlin": "Berlin", "slow": {"text": "Paris", "seconds": 2}}
    )
    fake.makepyfile(
        test_merge="""
        import pytest

        pytestmark = pytest.mark.llm_expect(contains="Paris", max_seconds=10, ignore_case=False)

        @pytest.mark.llm_expect(not_contains="London")
        def test_function_marker(llm):
            llm.ask("london")

        @pytest.mark.llm_expect(not_contains="London")
        def test_module_marker(llm):
            llm.ask("berlin")

        @pytest.mark.llm_expect(max_seconds=1)
        def test_stricter_limit(llm):
            llm.ask("slow")

        def test_module_limit_alone(llm):
            llm.ask("slow")

        @pytest.mark.llm_expect(contains="PARIS", ignore_case=True)
        def test_closest_ignore_case_wins(llm):
            llm.ask("What is the capital?")

        @pytest.mark.llm_expect(contains="PARIS")
        def test_module_ignore_case(llm):
            llm.ask("What is the capital?")
        """
    )
    result = run(fake)
    result.assert_outcomes(passed=2, failed=4)
    assert (
        section(result, "test_function_marker[a]")[0]
        == "LLM answer failed expectation: not_contains 'London' found"
    )
    assert (
        section(result, "test_module_marker[a]")[0]
        == "LLM answer failed expectation: contains 'Paris' not found"
    )
    assert section(result, "test_stricter_limit[a]")[0] == (
        "LLM answer failed expectation: max_seconds 1 exceeded: took 2.00s"
    )
    assert outcome(result, "test_merge.py::test_module_limit_alone[a]") == "PASSED"
    assert outcome(result, "test_merge.py::test_closest_ignore_case_wins[a]") == "PASSED"
    assert section(result, "test_module_ignore_case[a]")[0] == (
        "LLM answer failed expectation: contains 'PARIS' not found"
    )


def test_class_marker_applies(fake: pytest.Pytester) -> None:
    set_answers(fake)
    fake.makepyfile(
        """
        import pytest

        @pytest.mark.llm_expect(contains="Rome")
        class TestCapital:
            def test_it(self, llm):
                llm.ask("What is the capital?")
        """
    )
    result = run(fake)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["LLM answer failed expectation: contains 'Rome' not found"])


# -- 3. --strict-markers -------------------------------------------------------------------


def test_strict_markers_accepts_the_plugin_markers(fake: pytest.Pytester) -> None:
    set_answers(fake)
    fake.makefile(".llm.yaml", qs="questions: [{id: q1, prompt: 'What is the capital?'}]\n")
    fake.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.llm_expect(contains="Paris")

        @pytest.mark.llm_snapshot
        @pytest.mark.llm_expect(not_contains="London")
        def test_marked(llm):
            llm.ask("What is the capital?")

        @pytest.mark.llm_suite("qs.llm.yaml")
        def test_suite(llm, llm_question):
            llm.ask(llm_question)
        """
    )
    result = run(fake, "--strict-markers", "--snapshot-update")
    result.assert_outcomes(passed=3)
    assert "not found in `markers`" not in result.stdout.str()
    # the control: --strict-markers is really on
    fake.makepyfile(test_other="import pytest\n@pytest.mark.llm_typo\ndef test_x(): pass\n")
    result = run(fake, "--strict-markers", "--snapshot-update")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*'llm_typo' not found in `markers`*"])


# -- 4. zero-code suites ---------------------------------------------------------------------

SUITE = """\
expect: {not_contains: London}
questions:
  - id: q1
    prompt: "What is the capital?"
    expect: {contains: Paris}
    tags: [geo, easy]
  - id: q2
    prompt: "slow q"
    expect: {max_seconds: 5}
    tags: slow
"""


def test_suite_file_collects_one_item_per_question_and_model(fake: pytest.Pytester) -> None:
    set_answers(fake, a={}, b={"What is the capital?": "Berlin"})
    fake.makefile(".llm.yaml", quiz=SUITE)
    result = fake.runpytest("--llm-model", "fake:a,fake:b", "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "quiz.llm.yaml::q1[[]a[]]",
            "quiz.llm.yaml::q2[[]a[]]",
            "quiz.llm.yaml::q1[[]b[]]",
            "quiz.llm.yaml::q2[[]b[]]",
        ]
    )
    assert result.ret == pytest.ExitCode.OK

    result = run(fake, "--snapshot-update", models="fake:a,fake:b")
    result.assert_outcomes(passed=3, failed=1)
    assert outcome(result, "quiz.llm.yaml::q1[b]") == "FAILED"
    assert section(result, "q1[b]")[:4] == [
        "LLM answer failed expectation: contains 'Paris' not found",
        "  - contains 'Paris' not found",
        "answer:",
        "    Berlin",
    ]
    assert "Traceback" not in result.stdout.str()
    assert sorted(fake_engine.GENERATES) == [
        "a: What is the capital?",
        "a: slow q",
        "b: What is the capital?",
        "b: slow q",
    ]


def test_suite_defaults_apply_to_each_question(fake: pytest.Pytester) -> None:
    set_answers(
        fake, a={"What is the capital?": "Paris, not London", "slow q": {"text": "London", "seconds": 6}}
    )
    fake.makefile(".llm.yaml", quiz=SUITE)
    result = run(fake, "--snapshot-update")
    result.assert_outcomes(failed=2)
    assert section(result, "q1[a]")[0] == "LLM answer failed expectation: not_contains 'London' found"
    assert section(result, "q2[a]")[0] == (
        "LLM answer failed expectation: not_contains 'London' found (and 1 more)"
    )
    assert "  - max_seconds 5 exceeded: took 6.00s" in section(result, "q2[a]")


@pytest.mark.parametrize(
    ("expr", "selected"),
    [("geo", ["q1"]), ("slow", ["q2"]), ("easy and not slow", ["q1"]), ("quiz and not geo", ["q2"])],
)
def test_suite_tags_select_with_k(fake: pytest.Pytester, expr: str, selected: list[str]) -> None:
    set_answers(fake)
    fake.makefile(".llm.yaml", quiz=SUITE)
    fake.makepyfile("def test_plain():\n    pass\n")
    result = run(fake, "-k", expr, "--snapshot-update")
    assert ran(result) == [f"quiz.llm.yaml::{q}[a]" for q in selected]
    result.assert_outcomes(passed=len(selected), deselected=3 - len(selected))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            'questions: [{id: q1, prompt: "x"\n',
            "invalid YAML at line 1: expected ',' or '}', but got '<stream end>'",
        ),
        ("questions: [{id: q1}]\n", "q1: missing 'prompt'"),
        (
            "questions: [{id: q1, prompt: x, expect: {contain: y}}]\n",
            f"q1: unknown expectation 'contain' in expect; {ALLOWED}",
        ),
        (
            "questions: [{id: q1, prompt: x, expect: {max_seconds: fast}}]\n",
            "q1: expect.max_seconds must be a positive number, got 'fast'",
        ),
        (
            "questions: [{id: q1, prompt: x}, {id: q1, prompt: y}]\n",
            "q1: duplicate id (first used by questions[0])",
        ),
        ("questions: []\n", "'questions' must be a non-empty list, got []"),
    ],
)
def test_malformed_suite_is_a_one_line_collection_error(
    fake: pytest.Pytester, text: str, problem: str
) -> None:
    set_answers(fake)
    path = fake.makefile(".llm.yaml", broken=text)
    fake.makepyfile("def test_plain():\n    pass\n")
    result = run(fake)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=1)
    assert section(result, "ERROR collecting broken.llm.yaml") == [f"{path}: {problem}"]
    assert "Traceback" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*Interrupted: 1 error during collection*"])


# -- 5. suites from Python --------------------------------------------------------------------

PY_SUITE = """\
import pytest

@pytest.mark.llm_suite("quiz.llm.yaml")
def test_q(llm, llm_question):
    llm.ask(llm_question)
"""


def test_llm_suite_marker_parametrizes_questions(fake: pytest.Pytester) -> None:
    set_answers(fake, a={}, b={"What is the capital?": "Berlin"})
    fake.makefile(".llm.yaml", quiz=SUITE)
    (fake.path / "sub").mkdir()
    (fake.path / "sub" / "test_py.py").write_text(PY_SUITE.replace("quiz.llm.yaml", "../quiz.llm.yaml"))
    # the suite file is next to the test module's parent: the marker path is module-relative
    ids = [
        "sub/test_py.py::test_q[q1-a]",
        "sub/test_py.py::test_q[q2-a]",
        "sub/test_py.py::test_q[q1-b]",
        "sub/test_py.py::test_q[q2-b]",
    ]
    collected = fake.runpytest("--llm-model", "fake:a,fake:b", "--collect-only", "-q", "sub")
    assert [ln for ln in collected.outlines if "::" in ln] == ids
    result = run(fake, "--snapshot-update", "sub", models="fake:a,fake:b")
    result.assert_outcomes(passed=3, failed=1)
    assert ran(result, "FAILED") == ["sub/test_py.py::test_q[q1-b]"]
    assert section(result, "test_q[q1-b]")[0] == "LLM answer failed expectation: contains 'Paris' not found"
    assert len(fake_engine.GENERATES) == 4


def test_llm_suite_marker_with_bad_path(fake: pytest.Pytester) -> None:
    set_answers(fake)
    fake.makepyfile(test_py=PY_SUITE.replace("quiz.llm.yaml", "nope.llm.yaml"))
    result = run(fake)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            f"{fake.path / 'nope.llm.yaml'}: cannot read file: No such file or directory",
            "*1 error during collection*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_llm_suite_marker_with_malformed_file(fake: pytest.Pytester) -> None:
    set_answers(fake)
    fake.makefile(".llm.yaml", quiz="questions: [{id: q1, prompt: x, tags: [1]}]\n")
    fake.makepyfile(test_py=PY_SUITE)
    result = run(fake)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    line = f"{fake.path / 'quiz.llm.yaml'}: q1: 'tags' must be a list of non-empty strings, got [1]"
    # reported by both the zero-code collector and the marker
    assert section(result, "ERROR collecting quiz.llm.yaml") == [line]
    assert section(result, "ERROR collecting test_py.py")[0] == line
    assert "Traceback" not in result.stdout.str()


def test_llm_suite_marker_error_is_one_line(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_py=PY_SUITE.replace("quiz.llm.yaml", "nope.llm.yaml"))
    result = run(fake)
    assert section(result, "ERROR collecting test_py.py") == [
        f"{fake.path / 'nope.llm.yaml'}: cannot read file: No such file or directory"
    ]


def test_llm_suite_marker_takes_one_path(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_py=PY_SUITE.replace('"quiz.llm.yaml"', '"a.llm.yaml", "b.llm.yaml"'))
    result = run(fake)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["llm_suite() takes one suite path, got ('a.llm.yaml', 'b.llm.yaml') {}"])


def test_llm_question_without_marker_fails_clearly(fake: pytest.Pytester) -> None:
    fake.makepyfile(
        """
        def test_q(llm, llm_question):
            llm.ask(llm_question)
        """
    )
    result = run(fake)
    result.assert_outcomes(errors=1)
    assert section(result, "ERROR at setup of test_q[a]") == [
        "llm_question needs @pytest.mark.llm_suite('file.llm.yaml') on the test"
    ]
    assert fake_engine.GENERATES == []


# -- 7. pytest-benchmark and xdist ---------------------------------------------------------------

BENCH_KEYS = {
    "model",
    "quantization",
    "engine",
    "prompt_tokens",
    "new_tokens",
    "tokens_per_second",
    "ttft_seconds",
    "load_seconds",
    "quantize_seconds",
}


@pytest.fixture
def bench_project(fake: pytest.Pytester) -> pytest.Pytester:
    set_answers(fake, a={}, b={})
    fake.makefile(".llm.yaml", quiz=SUITE)
    fake.makepyfile(test_py="def test_plain_llm(llm):\n    llm.ask('What is the capital?')\n")
    return fake


def test_benchmark_json_has_one_entry_per_question_and_model(bench_project: pytest.Pytester) -> None:
    result = run(bench_project, "--snapshot-update", "--benchmark-json=out.json", models="fake:a,fake:b")
    result.assert_outcomes(passed=6)
    data = json.loads((bench_project.path / "out.json").read_text())
    entries = {b["name"]: b for b in data["benchmarks"]}
    assert len(data["benchmarks"]) == len(entries) == 6
    assert set(entries) == {f"{q}[{m}]" for q in ("q1", "q2") for m in "ab"} | {
        "test_plain_llm[a]",
        "test_plain_llm[b]",
    }
    for name, entry in entries.items():
        model = name[-2]
        assert entry["group"] == model
        assert set(entry["extra_info"]) >= BENCH_KEYS, name
        assert entry["extra_info"]["model"] == model
        assert entry["extra_info"]["engine"] == "fake"
        assert entry["extra_info"]["quantization"] == "int4"
        assert entry["stats"]["rounds"] == 1
    slow = entries["q2[a]"]["extra_info"]
    assert (slow["prompt_tokens"], slow["new_tokens"], slow["ttft_seconds"]) == (2, 1, 0.875)
    assert slow["tokens_per_second"] == pytest.approx(1 / 3.5, abs=1e-3)
    assert entries["q1[b]"]["extra_info"]["load_seconds"] == 0.01
    assert entries["q1[b]"]["extra_info"]["quantize_seconds"] == 0.02
    # each test generated exactly once: the benchmark timed the one real generation
    assert sorted(fake_engine.GENERATES) == sorted(
        f"{m}: {p}" for m in "ab" for p in ("What is the capital?", "slow q", "What is the capital?")
    )


def test_benchmark_disable_still_runs_and_reports_latency(bench_project: pytest.Pytester) -> None:
    result = run(bench_project, "--snapshot-update", "--benchmark-disable")
    result.assert_outcomes(passed=3)
    assert len(fake_engine.GENERATES) == 3
    result.stdout.re_match_lines([r"  q2 +PASS +3\.50 +\d+\.\d\d +0\.3 +new$"])
    out = result.stdout.str()
    assert "benchmark 'a'" not in out
    assert "Benchmark fixture was not used" not in out


def test_benchmark_compare_fail_is_a_latency_gate(fake: pytest.Pytester) -> None:
    fake.makepyfile("def test_ask(llm):\n    llm.ask('q')\n")
    set_answers(fake, a={"q": {"text": "ok", "sleep": 0.1}})
    run(fake, "--benchmark-autosave").assert_outcomes(passed=1)
    saved = list((fake.path / ".benchmarks").rglob("0001_*.json"))
    assert len(saved) == 1
    assert [b["name"] for b in json.loads(saved[0].read_text())["benchmarks"]] == ["test_ask[a]"]

    result = run(fake, "--benchmark-compare", "--benchmark-compare-fail=median:50%")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK

    set_answers(fake, a={"q": {"text": "ok", "sleep": 0.3}})
    result = run(fake, "--benchmark-compare", "--benchmark-compare-fail=median:5%")
    assert result.ret != pytest.ExitCode.OK
    out = result.stdout.str() + result.stderr.str()
    assert "Performance has regressed" in out
    assert re.search(r"test_ask\[a\] \(0001_\w*\) - Field 'median' has failed PercentageRegressionCheck", out)
    assert fake_engine.GENERATES == ["a: q"]


def test_xdist_runs_and_reports_outcomes(
    bench_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # workers import tests.fake_engine
    set_answers(bench_project, a={}, b={"What is the capital?": "Berlin"})
    result = run(bench_project, "-n", "2", "--snapshot-update", models="fake:a,fake:b")
    result.assert_outcomes(passed=5, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert outcome(result, "quiz.llm.yaml::q1[a]") == "PASSED"
    assert outcome(result, "quiz.llm.yaml::q1[b]") == "FAILED"
    assert "LLM answer failed expectation: contains 'Paris' not found" in result.stdout.str()
    assert "Benchmark fixture was not used" not in result.stdout.str()


def test_xdist_workers_latency_reaches_the_summary_report_and_gate(
    bench_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytest-benchmark turns itself off under xdist; the llmcheck results still come back."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    set_answers(bench_project, a={}, b={"What is the capital?": "Berlin"})
    result = run(
        bench_project, "-n", "2", "--snapshot-update", "--llm-report=out", "--llm-min-pass-rate=0.9",
        models="fake:a,fake:b",
    )
    out = result.stdout.str()
    assert "llmcheck summary" in out
    assert re.search(r"^b \(fake:b\): loaded [12]x", out, re.M)
    assert re.search(r"^  q1 +FAIL +\d+\.\d\d +\d+\.\d", out, re.M)
    assert "llmcheck gate --llm-min-pass-rate=0.9 failed for model 'b'" in out
    data = json.loads((bench_project.path / "out" / "report.json").read_text(encoding="utf-8"))
    cases = {m["name"]: {c["case_id"]: c for c in m["cases"]} for m in data["models"]}
    assert set(cases) == {"a", "b"}
    assert len(cases["a"]) == len(cases["b"]) == 3
    assert cases["b"]["q1"]["verdict"] == "fail"
    assert cases["a"]["q1"]["verdict"] == "pass"
    assert all(c["seconds"] for m in cases.values() for c in m.values())


# -- 8. terminal summary ----------------------------------------------------------------------------


def test_terminal_summary_per_model_and_question(bench_project: pytest.Pytester) -> None:
    set_answers(bench_project, a={}, b={"What is the capital?": "Berlin"})
    result = run(bench_project, "--snapshot-update", "--benchmark-disable", models="fake:a,fake:b")
    result.assert_outcomes(passed=5, failed=1)
    summary = result.outlines[
        result.outlines.index(next(ln for ln in result.outlines if "llmcheck summary" in ln)) :
    ]
    result_lines = "\n".join(summary)
    load = r"loaded 1x in 0\.01s; fake-int4: 4/4 linear layers, weights 0\.0 MiB -> 0\.0 MiB, 0\.02s"
    expected = [
        rf"a \(fake:a\): {load}",
        r"  question +verdict +seconds +cpu s +tok/s +snapshot",
        r"  q1 +PASS +0\.00 +\d+\.\d\d +4000\.0 +new",
        r"  q2 +PASS +3\.50 +\d+\.\d\d +0\.3 +new",
        r"  test_plain_llm +PASS +0\.00 +\d+\.\d\d +4000\.0 +none",
        r"  pass rate 100% \(3/3\), median 0\.00s, total 3\.50s, 4000\.0 tok/s(, [\d.]+ tok/CPU-s)?",
        rf"b \(fake:b\): {load}",
        r"  question +verdict +seconds +cpu s +tok/s +snapshot",
        r"  q1 +FAIL +0\.00 +\d+\.\d\d +1000\.0 +new",
        r"  q2 +PASS +3\.50 +\d+\.\d\d +0\.3 +new",
        r"  test_plain_llm +PASS +0\.00 +\d+\.\d\d +1000\.0 +none",
        r"  pass rate 67% \(2/3\).*",
    ]
    pos = 0
    for pattern in expected:
        while pos < len(summary) and not re.fullmatch(pattern, summary[pos]):
            pos += 1
        assert pos < len(summary), f"{pattern!r} not found in order in:\n{result_lines}"

    # second run: snapshots are compared, and the summary says so
    result = run(bench_project, "--benchmark-disable", models="fake:a,fake:b")
    result.stdout.re_match_lines(
        [
            r"  q1 +PASS +0\.00 +\d+\.\d\d +4000\.0 +unchanged",
            r"  q2 +PASS +3\.50 +\d+\.\d\d +0\.3 +unchanged",
        ]
    )


def test_same_question_id_in_two_suites_stays_two_cases(fake: pytest.Pytester) -> None:
    set_answers(fake, a={"Berlin?": "no"})
    fake.makefile(".llm.yaml", one="questions: [{id: q1, prompt: 'What is the capital?'}]\n")
    fake.makefile(".llm.yaml", two="questions: [{id: q1, prompt: 'Berlin?', expect: {contains: Berlin}}]\n")
    result = run(fake, "--snapshot-update")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.re_match_lines([r"  \S*q1 +PASS .*", r"  \S*q1 +FAIL .*"])
