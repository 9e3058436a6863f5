"""Plain-text tables for the terminal: one format for every ``llmcheck`` command.

Low in the package on purpose: ``cli``, ``review`` and ``rescore`` all print tables, and
``cli`` calls the other two, so the shared format cannot live in ``cli``.
"""

from __future__ import annotations

from collections.abc import Sequence


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns; the first row is the header, followed by a rule."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
