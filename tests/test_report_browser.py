"""The HTML report in a real browser: headless Chromium (Debian's package) driven by
Playwright. Checks what a person would see: rows, verdict colours, a chart with a size,
no console errors. Leaves a screenshot as a CI artifact (and for the README)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.reporting.report import write_report
from tests.test_report import sample_results

CHROMIUM = os.environ.get("LLMCHECK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "report.png"
# Screenshots are kept here for CI to collect (or in $LLMCHECK_ARTIFACTS).
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def _sync_playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    return sync_playwright


def test_report_in_chromium(tmp_path: Path) -> None:
    sync_playwright = _sync_playwright()
    results = sample_results()
    html_path = write_report(results, tmp_path / "report", title="pytest-llmcheck report · 谜语")["html"]
    artifacts = Path(os.environ.get("LLMCHECK_ARTIFACTS") or ARTIFACTS)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "report.png"

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on(
                "console",
                lambda msg: errors.append(msg.text) if msg.type == "error" else None,
            )
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda req: requests.append(req.url))
            page.goto(html_path.as_uri(), wait_until="load")

            rows = page.locator("#grid tbody tr")
            assert rows.count() == len(results.case_ids) == 3
            assert page.locator("#grid td.cell").count() == 3 * 2
            cell = page.locator('#grid td.cell[data-model="smollm2"][data-case="riddle-1"]')
            assert cell.locator(".verdict-fail").count() == 1
            assert "expected the answer to contain" in cell.inner_text()
            assert page.locator(".verdict-pass").count() >= 3
            assert page.locator("#models tbody tr").count() == 2

            # The injected <script> is text, not a live element.
            assert (
                "<script>alert('x')</script>"
                in page.locator('#grid td.cell[data-model="qwen-0.5b"][data-case="riddle-1"]').inner_text()
            )
            assert page.evaluate("document.scripts.length") == 1

            svg = page.locator("#latency-chart svg")
            assert svg.count() == 1
            box = svg.bounding_box()
            assert box is not None
            assert box["width"] > 100
            assert box["height"] > 100

            # Sticky question column and header are in effect.
            assert (
                page.evaluate("getComputedStyle(document.querySelector('#grid tbody th')).position")
                == "sticky"
            )

            # The filter control works: only rows with a non-pass stay visible.
            page.check("#only-problems")
            assert page.locator("#grid tbody tr:visible").count() == 2

            page.uncheck("#only-problems")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    assert errors == [], f"console errors: {errors}"
    remote = [u for u in requests if not u.startswith(("file:", "data:", "about:"))]
    assert remote == [], f"the page made remote requests: {remote}"
    assert shot.stat().st_size > 10_000
    if os.environ.get("LLMCHECK_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)
