"""Pending answer candidates: a changed answer kept beside its snapshot until a person
accepts or rejects it (``llmcheck review``).

Where they live: ``riddle-4[smollm2].txt.new`` beside ``riddle-4[smollm2].txt``, as
cargo-insta keeps ``.snap.new`` beside ``.snap``. Beside the snapshot, ``git status``
shows each one as an untracked file right where the reviewer will look, and nothing
else needs to know a second folder layout; syrupy ignores them (they do not end in
``.txt``), so they are never counted as unused snapshots. Projects that prefer a
clean ``git status`` add ``*.txt.new`` to ``.gitignore``.

A candidate file is a snapshot file (same header, same ``--- answer ---`` marker) with
the review facts in extra header lines: the question, the model and the verdict of the
old and new answer. Accepting it writes exactly what ``--snapshot-update`` would write
(the header without the review facts, then the answer); rejecting deletes only the
candidate. A CI run's candidates also travel in ``report.json`` (``cases[].pending``),
so ``llmcheck review out/report.json`` can accept them into a local checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .snapshots import StoredAnswer

SUFFIX = ".new"
_SKIP_DIRS = {"node_modules", "__pycache__", "site-packages"}


def candidate_path(snapshot: Path) -> Path:
    return snapshot.with_name(snapshot.name + SUFFIX)


@dataclass
class Candidate:
    """One pending answer: where its snapshot goes and what to show the reviewer."""

    snapshot: Path  # the snapshot file an accept writes
    answer: str
    fingerprint: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None
    system: str | None = None
    case_id: str = ""
    model: str = ""
    verdict_before: str | None = None  # the old answer under today's expectations; None: no old answer
    verdict_after: str | None = None
    similarity: float | None = None
    candidate_file: Path | None = None  # None when the candidate came from a report
    old_answer_recorded: str | None = None  # the snapshot as the CI run saw it (report candidates)
    old_fingerprint_recorded: dict[str, Any] | None = None

    def stored(self) -> StoredAnswer:
        """What the snapshot file will hold once accepted."""
        return StoredAnswer(answer=self.answer, fingerprint=self.fingerprint, prompt=self.prompt,
                            system=self.system)

    def old(self) -> StoredAnswer | None:
        """The snapshot as it is on disk now (or, failing that, as the CI run saw it)."""
        if self.snapshot.is_file():
            return StoredAnswer.parse(self.snapshot.read_text(encoding="utf-8"))
        if self.old_answer_recorded is not None:
            return StoredAnswer(self.old_answer_recorded, self.old_fingerprint_recorded or {})
        return None

    def to_report(self, root: Path) -> dict[str, Any]:
        """The ``pending`` object of a report case (paths relative to the rootdir)."""
        old = self.old()
        return {
            "snapshot": _relative(self.snapshot, root),
            "answer": self.answer,
            "prompt": self.prompt,
            "system": self.system,
            "fingerprint": self.fingerprint,
            "old_answer": old.answer if old else None,
            "old_fingerprint": old.fingerprint if old else None,
            "verdict_before": self.verdict_before,
            "verdict_after": self.verdict_after,
            "similarity": self.similarity,
        }

    def write(self) -> Path:
        """Keep the candidate beside its snapshot (atomically replacing an older one)."""
        path = candidate_path(self.snapshot)
        meta: dict[str, Any] = {"case": self.case_id, "model": self.model,
                                "verdict_before": self.verdict_before, "verdict_after": self.verdict_after}
        if self.similarity is not None:
            meta["similarity"] = round(self.similarity, 4)
        text = StoredAnswer(self.answer, self.fingerprint, self.prompt, self.system, meta=meta).render()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        self.candidate_file = path
        return path

    def accept(self) -> None:
        """Write the answer into its snapshot file, then drop the candidate."""
        self.snapshot.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.snapshot.with_name(self.snapshot.name + f".{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:  # the same bytes syrupy's writer produces
            fh.write(self.stored().render())
        os.replace(tmp, self.snapshot)
        self.discard()

    def discard(self) -> None:
        """Delete the candidate file only (a reject); the snapshot is never touched."""
        if self.candidate_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.candidate_file.unlink()

    @classmethod
    def read(cls, path: Path) -> Candidate:
        stored = StoredAnswer.parse(path.read_text(encoding="utf-8"))
        meta = stored.meta
        similarity = meta.get("similarity")
        return cls(
            snapshot=path.with_name(path.name[: -len(SUFFIX)]),
            answer=stored.answer,
            fingerprint=stored.fingerprint,
            prompt=stored.prompt,
            system=stored.system,
            case_id=str(meta.get("case") or ""),
            model=str(meta.get("model") or ""),
            verdict_before=_text_or_none(meta.get("verdict_before")),
            verdict_after=_text_or_none(meta.get("verdict_after")),
            similarity=float(similarity) if isinstance(similarity, (int, float)) else None,
            candidate_file=path,
        )


def remove_stale(snapshot: Path) -> None:
    """The answer matches its snapshot again: an old candidate for it is out of date."""
    with contextlib.suppress(FileNotFoundError):
        candidate_path(snapshot).unlink()


def find_candidates(root: Path) -> list[Candidate]:
    """Every ``*.txt.new`` under a ``__snapshots__`` folder below ``root``, sorted by path."""
    return [Candidate.read(path) for path in sorted(_walk(root))]


def _walk(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS]
        if "__snapshots__" not in Path(folder).parts:
            continue
        for name in files:
            if name.endswith(".txt" + SUFFIX):
                yield Path(folder) / name


def candidates_from_report(data: dict[str, Any], root: Path) -> list[Candidate]:
    """The candidates a CI run's ``report.json`` carries, mapped onto a local checkout."""
    found: list[Candidate] = []
    for model in data.get("models", []):
        for case in model.get("cases", []):
            pending = case.get("pending")
            if not isinstance(pending, dict):
                continue
            found.append(
                Candidate(
                    snapshot=root / pending["snapshot"],
                    answer=str(pending["answer"]),
                    fingerprint=pending.get("fingerprint") or {},
                    prompt=pending.get("prompt"),
                    system=pending.get("system"),
                    case_id=str(case.get("case_id", "")),
                    model=str(case.get("model", "")),
                    verdict_before=pending.get("verdict_before"),
                    verdict_after=pending.get("verdict_after"),
                    similarity=pending.get("similarity"),
                    old_answer_recorded=pending.get("old_answer"),
                    old_fingerprint_recorded=pending.get("old_fingerprint"),
                )
            )
    return found


def load_report(path: Path) -> dict[str, Any]:
    """``report.json``, given the file or the report folder."""
    file = path / "report.json" if path.is_dir() else path
    data: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    return data


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
