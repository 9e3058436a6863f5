"""Question suite files: plain YAML so non-programmers can add regression questions.

A suite file is named ``<name>.llm.yaml`` (or ``.llm.yml``) and read as UTF-8::

    suite: riddles            # optional name, defaults to the file stem without .llm
    system: "optional default system prompt for all questions"
    expect: {max_new_tokens: 200}   # optional defaults merged into each question's expect
    questions:                # required, non-empty list
      - id: riddle-1          # required, unique in the file, [A-Za-z0-9._-]{1,100} (quote numbers)
        prompt: "..."          # required non-empty string
        system: "..."          # optional; overrides the suite's; "" means no system prompt
        expect: {any_of: [...]} # optional, keys as in pytest_llmcheck.checks.expect
        reference: "..."       # optional reference answer written by a person
        tags: [easy, zh]       # optional list of str (a single str is one tag)
        min_passes: 4          # optional int, 1 to --llm-repeat: answers that must pass
        snapshot: {similar: 0.9} # optional: exact | normalized | {similar: 0.9} (or "similar: 0.9")

Top level also takes ``snapshot:`` (the default tolerance of the file's questions) and
``judge_model:`` (the model that grades ``judge:`` expectations, unless ``--llm-judge``
names one).

A question's expectations are ``suite_expect.merge(question_expect)``: lists add up,
limits keep the stricter value, the question's ``ignore_case`` wins.

Every problem raises ``SuiteError`` with one line ``<path>: <where>: <problem>`` so a
collection error points straight at the broken question.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from pytest_llmcheck.checks.expect import ExpectationError, Expectations, parse_expectations, short_repr
from pytest_llmcheck.checks.tolerance import Tolerance, ToleranceError, parse_tolerance

SUITE_SUFFIXES: tuple[str, ...] = (".llm.yaml", ".llm.yml")

_TOP_KEYS = ("expect", "judge_model", "questions", "snapshot", "suite", "system")
_QUESTION_KEYS = ("expect", "id", "min_passes", "prompt", "reference", "snapshot", "system", "tags")
_ID_RE = re.compile(r"[A-Za-z0-9._-]+")
# An id and a model name make a snapshot file name, ``<id>[<model>].txt``, with ``.new``
# beside it for a pending answer (checked in snapshots.py). Both are ASCII, so 100 + 120
# characters leave 35 under the usual 255-byte name limit for the rest; 120 is more than any
# hub name with its engine and quantization suffixes needs.
ID_MAX = 100
MODEL_NAME_MAX = 120  # checked where model names are made (LlmcheckSession.resolve_models)


class SuiteError(ValueError):
    """A broken suite file; the one-line message names the file, the question and the problem."""


@dataclass(frozen=True)
class Question:
    """One question with suite defaults already applied (system prompt, expectations)."""

    id: str
    prompt: str
    system: str | None
    expect: Expectations
    reference: str | None = None
    tags: tuple[str, ...] = ()
    min_passes: int | None = None
    path: Path | None = None
    snapshot: Tolerance | None = None  # None: the ini/command-line default
    judge_model: str | None = None  # the suite's judge model


@dataclass(frozen=True)
class Suite:
    """All questions of one file, in file order."""

    name: str
    path: Path
    questions: tuple[Question, ...]


def min_passes_problem(question: Question, repeat: int) -> str | None:
    """Why ``question`` cannot be judged with ``repeat`` answers, or None.

    A suite does not know ``--llm-repeat``, so this is checked where both meet (collection,
    ``llm.ask``): a ``min_passes`` above it could never be met by that many answers. A
    greedy run (one answer) is the exception: a suite written for sampled runs
    (``min_passes: 4`` with ``--llm-repeat=5``) also runs greedily in a pull request's CI,
    where its one answer must pass.
    """
    if question.min_passes is None or repeat == 1 or question.min_passes <= repeat:
        return None
    return (
        f"{question.id}: 'min_passes' must be at most the answers per question "
        f"(--llm-repeat={repeat}), got {question.min_passes}; lower it, or run with "
        f"--llm-repeat={question.min_passes} or more and --llm-temperature > 0"
    )


def check_repeat(suite: Suite, repeat: int) -> None:
    """Raise ``SuiteError`` (one line) for the first question whose ``min_passes`` exceeds ``repeat``."""
    for question in suite.questions:
        problem = min_passes_problem(question, repeat)
        if problem is not None:
            raise SuiteError(f"{suite.path}: {problem}")


def is_suite_file(path: Path | str) -> bool:
    """True for ``*.llm.yaml`` and ``*.llm.yml`` files that have a name before the suffix."""
    name = Path(path).name
    return any(name.endswith(sfx) and len(name) > len(sfx) for sfx in SUITE_SUFFIXES)


def suite_name_from_path(path: Path) -> str:
    """Default suite name: the file name without ``.llm.yaml``/``.llm.yml``."""
    name = path.name
    for sfx in SUITE_SUFFIXES:
        if name.endswith(sfx) and len(name) > len(sfx):
            return name[: -len(sfx)]
    return path.stem


def load_suite(path: Path) -> Suite:
    """Read and validate one suite file; raises ``SuiteError`` on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{path}: not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    return parse_suite(text, path)


def parse_suite(text: str, path: Path) -> Suite:
    """Validate suite YAML text; ``path`` is used for the default name and messages."""
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "unparsable"
        raise SuiteError(f"{path}: invalid YAML{where}: {_one_line(problem)}") from None
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: invalid YAML: {_one_line(str(exc))}") from None

    if data is None:
        raise SuiteError(f"{path}: empty file; expected a mapping with 'questions'")
    if not isinstance(data, Mapping):
        raise SuiteError(
            f"{path}: expected a mapping with 'questions' at the top, got {_kind(data)}"
        )
    _check_keys(data, _TOP_KEYS, str(path))

    name = data.get("suite", suite_name_from_path(path))
    if not isinstance(name, str) or not name.strip():
        raise SuiteError(f"{path}: 'suite' must be a non-empty string, got {short_repr(name)}")

    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise SuiteError(f"{path}: 'system' must be a string, got {short_repr(system)}")

    defaults = _expectations(data.get("expect"), str(path))
    tolerance = _tolerance(data.get("snapshot"), str(path))
    judge_model = data.get("judge_model")
    if judge_model is not None and (not isinstance(judge_model, str) or not judge_model.strip()):
        raise SuiteError(f"{path}: 'judge_model' must be a model reference, got {short_repr(judge_model)}")

    if "questions" not in data:
        raise SuiteError(f"{path}: missing 'questions'")
    raw_questions = data["questions"]
    if not isinstance(raw_questions, list) or not raw_questions:
        raise SuiteError(
            f"{path}: 'questions' must be a non-empty list, got {short_repr(raw_questions)}"
        )

    questions: list[Question] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(raw_questions):
        question = _question(raw, index, path, system or None, defaults)
        question = replace(
            question, snapshot=question.snapshot or tolerance,
            judge_model=judge_model.strip() if judge_model else None,
        )
        if question.id in first_index:
            raise SuiteError(
                f"{path}: {question.id}: duplicate id "
                f"(first used by questions[{first_index[question.id]}])"
            )
        first_index[question.id] = index
        questions.append(question)
    return Suite(name=name.strip(), path=path, questions=tuple(questions))


def _question(
    raw: object, index: int, path: Path, system: str | None, defaults: Expectations
) -> Question:
    where = f"{path}: questions[{index}]"
    if not isinstance(raw, Mapping):
        raise SuiteError(f"{where}: expected a mapping with 'id' and 'prompt', got {short_repr(raw)}")
    if "id" not in raw:
        raise SuiteError(f"{where}: missing 'id'")
    qid = raw["id"]
    if not isinstance(qid, str):
        raise SuiteError(f"{where}: 'id' must be a string, got {short_repr(qid)} (quote it)")
    if len(qid) > ID_MAX:  # before the character check, which would print all of it
        raise SuiteError(
            f"{where}: id {short_repr(qid[:40] + '...')} is {len(qid)} characters long; "
            f"at most {ID_MAX} are allowed (the id names the answer's snapshot file)"
        )
    if not _ID_RE.fullmatch(qid):
        raise SuiteError(
            f"{where}: invalid id {short_repr(qid)}; use only letters, digits, '.', '_', '-'"
        )
    where = f"{path}: {qid}"
    _check_keys(raw, _QUESTION_KEYS, where)

    if "prompt" not in raw:
        raise SuiteError(f"{where}: missing 'prompt'")
    prompt = raw["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise SuiteError(f"{where}: 'prompt' must be a non-empty string, got {short_repr(prompt)}")

    own_system = raw.get("system")
    if own_system is not None:
        if not isinstance(own_system, str):
            raise SuiteError(f"{where}: 'system' must be a string, got {short_repr(own_system)}")
        system = own_system or None

    reference = raw.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise SuiteError(f"{where}: 'reference' must be a string, got {short_repr(reference)}")

    tags = _tags(raw.get("tags"), where)

    min_passes = raw.get("min_passes")
    if min_passes is not None and (
        not isinstance(min_passes, int) or isinstance(min_passes, bool) or min_passes < 1
    ):
        raise SuiteError(
            f"{where}: 'min_passes' must be an integer >= 1, got {short_repr(min_passes)}"
        )

    expect = defaults.merge(_expectations(raw.get("expect"), where))
    return Question(
        id=qid,
        prompt=prompt,
        system=system,
        expect=expect,
        reference=reference,
        tags=tags,
        min_passes=min_passes,
        path=path,
        snapshot=_tolerance(raw.get("snapshot"), where),
    )


def _tolerance(raw: object, where: str) -> Tolerance | None:
    if raw is None:
        return None
    try:
        return parse_tolerance(raw, f"{where}: snapshot")
    except ToleranceError as exc:
        raise SuiteError(str(exc)) from None


def _expectations(raw: object, where: str) -> Expectations:
    if raw is None:
        return Expectations()
    if not isinstance(raw, Mapping):
        raise SuiteError(f"{where}: 'expect' must be a mapping, got {short_repr(raw)}")
    try:
        return parse_expectations(raw, where="expect")
    except ExpectationError as exc:
        raise SuiteError(f"{where}: {exc}") from None


def _tags(raw: object, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(t, str) and t for t in items):
        raise SuiteError(
            f"{where}: 'tags' must be a list of non-empty strings, got {short_repr(raw)}"
        )
    return tuple(items)


def _check_keys(data: Mapping[object, object], allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise SuiteError(f"{where}: unknown key {short_repr(key)}; allowed: {', '.join(allowed)}")


def _kind(value: object) -> str:
    return "a list" if isinstance(value, list) else short_repr(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())
