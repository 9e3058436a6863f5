"""The end-of-session table on the terminal: per model, then per question."""

from __future__ import annotations

from .results import CaseResult, SessionResults

_VERDICT = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skipped": "SKIP", "pending": "-"}


def _verdict(case: CaseResult) -> str:
    text = _VERDICT.get(case.verdict, case.verdict)
    if case.soft and case.verdict == "fail":
        text += " (soft)"
    if len(case.answers) > 1:
        text += f" {case.passes}/{len(case.answers)}"
    return text


def summary_lines(results: SessionResults) -> list[str]:
    lines: list[str] = []
    for model in results.models.values():
        if model.loads:
            lines.append(
                f"{model.name} ({model.source}): loaded {model.loads}x in {model.load_seconds:.2f}s"
                f"{' (from cache)' if model.from_cache else ''}; "
                f"{model.quant_summary}"
            )
        else:  # failed to load: its cases are errors with the reason
            lines.append(f"{model.name}{f' ({model.source})' if model.source else ''}: not loaded")
        rows = [("question", "verdict", "seconds", "tok/s", "snapshot")]
        for case in model.cases.values():
            rows.append(
                (
                    case.case_id,
                    _verdict(case),
                    f"{case.median_seconds:.2f}",
                    f"{case.median_tokens_per_second:.1f}",
                    f"drifted within tolerance ({case.snapshot_similarity:.2f})"
                    if case.snapshot == "drifted" and case.snapshot_similarity is not None
                    else case.snapshot + (" (pending review)" if case.pending else ""),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = (cell.ljust(w) for cell, w in zip(row, widths, strict=False))
            lines.append("  " + "  ".join(cells).rstrip())
        decided = len(model.decided)
        if decided:
            lines.append(
                f"  pass rate {model.pass_rate:.0%} "
                f"({model.passed}/{decided}), "
                f"median {model.median_seconds:.2f}s, total {model.total_seconds:.2f}s, "
                f"{model.median_tokens_per_second:.1f} tok/s"
            )
    return lines
