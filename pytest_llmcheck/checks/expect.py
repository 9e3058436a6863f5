"""Expectations on one LLM answer: validation, CJK-aware matching and verdict text.

Why the matching is lenient: local models vary in spacing, full-width forms and
punctuation (especially in Chinese), and a regression test should flag changed
*content*, not a stray '。' or a full-width digit. Substring matchers therefore compare
``normalize(needle) in normalize(answer)``; ``regex`` is the escape hatch when exact
form matters.

Pure module: no pytest and no engine imports beyond the ``Answer`` data type.
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pytest_llmcheck.engines.base import Answer

# Order matters: it is the order checks run and failures are reported.
EXPECTATION_KEYS: tuple[str, ...] = (
    "contains",
    "all_of",
    "any_of",
    "not_contains",
    "regex",
    "max_seconds",
    "max_cpu_seconds",
    "max_new_tokens",
    "ignore_case",
    "judge",
)
_ALLOWED_TEXT = ", ".join(sorted(EXPECTATION_KEYS))

# Dropped before matching: whitespace/separators (Z*), controls and zero-width
# format characters (Cc, Cf), punctuation (P*) and symbols (S*).
_DROPPED_CATEGORIES = ("Z", "P", "S", "Cc", "Cf")


_Limit = TypeVar("_Limit", int, float)


class ExpectationError(ValueError):
    """A bad expectation; the one-line message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Failure:
    """One unmet expectation; ``message`` is what a user reads in the test report."""

    key: str
    message: str


def normalize(text: str, *, ignore_case: bool) -> str:
    """Reduce text to its matchable content.

    NFKC folds full-width letters, digits and punctuation to their ASCII forms; then
    whitespace, punctuation and symbols are dropped so '白白 喜欢 明明。' equals
    '白白喜欢明明'; casefold last when matching ignores case.
    """
    folded = unicodedata.normalize("NFKC", text)
    kept = "".join(ch for ch in folded if not _dropped(ch))
    return kept.casefold() if ignore_case else kept


def _dropped(ch: str) -> bool:
    if ch.isspace():
        return True
    category = unicodedata.category(ch)
    return category in _DROPPED_CATEGORIES or category[0] in _DROPPED_CATEGORIES


@dataclass(frozen=True)
class Expectations:
    """Validated expectations for one question; immutable so suites can share them.

    ``ignore_case`` is ``None`` when not given (matching then ignores case); keeping
    "unset" apart from ``True`` lets a question override a suite default either way.
    """

    contains: tuple[str, ...] = ()
    all_of: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    not_contains: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()
    max_seconds: float | None = None
    max_cpu_seconds: float | None = None
    max_new_tokens: int | None = None
    ignore_case: bool | None = None
    judge: tuple[str, ...] = ()  # rubrics a judge model grades (see judge.py); check() skips them

    @property
    def case_insensitive(self) -> bool:
        """The effective ``ignore_case`` (default True)."""
        return True if self.ignore_case is None else self.ignore_case

    def merge(self, other: Expectations) -> Expectations:
        """Combine defaults (``self``) with more specific expectations (``other``).

        Lists are concatenated without duplicates, limits keep the stricter (smaller)
        value, and an explicit ``ignore_case`` in ``other`` wins. Note that merged
        ``any_of`` lists form one group, so any needle from either side satisfies it.
        """
        return Expectations(
            contains=_union(self.contains, other.contains),
            all_of=_union(self.all_of, other.all_of),
            any_of=_union(self.any_of, other.any_of),
            not_contains=_union(self.not_contains, other.not_contains),
            regex=_union(self.regex, other.regex),
            max_seconds=_stricter(self.max_seconds, other.max_seconds),
            max_cpu_seconds=_stricter(self.max_cpu_seconds, other.max_cpu_seconds),
            max_new_tokens=_stricter(self.max_new_tokens, other.max_new_tokens),
            ignore_case=self.ignore_case if other.ignore_case is None else other.ignore_case,
            judge=_union(self.judge, other.judge),
        )

    def check(self, answer: Answer) -> list[Failure]:
        """Every unmet expectation, in ``EXPECTATION_KEYS`` order; empty means pass.

        ``judge`` rubrics need a model and are graded by the caller (``checks/judge.py``)."""
        fold = self.case_insensitive
        text = normalize(answer.text, ignore_case=fold)
        failures: list[Failure] = []

        def found(needle: str) -> bool:
            return normalize(needle, ignore_case=fold) in text

        for needle in self.contains:
            if not found(needle):
                failures.append(Failure("contains", f"contains {needle!r} not found"))
        missing = [needle for needle in self.all_of if not found(needle)]
        if missing:
            names = ", ".join(repr(n) for n in missing)
            failures.append(Failure("all_of", f"all_of {list(self.all_of)!r}: missing {names}"))
        if self.any_of and not any(found(needle) for needle in self.any_of):
            failures.append(Failure("any_of", f"any_of {list(self.any_of)!r}: none found"))
        for needle in self.not_contains:
            if found(needle):
                failures.append(Failure("not_contains", f"not_contains {needle!r} found"))
        if self.regex:
            nfkc = unicodedata.normalize("NFKC", answer.text)
            for pattern in self.regex:
                if re.search(pattern, nfkc) is None:
                    failures.append(Failure("regex", f"regex /{pattern}/ did not match"))
        if self.max_seconds is not None and answer.seconds > self.max_seconds:
            failures.append(
                Failure(
                    "max_seconds",
                    f"max_seconds {self.max_seconds} exceeded: took {answer.seconds:.2f}s",
                )
            )
        if self.max_cpu_seconds is not None:
            if answer.cpu_seconds is None:
                failures.append(
                    Failure("max_cpu_seconds", "max_cpu_seconds: this engine does not report CPU time")
                )
            elif answer.cpu_seconds > self.max_cpu_seconds:
                failures.append(
                    Failure(
                        "max_cpu_seconds",
                        f"max_cpu_seconds {self.max_cpu_seconds} exceeded: "
                        f"used {answer.cpu_seconds:.2f}s of CPU",
                    )
                )
        if self.max_new_tokens is not None and answer.new_tokens > self.max_new_tokens:
            failures.append(
                Failure(
                    "max_new_tokens",
                    f"max_new_tokens {self.max_new_tokens} exceeded: {answer.new_tokens} tokens",
                )
            )
        return failures

    def describe(self) -> list[str]:
        """One human line per expectation, for reports and summaries."""
        lines = [f"contains {n!r}" for n in self.contains]
        if self.all_of:
            lines.append(f"all_of {list(self.all_of)!r}")
        if self.any_of:
            lines.append(f"any_of {list(self.any_of)!r}")
        lines.extend(f"not_contains {n!r}" for n in self.not_contains)
        lines.extend(f"regex /{p}/" for p in self.regex)  # as written: repr() would double backslashes
        if self.max_seconds is not None:
            lines.append(f"max_seconds <= {self.max_seconds}")
        if self.max_cpu_seconds is not None:
            lines.append(f"max_cpu_seconds <= {self.max_cpu_seconds}")
        if self.max_new_tokens is not None:
            lines.append(f"max_new_tokens <= {self.max_new_tokens}")
        if self.ignore_case is False:
            lines.append("ignore_case False (case-sensitive matching)")
        lines.extend(f"judge {r!r}" for r in self.judge)
        return lines

    def kinds(self) -> list[str]:
        """The expectation keys in use, in check order (rescoring tables group by them)."""
        return [key for key in EXPECTATION_KEYS if key != "ignore_case" and getattr(self, key)
                not in ((), None)]

    def without_judge(self) -> Expectations:
        return dataclasses.replace(self, judge=())

    def only(self, kind: str) -> Expectations:
        """Just one kind of expectation (with the same case rule), for per-kind scoring."""
        kept = {kind: getattr(self, kind)}
        return Expectations(ignore_case=self.ignore_case, **kept)

    def to_dict(self) -> dict[str, object]:
        """JSON-able form that ``parse_expectations`` turns back into an equal object."""
        out: dict[str, object] = {}
        for key in ("contains", "all_of", "any_of", "not_contains", "regex"):
            values: tuple[str, ...] = getattr(self, key)
            if values:
                out[key] = list(values)
        if self.max_seconds is not None:
            out["max_seconds"] = self.max_seconds
        if self.max_cpu_seconds is not None:
            out["max_cpu_seconds"] = self.max_cpu_seconds
        if self.max_new_tokens is not None:
            out["max_new_tokens"] = self.max_new_tokens
        if self.ignore_case is not None:
            out["ignore_case"] = self.ignore_case
        if self.judge:
            out["judge"] = list(self.judge)
        return out


def parse_expectations(data: Mapping[str, object], *, where: str = "llm_expect()") -> Expectations:
    """Validate user-written expectations (keyword arguments or a YAML mapping).

    ``where`` names the source in error messages: ``llm_expect()`` reads as
    ``llm_expect(key=...)``, anything else as ``<where>.key``.
    """
    if not isinstance(data, Mapping):
        raise ExpectationError(
            f"{where} must be a mapping of expectations, got {short_repr(data)}; "
            f"allowed keys: {_ALLOWED_TEXT}"
        )
    for key in data:
        if key not in EXPECTATION_KEYS:
            raise ExpectationError(
                f"unknown expectation {short_repr(key)} in {where}; allowed: {_ALLOWED_TEXT}"
            )

    ignore_case = data.get("ignore_case")
    if ignore_case is not None and not isinstance(ignore_case, bool):
        raise ExpectationError(
            f"{_label(where, 'ignore_case')} must be true or false, got {short_repr(ignore_case)}"
        )

    lists = {
        key: _needles(data[key], where, key)
        for key in ("contains", "all_of", "any_of", "not_contains")
        if key in data
    }
    patterns = _patterns(data["regex"], where) if "regex" in data else ()
    rubrics = tuple(_as_list(data["judge"], where, "judge")) if "judge" in data else ()
    max_seconds, max_cpu_seconds = (
        _positive_number(data[key], where, key) if key in data else None
        for key in ("max_seconds", "max_cpu_seconds")
    )
    max_new_tokens = (
        _positive_int(data["max_new_tokens"], where) if "max_new_tokens" in data else None
    )
    return Expectations(
        contains=lists.get("contains", ()),
        all_of=lists.get("all_of", ()),
        any_of=lists.get("any_of", ()),
        not_contains=lists.get("not_contains", ()),
        regex=patterns,
        max_seconds=max_seconds,
        max_cpu_seconds=max_cpu_seconds,
        max_new_tokens=max_new_tokens,
        ignore_case=ignore_case,
        judge=rubrics,
    )


def format_failure(failures: Sequence[Failure], answer: Answer) -> str:
    """Message for ``pytest.fail``: the first line alone must explain the failure,
    since it is all that ``-rA`` short summaries show."""
    if failures:
        head = f"LLM answer failed expectation: {failures[0].message}"
        if len(failures) > 1:
            head += f" (and {len(failures) - 1} more)"
    else:
        head = "LLM answer met all expectations"
    lines = [head]
    lines.extend(f"  - {f.message}" for f in failures)
    lines.append("answer:")
    body = answer.text.splitlines() or ["<empty answer>"]
    lines.extend(f"    {line}" for line in body)
    return "\n".join(lines)


# -- validation helpers ---------------------------------------------------------


def _label(where: str, key: str) -> str:
    if where.endswith("()"):
        return f"{where[:-1]}{key}=...)"
    return f"{where}.{key}"


def short_repr(value: object, limit: int = 60) -> str:
    """repr() kept to one short line so error messages stay one line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_list(value: object, where: str, key: str) -> list[str]:
    """Accept a str or a non-empty list of non-empty str."""
    label = _label(where, key)
    expected = "a non-empty string or a non-empty list of strings"
    if isinstance(value, str):
        items: list[object] = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
        if not items:
            raise ExpectationError(f"{label} must be {expected}, got an empty list")
    else:
        raise ExpectationError(f"{label} must be {expected}, got {short_repr(value)}")
    result: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ExpectationError(f"{label} must be {expected}, got item {short_repr(item)}")
        if not item:
            raise ExpectationError(f"{label} must be {expected}, got an empty string")
        result.append(item)
    return result


def _needles(value: object, where: str, key: str) -> tuple[str, ...]:
    needles = _as_list(value, where, key)
    for needle in needles:
        if not normalize(needle, ignore_case=False):
            raise ExpectationError(
                f"{_label(where, key)} needle {short_repr(needle)} is only whitespace/punctuation, "
                "which matching ignores; use regex for exact punctuation"
            )
    return tuple(needles)


def _patterns(value: object, where: str) -> tuple[str, ...]:
    patterns = _as_list(value, where, "regex")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ExpectationError(
                f"{_label(where, 'regex')} invalid regular expression {short_repr(pattern)}: {exc}"
            ) from None
    return tuple(patterns)


def _positive_number(value: object, where: str, key: str) -> float:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
    if not ok:
        raise ExpectationError(
            f"{_label(where, key)} must be a positive number, got {short_repr(value)}"
        )
    assert isinstance(value, (int, float))
    return value


def _positive_int(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ExpectationError(
            f"{_label(where, 'max_new_tokens')} must be a positive integer, got {short_repr(value)}"
        )
    return value


def _union(first: Iterable[str], second: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*first, *second]))


def _stricter(a: _Limit | None, b: _Limit | None) -> _Limit | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
