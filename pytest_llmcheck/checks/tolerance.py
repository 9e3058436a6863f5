"""How close a new answer must be to its snapshot to count as the same answer.

``exact`` (the default) compares the texts as they are; ``normalized`` compares them
after the expectations' CJK-aware normalization (NFKC width folding, whitespace,
punctuation and symbols dropped); ``similar: 0.9`` passes when the normalized texts
are at least 90% alike by rapidfuzz's Indel similarity (a character-level measure, so
it works for Chinese, where a word-based one would not). An answer within tolerance
passes and its snapshot is left as it is: small drift does not churn the files.

Pure module (rapidfuzz is imported when a ``similar`` tolerance compares).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pytest_llmcheck.checks.expect import normalize

KINDS = ("exact", "normalized", "similar")
ALLOWED = "exact, normalized, or similar: <number in (0, 1]> (e.g. 'similar: 0.9')"
_SIMILAR_TEXT = re.compile(r"similar\s*[:=]?\s*([0-9.]+)")


class ToleranceError(ValueError):
    """A bad tolerance; the one-line message names the value and what is allowed."""


@dataclass(frozen=True)
class Tolerance:
    kind: str = "exact"
    threshold: float = 1.0  # only for "similar"

    def __str__(self) -> str:
        return f"similar: {self.threshold:g}" if self.kind == "similar" else self.kind

    def compare(self, old: str, new: str) -> tuple[bool, float]:
        """(within tolerance, similarity in [0, 1]) of two answers."""
        if old == new:
            return True, 1.0
        if self.kind == "exact":
            return False, similarity(old, new)
        a, b = normalize(old, ignore_case=False), normalize(new, ignore_case=False)
        score = 1.0 if a == b else similarity(a, b, normalized=True)
        if self.kind == "normalized":
            return a == b, score
        return score >= self.threshold, score


def similarity(a: str, b: str, *, normalized: bool = False) -> float:
    """rapidfuzz's normalized Indel similarity of the (normalized) texts, in [0, 1]."""
    from rapidfuzz.distance import Indel

    if not normalized:
        a, b = normalize(a, ignore_case=False), normalize(b, ignore_case=False)
    return float(Indel.normalized_similarity(a, b))


def parse_tolerance(value: object, where: str) -> Tolerance:
    """Read ``exact`` / ``normalized`` / ``similar: 0.9`` (text, or a one-key mapping)."""
    if isinstance(value, Tolerance):
        return value
    threshold: object = None
    if isinstance(value, Mapping) and len(value) == 1 and "similar" in value:
        threshold = value["similar"]
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in ("exact", "normalized"):
            return Tolerance(text)
        match = _SIMILAR_TEXT.fullmatch(text)
        if match is None:
            raise ToleranceError(f"{where}: invalid snapshot tolerance {value!r}; allowed: {ALLOWED}")
        threshold = match.group(1)
    else:
        raise ToleranceError(f"{where}: invalid snapshot tolerance {value!r}; allowed: {ALLOWED}")
    try:
        number = float(str(threshold)) if not isinstance(threshold, bool) else math.nan
    except ValueError:
        number = math.nan
    if not (0.0 < number <= 1.0):
        raise ToleranceError(
            f"{where}: similar needs a number in (0, 1], got {threshold!r}; allowed: {ALLOWED}"
        )
    return Tolerance("similar", number)
