"""The snapshot file format: a short ``#`` header, a marker line, the answer.

Read and written by the syrupy extension (``snapshots/extension.py``), by pending candidates and
review (``snapshots/pending.py``) and by replay (``reporting/recordings.py``). It lives apart from the
extension so that those can read a file without the extension, and the extension can
keep candidates (``snapshots/pending.py``) without a cycle back to it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

MARKER = "--- answer ---"
TITLE = "# pytest-llmcheck answer snapshot: only the text below the marker line is compared."
_ENTRY = re.compile(r"([A-Za-z_]+): (.*)", re.S)


@dataclass(frozen=True)
class StoredAnswer:
    """A snapshot file's content: the compared answer and its informational header."""

    answer: str
    fingerprint: dict[str, Any]
    prompt: str | None = None
    system: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # a pending candidate's review facts

    def render(self) -> str:
        lines = [TITLE]
        if self.prompt is not None:
            lines.append(f"prompt: {_dumps(self.prompt)}")
        if self.system is not None:
            lines.append(f"system: {_dumps(self.system)}")
        lines.extend(f"{key}: {json.dumps(value, ensure_ascii=False)}" for key, value in self.meta.items())
        pretty = json.dumps(self.fingerprint, ensure_ascii=False, indent=2, sort_keys=True)
        lines.append(f"fingerprint: {pretty}")
        header = "\n".join(line if line.startswith("# ") else f"# {line}" for block in lines
                           for line in block.split("\n"))
        return f"{header}\n{MARKER}\n{self.answer}\n"

    @classmethod
    def parse(cls, text: str) -> StoredAnswer:
        """Read a snapshot file; one without a header is all answer."""
        head, sep, body = text.partition(f"\n{MARKER}\n")
        if not sep:
            return cls(answer=text[:-1] if text.endswith("\n") else text, fingerprint={})
        entries: dict[str, str] = {}
        current: str | None = None
        for line in head.split("\n"):
            line = line[2:] if line.startswith("# ") else line.lstrip("#")
            match = _ENTRY.fullmatch(line)
            if match:
                current = match.group(1)
                entries[current] = match.group(2)
            elif current is not None:
                entries[current] += "\n" + line
        values: dict[str, Any] = {}
        for key, raw in entries.items():
            try:
                values[key] = json.loads(raw)
            except ValueError:
                values[key] = raw
        fingerprint = values.get("fingerprint")
        return cls(
            answer=body[:-1] if body.endswith("\n") else body,
            fingerprint=fingerprint if isinstance(fingerprint, dict) else {},
            prompt=values.get("prompt") if isinstance(values.get("prompt"), str) else None,
            system=values.get("system") if isinstance(values.get("system"), str) else None,
            meta={k: v for k, v in values.items() if k not in ("prompt", "system", "fingerprint")},
        )


def _dumps(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)
