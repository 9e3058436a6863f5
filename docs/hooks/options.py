"""MkDocs hook: the option reference is generated from the plugin's own option table.

``docs/options.md`` holds a marker line; this hook replaces it with a table built from
``pytest_llmcheck.config.settings.OPTIONS`` and ``ENGINE_OPTIONS`` (names, ini keys, defaults,
allowed values, help), so the page cannot drift from what ``pytest --help`` shows.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

MARKER = "<!-- options-table -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def options_table() -> str:
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:  # built from a clone without the package installed
        sys.path.append(root)
    from pytest_llmcheck.config.settings import ENGINE_OPTIONS, OPTIONS

    rows = ["| option | ini key | default | what it does |", "|---|---|---|---|"]
    for spec in (*OPTIONS, *ENGINE_OPTIONS):
        names = f"`{spec.alias}`<br>`{spec.canonical}`"
        default = "flag" if spec.flag else (f"`{spec.default}`" if spec.default is not None else "")
        allowed = f" Allowed: {', '.join(f'`{c}`' for c in spec.choices)}." if spec.choices else ""
        rows.append(f"| {names} | `{spec.ini}` | {default} | {_cell(spec.help)}{allowed} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, options_table())
