"""The end-of-session table on the terminal: per model, then per question."""

from __future__ import annotations

from pytest_llmcheck.reporting.results import CaseResult, SessionResults

_VERDICT = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skipped": "SKIP", "pending": "-"}


def _verdict(case: CaseResult) -> str:
    text = _VERDICT.get(case.verdict, case.verdict)
    if case.soft and case.verdict == "fail":
        text += " (soft)"
    if len(case.answers) > 1:
        text += f" {case.passes}/{len(case.answers)}"
    return text


def _snapshot(case: CaseResult) -> str:
    """The snapshot column; a missing snapshot says so, as it alone fails a passing answer's test."""
    if case.snapshot == "drifted" and case.snapshot_similarity is not None:
        return f"drifted within tolerance ({case.snapshot_similarity:.2f})"
    if case.snapshot == "missing":
        return f"missing (none recorded yet{', pending review' if case.pending else ''})"
    if case.snapshot == "not-comparable":
        return "not comparable (native numerics, another CPU)"
    return case.snapshot + (" (pending review)" if case.pending else "")


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
        rows = [("question", "verdict", "seconds", "cpu s", "tok/s", "snapshot")]
        for case in model.cases.values():
            answered = bool(case.seconds)  # a case whose model never loaded has no figures
            cpu = case.median_cpu_seconds
            rows.append(
                (
                    case.case_id,
                    _verdict(case),
                    f"{case.median_seconds:.2f}" if answered else "-",
                    f"{cpu:.2f}" if cpu is not None else "-",
                    f"{case.median_tokens_per_second:.1f}" if answered else "-",
                    _snapshot(case),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = (cell.ljust(w) for cell, w in zip(row, widths, strict=False))
            lines.append("  " + "  ".join(cells).rstrip())
        decided = len(model.decided)
        if decided:
            line = f"  pass rate {model.pass_rate:.0%} ({model.passed}/{decided})"
            if any(c.seconds for c in model.cases.values()):
                line += (
                    f", median {model.median_seconds:.2f}s, total {model.total_seconds:.2f}s, "
                    f"{model.median_tokens_per_second:.1f} tok/s"
                )
                if (cpu_rate := model.tokens_per_cpu_second) is not None:
                    line += f", {cpu_rate:.1f} tok/CPU-s"
            if missing := sum(c.snapshot == "missing" for c in model.cases.values()):
                line += f"; {missing} answer snapshot(s) missing"
            if apart := sum(c.snapshot == "not-comparable" for c in model.cases.values()):
                line += f"; {apart} answer snapshot(s) not comparable (tests skipped)"
            lines.append(line)
    return lines
