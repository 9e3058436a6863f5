"""Report writers: the three files agree, the JSON matches its schema, the HTML grid has
one cell per (question, model), everything is escaped and nothing is fetched remotely."""

from __future__ import annotations

import copy
import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pytest_llmcheck.reporting.report import (
    step_summary,
    to_html,
    to_json,
    to_markdown,
    validate_json,
    write_report,
)
from pytest_llmcheck.reporting.results import CaseResult, SessionResults

RIDDLE = "什么东西越洗越脏？"
RIDDLE_ANSWER = "水。<script>alert('x')</script> 因为水越洗越脏 | 答案"
LONG_ANSWER = "这是一个很长的回答。" * 60 + "END-OF-LONG-ANSWER"
FAILED_EXPECTATION = "expected the answer to contain '水' or '清水'"
DIFF = "--- snapshot\n+++ answer\n-旧答案：水\n+新答案：墨水"


def _case(
    res: SessionResults,
    model: str,
    case_id: str,
    nodeid: str,
    prompt: str,
    answers: list[str],
    verdict: str,
    seconds: list[float],
    tokens_per_second: list[float],
) -> CaseResult:
    """Record one (model, question) cell with its answers, verdict and timings."""
    c = res.case(model, case_id, nodeid=nodeid, prompt=prompt)
    c.answers, c.verdict, c.seconds, c.tokens_per_second = answers, verdict, seconds, tokens_per_second
    return c


def sample_results() -> SessionResults:
    """Two models, three questions: pass, fail with a reason, a changed snapshot, a long
    answer, a repeated question and an answer trying to inject a script."""
    res = SessionResults()
    a = res.model("qwen-0.5b")
    a.source, a.load_seconds, a.quantize_seconds = "modelscope", 3.2, 11.5
    a.quant_summary = "int8 weight-only (torchao), 24 linear layers"
    a.fingerprint = {
        "repo": "Qwen/Qwen2.5-0.5B-Instruct",
        "revision": "abc123",
        "sha256": "f" * 64,
    }
    b = res.model("smollm2")
    b.source, b.load_seconds = "embedded", 0.4
    b.fingerprint = {"file": "SmolLM2-135M-Instruct.Q4_1.gguf"}

    c = _case(
        res, "qwen-0.5b", "riddle-1", "t::riddle[qwen-1]", RIDDLE,
        [RIDDLE_ANSWER], "pass", [1.25], [42.0],
    )
    c.passes, c.reference, c.snapshot = 1, "水", "unchanged"
    c = _case(
        res, "smollm2", "riddle-1", "t::riddle[smollm2-1]", RIDDLE,
        ["A towel."], "fail", [0.31], [120.5],
    )
    c.failed_expectation, c.snapshot, c.snapshot_diff = FAILED_EXPECTATION, "changed", DIFF

    riddle_2 = "一口咬掉牛尾巴，打一字"
    c = _case(
        res, "qwen-0.5b", "riddle-2", "t::riddle[qwen-2]", riddle_2,
        [LONG_ANSWER], "pass", [4.0], [35.5],
    )
    c.passes, c.snapshot = 1, "new"
    c = _case(
        res, "smollm2", "riddle-2", "t::riddle[smollm2-2]", riddle_2,
        ["告", "午", "告"], "pass", [0.2, 0.3, 0.25], [90, 95, 99],
    )
    c.passes, c.required_passes = 2, 2

    _case(
        res, "qwen-0.5b", "capital", "t::capital[qwen]", "Capital of France?",
        ["Paris"], "pass", [0.5], [50.0],
    )
    # smollm2 never ran "capital": its cell must still exist (empty) in the grid.
    return res


class _Grid(HTMLParser):
    """Collects the #grid table's body rows and cells, plus remote src/href attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.in_grid = self.in_body = False
        self.rows: list[str] = []
        self.cells: list[tuple[str, str, str]] = []
        self.remote: list[str] = []
        self.classes: set[str] = set()
        self.svg_in_chart = False
        self._chart_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for key, value in a.items():
            if key in (
                "src",
                "href",
                "xlink:href",
            ) and value.strip().lower().startswith(("http:", "https:", "//")):
                self.remote.append(value)
        self.classes.update(a.get("class", "").split())
        if a.get("id") == "latency-chart":
            self._chart_depth = 1
        elif self._chart_depth and tag == "svg":
            self.svg_in_chart = True
        if tag == "table" and a.get("id") == "grid":
            self.in_grid = True
        if self.in_grid and tag == "tbody":
            self.in_body = True
        if self.in_body and tag == "tr":
            self.rows.append(a.get("data-case", ""))
        if self.in_body and tag == "td" and "cell" in a.get("class", "").split():
            self.cells.append(
                (
                    a.get("data-case", ""),
                    a.get("data-model", ""),
                    a.get("data-verdict", ""),
                )
            )

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.in_grid:
            self.in_grid = self.in_body = False


def _parse(page: str) -> _Grid:
    p = _Grid()
    p.feed(page)
    p.close()
    return p


def test_write_report_files(tmp_path: Path) -> None:
    paths = write_report(sample_results(), tmp_path / "out", title="谜语 report")
    assert set(paths) == {"html", "md", "json"}
    for key, name in (
        ("html", "report.html"),
        ("md", "report.md"),
        ("json", "report.json"),
    ):
        assert paths[key] == tmp_path / "out" / name
        assert paths[key].stat().st_size > 0
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    validate_json(data)
    assert data["questions"] == ["riddle-1", "riddle-2", "capital"]
    assert RIDDLE in paths["html"].read_text(encoding="utf-8")


def test_json_schema_accepts_and_rejects() -> None:
    import jsonschema

    data = to_json(sample_results())
    validate_json(data)
    json.dumps(data, allow_nan=False)  # strict JSON

    broken = copy.deepcopy(data)
    del broken["models"][0]["cases"][0]["verdict"]
    with pytest.raises(jsonschema.ValidationError):
        validate_json(broken)
    broken = copy.deepcopy(data)
    del broken["models"]
    with pytest.raises(jsonschema.ValidationError):
        validate_json(broken)
    broken = copy.deepcopy(data)
    broken["models"][1]["cases"][0]["verdict"] = "maybe"
    with pytest.raises(jsonschema.ValidationError):
        validate_json(broken)


def test_json_non_finite_numbers_become_null() -> None:
    res = sample_results()
    res.models["smollm2"].cases["riddle-1"].tokens_per_second = [float("inf")]
    data = to_json(res)
    validate_json(data)
    assert json.loads(json.dumps(data, allow_nan=False))["models"][1]["cases"][0]["tokens_per_second"] == [
        None
    ]


def test_html_grid_and_escaping() -> None:
    page = to_html(sample_results(), "pytest-llmcheck report")
    grid = _parse(page)
    assert grid.rows == ["riddle-1", "riddle-2", "capital"]
    assert len(grid.cells) == 3 * 2
    assert {(q, m) for q, m, _ in grid.cells} == {
        (q, m) for q in ("riddle-1", "riddle-2", "capital") for m in ("qwen-0.5b", "smollm2")
    }
    verdicts = {(q, m): v for q, m, v in grid.cells}
    assert verdicts[("riddle-1", "smollm2")] == "fail"
    assert verdicts[("capital", "smollm2")] == "none"
    assert {
        "verdict-pass",
        "verdict-fail",
        "snap-changed",
        "snap-new",
        "answer-long",
    } <= grid.classes
    assert grid.svg_in_chart
    assert "<svg" in page
    assert "<?xml" not in page
    assert "<!DOCTYPE svg" not in page

    # escaped, never live
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # only the page's own few lines
    # content
    assert FAILED_EXPECTATION.replace("'", "&#x27;") in page
    assert "+新答案：墨水" in page
    assert "-旧答案：水" in page
    assert RIDDLE in page
    assert "一口咬掉牛尾巴" in page
    assert "END-OF-LONG-ANSWER" in page
    assert "2/2 passes (3 runs)" in page
    assert '<meta charset="utf-8">' in page
    assert "Noto Sans CJK SC" in page
    assert 'id="models"' in page
    assert "Qwen/Qwen2.5-0.5B-Instruct" in page
    assert "int8 weight-only" in page
    # self-contained
    assert grid.remote == []
    assert "@import" not in page
    assert "url(http" not in page


def test_markdown_tables() -> None:
    md = to_markdown(sample_results())
    lines = md.splitlines()
    assert "| model | source | load s | quantize s | pass rate | median s | total s | tok/s |" in lines
    assert any(line.startswith("| qwen-0.5b | modelscope | 3.20 | 11.50 | 100% (3/3) |") for line in lines)
    assert any(line.startswith("| smollm2 | embedded |") for line in lines)
    assert "| question | qwen-0.5b | smollm2 |" in lines
    rows = [line for line in lines if line.startswith("| **")]
    assert len(rows) == 3
    riddle = rows[0]
    assert "✅ pass · 1.25 s · 42.0 tok/s" in riddle
    assert "❌ fail" in riddle
    assert "\\|" in riddle
    assert "&lt;script&gt;" in riddle
    assert "<script>" not in md
    assert FAILED_EXPECTATION in riddle
    # each grid row is one physical line: question + one cell per model (unescaped pipes)
    for row in rows:
        assert len(re.split(r"(?<!\\)\|", row)) == 1 + 3 + 1
    assert "2/2 passes (3 runs)" in rows[1]


def test_many_models_and_questions(tmp_path: Path) -> None:
    res = SessionResults()
    for m in range(20):
        for q in range(100):
            c = res.case(
                f"model-{m:02d}",
                f"q-{q:03d}",
                nodeid=f"t::q[{m}-{q}]",
                prompt=f"问题 {q}：谜语？",
            )
            c.answers = [f"答案 {m}-{q} " * (1 + q % 40)]
            c.verdict = "pass" if (m + q) % 3 else "fail"
            c.seconds, c.tokens_per_second = [0.1 + (m * q) % 17 / 10], [20.0 + m]
    start = time.perf_counter()
    paths = write_report(res, tmp_path)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"report took {elapsed:.1f}s"
    page = paths["html"].read_text(encoding="utf-8")
    grid = _parse(page)
    assert len(grid.rows) == 100
    assert len(grid.cells) == 2000
    assert grid.svg_in_chart
    assert 100_000 < paths["html"].stat().st_size < 30_000_000
    validate_json(json.loads(paths["json"].read_text(encoding="utf-8")))
    assert (
        sum(line.startswith("| **") for line in paths["md"].read_text(encoding="utf-8").splitlines()) == 100
    )


def test_empty_session(tmp_path: Path) -> None:
    paths = write_report(SessionResults(), tmp_path)
    validate_json(json.loads(paths["json"].read_text(encoding="utf-8")))
    assert _parse(paths["html"].read_text(encoding="utf-8")).rows == []


# -- GITHUB_STEP_SUMMARY --------------------------------------------------------------


def big_results(models: int = 20, questions: int = 100) -> SessionResults:
    """20 models x 100 questions with long CJK answers: the full Markdown is ~2 MB."""
    res = SessionResults()
    for m in range(models):
        for q in range(questions):
            prompt = f"问题 {q}：谜语？" * 5
            c = res.case(f"model-{m:02d}", f"q-{q:03d}", nodeid=f"t::q[{m}-{q}]", prompt=prompt)
            c.answers = [f"答案 {m}-{q}：" + "这是答案。" * 60]
            c.verdict = "fail" if (m + q) % 7 == 0 else "pass"
            c.failed_expectation = f"expected 'x{m}-{q}'" if c.verdict == "fail" else None
            c.seconds, c.tokens_per_second = [0.5], [30.0]
    return res


def _table_rows_are_well_formed(md: str) -> None:
    """Every table row has as many cells as its head, and a table ends before any text."""
    width = None
    for line in md.splitlines():
        if line.startswith("|"):
            cells = len(re.split(r"(?<!\\)\|", line))
            width = width or cells
            assert cells == width, line
        else:
            width = None


def test_step_summary_keeps_failures_and_leaves_out_passes() -> None:
    md = step_summary(sample_results())
    lines = md.splitlines()
    assert lines[0] == "# pytest-llmcheck report"
    assert any(line.startswith("| qwen-0.5b | modelscope | 3.20 | 11.50 | 100% (3/3) |") for line in lines)
    assert "| question | model | verdict | failed expectation | answer |" in lines
    rows = [line for line in lines if line.startswith("| **")]
    by_model = [re.split(r"(?<!\\)\|", row)[2].strip() for row in rows]
    assert by_model == ["smollm2"]
    smol = next(row for row in rows if "| smollm2 |" in row and "riddle-1" in row)
    for part in ("❌ fail", "snapshot changed", FAILED_EXPECTATION, "A towel."):
        assert part in smol
    # the passing riddle answer of qwen (unchanged snapshot) is left out; a changed one is kept
    assert "&lt;script&gt;" not in md
    assert "<script>" not in md
    assert not any("| qwen-0.5b |" in row for row in rows)  # all of qwen passed, none changed
    assert re.search(r"^\d+ passing cells? left out; the full report is in the report folder", md, re.M)
    assert md.endswith("\n")
    _table_rows_are_well_formed(md)


def test_step_summary_of_20_models_by_100_questions_fits() -> None:
    res = big_results()
    full = to_markdown(res)
    assert len(full.encode("utf-8")) > 1_800_000  # what made GitHub refuse the summary
    md = step_summary(res)
    size = len(md.encode("utf-8"))
    assert size < 900_000
    cells = [c for m in res.models.values() for c in m.cases.values()]
    fails = [(c.model, c.case_id) for c in cells if c.verdict == "fail"]
    rows = [line for line in md.splitlines() if line.startswith("| **")]
    assert len(rows) == len(fails)  # all failures fit, no passing cell
    for name, qid in fails[:50]:
        assert any(f"**{qid}**" in row and f"| {name} |" in row for row in rows)
    assert "expected 'x0-0'" in md
    assert "答案 0-1：" not in md  # model-00 passed q-001
    assert f"{2000 - len(fails)} passing cells left out" in md
    assert sum(line.startswith("| model-") for line in md.splitlines()) == 20
    _table_rows_are_well_formed(md)


@pytest.mark.parametrize("limit", [5_000, 20_000, 100_000])
def test_step_summary_truncates_rows_under_the_limit(limit: int) -> None:
    res = big_results()
    md = step_summary(res, limit_bytes=limit, report_dir="out/llm")
    assert len(md.encode("utf-8")) < limit
    lines = md.splitlines()
    omitted = [line for line in lines if re.fullmatch(r"… \d+ more rows omitted", line)]
    assert len(omitted) == 1
    n_fail = sum(c.verdict == "fail" for m in res.models.values() for c in m.cases.values())
    shown = sum(line.startswith("| **") for line in lines)
    assert shown + int(omitted[0].split()[1]) == n_fail
    assert lines[lines.index(omitted[0]) - 1] == ""  # the table ended before the note
    assert "the full report is in the report folder (`out/llm`)" in md
    _table_rows_are_well_formed(md)


def test_step_summary_without_failures() -> None:
    res = SessionResults()
    c = res.case("m", "q", nodeid="t::q", prompt="p")
    c.answers, c.verdict = ["ok"], "pass"
    md = step_summary(res)
    assert "No failures and no changed snapshots." in md
    assert "1 passing cell left out" in md
    assert "| question | model |" not in md
