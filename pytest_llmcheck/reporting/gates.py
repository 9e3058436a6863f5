"""Session-level CI gates, decided from the results after the last test."""

from __future__ import annotations

from pytest_llmcheck.config.settings import Settings
from pytest_llmcheck.reporting.results import SessionResults


def gate_failures(results: SessionResults, settings: Settings) -> list[str]:
    """One line per failed gate; empty when every gate holds."""
    failures: list[str] = []
    if settings.min_pass_rate is not None:
        for model in results.models.values():
            decided = model.decided
            if decided and model.pass_rate < settings.min_pass_rate:
                passed = model.passed
                errors = sum(c.verdict == "error" for c in decided)
                detail = f"{passed}/{len(decided)} questions passed"
                if errors:
                    detail += f", {errors} errors"
                failures.append(
                    f"llmcheck gate --llm-min-pass-rate={settings.min_pass_rate:g} failed for model "
                    f"{model.name!r}: {_percent(model.pass_rate, settings.min_pass_rate)} ({detail})"
                )
    return failures


def _percent(rate: float, threshold: float) -> str:
    """``rate`` as a percentage with enough digits that it does not read as the threshold
    (79.96% must not show as "80%" next to ``--llm-min-pass-rate=0.8``)."""
    for digits in range(4):
        text = f"{rate:.{digits}%}"
        if float(text[:-1]) / 100 < threshold:
            return text
    return f"{rate:.4%}"
