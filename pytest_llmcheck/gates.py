"""Session-level CI gates, decided from the results after the last test."""

from __future__ import annotations

from .results import SessionResults
from .settings import Settings


def gate_failures(results: SessionResults, settings: Settings) -> list[str]:
    """One line per failed gate; empty when every gate holds."""
    failures: list[str] = []
    if settings.min_pass_rate is not None:
        for model in results.models.values():
            decided = model.decided
            if decided and model.pass_rate < settings.min_pass_rate:
                passed = sum(c.verdict == "pass" for c in decided)
                failures.append(
                    f"llmcheck gate --llm-min-pass-rate={settings.min_pass_rate:g} failed for model "
                    f"{model.name!r}: {model.pass_rate:.0%} ({passed}/{len(decided)} questions passed)"
                )
    return failures
