"""Unit tests for pytest_llmcheck.checks.suite: loading YAML question suites and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llmcheck.checks.expect import Expectations
from pytest_llmcheck.checks.suite import (
    Suite,
    SuiteError,
    is_suite_file,
    load_suite,
)
from pytest_llmcheck.engines.base import Answer

GOOD = """\
suite: 谜语
system: "你是一个聪明的助手。"
expect: {max_new_tokens: 200, not_contains: "我不知道"}
questions:
  - id: riddle-1
    prompt: "白白喜欢谁？"
    expect: {contains: "白白喜欢明明", max_new_tokens: 50}
    reference: "白白喜欢明明。"
    tags: [easy, zh]
    min_passes: 4
  - id: capital.fr_2
    prompt: "What is the capital of France?"
    system: "Answer in one word."
    expect: {any_of: [Paris, Parigi], ignore_case: false}
  - id: no-system
    prompt: "Say hi"
    system: ""
"""


def write(tmp_path: Path, text: str, name: str = "riddles.llm.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, name: str = "x.llm.yaml") -> Suite:
    return load_suite(write(tmp_path, text, name))


def error_for(tmp_path: Path, text: str, name: str = "x.llm.yaml") -> str:
    path = write(tmp_path, text, name)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message[len(f"{path}: ") :]


def question(body: str) -> str:
    """A suite with one question whose mapping lines are ``body``."""
    indented = "\n".join("    " + line for line in body.strip().splitlines())
    return "questions:\n  - " + indented.lstrip() + "\n"


# -- happy path --------------------------------------------------------------------


def test_load_good_suite(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    suite = load_suite(path)
    assert suite.name == "谜语"
    assert suite.path == path
    assert [q.id for q in suite.questions] == ["riddle-1", "capital.fr_2", "no-system"]

    first = suite.questions[0]
    assert first.prompt == "白白喜欢谁？"
    assert first.system == "你是一个聪明的助手。"
    assert first.reference == "白白喜欢明明。"
    assert first.tags == ("easy", "zh")
    assert first.min_passes == 4
    assert first.path == path
    # Suite defaults merged: stricter token limit, lists added up.
    assert first.expect.max_new_tokens == 50
    assert first.expect.contains == ("白白喜欢明明",)
    assert first.expect.not_contains == ("我不知道",)


def test_question_system_override_and_empty(tmp_path: Path) -> None:
    suite = load_text(tmp_path, GOOD)
    second, third = suite.questions[1], suite.questions[2]
    assert second.system == "Answer in one word."
    assert third.system is None
    assert second.expect.ignore_case is False
    assert second.expect.any_of == ("Paris", "Parigi")
    assert second.expect.max_new_tokens == 200
    assert second.tags == ()
    assert second.min_passes is None
    assert second.reference is None


def test_loaded_expectations_work_on_chinese_answer(tmp_path: Path) -> None:
    expect = load_text(tmp_path, GOOD).questions[0].expect
    good = Answer("白白 喜欢 明明。", "p", 1, 10, 0.5, 0.1)
    bad = Answer("我不知道。", "p", 1, 10, 0.5, 0.1)
    assert expect.check(good) == []
    assert [f.key for f in expect.check(bad)] == ["contains", "not_contains"]


def test_default_name_is_stem_without_llm(tmp_path: Path) -> None:
    suite = load_text(tmp_path, question("id: a\nprompt: hi"), name="riddles.llm.yaml")
    assert suite.name == "riddles"
    suite = load_text(tmp_path, question("id: a\nprompt: hi"), name="math.llm.yml")
    assert suite.name == "math"


def test_minimal_question_defaults(tmp_path: Path) -> None:
    q = load_text(tmp_path, question("id: a\nprompt: hi")).questions[0]
    assert q.system is None
    assert q.expect == Expectations()
    assert q.tags == ()


def test_single_string_tag(tmp_path: Path) -> None:
    q = load_text(tmp_path, question("id: a\nprompt: hi\ntags: zh")).questions[0]
    assert q.tags == ("zh",)


def test_suite_objects_are_frozen(tmp_path: Path) -> None:
    suite = load_text(tmp_path, GOOD)
    with pytest.raises(AttributeError):
        suite.questions[0].prompt = "x"  # type: ignore[misc]


def test_glob_and_is_suite_file() -> None:
    assert is_suite_file(Path("a/riddles.llm.yaml"))
    assert is_suite_file("riddles.llm.yml")
    assert not is_suite_file(Path("riddles.yaml"))
    assert not is_suite_file(Path("riddles.llm.json"))
    assert not is_suite_file(Path(".llm.yaml"))


# -- errors --------------------------------------------------------------------------


def test_missing_prompt(tmp_path: Path) -> None:
    path = write(tmp_path, question("id: riddle-2"))
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert str(info.value) == f"{path}: riddle-2: missing 'prompt'"


def test_missing_id(tmp_path: Path) -> None:
    text = "questions:\n  - {id: a, prompt: p}\n  - {prompt: p}\n"
    assert error_for(tmp_path, text) == "questions[1]: missing 'id'"


def test_duplicate_id(tmp_path: Path) -> None:
    text = "questions:\n  - {id: riddle-1, prompt: p}\n  - {id: riddle-1, prompt: q}\n"
    message = error_for(tmp_path, text)
    assert message.startswith("riddle-1: duplicate id")
    assert "questions[0]" in message


def test_unknown_question_key(tmp_path: Path) -> None:
    message = error_for(tmp_path, question("id: riddle-1\npromt: hi"))
    assert message == (
        "riddle-1: unknown key 'promt'; allowed: expect, id, min_passes, prompt, reference, snapshot, "
        "system, tags"
    )


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = error_for(tmp_path, "sweet: x\n" + question("id: a\nprompt: p"))
    assert message == "unknown key 'sweet'; allowed: expect, judge_model, questions, snapshot, suite, system"


def test_invalid_yaml_has_line(tmp_path: Path) -> None:
    text = "questions:\n  - id: a\n    prompt: [unclosed\n"
    message = error_for(tmp_path, text)
    assert message.startswith("invalid YAML at line ")
    text = "questions:\n  - id: a\n  prompt: : x\n"
    assert error_for(tmp_path, text).startswith("invalid YAML at line 3: ")


def test_unknown_expectation_wrapped(tmp_path: Path) -> None:
    message = error_for(tmp_path, question("id: riddle-1\nprompt: p\nexpect: {contain: x}"))
    assert message.startswith("riddle-1: unknown expectation 'contain' in expect; allowed: ")


def test_bad_expectation_value_wrapped(tmp_path: Path) -> None:
    message = error_for(tmp_path, question("id: r\nprompt: p\nexpect: {max_seconds: fast}"))
    assert message == "r: expect.max_seconds must be a positive number, got 'fast'"


def test_expect_not_mapping(tmp_path: Path) -> None:
    message = error_for(tmp_path, question("id: r\nprompt: p\nexpect: [contains]"))
    assert message == "r: 'expect' must be a mapping, got ['contains']"


def test_bad_suite_level_expect(tmp_path: Path) -> None:
    text = "expect: {max_new_tokens: 0}\n" + question("id: a\nprompt: p")
    message = error_for(tmp_path, text)
    assert message == "expect.max_new_tokens must be a positive integer, got 0"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("id: r\nprompt: ''", "r: 'prompt' must be a non-empty string, got ''"),
        ("id: r\nprompt: 3", "r: 'prompt' must be a non-empty string, got 3"),
        ("id: r\nprompt: p\nsystem: [a]", "r: 'system' must be a string, got ['a']"),
        ("id: r\nprompt: p\nreference: 5", "r: 'reference' must be a string, got 5"),
        ("id: r\nprompt: p\ntags: [a, 1]", "r: 'tags' must be a list of non-empty strings"),
        ("id: r\nprompt: p\nmin_passes: 0", "r: 'min_passes' must be an integer >= 1, got 0"),
        ("id: r\nprompt: p\nmin_passes: true", "r: 'min_passes' must be an integer >= 1"),
        ("id: r\nprompt: p\nmin_passes: 1.5", "got 1.5"),
        ("id: 7\nprompt: p", "questions[0]: 'id' must be a string, got 7 (quote it)"),
        ("id: 'a b'\nprompt: p", "questions[0]: invalid id 'a b'; use only letters"),
    ],
)
def test_bad_question_values(tmp_path: Path, body: str, expected: str) -> None:
    assert expected in error_for(tmp_path, question(body))


def test_question_not_mapping(tmp_path: Path) -> None:
    message = error_for(tmp_path, "questions:\n  - just a string\n")
    assert message == "questions[0]: expected a mapping with 'id' and 'prompt', got 'just a string'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty file; expected a mapping with 'questions'"),
        ("- a\n- b\n", "expected a mapping with 'questions' at the top, got a list"),
        ("suite: s\n", "missing 'questions'"),
        ("questions: []\n", "'questions' must be a non-empty list, got []"),
        ("questions: {id: a}\n", "'questions' must be a non-empty list"),
        ("suite: ''\nquestions: [{id: a, prompt: p}]\n", "'suite' must be a non-empty string"),
        ("system: 3\nquestions: [{id: a, prompt: p}]\n", "'system' must be a string, got 3"),
    ],
)
def test_bad_top_level(tmp_path: Path, text: str, expected: str) -> None:
    assert error_for(tmp_path, text).startswith(expected)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "x.llm.yaml"
    path.write_bytes("questions: [{id: a, prompt: 你好}]\n".encode("gbk"))
    with pytest.raises(SuiteError, match="not valid UTF-8"):
        load_suite(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="cannot read file"):
        load_suite(tmp_path / "nope.llm.yaml")
