"""The seed's five riddles on the embedded SmolLM2, end to end, as a user runs them.

Two real sessions in subprocesses: the first records the answer snapshots, the second
(INT4 weights from the cache) must reproduce them byte for byte and writes the report,
which a real browser then renders.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pytest_llmcheck.reporting.report import validate_json
from tests.test_report_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, DOCS_SCREENSHOT, _sync_playwright

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "examples" / "riddles" / "riddles.llm.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_sessions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Run the riddle suite twice on SmolLM2 in a fresh project and cache; keep what they left."""
    project = tmp_path_factory.mktemp("riddles")
    cache = tmp_path_factory.mktemp("model-cache")
    shutil.copy(SUITE, project / SUITE.name)
    (project / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    pytester_runs = {}
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--llm-model=smollm2",
             f"--llm-cache-dir={cache}", "--llm-soft", *args],
            cwd=project, capture_output=True, text=True, timeout=900,
        )

    pytester_runs["first"] = run("--snapshot-update", "--benchmark-json=first.json")
    pytester_runs["second"] = run("--benchmark-json=second.json", "--llm-report=report")
    return {"project": project, **pytester_runs}


def test_first_session_records_five_snapshots(two_sessions: dict[str, object]) -> None:
    first = two_sessions["first"]
    project = two_sessions["project"]
    assert isinstance(project, Path)
    assert first.returncode == 0, first.stdout[-3000:]  # type: ignore[attr-defined]
    assert "5 passed" in first.stdout  # type: ignore[attr-defined]
    assert "5 snapshots generated" in first.stdout  # type: ignore[attr-defined]
    files = sorted((project / "__snapshots__" / "riddles.llm").glob("*.txt"))
    assert [f.name for f in files] == [f"riddle-{i}[smollm2].txt" for i in range(1, 6)]
    text = files[3].read_text(encoding="utf-8")
    assert "明明明明明白白白喜欢他" in text  # the prompt, readable, no escapes
    assert '"method": "torchao-int4-weight-only"' in text


def test_second_session_reproduces_the_answers_from_the_int4_cache(two_sessions: dict[str, object]) -> None:
    second = two_sessions["second"]
    assert second.returncode == 0, second.stdout[-3000:]  # type: ignore[attr-defined]
    out = second.stdout  # type: ignore[attr-defined]
    assert "5 snapshots passed" in out
    assert "(from cache)" in out
    assert "smollm2 (smollm2): loaded 1x" in out
    assert "int4: 210/210 linear layers" in out


def test_benchmark_json_has_one_entry_per_riddle(two_sessions: dict[str, object]) -> None:
    project = two_sessions["project"]
    assert isinstance(project, Path)
    data = json.loads((project / "second.json").read_text(encoding="utf-8"))
    names = sorted(b["name"] for b in data["benchmarks"])
    assert names == [f"riddle-{i}[smollm2]" for i in range(1, 6)]
    for bench in data["benchmarks"]:
        assert bench["group"] == "smollm2"
        assert bench["stats"]["rounds"] == 1
        info = bench["extra_info"]
        assert info["quantization"] == "int4"
        assert info["engine"] == "transformers"
        assert info["new_tokens"] > 0
        assert info["tokens_per_second"] > 0


def test_report_has_every_riddle_and_renders_in_chromium(
    two_sessions: dict[str, object], tmp_path: Path
) -> None:
    project = two_sessions["project"]
    assert isinstance(project, Path)
    folder = project / "report"
    data = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    validate_json(data)
    (model,) = data["models"]
    assert [c["case_id"] for c in model["cases"]] == [f"riddle-{i}" for i in range(1, 6)]
    assert all(c["verdict"] in ("pass", "fail") and c["answer"] for c in model["cases"])
    assert all(c["snapshot"] == "unchanged" for c in model["cases"])

    sync_playwright = _sync_playwright()
    errors: list[str] = []
    artifacts = Path(os.environ.get("LLMCHECK_ARTIFACTS") or ARTIFACTS)
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto((folder / "report.html").as_uri(), wait_until="load")
            assert page.locator("#grid tbody tr").count() == 5
            assert page.locator("#grid td.cell[data-model='smollm2']").count() == 5
            assert page.locator("#grid .verdict-pass, #grid .verdict-fail").count() >= 5
            box = page.locator("#latency-chart svg").bounding_box()
            assert box is not None
            assert box["width"] > 100
            assert box["height"] > 100
            assert "白白" in page.inner_text("#grid")
            page.screenshot(path=str(artifacts / "riddles-report.png"), full_page=True)
            if os.environ.get("LLMCHECK_DOCS_SCREENSHOT") == "1":
                DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(DOCS_SCREENSHOT), full_page=False)
        finally:
            browser.close()
    assert errors == []
