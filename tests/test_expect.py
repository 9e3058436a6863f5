"""Unit tests for pytest_llmcheck.checks.expect: validation, CJK-aware matching, verdict text."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pytest_llmcheck.checks.expect import (
    EXPECTATION_KEYS,
    ExpectationError,
    Failure,
    format_failure,
    normalize,
    parse_expectations,
)
from pytest_llmcheck.engines.base import Answer


def make_answer(text: str, *, seconds: float = 1.0, new_tokens: int = 5) -> Answer:
    return Answer(
        text=text, prompt="q", prompt_tokens=3, new_tokens=new_tokens, seconds=seconds, ttft=0.1
    )


def check(text: str, **expect: object) -> list[Failure]:
    return parse_expectations(expect).check(make_answer(text))


# -- normalize --------------------------------------------------------------------


def test_normalize_full_width_letters_and_digits() -> None:
    assert normalize("ＡＢＣ１２３", ignore_case=False) == "ABC123"


def test_normalize_drops_chinese_punctuation() -> None:
    text = "你好，世界。吗？是！“引号”「括号」、顿号：冒号；分号"
    assert normalize(text, ignore_case=False) == "你好世界吗是引号括号顿号冒号分号"


def test_normalize_drops_whitespace_and_zero_width() -> None:
    assert normalize(" 白白\t喜欢\n明明\u3000\u200b ", ignore_case=False) == "白白喜欢明明"


def test_normalize_drops_ascii_punctuation_and_symbols() -> None:
    assert normalize("Hi, there! $5 + 2 = 7 ©", ignore_case=False) == "Hithere527"


def test_normalize_casefold_only_when_ignoring_case() -> None:
    assert normalize("Straße ＡＢ", ignore_case=True) == "strasseab"
    assert normalize("Straße ＡＢ", ignore_case=False) == "StraßeAB"


# -- every kind: pass and fail ----------------------------------------------------


def test_contains_pass_with_spaces_and_punctuation_in_chinese_answer() -> None:
    assert check("白白 喜欢 明明。", contains="白白喜欢明明") == []


def test_contains_fail_message() -> None:
    failures = check("明明喜欢白白", contains="白白喜欢明明")
    assert failures == [Failure("contains", "contains '白白喜欢明明' not found")]


def test_contains_list_requires_every_needle() -> None:
    assert check("apples and pears", contains=["apples", "pears"]) == []
    failures = check("apples only", contains=["apples", "pears", "plums"])
    assert [f.message for f in failures] == [
        "contains 'pears' not found",
        "contains 'plums' not found",
    ]


def test_contains_matches_full_width_answer() -> None:
    assert check("答案是：ＡＢＣ１２３！", contains="abc 123") == []


def test_contains_full_width_needle_matches_ascii_answer() -> None:
    assert check("Code abc123.", contains="ＡＢＣ１２３") == []


def test_all_of_pass_and_fail() -> None:
    assert check("红色，绿色，蓝色", all_of=["红色", "蓝色"]) == []
    failures = check("红色，绿色", all_of=["红色", "蓝色", "黄色"])
    assert len(failures) == 1
    assert failures[0].key == "all_of"
    assert failures[0].message == "all_of ['红色', '蓝色', '黄色']: missing '蓝色', '黄色'"


def test_any_of_pass_and_fail() -> None:
    assert check("La capitale è Parigi.", any_of=["Paris", "Parigi"]) == []
    failures = check("It is Berlin.", any_of=["Paris", "Parigi"])
    assert failures == [Failure("any_of", "any_of ['Paris', 'Parigi']: none found")]


def test_any_of_accepts_single_string() -> None:
    assert parse_expectations({"any_of": "x"}).any_of == ("x",)


def test_not_contains_pass_and_fail() -> None:
    assert check("Paris", not_contains="Berlin") == []
    failures = check("Paris, not BERLIN", not_contains=["Berlin", "Rome"])
    assert failures == [Failure("not_contains", "not_contains 'Berlin' found")]


def test_regex_pass_and_fail() -> None:
    assert check("There are 42 apples", regex=r"\d+") == []
    failures = check("no digits here", regex=r"\d+")
    assert failures == [Failure("regex", r"regex /\d+/ did not match")]


def test_regex_searches_nfkc_answer_keeping_punctuation() -> None:
    # Full-width digits and comma become ASCII, punctuation stays for the regex.
    assert check("结果：４２，完", regex=r"42,") == []
    assert check("结果 42 完", regex=r"42,") != []


def test_regex_list_every_pattern_must_match() -> None:
    failures = check("abc", regex=["a", "z", "c"])
    assert [f.message for f in failures] == ["regex /z/ did not match"]


def test_regex_is_case_sensitive_unless_inline_flag() -> None:
    assert check("PARIS", regex="paris") != []
    assert check("PARIS", regex="(?i)paris") == []


def test_max_seconds_pass_and_fail() -> None:
    expect = parse_expectations({"max_seconds": 2.0})
    assert expect.check(make_answer("x", seconds=2.0)) == []
    failures = expect.check(make_answer("x", seconds=3.414))
    assert failures == [Failure("max_seconds", "max_seconds 2.0 exceeded: took 3.41s")]


def test_max_new_tokens_pass_and_fail() -> None:
    expect = parse_expectations({"max_new_tokens": 10})
    assert expect.check(make_answer("x", new_tokens=10)) == []
    failures = expect.check(make_answer("x", new_tokens=42))
    assert failures == [Failure("max_new_tokens", "max_new_tokens 10 exceeded: 42 tokens")]


def test_ignore_case_default_true() -> None:
    assert check("the capital is PARIS", contains="paris") == []
    assert parse_expectations({}).case_insensitive is True


def test_ignore_case_false_is_case_sensitive() -> None:
    failures = check("the capital is PARIS", contains="paris", ignore_case=False)
    assert [f.key for f in failures] == ["contains"]
    assert check("the capital is paris", contains="paris", ignore_case=False) == []


def test_ignore_case_false_applies_to_not_contains() -> None:
    assert check("BERLIN", not_contains="berlin", ignore_case=False) == []
    assert check("BERLIN", not_contains="berlin") != []


def test_failures_follow_key_order() -> None:
    expect = parse_expectations(
        {
            "max_new_tokens": 1,
            "max_seconds": 1,
            "regex": "z",
            "not_contains": "a",
            "any_of": ["q"],
            "all_of": ["r"],
            "contains": "s",
        }
    )
    failures = expect.check(make_answer("a", seconds=5, new_tokens=5))
    assert [f.key for f in failures] == [
        "contains",
        "all_of",
        "any_of",
        "not_contains",
        "regex",
        "max_seconds",
        "max_new_tokens",
    ]
    assert [k for k in EXPECTATION_KEYS if k in {f.key for f in failures}] == [f.key for f in failures]


def test_max_cpu_seconds_checks_cpu_time_not_wall_time() -> None:
    expect = parse_expectations({"max_cpu_seconds": 1.0})
    slow_wall = dataclasses.replace(make_answer("a", seconds=30), cpu_seconds=0.5)
    busy = dataclasses.replace(make_answer("a", seconds=0.5), cpu_seconds=2.0)
    assert expect.check(slow_wall) == []
    assert [f.message for f in expect.check(busy)] == ["max_cpu_seconds 1.0 exceeded: used 2.00s of CPU"]
    unknown = expect.check(make_answer("a", seconds=0.5))  # an engine that cannot tell
    assert [f.message for f in unknown] == ["max_cpu_seconds: this engine does not report CPU time"]
    assert expect.merge(parse_expectations({"max_cpu_seconds": 0.25})).max_cpu_seconds == 0.25
    bad = r"llm_expect\(max_cpu_seconds=\.\.\.\) must be a positive number"
    with pytest.raises(ExpectationError, match=bad):
        parse_expectations({"max_cpu_seconds": "fast"})


# -- validation errors ---------------------------------------------------------------


def error_for(data: dict[str, object], where: str = "llm_expect()") -> str:
    with pytest.raises(ExpectationError) as info:
        parse_expectations(data, where=where)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_key_lists_allowed() -> None:
    assert error_for({"contain": "x"}) == (
        "unknown expectation 'contain' in llm_expect(); allowed: all_of, any_of, contains, "
        "ignore_case, judge, max_cpu_seconds, max_new_tokens, max_seconds, not_contains, regex"
    )


def test_max_seconds_wrong_type() -> None:
    assert error_for({"max_seconds": "fast"}) == (
        "llm_expect(max_seconds=...) must be a positive number, got 'fast'"
    )


@pytest.mark.parametrize("bad", [0, -1.5, True, float("nan"), float("inf"), None])
def test_max_seconds_rejects(bad: object) -> None:
    message = error_for({"max_seconds": bad})
    assert "max_seconds" in message
    assert "positive number" in message
    assert f"got {bad!r}" in message


def test_max_seconds_accepts_int() -> None:
    assert parse_expectations({"max_seconds": 3}).max_seconds == 3


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "10"])
def test_max_new_tokens_rejects(bad: object) -> None:
    message = error_for({"max_new_tokens": bad})
    assert "llm_expect(max_new_tokens=...)" in message
    assert "positive integer" in message
    assert f"got {bad!r}" in message


@pytest.mark.parametrize("key", ["contains", "all_of", "any_of", "not_contains", "regex"])
def test_string_list_rejects_non_string(key: str) -> None:
    message = error_for({key: 3})
    assert f"llm_expect({key}=...)" in message
    assert "got 3" in message
    assert "list of strings" in message


@pytest.mark.parametrize("key", ["contains", "all_of", "any_of", "not_contains", "regex"])
def test_string_list_rejects_empty_list(key: str) -> None:
    assert "got an empty list" in error_for({key: []})


def test_string_list_rejects_non_string_item() -> None:
    message = error_for({"any_of": ["Paris", 7]})
    assert "got item 7" in message


def test_string_list_rejects_empty_string() -> None:
    assert "got an empty string" in error_for({"contains": ["ok", ""]})


def test_needle_that_normalizes_to_empty() -> None:
    message = error_for({"contains": "。！"})
    assert "'。！'" in message
    assert "llm_expect(contains=...)" in message


def test_invalid_regex() -> None:
    message = error_for({"regex": "(unclosed"})
    assert "llm_expect(regex=...)" in message
    assert "'(unclosed'" in message
    assert "invalid regular expression" in message


def test_ignore_case_must_be_bool() -> None:
    message = error_for({"ignore_case": "yes"})
    assert message == "llm_expect(ignore_case=...) must be true or false, got 'yes'"


def test_non_mapping_rejected() -> None:
    with pytest.raises(ExpectationError, match="must be a mapping"):
        parse_expectations(["contains"])  # type: ignore[arg-type]


def test_where_changes_label() -> None:
    assert error_for({"max_seconds": "x"}, where="expect").startswith("expect.max_seconds must")
    assert "in expect;" in error_for({"bogus": 1}, where="expect")


def test_long_bad_value_kept_short() -> None:
    message = error_for({"max_seconds": "x" * 500})
    assert len(message) < 200


# -- merge, empty, describe, to_dict -------------------------------------------------


def test_merge_concatenates_lists_without_duplicates() -> None:
    a = parse_expectations({"contains": ["a", "b"], "not_contains": "x", "regex": "r1"})
    b = parse_expectations({"contains": ["b", "c"], "not_contains": "y", "any_of": "q"})
    merged = a.merge(b)
    assert merged.contains == ("a", "b", "c")
    assert merged.not_contains == ("x", "y")
    assert merged.regex == ("r1",)
    assert merged.any_of == ("q",)


def test_merge_takes_stricter_limits() -> None:
    a = parse_expectations({"max_seconds": 5, "max_new_tokens": 100})
    b = parse_expectations({"max_seconds": 2.5, "max_new_tokens": 200})
    merged = a.merge(b)
    assert merged.max_seconds == 2.5
    assert merged.max_new_tokens == 100
    assert b.merge(a) == merged


def test_merge_keeps_one_sided_limits() -> None:
    merged = parse_expectations({"max_seconds": 5}).merge(parse_expectations({"max_new_tokens": 9}))
    assert (merged.max_seconds, merged.max_new_tokens) == (5, 9)


def test_merge_ignore_case_specific_wins() -> None:
    strict = parse_expectations({"ignore_case": False})
    unset = parse_expectations({})
    loose = parse_expectations({"ignore_case": True})
    assert strict.merge(unset).ignore_case is False
    assert strict.merge(loose).ignore_case is True
    assert unset.merge(strict).case_insensitive is False


def test_describe() -> None:
    expect = parse_expectations(
        {
            "contains": "白白",
            "any_of": ["Paris", "Parigi"],
            "max_seconds": 2.0,
            "max_new_tokens": 10,
            "ignore_case": False,
        }
    )
    assert expect.describe() == [
        "contains '白白'",
        "any_of ['Paris', 'Parigi']",
        "max_seconds <= 2.0",
        "max_new_tokens <= 10",
        "ignore_case False (case-sensitive matching)",
    ]
    assert parse_expectations({}).describe() == []


def test_to_dict_round_trips_through_json() -> None:
    expect = parse_expectations(
        {
            "contains": "白白喜欢明明",
            "all_of": ["a", "b"],
            "any_of": "c",
            "not_contains": ["d"],
            "regex": [r"\d+"],
            "max_seconds": 1.5,
            "max_new_tokens": 7,
            "ignore_case": False,
        }
    )
    data = json.loads(json.dumps(expect.to_dict(), ensure_ascii=False))
    assert data["contains"] == ["白白喜欢明明"]
    assert parse_expectations(data) == expect


def test_to_dict_omits_unset() -> None:
    assert parse_expectations({}).to_dict() == {}
    assert parse_expectations({"max_new_tokens": 3}).to_dict() == {"max_new_tokens": 3}


def test_expectations_are_frozen_and_hashable() -> None:
    expect = parse_expectations({"contains": "x"})
    with pytest.raises(AttributeError):
        expect.contains = ("y",)  # type: ignore[misc]
    assert hash(expect) == hash(parse_expectations({"contains": ["x"]}))


# -- format_failure -------------------------------------------------------------------


def test_format_failure_single() -> None:
    answer = make_answer("明明喜欢白白。\n第二行")
    failures = parse_expectations({"contains": "白白喜欢明明"}).check(answer)
    assert format_failure(failures, answer) == (
        "LLM answer failed expectation: contains '白白喜欢明明' not found\n"
        "  - contains '白白喜欢明明' not found\n"
        "answer:\n"
        "    明明喜欢白白。\n"
        "    第二行"
    )


def test_format_failure_counts_more() -> None:
    answer = make_answer("Berlin", seconds=9.0)
    failures = parse_expectations(
        {"any_of": ["Paris"], "not_contains": "Berlin", "max_seconds": 1}
    ).check(answer)
    message = format_failure(failures, answer)
    lines = message.splitlines()
    assert lines[0] == "LLM answer failed expectation: any_of ['Paris']: none found (and 2 more)"
    assert "  - not_contains 'Berlin' found" in lines
    assert "  - max_seconds 1 exceeded: took 9.00s" in lines
    assert lines[-2:] == ["answer:", "    Berlin"]


def test_format_failure_empty_answer() -> None:
    answer = make_answer("")
    failures = parse_expectations({"contains": "x"}).check(answer)
    assert format_failure(failures, answer).endswith("answer:\n    <empty answer>")
