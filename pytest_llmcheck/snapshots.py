"""Answer snapshots: one readable UTF-8 text file per (question, model), kept by syrupy.

Layout (syrupy's single-file layout, ``.txt``)::

    examples/riddles/__snapshots__/riddles.llm/riddle-4[smollm2].txt   # suite item
    tests/__snapshots__/test_x/test_y[smollm2].txt                    # Python test
    tests/__snapshots__/test_x/test_y[smollm2].1.txt                  # its 2nd llm.ask()

Each file is a short ``#`` header, a marker line and the answer, verbatim (Chinese
stays Chinese, no escapes), so drift is a plain diff in code review::

    # pytest-llmcheck answer snapshot: only the text below the marker line is compared.
    # prompt: "白白喜欢谁？"
    # fingerprint: {
    #   "engine": "transformers",
    #   "versions": {"transformers": "5.23.0", ...}, ...
    # }
    --- answer ---
    白白喜欢明明。

The fingerprint (model source and revision, quantization, engine, library versions,
decoding settings: whatever the engine reports) sits in the same file so a reviewer
sees it next to the answer it produced, and a sidecar can never be orphaned or cleaned
up on its own. Comparison is on the answer only: the same answer under a new
fingerprint passes (and the file is left alone); a different answer fails with a
unified diff and a note saying which fingerprint keys changed, or that none did (the
model itself answers differently). ``--snapshot-update`` writes new and changed
answers, and refreshes the header when only the fingerprint changed. Nothing is ever
written or deleted without it.

Selecting models with ``--llm-model`` must not make the other models' snapshots look
unused to syrupy (reported as unused, deleted by ``--snapshot-update``). Syrupy keeps
the snapshots of tests that were selected but skipped, so ``SnapshotGuard`` (a small
plugin the main plugin registers) hands syrupy's session, just before it builds its
report, one never-run "skipped" stand-in item per snapshot file that belongs to a
collected test on a model *not* in this run (the test's file name with the model part
as a wildcard). A snapshot of a question that no longer exists matches no collected
test and stays under syrupy's normal unused accounting. Likewise an item that failed
before it reached its snapshot (e.g. its model failed to load) counts as skipped, so
``--snapshot-update`` does not delete the answers of a broken model. The guard also adds
``new`` to syrupy's ignored file extensions, so the pending answers (``*.txt.new``, see
``pending.py``) are never reported as unused snapshots.
"""

from __future__ import annotations

import difflib
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode
from syrupy.location import PyTestLocation

from .engines.base import Answer
from .errors import LlmcheckWarning
from .session import model_of
from .tolerance import Tolerance

if TYPE_CHECKING:
    from syrupy.types import PropertyFilter, PropertyMatcher, SerializableData, SerializedData

MARKER = "--- answer ---"
TITLE = "# pytest-llmcheck answer snapshot: only the text below the marker line is compared."
_ENTRY = re.compile(r"([A-Za-z_]+): (.*)", re.S)
_ASSERTION_KEY = pytest.StashKey[SnapshotAssertion]()
_CHECKED_KEY = pytest.StashKey[bool]()
# The longest snapshot file name: 255 bytes, less a pending answer's ".new" and room for a
# temporary file's suffix (".<pid>.tmp").
_NAME_MAX = 255 - len(".new.4194304.tmp")


@dataclass(frozen=True)
class SnapshotOutcome:
    # "new" (recorded now) | "missing" (none recorded yet; fails) | "unchanged" | "changed"
    # | "drifted" (within tolerance) | "none"
    status: str
    diff: str | None
    failure: str | None  # the one message to fail the test with, or None
    similarity: float | None = None  # of the normalized answers, when they differ
    pending: dict[str, Any] | None = None  # the candidate kept for `llmcheck review`


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


class LLMAnswerExtension(SingleFileSnapshotExtension):
    """One answer per ``.txt`` file, compared on the answer only (see the module doc).

    ``compare_header`` is switched on under ``--snapshot-update`` so that a new
    fingerprint for an unchanged answer is written too. ``tolerance`` is the question's:
    an answer within it matches, so syrupy neither fails nor rewrites it.
    """

    file_extension = "txt"
    _write_mode = WriteMode.TEXT
    compare_header = False
    tolerance = Tolerance()

    def serialize(
        self,
        data: SerializableData,
        *,
        exclude: PropertyFilter | None = None,
        include: PropertyFilter | None = None,
        matcher: PropertyMatcher | None = None,
    ) -> SerializedData:
        if isinstance(data, StoredAnswer):
            return data.render()
        return str(data)

    def matches(self, *, serialized_data: SerializedData, snapshot_data: SerializedData) -> bool:
        new, old = StoredAnswer.parse(str(serialized_data)), StoredAnswer.parse(str(snapshot_data))
        if new.answer == old.answer:
            return bool(serialized_data == snapshot_data) if self.compare_header else True
        return self.tolerance.compare(old.answer, new.answer)[0]


@dataclass(frozen=True)
class ReviewFacts:
    """What a pending candidate records for its reviewer besides the answer."""

    case_id: str
    model: str
    verdict_after: str  # the new answer's verdict
    verdict_of: Callable[[str], str]  # the verdict an (old) answer text gets today


def check_snapshot(
    request: pytest.FixtureRequest,
    answer: Answer,
    fingerprint: dict[str, Any],
    *,
    tolerance: Tolerance | None = None,
    review: ReviewFacts | None = None,
) -> SnapshotOutcome:
    """Compare ``answer`` with its stored snapshot (or store it under ``--snapshot-update``).

    An answer that differs beyond ``tolerance`` (or has no snapshot yet) fails and is
    kept as a pending candidate beside the snapshot (see ``pending.py``); one within it
    passes as "drifted" and the snapshot stays as it is.
    """
    from .pending import Candidate, remove_stale

    if not request.config.pluginmanager.hasplugin("syrupy"):
        off = LlmcheckWarning("answer snapshots are off: syrupy is disabled (-p no:syrupy)")
        warnings.warn(off, stacklevel=2)
        return SnapshotOutcome("none", None, None)
    tolerance = tolerance or Tolerance()
    node = request.node
    assertion = node.stash.get(_ASSERTION_KEY, None)
    if assertion is None:  # one per test, so a second ask() gets the next index (name.1)
        assertion = request.getfixturevalue("snapshot").use_extension(LLMAnswerExtension)
        node.stash[_ASSERTION_KEY] = assertion
    extension = assertion.extension
    assert isinstance(extension, LLMAnswerExtension)
    extension.compare_header = bool(assertion.update_snapshots)
    extension.tolerance = tolerance
    node.stash[_CHECKED_KEY] = True
    if (too_long := _name_too_long(assertion)) is not None:  # before syrupy queues a write that fails
        return SnapshotOutcome("none", None, too_long)

    new = StoredAnswer(
        answer=answer.text, fingerprint=fingerprint, prompt=answer.prompt, system=answer.system
    )
    passed = assertion == new
    result = assertion.executions[assertion.num_executions - 1]
    location = Path(result.snapshot_location)
    where = _display_path(result.snapshot_location, request.config.rootpath)

    def keep_candidate(old: StoredAnswer | None, similarity: float | None) -> dict[str, Any] | None:
        if review is None:
            return None
        candidate = Candidate(
            snapshot=location, answer=new.answer, fingerprint=fingerprint, prompt=new.prompt,
            system=new.system, case_id=review.case_id, model=review.model,
            verdict_before=review.verdict_of(old.answer) if old is not None else None,
            verdict_after=review.verdict_after, similarity=similarity,
        )
        candidate.write()
        return candidate.to_report(request.config.rootpath)

    if result.exception is not None:
        return SnapshotOutcome("changed", None, f"answer snapshot {where}: {result.exception!r}")
    if result.recalled_data is None:
        if passed:
            remove_stale(location)
            return SnapshotOutcome("new", None, None)
        return SnapshotOutcome(
            "missing", None,
            f"no answer snapshot {where} yet; run pytest with --snapshot-update to record this answer, "
            "or review the pending answer with: llmcheck review",
            pending=keep_candidate(None, None),
        )
    old = StoredAnswer.parse(str(result.recalled_data))
    if old.answer == new.answer:
        remove_stale(location)
        return SnapshotOutcome("unchanged", None, None)
    within, score = tolerance.compare(old.answer, new.answer)
    diff = answer_diff(old.answer, new.answer)
    if within:  # within tolerance: passes, and the snapshot is left as it is
        remove_stale(location)
        return SnapshotOutcome("drifted", diff, None, similarity=score)
    if passed:  # --snapshot-update accepted it
        remove_stale(location)
        return SnapshotOutcome("changed", diff, None, similarity=score)
    limit = f" (similarity {score:.2f}, tolerance {tolerance})" if tolerance.kind != "exact" else ""
    message = (
        f"answer changed from snapshot {where}{limit}\n{fingerprint_note(old.fingerprint, fingerprint)}\n"
        f"{diff}\nreview it with: llmcheck review (or run pytest with --snapshot-update to accept all)"
    )
    return SnapshotOutcome("changed", diff, message, similarity=score, pending=keep_candidate(old, score))


def _name_too_long(assertion: SnapshotAssertion) -> str | None:
    """One line when the snapshot's file name leaves no room under the usual 255-byte limit for
    a pending answer's ``.new`` file (a long test name or parameter id): an OSError traceback
    otherwise, or a name syrupy cuts short so that two tests could share it."""
    index = assertion.index
    stem = LLMAnswerExtension._sanitize_filename(assertion.test_location.snapshot_name)
    name = f"{stem}.{index}.txt" if index else f"{stem}.txt"
    size = len(name.encode())
    if size <= _NAME_MAX:
        return None
    return (
        f"answer snapshot file name {name[:40] + '...'!r} is {size} bytes long; at most {_NAME_MAX} "
        "are allowed (file names stop at 255, and a pending answer adds '.new'): shorten the test "
        "name, its parameter ids (pytest.param(..., id=...)) or the model name"
    )


def answer_diff(old: str, new: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), fromfile="snapshot", tofile="answer", lineterm=""
    )
    return "\n".join(lines)


def fingerprint_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each changed leaf, keys dotted (``versions.transformers``)."""
    before, after = _flatten(old), _flatten(new)
    missing = "(none)"
    return [
        f"{key} {_show(before.get(key, missing))} -> {_show(after.get(key, missing))}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key, missing) != after.get(key, missing)
    ]


def fingerprint_note(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What the fingerprints say about a changed answer, in one line.

    Changed weights come first, since they explain the answer whatever else changed: a content
    digest of the weights (``weights.sha256``, llama.cpp's ``weights.source_sha256``) recorded
    on both sides and different. A digest only the new fingerprint has (a snapshot recorded
    before fingerprints carried one) says nothing about the weights and is listed as any key.
    """
    if not old:
        return "fingerprint unknown: the snapshot does not record one"
    changes = fingerprint_changes(old, new)
    if not changes:
        return "fingerprint unchanged: the model itself answers differently"
    before, after = _flatten(old), _flatten(new)
    digests = [key for key in sorted(before.keys() & after.keys())
               if key.startswith("weights.") and key.endswith("sha256") and before[key] != after[key]]
    if not digests:
        return "fingerprint changed: " + "; ".join(changes)

    def short(value: Any) -> str:
        text = _show(value)
        return f"{text[:12]}…" if len(text) > 12 else text

    weights = "; ".join(f"{key} {short(before[key])} -> {short(after[key])}" for key in digests)
    rest = fingerprint_changes({k: v for k, v in before.items() if k not in digests},
                               {k: v for k, v in after.items() if k not in digests})
    return f"fingerprint changed: the weights changed ({weights})" + "".join(f"; {c}" for c in rest)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _display_path(location: str, root: Path) -> str:
    try:
        return str(Path(location).relative_to(root))
    except ValueError:
        return location


# -- keeping syrupy's "unused" accounting right


class SnapshotGuard:
    """Keeps syrupy from calling snapshots unused when they belong to models not run now,
    or to items that failed before they reached their snapshot. The plugin's hooks feed it
    (see ``plugin.py``); it only exists when syrupy is active."""

    def __init__(self) -> None:
        self.collected: list[pytest.Item] = []
        self.failed_unchecked: set[str] = set()

    def note_collected(self, items: list[pytest.Item]) -> None:
        self.collected = list(items)  # before -k / -m deselection

    def note_report(self, item: pytest.Item, report: pytest.TestReport) -> None:
        if report.failed and report.when != "teardown" and model_of(item) is not None:
            if not item.stash.get(_CHECKED_KEY, False):
                self.failed_unchecked.add(item.nodeid)
            else:
                self.failed_unchecked.discard(item.nodeid)

    def protect(self, session: pytest.Session, models: list[str]) -> None:
        """Before syrupy builds its report: mark the other models' snapshots as not run, and
        keep the pending answers out of its discovery."""
        syrupy = getattr(session.config, "_syrupy", None)
        if syrupy is None:
            return
        hide_pending(session.config.option, syrupy)
        pseudo = other_model_items(self.collected, models)
        syrupy.collect_items(pseudo)
        syrupy.select_items(pseudo)
        for nodeid in [item.nodeid for item in pseudo] + sorted(self.failed_unchecked):
            syrupy.ran_item(nodeid, "skipped")


GUARD_KEY = pytest.StashKey[SnapshotGuard]()


def hide_pending(option: Any, syrupy: Any) -> None:
    """Pending answers (``*.txt.new``) are not snapshots, yet syrupy's file-scoped discovery
    (the default amber extension of the ``snapshot`` fixture, which every answer check
    also creates, walks all of ``__snapshots__``) reports each as an unused snapshot and
    advises ``--snapshot-update``, which would accept the drift unseen. Syrupy's own
    ``--snapshot-ignore-file-extensions`` keeps them out of its discovery; added here,
    before the report reads it, whatever the user passed stays in it."""
    from .pending import SUFFIX

    ignored = list(getattr(option, "ignore_file_extensions", None) or [])
    extension = SUFFIX.lstrip(".")
    if extension not in ignored:
        ignored.append(extension)
        option.ignore_file_extensions = ignored
        syrupy.ignore_file_extensions = ignored


def other_model_items(items: list[pytest.Item], models: list[str]) -> list[pytest.Function]:
    """Stand-in items for the snapshot files of collected tests on models not in ``models``.

    For every item on a model, its snapshot file name with the model part as a
    wildcard finds the files of the same test on other models; each becomes a
    never-run ``pytest.Function`` named as that test would be on that model.
    """
    listings: dict[Path, list[str]] = {}
    found: dict[str, pytest.Function] = {}
    current = set(models)
    for item in items:
        model = model_of(item)
        if model is None or not isinstance(item, pytest.Function):
            continue
        parts = _name_parts(item, model)
        if parts is None:
            continue
        pattern, head, tail = parts
        directory = Path(LLMAnswerExtension.dirname(test_location=PyTestLocation(item)))
        if directory not in listings:
            listings[directory] = sorted(p.name for p in directory.glob("*.txt") if p.is_file())
        for filename in listings[directory]:
            match = pattern.fullmatch(filename)
            if match is None or match.group("model") in current:
                continue
            name = f"{head}{match.group('model')}{tail}"
            key = f"{item.parent.nodeid if item.parent else ''}::{name}"
            if key not in found:
                found[key] = pytest.Function.from_parent(
                    item.parent, name=name, callobj=item.obj
                )
    return list(found.values())


def _name_parts(item: pytest.Function, model: str) -> tuple[re.Pattern[str], str, str] | None:
    """(file-name regex with a ``model`` group, item name before the model, after it)."""
    name = item.name
    start = name.find("[")
    if start < 0 or not name.endswith("]"):
        return None
    parts = name[start + 1 : -1].split("-")
    size = len(model.split("-"))
    hits = [i for i in range(len(parts) - size + 1) if "-".join(parts[i : i + size]) == model]
    if not hits:
        return None
    i = hits[-1]
    head = name[: start + 1] + "".join(f"{p}-" for p in parts[:i])
    tail = "".join(f"-{p}" for p in parts[i + size :]) + "]"
    location = PyTestLocation(item)
    scope = location.snapshot_name[: len(location.snapshot_name) - len(location.testname)]  # "TestClass."
    clean = LLMAnswerExtension._sanitize_filename
    pattern = re.compile(
        re.escape(clean(scope + head))
        + r"(?P<model>[A-Za-z0-9._@-]+?)"
        + re.escape(clean(tail))
        + r"(?:\.\d+)?\.txt"
    )
    return pattern, head, tail
