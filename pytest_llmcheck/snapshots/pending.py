"""Pending answer candidates: a changed answer kept beside its snapshot until a person
accepts or rejects it (``llmcheck review``).

Where they live: ``riddle-4[smollm2].txt.new`` beside ``riddle-4[smollm2].txt``, as
cargo-insta keeps ``.snap.new`` beside ``.snap``. Beside the snapshot, ``git status``
shows each one as an untracked file right where the reviewer will look, and nothing
else needs to know a second folder layout; syrupy is told to ignore them (its
``--snapshot-ignore-file-extensions``, see ``SnapshotGuard``), so they are never counted
as unused snapshots. Projects that prefer a clean ``git status`` add ``*.txt.new`` to
``.gitignore``.

A candidate file is a snapshot file (same header, same ``--- answer ---`` marker) with
the review facts in extra header lines: the question, the model and the verdict of the
old and new answer. Accepting it writes exactly what ``--snapshot-update`` would write
(the header without the review facts, then the answer); rejecting deletes only the
candidate. A CI run's candidates also travel in ``report.json`` (``cases[].pending``),
so ``llmcheck review out/report.json`` can accept them into a local checkout.

A report is untrusted input: a fork's pull request decides what its CI job writes, and
the reviewer downloads that artifact. So review writes only answer snapshots: a
candidate is reviewable only when its path, with every symlink resolved, is a ``.txt``
file inside a ``__snapshots__`` folder below the checkout root, and the rendered file is
at most ``MAX_SNAPSHOT_BYTES``. Anything else is refused with one line (``Refusal``) and
nothing is written for it. The same check runs again right before an accept writes, and
the write itself walks down from the root with ``O_NOFOLLOW`` folder by folder and goes
through a fresh ``O_EXCL`` temporary file, so a symlink planted in between redirects
nothing. The candidates of a folder walk get the same check (a ``.txt.new`` or a
folder can be a symlink too).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pytest_llmcheck.snapshots.textfile import StoredAnswer

SUFFIX = ".new"
SNAPSHOTS_DIR = "__snapshots__"
MAX_SNAPSHOT_BYTES = 1 << 20  # 1 MiB: the largest snapshot file review writes (answers are far smaller)
_MAX_CANDIDATE_BYTES = MAX_SNAPSHOT_BYTES + (64 << 10)  # a candidate file adds a few review lines
_MAX_PATH_BYTES = 4096
_MAX_DEPTH = 32  # fingerprints are a few levels deep; deeper ones would only exhaust recursion
_SHOWN_PATH = 200  # characters of a refused path that its line shows
_SKIP_DIRS = {"node_modules", "__pycache__", "site-packages"}
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}  # control, format (bidi), lone surrogates, breaks


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
    root: Path | None = None  # the checkout its path was checked against; accept() needs it
    relative: tuple[str, ...] = ()  # the snapshot's path below ``root``, as named
    shown: str = ""  # the path as the report or the folder named it (for refusal lines)

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
        _replace_file(path, text.encode("utf-8"))
        self.candidate_file = path
        return path

    def accept(self) -> None:
        """Write the answer into its snapshot file, then drop the candidate.

        Raises ``UnsafeCandidate`` (and writes nothing) when the path or the content no
        longer passes the review checks: they run again here, right before the write,
        and the write follows no symlink below the checkout root.
        """
        if self.root is None:
            raise UnsafeCandidate("not checked against a checkout root")
        data = check_content(self)
        resolved = resolve_below(self.root, self.relative)
        _write_below(self.root, resolved, data)  # the same bytes syrupy's writer produces
        self.discard()

    def discard(self) -> None:
        """Delete the candidate file only (a reject); the snapshot is never touched."""
        if self.candidate_file is None:
            return
        if self.root is not None and self.relative:  # a checked folder candidate: no symlink on the way
            with contextlib.suppress(FileNotFoundError, UnsafeCandidate):
                resolved = resolve_below(self.root, self.relative)
                _unlink_below(self.root, (*resolved[:-1], self.candidate_file.name))
            return
        with contextlib.suppress(FileNotFoundError):
            self.candidate_file.unlink()

    @classmethod
    def read(cls, path: Path) -> Candidate:
        return cls.from_text(path, path.read_text(encoding="utf-8"))

    @classmethod
    def from_text(cls, path: Path, text: str) -> Candidate:
        """The candidate a ``.txt.new`` file at ``path`` holds ``text``."""
        stored = StoredAnswer.parse(text)
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


class UnsafeCandidate(ValueError):
    """Why review will not write (or read) a candidate: one line; the caller names the path."""


class NotAReport(ValueError):
    """The file given to review is not a pytest-llmcheck report: one line saying what it is not."""


@dataclass(frozen=True)
class Refusal:
    """A candidate that review left alone: its path as the report or the folder named it, and why."""

    path: str
    reason: str

    def line(self) -> str:
        shown = self.path if len(self.path) <= _SHOWN_PATH else self.path[:_SHOWN_PATH] + "..."
        return f"refused {shown!r}: {self.reason}"


@dataclass
class Found:
    """The reviewable candidates of a folder or a report, and the refused ones."""

    candidates: list[Candidate] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)


def find_candidates(root: Path) -> list[Candidate]:
    """The reviewable ``*.txt.new`` under ``root`` (see ``scan_folder``; refused ones left out)."""
    return scan_folder(root).candidates


def scan_folder(folder: Path, root: Path | None = None) -> Found:
    """Every ``*.txt.new`` under a ``__snapshots__`` folder below ``folder``, sorted by path, each
    checked like a report's candidate against the checkout ``root`` (default: ``folder``)."""
    root = folder if root is None else root
    try:
        prefix = folder.resolve().relative_to(root.resolve()).parts
    except ValueError:
        raise UnsafeCandidate(f"{folder} is not inside the checkout root {root}") from None
    found = Found()
    for path in sorted(_walk(folder)):
        named = (*prefix, *path.relative_to(folder).parts)
        relative = (*named[:-1], named[-1][: -len(SUFFIX)])  # the snapshot the candidate is for
        shown = "/".join(named)
        try:
            _check_path("/".join(relative))
            resolve_below(root, relative)
            candidate = Candidate.from_text(path, _read_regular(path, _MAX_CANDIDATE_BYTES))
            candidate.root, candidate.relative, candidate.shown = root, relative, shown
            check_content(candidate)
        except UnsafeCandidate as exc:
            found.refusals.append(Refusal(shown, str(exc)))
            continue
        found.candidates.append(candidate)
    return found


def _walk(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):  # never into a symlinked folder
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS]
        if SNAPSHOTS_DIR not in Path(folder).parts:
            continue
        for name in files:
            if name.endswith(".txt" + SUFFIX):
                yield Path(folder) / name


def candidates_from_report(data: dict[str, Any], root: Path) -> list[Candidate]:
    """The reviewable candidates a CI run's ``report.json`` carries (see ``scan_report``)."""
    return scan_report(data, root).candidates


def scan_report(data: dict[str, Any], root: Path) -> Found:
    """The candidates a CI run's ``report.json`` carries, mapped onto the checkout ``root``.

    The report is untrusted (a fork's pull request decides what its CI job writes): a
    candidate is kept only when its path names a ``.txt`` snapshot inside a
    ``__snapshots__`` folder below ``root``, symlinks resolved, and its content is small
    text; every other one becomes a ``Refusal``.
    """
    found = Found()
    for model in _objects(data.get("models")):
        for case in _objects(model.get("cases")):
            pending = case.get("pending")
            if not isinstance(pending, dict):
                continue
            named = pending.get("snapshot")
            shown = named if isinstance(named, str) else repr(named)
            try:
                candidate = _report_candidate(case, pending, root)
            except UnsafeCandidate as exc:
                found.refusals.append(Refusal(shown, str(exc)))
                continue
            found.candidates.append(candidate)
    return found


def _report_candidate(case: dict[str, Any], pending: dict[str, Any], root: Path) -> Candidate:
    named, answer = pending.get("snapshot"), pending.get("answer")
    if not isinstance(named, str):
        raise UnsafeCandidate("the snapshot path is not a string")
    if not isinstance(answer, str):
        raise UnsafeCandidate("the answer is not a string")
    _check_path(named)
    relative = PurePosixPath(named).parts  # without "." and empty parts
    resolve_below(root, relative)
    fingerprint, old_fingerprint = pending.get("fingerprint"), pending.get("old_fingerprint")
    similarity = pending.get("similarity")
    candidate = Candidate(
        snapshot=root.joinpath(*relative),
        answer=answer,
        fingerprint=fingerprint if isinstance(fingerprint, dict) else {},
        prompt=_text_or_none(pending.get("prompt")),
        system=_text_or_none(pending.get("system")),
        case_id=str(case.get("case_id", "")),
        model=str(case.get("model", "")),
        verdict_before=_text_or_none(pending.get("verdict_before")),
        verdict_after=_text_or_none(pending.get("verdict_after")),
        similarity=float(similarity) if isinstance(similarity, (int, float)) else None,
        old_answer_recorded=_text_or_none(pending.get("old_answer")),
        old_fingerprint_recorded=old_fingerprint if isinstance(old_fingerprint, dict) else None,
        root=root,
        relative=relative,
        shown=named,
    )
    check_content(candidate)
    return candidate


def path_problem(text: str) -> str | None:
    """Why ``text`` (a /-separated path below the checkout root) cannot name an answer snapshot."""
    if not text:
        return "empty path"
    if "\0" in text:
        return "NUL byte in the path"
    bad = next((ch for ch in text if unicodedata.category(ch) in _UNSAFE_CATEGORIES), None)
    if bad is not None:
        return f"control character {bad!r} in the path"
    if len(text.encode("utf-8")) > _MAX_PATH_BYTES:
        return f"path longer than {_MAX_PATH_BYTES} bytes"
    if "\\" in text:
        return "backslash in the path (snapshot paths are /-separated)"
    if text.startswith("/") or re.match(r"[A-Za-z]:", text):
        return "absolute path (snapshot paths are relative to the checkout root)"
    parts = text.split("/")
    if ".." in parts:
        return "'..' in the path"
    if not parts[-1].endswith(".txt") or parts[-1] == ".txt":
        return "not a .txt answer snapshot"
    if SNAPSHOTS_DIR not in parts[:-1]:
        return f"not inside a {SNAPSHOTS_DIR} folder"
    return None


def _check_path(text: str) -> None:
    problem = path_problem(text)
    if problem is not None:
        raise UnsafeCandidate(problem)


def resolve_below(root: Path, relative: Sequence[str]) -> tuple[str, ...]:
    """``root/relative`` with every symlink resolved, as parts below the resolved ``root``.

    ``UnsafeCandidate`` when a folder on the way is a symlink out of the root, the folder
    resolves outside the root or outside any ``__snapshots__`` folder, or the snapshot
    file itself is a symlink or not a regular file.
    """
    base = root.resolve()
    try:
        for depth in range(1, len(relative)):  # every existing folder on the way
            folder = base.joinpath(*relative[:depth])
            if folder.is_symlink() and not folder.resolve().is_relative_to(base):
                raise UnsafeCandidate(f"{'/'.join(relative[:depth])} is a symlink out of the checkout root")
        parent = base.joinpath(*relative[:-1]).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise UnsafeCandidate(f"cannot resolve the path: {_why(exc)}") from None
    if not parent.is_relative_to(base):
        raise UnsafeCandidate("the path leads out of the checkout root")
    below = parent.relative_to(base).parts
    if SNAPSHOTS_DIR not in below:
        raise UnsafeCandidate(f"the path resolves outside any {SNAPSHOTS_DIR} folder")
    name = relative[-1]
    try:
        info = os.lstat(parent / name)
    except FileNotFoundError:
        return (*below, name)
    except OSError as exc:
        raise UnsafeCandidate(f"cannot check the snapshot file: {_why(exc)}") from None
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeCandidate("the snapshot file is a symlink")
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeCandidate("the snapshot path is not a regular file")
    return (*below, name)


def check_content(candidate: Candidate) -> bytes:
    """The bytes an accept writes; ``UnsafeCandidate`` when the candidate is too large to be
    an answer (``MAX_SNAPSHOT_BYTES``), too deeply nested, or not valid text."""
    for label, text in (("answer", candidate.answer), ("old answer", candidate.old_answer_recorded),
                        ("question id", candidate.case_id), ("model", candidate.model)):
        if text is not None and len(text) > MAX_SNAPSHOT_BYTES:
            raise UnsafeCandidate(f"the {label} is {len(text)} characters, above the "
                                  f"{MAX_SNAPSHOT_BYTES}-byte snapshot cap")
    if _too_deep(candidate.fingerprint) or _too_deep(candidate.old_fingerprint_recorded):
        raise UnsafeCandidate(f"a fingerprint nested deeper than {_MAX_DEPTH} levels")
    try:
        data = candidate.stored().render().encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeCandidate("not valid Unicode text (a lone surrogate)") from None
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise UnsafeCandidate(
            f"the snapshot would be {len(data)} bytes, above the {MAX_SNAPSHOT_BYTES}-byte cap"
        )
    return data


def _too_deep(value: object) -> bool:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return False


def _read_regular(path: Path, limit: int) -> str:
    """A candidate file's text, opened without following a symlink and read up to ``limit``."""
    flags = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block the open
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeCandidate("the candidate file is a symlink") from None
        raise UnsafeCandidate(f"cannot read the candidate file: {_why(exc)}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise UnsafeCandidate("the candidate file is not a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnsafeCandidate(f"the candidate file is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeCandidate("the candidate file is not UTF-8 text") from None


# -- writing without following symlinks

_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW
_AT_CALLS = _NOFOLLOW != 0 and {os.open, os.mkdir, os.rename, os.unlink, os.stat} <= os.supports_dir_fd


def _on_disk(data: bytes) -> bytes:
    """What syrupy's text-mode writer puts on disk for these bytes (CRLF on Windows)."""
    return data if os.linesep == "\n" else data.replace(b"\n", os.linesep.encode())


def _temp_name() -> str:
    return f".llmcheck-{secrets.token_hex(8)}.tmp"  # hidden (syrupy skips it), fresh, short


def _replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` through a fresh temporary file beside it: ``O_EXCL`` and a random name,
    so a symlink planted beforehand cannot redirect the write."""
    tmp = path.with_name(_temp_name())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(_on_disk(data))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _open_folder(root: Path, parts: Sequence[str], *, create: bool) -> int:
    """A descriptor of ``root/parts``, reached folder by folder without following a symlink."""
    fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _changed(exc: OSError) -> UnsafeCandidate:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafeCandidate("a folder on its path became a symlink or a file since the check")
    return UnsafeCandidate(f"cannot write it: {_why(exc)}")


def _write_below(root: Path, parts: Sequence[str], data: bytes) -> None:
    """Write ``data`` to ``root/parts`` (resolved parts): the folders are created and opened
    with ``O_NOFOLLOW`` one by one, the file goes through a fresh temporary file in its
    folder, and an existing symlink or special file there is refused."""
    if not _AT_CALLS:  # no openat (Windows): the check just made is the guard
        path = root.joinpath(*parts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _replace_file(path, data)
        except OSError as exc:
            raise _changed(exc) from None
        return
    try:
        folder = _open_folder(root, parts[:-1], create=True)
    except OSError as exc:
        raise _changed(exc) from None
    name, tmp = parts[-1], _temp_name()
    try:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
                raise UnsafeCandidate("the snapshot file is now a symlink or not a regular file")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666, dir_fd=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(_on_disk(data))
            os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=folder)
            raise
    except OSError as exc:
        raise _changed(exc) from None
    finally:
        os.close(folder)


def _unlink_below(root: Path, parts: Sequence[str]) -> None:
    """Delete ``root/parts`` without following a symlink on the way (a reject)."""
    if not _AT_CALLS:
        root.joinpath(*parts).unlink()
        return
    try:
        folder = _open_folder(root, parts[:-1], create=False)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise _changed(exc) from None
    try:
        os.unlink(parts[-1], dir_fd=folder)
    finally:
        os.close(folder)


# -- reports


def load_report(path: Path) -> dict[str, Any]:
    """``report.json``, given the file or the report folder, checked against the report schema:
    ``NotAReport`` says in one line what the file is not."""
    file = path / "report.json" if path.is_dir() else path
    what = f"{file}: not a pytest-llmcheck report"
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise NotAReport(f"{what} (not UTF-8 text)") from None
    except OSError as exc:
        raise NotAReport(f"{file}: cannot read it: {_why(exc)}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise NotAReport(f"{what} (invalid JSON: {exc.msg} at {where})") from None
    except RecursionError:
        raise NotAReport(f"{what} (JSON nested too deeply)") from None
    problem = report_problem(data)
    if problem is not None:
        raise NotAReport(f"{file}: {problem}")
    checked: dict[str, Any] = data
    return checked


def report_problem(data: object) -> str | None:
    """What ``data`` is not, in a few words, or None for a valid pytest-llmcheck report."""
    import jsonschema

    from pytest_llmcheck.reporting.report import load_schema

    if not isinstance(data, dict):
        return f"not a pytest-llmcheck report (a JSON {_json_type(data)}, not an object)"
    tool = data.get("tool")
    if tool != "pytest-llmcheck":
        has = 'no "tool": "pytest-llmcheck"' if tool is None else f'its "tool" is {_short(repr(tool))}'
        if "benchmarks" in data or "machine_info" in data:
            has += "; is it a pytest-benchmark file?"
        return f"not a pytest-llmcheck report ({has})"
    validator = jsonschema.Draft202012Validator(load_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is None:
        return None
    return f"not a valid pytest-llmcheck report: {error.json_path}: {_short(error.message)}"


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    return "null" if value is None else "number"


def _short(text: str, limit: int = 200) -> str:
    """At most ``limit`` characters of ``text``, control characters escaped (it goes to a terminal)."""
    cut = text[:limit] + ("..." if len(text) > limit else "")
    return "".join(repr(ch)[1:-1] if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in cut)


def _objects(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _why(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
