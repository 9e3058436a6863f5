"""Session reports: one HTML page, one Markdown summary and one JSON file, all from the
same ``SessionResults``. Pure functions of the data so they can be tested without
running models; matplotlib and jsonschema are imported only when actually needed so the
plugin stays fast to import."""

from __future__ import annotations

import html
import json
import math
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pytest_llmcheck.reporting.results import CaseResult, ModelResult, SessionResults

SCHEMA_VERSION = 1
SCHEMA_FILE = "report.schema.json"
DEFAULT_TITLE = "pytest-llmcheck report"
LONG_ANSWER = 300  # characters; longer answers are collapsed behind a preview
MD_ANSWER = 300  # characters of an answer shown in Markdown (step summaries are capped)

FONT_STACK = (
    '-apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans CJK SC", '
    '"WenQuanYi Micro Hei", "Microsoft YaHei", "PingFang SC", sans-serif'
)
CJK_FONTS = [
    "Noto Sans CJK SC",
    "WenQuanYi Micro Hei",
    "Microsoft YaHei",
    "PingFang SC",
]

VERDICT_MARK = {  # Markdown: GitHub renders emoji
    "pass": "✅",
    "fail": "❌",
    "error": "💥",
    "skipped": "⏭️",
    "pending": "⏳",
}
# HTML: plain symbols that common text fonts (DejaVu, Noto) have, so no emoji font is
# needed where CI takes screenshots.
HTML_MARK = {"pass": "✓", "fail": "✗", "error": "⚠", "skipped": "○", "pending": "…"}
SNAPSHOT_LABEL = {
    "new": "new snapshot",
    "missing": "snapshot missing (none recorded yet)",
    "unchanged": "snapshot unchanged",
    "changed": "snapshot changed",
    "drifted": "drifted within tolerance",
    "not-comparable": "snapshot not comparable (native numerics, recorded on another CPU)",
}


def snapshot_label(case: CaseResult) -> str:
    """The snapshot status in words; a drifted answer says how similar it still is."""
    label = SNAPSHOT_LABEL.get(case.snapshot, "")
    if case.snapshot == "drifted" and case.snapshot_similarity is not None:
        label += f" ({case.snapshot_similarity:.2f})"
    if case.pending is not None:
        label += " · pending review"
    return label


def judge_label(case: CaseResult) -> str:
    """``judge P(yes) 0.93, 0.12`` for the report cells."""
    if not case.judgements:
        return ""
    return "judge P(yes) " + ", ".join(f"{j['probability']:.2f}" for j in case.judgements[-8:])


# --------------------------------------------------------------------------- JSON


def _clean(value: Any) -> Any:
    """Turn anything into strict JSON data: NaN/inf become null (json.dumps would write
    invalid JSON), tuples become lists, unknown objects become their str()."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _question_info(results: SessionResults) -> list[dict[str, Any]]:
    """Rows of the report: id, prompt and reference answer of every question, taken from
    the first model that ran it."""
    rows: dict[str, dict[str, Any]] = {}
    for model in results.models.values():
        for cid, case in model.cases.items():
            row = rows.setdefault(
                cid, {"id": cid, "prompt": case.prompt, "reference": case.reference, "checks": case.checks}
            )
            if row["reference"] is None and case.reference is not None:
                row["reference"] = case.reference
            if not row["checks"]:
                row["checks"] = case.checks
    return [rows[cid] for cid in results.case_ids]


def to_json(results: SessionResults) -> dict[str, Any]:
    """The machine-readable report (see report.schema.json); stable keys for CI tools."""
    data = results.to_dict()
    data["schema_version"] = SCHEMA_VERSION
    data["tool"] = "pytest-llmcheck"
    data["question_details"] = _question_info(results)
    cleaned: dict[str, Any] = _clean(data)
    return cleaned


def load_schema() -> dict[str, Any]:
    """The JSON Schema shipped inside the package."""
    from importlib.resources import files

    text = files("pytest_llmcheck.reporting").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_json(data: Any) -> None:
    """Raise ``jsonschema.ValidationError`` when ``data`` is not a valid report."""
    import jsonschema

    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(data)


# --------------------------------------------------------------------------- formatting


def _fmt_seconds(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def _fmt_tps(value: float) -> str:
    return f"{value:.1f} tok/s" if value and math.isfinite(value) else "– tok/s"


def _fmt_rate(model: ModelResult) -> str:
    decided = model.decided
    if not decided:
        return "–"
    return f"{model.pass_rate * 100:.0f}% ({model.passed}/{len(decided)})"


def _verdict_word(case: CaseResult) -> str:
    word = case.verdict
    if case.soft and case.verdict == "fail":
        word = "fail (soft)"
    return word


def _repeats(case: CaseResult) -> str | None:
    """'passes/required of N' when the question was asked more than once."""
    if len(case.answers) > 1 or case.required_passes > 1:
        return f"{case.passes}/{case.required_passes} passes ({len(case.answers)} runs)"
    return None


def _preview(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def chart_labels(ids: Sequence[str], limit: int = 24) -> list[str]:
    """One distinct x-axis label per question, at most ``limit`` characters where possible.

    Long ids are cut in the middle (``examples/py…riddle-1``): ids of one suite share
    their start and differ at the end, so cutting the end made them all the same label.
    Labels still equal after that get their position appended (``… #3``)."""
    head = (limit - 1) // 2
    labels = []
    for qid in ids:
        text = " ".join(qid.split())
        labels.append(text if len(text) <= limit else f"{text[:head]}…{text[-(limit - 1 - head):]}")
    counts = Counter(labels)
    return [f"{label} #{i + 1}" if counts[label] > 1 else label for i, label in enumerate(labels)]


# --------------------------------------------------------------------------- Markdown


def _md(text: str) -> str:
    """Make text safe inside a GitHub table cell: HTML-escaped, pipes escaped, line
    breaks as <br> (a raw newline would end the table row)."""
    text = html.escape(text, quote=False).replace("|", "\\|")
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def _md_cell(case: CaseResult | None) -> str:
    if case is None:
        return "—"
    head = f"{VERDICT_MARK.get(case.verdict, '')} {_verdict_word(case)}".strip()
    parts = [head]
    reps = _repeats(case)
    if reps:
        parts.append(reps)
    if case.seconds:
        parts.append(_fmt_seconds(case.median_seconds))
    if case.tokens_per_second:
        parts.append(_fmt_tps(case.median_tokens_per_second))
    if case.snapshot in SNAPSHOT_LABEL:
        parts.append(snapshot_label(case))
    if case.judgements:
        parts.append(judge_label(case))
    line = "**" + _md(" · ".join(parts)) + "**"
    if case.failed_expectation:
        line += "<br>_" + _md(case.failed_expectation) + "_"
    answer = case.answer
    if answer:
        short = answer if len(answer) <= MD_ANSWER else answer[: MD_ANSWER - 1] + "…"
        line += "<br>" + _md(short)
    return line


_MD_MODELS_HEAD = (
    "| model | source | load s | quantize s | pass rate | median s | total s | tok/s |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
)


def _prepare(model: ModelResult, unit: str = "") -> str:
    """Quantize/convert time in this session; "cached" rather than a misleading 0.00 s."""
    return "cached" if model.from_cache else f"{model.quantize_seconds:.2f}{unit}"


def _md_model_rows(models: Iterable[ModelResult]) -> list[str]:
    return [
        f"| {_md(m.name)} | {_md(m.source or '–')} | {m.load_seconds:.2f} | "
        f"{_prepare(m)} | {_md(_fmt_rate(m))} | {m.median_seconds:.2f} | "
        f"{m.total_seconds:.2f} | {m.median_tokens_per_second:.1f} |"
        for m in models
    ]


def to_markdown(results: SessionResults, title: str = DEFAULT_TITLE) -> str:
    """A compact summary for GITHUB_STEP_SUMMARY: per-model table, then the grid."""
    models = list(results.models.values())
    out = [f"# {_md(title)}", "", *_MD_MODELS_HEAD, *_md_model_rows(models), ""]
    questions = _question_info(results)
    if questions and models:
        out.append("| question | " + " | ".join(_md(m.name) for m in models) + " |")
        out.append("|---|" + "---|" * len(models))
        for q in questions:
            head = f"**{_md(q['id'])}**<br>{_md(_preview(q['prompt'], 120))}"
            cells = [_md_cell(m.cases.get(q["id"])) for m in models]
            out.append(f"| {head} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- step summary

STEP_SUMMARY_LIMIT = 900_000  # bytes; GitHub refuses a step summary over 1 MiB
_PROBLEM_HEAD = (
    "| question | model | verdict | failed expectation | answer |",
    "|---|---|---|---|---|",
)


def _is_problem(case: CaseResult) -> bool:
    return case.verdict != "pass" or case.snapshot in ("changed", "missing", "not-comparable")


def _md_problem_row(qid: str, prompt: str, case: CaseResult) -> str:
    verdict = [f"{VERDICT_MARK.get(case.verdict, '')} {_verdict_word(case)}".strip()]
    reps = _repeats(case)
    if reps:
        verdict.append(reps)
    if case.snapshot in SNAPSHOT_LABEL:
        verdict.append(snapshot_label(case))
    question = f"**{_md(qid)}**<br>{_md(_preview(prompt, 80))}"
    why = _md(_preview(case.failed_expectation, MD_ANSWER)) if case.failed_expectation else "–"
    answer = _md(_preview(case.answer, MD_ANSWER)) if case.answer else "–"
    return f"| {question} | {_md(case.model)} | {_md(' · '.join(verdict))} | {why} | {answer} |"


def _utf8(text: str) -> int:
    return len(text.encode("utf-8"))


def _fit_rows(head: Sequence[str], rows: list[str], budget: int) -> tuple[list[str], int]:
    """A Markdown table (``head`` + as many ``rows`` as fit in ``budget`` UTF-8 bytes,
    counting one newline per line), followed, when rows had to be dropped, by a blank
    line and "… N more rows omitted". Returns the lines and the bytes they take."""
    lines = list(head)
    used = sum(_utf8(line) + 1 for line in lines)
    for i, row in enumerate(rows):
        left = len(rows) - i - 1
        # room for this row plus, if rows remain after it, the omission note
        note = _utf8(f"\n… {left} more rows omitted") + 2 if left else 0
        size = _utf8(row) + 1
        if used + size + note > budget:
            tail = ["", f"… {len(rows) - i} more rows omitted"]
            return lines + tail, used + sum(_utf8(t) + 1 for t in tail)
        lines.append(row)
        used += size
    return lines, used


def step_summary(
    results: SessionResults,
    *,
    limit_bytes: int = STEP_SUMMARY_LIMIT,
    title: str = DEFAULT_TITLE,
    report_dir: Path | str | None = None,
) -> str:
    """A short Markdown summary for ``$GITHUB_STEP_SUMMARY`` (GitHub caps it at 1 MiB):
    the per-model table, then only the cells that did not pass or whose snapshot
    changed or is missing, then how many passing cells were left out. Rows that do not fit are
    dropped with a "… N more rows omitted" line, so the text, UTF-8 encoded, always
    stays under ``limit_bytes`` (which must leave room for the title and table heads)."""
    models = list(results.models.values())
    problems: list[str] = []
    left_out = 0
    for q in _question_info(results):
        for m in models:
            case = m.cases.get(q["id"])
            if case is None:
                continue
            if _is_problem(case):
                problems.append(_md_problem_row(q["id"], q["prompt"], case))
            else:
                left_out += 1
    where = f" (`{_md(str(report_dir))}`)" if report_dir is not None else " (written with --llm-report=DIR)"
    footer = [
        f"{left_out} passing cell{'s' if left_out != 1 else ''} left out; "
        f"the full report is in the report folder{where}.",
        "",
    ]
    head = [f"# {_md(title)}", ""]
    budget = limit_bytes - 1 - sum(_utf8(line) + 1 for line in head + footer)
    # The per-model table first; the problem cells get what it leaves.
    model_lines, used = _fit_rows(_MD_MODELS_HEAD, _md_model_rows(models), budget // 2)
    out = [*head, *model_lines, ""]
    budget -= used + 1
    if problems:
        section = ["## Failures, changed and missing snapshots", ""]
        budget -= sum(_utf8(line) + 1 for line in section) + 1
        problem_lines, _ = _fit_rows(_PROBLEM_HEAD, problems, budget)
        out += [*section, *problem_lines, ""]
    elif models:
        out += ["No failures and no changed snapshots.", ""]
    text = "\n".join(out + footer)
    if _utf8(text) >= limit_bytes:  # a limit too small even for the heads
        text = text.encode("utf-8")[: max(limit_bytes - 1, 0)].decode("utf-8", "ignore")
        text = text[: text.rfind("\n") + 1] if "\n" in text else ""
    return text


# --------------------------------------------------------------------------- chart


def latency_svg(results: SessionResults) -> str:
    """Grouped bar chart (x = question, one bar per model, y = median seconds) as an
    inline <svg> element. Text stays real <text> so the browser lays out Chinese with
    its own fonts."""
    import matplotlib

    matplotlib.use("Agg")
    from io import StringIO

    from matplotlib.figure import Figure

    models = list(results.models.values())
    qids = results.case_ids
    n_q, n_m = len(qids), max(len(models), 1)
    # Width grows with questions and models; capped so 100 questions stay a page that
    # scrolls horizontally instead of a canvas the browser chokes on.
    width = min(max(6.0, 1.5 + n_q * (0.3 + 0.12 * n_m)), 60.0)
    rc = {
        "svg.fonttype": "none",  # real <text>: the browser picks CJK fonts
        "svg.hashsalt": "pytest-llmcheck",  # stable ids, reproducible files
        "font.family": "sans-serif",
        "font.sans-serif": ["DejaVu Sans", *CJK_FONTS],
        "font.size": 9,
    }
    with matplotlib.rc_context(rc), warnings.catch_warnings():  # type: ignore[arg-type]
        warnings.simplefilter("ignore")  # missing CJK glyphs in matplotlib's own fonts
        fig = Figure(figsize=(width, 4.2))
        ax = fig.add_subplot()
        if n_q and models:
            bar_w = 0.8 / n_m
            cmap = matplotlib.colormaps["tab20" if n_m > 10 else "tab10"]
            for i, m in enumerate(models):
                xs: list[float] = []
                ys: list[float] = []
                for qi, qid in enumerate(qids):
                    case = m.cases.get(qid)
                    if case is not None and case.seconds:
                        xs.append(qi - 0.4 + bar_w * (i + 0.5))
                        ys.append(case.median_seconds)
                ax.bar(xs, ys, width=bar_w, label=m.name, color=cmap(i % cmap.N))
            ax.set_xticks(range(n_q))
            labels = chart_labels(qids)
            ax.set_xticklabels(
                labels,
                rotation=45 if n_q > 8 else 0,
                ha="right" if n_q > 8 else "center",
            )
            ax.set_xlim(-0.6, n_q - 0.4)
            # Legend above the plot, left-aligned: visible without scrolling a wide chart.
            ax.legend(
                loc="lower left",
                bbox_to_anchor=(0.0, 1.02),
                fontsize=8,
                frameon=False,
                ncol=min(n_m, 10),
            )
        else:
            ax.text(
                0.5,
                0.5,
                "no latency data",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        ax.set_ylabel("seconds (median per question)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        fig.tight_layout()
        buf = StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # drop XML prolog and doctype: invalid inside HTML
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.DOTALL)
    return svg.replace("<svg ", '<svg role="img" aria-label="latency chart" ', 1)


# --------------------------------------------------------------------------- HTML

_CSS = """
:root { --pass:#1a7f37; --fail:#cf222e; --error:#8250df; --skip:#6e7781; --line:#d0d7de;
  --bg:#f6f8fa; }
* { box-sizing: border-box; }
body { font-family: %(font)s; margin: 0; padding: 1rem 1.5rem; color: #1f2328;
  background: #fff; line-height: 1.45; font-size: 14px; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.15rem; margin: 1.5rem 0 .5rem; }
.summary { color: #57606a; margin: 0 0 .5rem; }
table { border-collapse: separate; border-spacing: 0; }
.models-wrap { overflow-x: auto; }
#models table { font-size: 13px; }
#models th, #models td { border-bottom: 1px solid var(--line); padding: .35rem .6rem;
  text-align: left; vertical-align: top; white-space: nowrap; }
#models td.num { text-align: right; font-variant-numeric: tabular-nums; }
#models thead th { background: var(--bg); }
#models td.quant, #models td.fp { white-space: normal; max-width: 28em; }
.rate { display: inline-block; width: 5em; height: .6em; background: #ffd8d3;
  border-radius: 3px; overflow: hidden; vertical-align: middle; margin-right: .4em; }
.rate > span { display: block; height: 100%%; background: var(--pass); }
pre { white-space: pre-wrap; word-break: break-word; margin: .25rem 0; font-size: 12px;
  background: var(--bg); padding: .4rem; border-radius: 4px; }
details > summary { cursor: pointer; color: #0969da; }
.chart-wrap { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px;
  padding: .5rem; }
.chart-wrap svg { display: block; max-width: none; height: auto; }
.controls { margin: .25rem 0 .5rem; display: flex; gap: 1.5rem; flex-wrap: wrap; }
.grid-wrap { overflow: auto; max-height: 85vh; border: 1px solid var(--line);
  border-radius: 6px; }
#grid { font-size: 13px; }
#grid th, #grid td { border-right: 1px solid var(--line); border-bottom: 1px solid var(--line);
  vertical-align: top; text-align: left; padding: 0; }
#grid thead th { position: sticky; top: 0; z-index: 2; background: var(--bg);
  padding: .4rem .6rem; min-width: 16rem; max-width: 26rem; }
#grid thead th.corner { left: 0; z-index: 3; min-width: 14rem; }
#grid tbody th { position: sticky; left: 0; z-index: 1; background: #fff;
  font-weight: normal; width: 16rem; min-width: 14rem; max-width: 18rem; }
#grid .qhead, #grid .cell-inner { max-height: 18rem; overflow: auto; padding: .4rem .6rem; }
#grid .qid { font-weight: 600; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
#grid .prompt { margin-top: .2rem; white-space: pre-wrap; word-break: break-word; }
#grid .reference { margin-top: .3rem; color: #57606a; font-size: 12px; white-space: pre-wrap; }
#grid .checks { margin-top: .3rem; color: #57606a; font-size: 12px; font-family: ui-monospace, monospace; }
#grid td.cell { min-width: 16rem; max-width: 26rem; }
#grid td.cell-fail { background: #fff5f5; }
#grid td.cell-error { background: #faf5ff; }
#grid td.cell-missing { color: #8c959f; }
#grid.only-problems tbody tr:not(.has-problem) { display: none; }
.meta { display: flex; flex-wrap: wrap; gap: .3rem .6rem; align-items: baseline;
  font-size: 12px; color: #57606a; }
.verdict { font-weight: 700; font-size: 13px; }
.verdict-pass { color: var(--pass); }
.verdict-fail { color: var(--fail); }
.verdict-error { color: var(--error); }
.verdict-skipped, .verdict-pending { color: var(--skip); }
.badge { border-radius: 999px; padding: 0 .45em; font-size: 11px; border: 1px solid; }
.snap-new { color: #0969da; }
.snap-unchanged { color: var(--skip); }
.snap-changed { color: #9a6700; background: #fff8c5; }
.snap-missing { color: #9a6700; }
.snap-not-comparable { color: var(--skip); border-style: dashed; }
.why { color: var(--fail); font-size: 12px; margin-top: .2rem; white-space: pre-wrap;
  word-break: break-word; }
.answer { margin-top: .3rem; white-space: pre-wrap; word-break: break-word; }
.answer-long > summary { color: inherit; }
.answer-long > summary .more { color: #0969da; }
.answer-long[open] > summary .preview { display: none; }
.repeat { margin-top: .3rem; border-top: 1px dashed var(--line); padding-top: .2rem; }
.diff .add { color: var(--pass); }
.diff .del { color: var(--fail); }
footer { margin-top: 1rem; color: #8c959f; font-size: 12px; }
"""

_JS = """
(function () {
  var grid = document.getElementById('grid');
  var only = document.getElementById('only-problems');
  var expand = document.getElementById('expand-all');
  if (grid && only) {
    only.addEventListener('change', function () {
      grid.classList.toggle('only-problems', only.checked);
    });
  }
  if (grid && expand) {
    expand.addEventListener('change', function () {
      var ds = grid.querySelectorAll('details.answer-long');
      for (var i = 0; i < ds.length; i++) { ds[i].open = expand.checked; }
    });
  }
})();
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _diff_html(diff: str) -> str:
    """Colour unified-diff lines; everything escaped."""
    lines = []
    for line in diff.splitlines():
        cls = ""
        if line.startswith("+") and not line.startswith("+++"):
            cls = "add"
        elif line.startswith("-") and not line.startswith("---"):
            cls = "del"
        lines.append(f'<span class="{cls}">{_e(line)}</span>' if cls else _e(line))
    return "\n".join(lines)


def _answer_html(text: str) -> str:
    if len(text) <= LONG_ANSWER:
        return f'<div class="answer">{_e(text)}</div>'
    preview = _e(_preview(text, 160))
    return (
        '<details class="answer-long"><summary><span class="preview">'
        f'{preview}</span> <span class="more">({len(text)} chars, show all)</span></summary>'
        f'<div class="answer">{_e(text)}</div></details>'
    )


def _cell_html(model: ModelResult, qid: str) -> str:
    case = model.cases.get(qid)
    attrs = f'data-model="{_e(model.name)}" data-case="{_e(qid)}"'
    if case is None:
        return (
            f'<td class="cell cell-missing" {attrs} data-verdict="none"><div class="cell-inner">—</div></td>'
        )
    v = case.verdict
    meta = [f'<span class="verdict verdict-{_e(v)}">{HTML_MARK.get(v, "")} {_e(_verdict_word(case))}</span>']
    reps = _repeats(case)
    if reps:
        meta.append(f'<span class="passes">{_e(reps)}</span>')
    if case.seconds:
        meta.append(f'<span class="secs">{_fmt_seconds(case.median_seconds)}</span>')
    if case.tokens_per_second:
        meta.append(f'<span class="tps">{_fmt_tps(case.median_tokens_per_second)}</span>')
    if case.snapshot in SNAPSHOT_LABEL:
        meta.append(f'<span class="badge snap-{_e(case.snapshot)}">{_e(snapshot_label(case))}</span>')
    if case.judgements:
        meta.append(f'<span class="judge">{_e(judge_label(case))}</span>')
    body = [f'<div class="meta">{"".join(meta)}</div>']
    if case.failed_expectation:
        body.append(f'<div class="why">{_e(case.failed_expectation)}</div>')
    if case.snapshot in ("changed", "drifted") and case.snapshot_diff:
        body.append(
            '<details class="diff"><summary>snapshot diff</summary>'
            f"<pre>{_diff_html(case.snapshot_diff)}</pre></details>"
        )
    body.append(_answer_html(case.answer))
    if len(case.answers) > 1:
        earlier = "".join(
            f'<div class="repeat"><span class="meta">run {i + 1}</span>{_answer_html(a)}</div>'
            for i, a in enumerate(case.answers[:-1])
        )
        body.append(
            f"<details><summary>{len(case.answers) - 1} earlier answer(s)</summary>{earlier}</details>"
        )
    return (
        f'<td class="cell cell-{_e(v)}" {attrs} data-verdict="{_e(v)}">'
        f'<div class="cell-inner">{"".join(body)}</div></td>'
    )


def _models_html(models: Iterable[ModelResult]) -> str:
    rows = []
    for m in models:
        decided = m.decided
        pct = m.pass_rate * 100 if decided else 0.0
        counts = ", ".join(
            f"{n} {v}"
            for v in ("pass", "fail", "error", "skipped")
            if (n := sum(c.verdict == v for c in m.cases.values()))
        )
        fp = json.dumps(_clean(m.fingerprint), indent=2, ensure_ascii=False, sort_keys=True)
        rows.append(
            f'<tr data-model="{_e(m.name)}">'
            f'<th scope="row">{_e(m.name)}</th>'
            f"<td>{_e(m.source or '–')}</td>"
            f'<td class="num">{m.load_seconds:.2f} s</td>'
            f'<td class="num">{_prepare(m, " s")}</td>'
            f'<td class="quant">{_e(m.quant_summary or "–")}</td>'
            f'<td><span class="rate"><span style="width:{pct:.0f}%"></span></span>'
            f'{_e(_fmt_rate(m))}<div class="summary">{_e(counts)}</div></td>'
            f'<td class="num">{_fmt_seconds(m.median_seconds)}</td>'
            f'<td class="num">{_fmt_seconds(m.total_seconds)}</td>'
            f'<td class="num">{_fmt_tps(m.median_tokens_per_second)}</td>'
            f'<td class="fp"><details><summary>fingerprint</summary><pre>{_e(fp)}</pre></details></td>'
            "</tr>"
        )
    return (
        '<div class="models-wrap"><table><thead><tr><th>model</th><th>source</th><th>load</th>'
        "<th>quantize</th><th>quantization</th><th>pass rate</th><th>median</th><th>total</th>"
        "<th>speed</th><th>fingerprint</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
    )


def _grid_html(results: SessionResults) -> str:
    models = list(results.models.values())
    head = '<th class="corner" scope="col">question</th>' + "".join(
        f'<th scope="col" data-model="{_e(m.name)}">{_e(m.name)}</th>' for m in models
    )
    rows = []
    for q in _question_info(results):
        qid = q["id"]
        problem = any(
            (c := m.cases.get(qid)) is None or _is_problem(c) for m in models
        )
        ref = q["reference"]
        problem_attr = ' class="has-problem"' if problem else ""
        ref_html = f'<div class="reference">reference: {_e(ref)}</div>' if ref else ""
        if q["checks"]:
            ref_html += f'<div class="checks">checks: {_e("; ".join(q["checks"]))}</div>'
        rows.append(
            f'<tr data-case="{_e(qid)}"{problem_attr}>'
            f'<th scope="row"><div class="qhead"><div class="qid">{_e(qid)}</div>'
            f'<div class="prompt">{_e(q["prompt"])}</div>{ref_html}</div></th>'
            + "".join(_cell_html(m, qid) for m in models)
            + "</tr>"
        )
    return f'<table id="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def to_html(results: SessionResults, title: str = DEFAULT_TITLE, *, chart: bool = True) -> str:
    """One self-contained page (inline CSS, SVG and a few lines of JS; no network) that
    opens from file:// and from a CI artifact alike."""
    models = list(results.models.values())
    cases = [c for m in models for c in m.cases.values()]
    counts = {v: sum(c.verdict == v for c in cases) for v in ("pass", "fail", "error", "skipped")}
    summary = f"{len(models)} model(s) × {len(results.case_ids)} question(s): " + ", ".join(
        f"{n} {v}" for v, n in counts.items()
    )
    if missing := sum(c.snapshot == "missing" for c in cases):  # their tests fail until recorded
        summary += f"; {missing} answer snapshot(s) missing"
    if apart := sum(c.snapshot == "not-comparable" for c in cases):  # their tests were skipped
        summary += f"; {apart} answer snapshot(s) not comparable (native numerics, another CPU)"
    chart_html = latency_svg(results) if chart else ""
    csp = (
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "img-src data:; font-src 'none'"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS % {'font': FONT_STACK}}</style>\n</head>\n<body>\n"
        f'<header><h1>{_e(title)}</h1><p class="summary">{_e(summary)}</p></header>\n'
        f'<section id="models"><h2>Models</h2>{_models_html(models)}</section>\n'
        '<section id="latency"><h2>Latency</h2>'
        f'<div id="latency-chart" class="chart-wrap">{chart_html}</div></section>\n'
        '<section id="questions"><h2>Answers</h2><div class="controls">'
        '<label><input type="checkbox" id="only-problems"> only questions with a non-pass, '
        'changed or missing snapshot</label><label><input type="checkbox" id="expand-all"> expand long '
        "answers</label></div>"
        f'<div class="grid-wrap">{_grid_html(results)}</div></section>\n'
        "<footer>generated by pytest-llmcheck</footer>\n"
        f"<script>{_JS}</script>\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------- files


def write_report(results: SessionResults, folder: Path, *, title: str = DEFAULT_TITLE) -> dict[str, Path]:
    """Write report.html, report.md and report.json into ``folder``; returns their paths
    under the keys "html", "md" and "json"."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "html": folder / "report.html",
        "md": folder / "report.md",
        "json": folder / "report.json",
    }
    paths["json"].write_text(
        json.dumps(to_json(results), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    paths["md"].write_text(to_markdown(results, title), encoding="utf-8")
    paths["html"].write_text(to_html(results, title), encoding="utf-8")
    return paths
