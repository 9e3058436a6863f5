"""``llmcheck review``: walk the pending answer candidates and accept or reject each.

Like ``cargo insta review``: one candidate at a time, with the question, the model,
the old and new answer, a character-level diff (a word diff is useless for Chinese,
which has no spaces), what changed in the fingerprint and the verdict before and
after. Keys: ``a`` accept (write the snapshot), ``r`` reject (delete the candidate),
``s`` skip (leave it), ``q`` quit. On a terminal one key press is enough; from a pipe
each answer is a line. Nothing is written without an accept.

Candidates may come from a downloaded CI report (untrusted): an accept re-checks the
path right before it writes (``snapshots/pending.py``) and a refusal is one line; every text shown
has its control characters escaped, so an answer cannot drive the terminal (ANSI escape
sequences, bidi overrides) and hide what the reviewer accepts.
"""

from __future__ import annotations

import difflib
import sys
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

from pytest_llmcheck.snapshots.extension import fingerprint_changes
from pytest_llmcheck.snapshots.pending import Candidate, Refusal, UnsafeCandidate
from pytest_llmcheck.text.tables import table

KEYS = {"a": "accept", "y": "accept", "r": "reject", "n": "reject", "s": "skip", "q": "quit"}
_RED, _GREEN, _DIM, _BOLD, _RESET = "\033[31m", "\033[32m", "\033[2m", "\033[1m", "\033[0m"
_HIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}  # control, format (bidi overrides), lone surrogates, breaks


def visible(text: str) -> str:
    """``text`` with every control character but newline and tab escaped (``\\x1b``), so what
    the reviewer sees is what an accept writes."""
    if text.isprintable():
        return text
    return "".join(
        repr(ch)[1:-1] if ch not in "\n\t" and unicodedata.category(ch) in _HIDDEN else ch for ch in text
    )


@dataclass
class Style:
    color: bool

    def __call__(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.color and text else text


def char_diff(old: str, new: str, style: Style) -> str:
    """The new answer with deletions and insertions marked character by character:
    ``[-old-]{+new+}`` (red and green on a terminal)."""
    out: list[str] = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            out.append(visible(new[j1:j2]))
            continue
        if i2 > i1:
            out.append(style(_RED, f"[-{visible(old[i1:i2])}-]"))
        if j2 > j1:
            out.append(style(_GREEN, f"{{+{visible(new[j1:j2])}+}}"))
    return "".join(out)


def describe(candidate: Candidate, index: int, total: int, style: Style) -> list[str]:
    old = candidate.old()
    where = visible(str(candidate.snapshot))
    name = candidate.case_id or candidate.snapshot.stem
    title = visible(f"[{index}/{total}] {name} · {candidate.model or '?'}")
    lines = [style(_BOLD, title), style(_DIM, f"  snapshot: {where}")]
    if candidate.prompt:
        lines.append(f"  question: {visible(candidate.prompt)}")
    if old is None:
        lines.append("  fingerprint: new snapshot (nothing recorded yet)")
    else:
        changes = fingerprint_changes(old.fingerprint, candidate.fingerprint) if old.fingerprint else []
        note = "unchanged: the model itself answers differently" if old.fingerprint and not changes else (
            "changed: " + "; ".join(changes) if changes else "unknown (the snapshot records none)")
        lines.append(f"  fingerprint: {visible(note)}")
    before = candidate.verdict_before or ("-" if old is None else "?")
    lines.append(visible(f"  verdict: {before} -> {candidate.verdict_after or '?'}"))
    if candidate.similarity is not None:
        lines.append(f"  similarity: {candidate.similarity:.2f}")
    if old is not None:
        lines.append("  old answer:")
        lines += [f"    {visible(line)}" for line in (old.answer.splitlines() or [""])]
    lines.append("  new answer:")
    lines += [f"    {visible(line)}" for line in (candidate.answer.splitlines() or [""])]
    if old is not None:
        lines.append("  diff ([-removed-]{+added+}):")
        lines += [f"    {line}" for line in char_diff(old.answer, candidate.answer, style).splitlines()]
    return lines


def read_key(stdin: IO[str], stdout: IO[str]) -> str:
    """One answer: a single key press on a terminal, else a line; "quit" at the end of input."""
    prompt = "  accept (a), reject (r), skip (s), quit (q)? "
    while True:
        text = _one_key(stdin, stdout, prompt) if stdin.isatty() else _line(stdin, stdout, prompt)
        if not text:
            stdout.write("\n")
            return "quit"
        key = text.strip().lower()[:1]
        if stdin.isatty():
            stdout.write(text.strip() + "\n")
        if key in KEYS:
            return KEYS[key]
        stdout.write(f"  unknown key {text.strip()!r}; use a, r, s or q\n")


def _line(stdin: IO[str], stdout: IO[str], prompt: str) -> str:
    stdout.write(prompt)
    stdout.flush()
    return stdin.readline()


def _one_key(stdin: IO[str], stdout: IO[str], prompt: str) -> str:
    """The terminal goes to cbreak mode before the prompt shows, so a key pressed as soon
    as it appears is read at once (not held back waiting for Enter)."""
    import termios
    import tty

    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        stdout.write(prompt)
        stdout.flush()
        return stdin.read(1)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@dataclass
class Tally:
    accepted: int = 0
    rejected: int = 0
    skipped: int = 0
    refused: int = 0  # an accept the re-check right before the write turned down

    def line(self) -> str:
        refused = f", refused {self.refused}" if self.refused else ""
        return f"accepted {self.accepted}, rejected {self.rejected}, skipped {self.skipped}{refused}"


def review(
    candidates: Sequence[Candidate],
    *,
    decide: Callable[[Candidate], str] | None = None,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    color: bool | None = None,
) -> Tally:
    """Walk ``candidates``; ``decide`` (for --accept-all / --reject-all) replaces the question."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    style = Style(stdout.isatty() if color is None else color)
    tally = Tally()
    for index, candidate in enumerate(candidates, 1):
        try:
            old = candidate.old()
        except (OSError, ValueError) as exc:  # the snapshot on disk cannot be read as text
            tally.refused += 1
            stdout.write(f"  {_refusal(candidate, f'cannot read the snapshot file: {exc}')}\n")
            continue
        if old is not None and old.answer == candidate.answer:
            candidate.discard()
            where = visible(str(candidate.snapshot))
            stdout.write(f"[{index}/{len(candidates)}] {where}: already up to date\n")
            continue
        if decide is None:
            stdout.write("\n".join(describe(candidate, index, len(candidates), style)) + "\n")
            action = read_key(stdin, stdout)
        else:
            action = decide(candidate)
        if action == "quit":
            tally.skipped += len(candidates) - index + 1
            break
        if action == "accept":
            try:
                candidate.accept()
            except UnsafeCandidate as exc:  # changed on disk since it was checked: nothing written
                tally.refused += 1
                stdout.write(f"  {_refusal(candidate, str(exc))}\n")
                continue
            tally.accepted += 1
            stdout.write(f"  accepted: wrote {visible(str(candidate.snapshot))}\n")
        elif action == "reject":
            candidate.discard()
            tally.rejected += 1
            gone = f"deleted {candidate.candidate_file}" if candidate.candidate_file else "nothing written"
            stdout.write(f"  rejected: {visible(gone)}\n")
        else:
            tally.skipped += 1
            stdout.write("  skipped\n")
    stdout.write(tally.line() + "\n")
    return tally


def _refusal(candidate: Candidate, reason: str) -> str:
    return Refusal(candidate.shown or str(candidate.snapshot), reason).line()


def list_lines(candidates: Sequence[Candidate]) -> list[str]:
    rows: list[tuple[str, ...]] = [("snapshot", "question", "model", "verdict", "similarity")]
    for c in candidates:
        before = c.verdict_before or "-"
        sim = f"{c.similarity:.2f}" if c.similarity is not None else "-"
        cells = (str(c.snapshot), c.case_id, c.model, f"{before} -> {c.verdict_after or '?'}", sim)
        rows.append(tuple(visible(cell) for cell in cells))
    return table(rows)
