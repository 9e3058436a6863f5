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

A fingerprint names its numerics (see ``config/numerics.py``): a portable answer holds on every
x86-64-v3 CPU; a native one (``numerics: native``, with the ``cpu``) only on the CPU kind
that recorded it. A changed native answer on another CPU is therefore no finding about the
model: the test is skipped with one line saying so, and the report marks it "not
comparable", never passed.

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
``snapshots/pending.py``) are never reported as unused snapshots.
"""

from __future__ import annotations

import difflib
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from syrupy.assertion import SnapshotAssertion
from syrupy.location import PyTestLocation

from pytest_llmcheck.checks.tolerance import Tolerance
from pytest_llmcheck.compat.syrupy import TextSingleFileExtension, file_stem, snapshot_session
from pytest_llmcheck.config.items import model_of
from pytest_llmcheck.config.numerics import NATIVE, PORTABLE
from pytest_llmcheck.engines.base import Answer
from pytest_llmcheck.errors import LlmcheckWarning
from pytest_llmcheck.snapshots.pending import SUFFIX
from pytest_llmcheck.snapshots.textfile import (
    MARKER as MARKER,  # re-exported: defined here before snapshot_file.py
)
from pytest_llmcheck.snapshots.textfile import TITLE as TITLE
from pytest_llmcheck.snapshots.textfile import StoredAnswer as StoredAnswer

if TYPE_CHECKING:
    from syrupy.types import PropertyFilter, PropertyMatcher, SerializableData, SerializedData

_ASSERTION_KEY = pytest.StashKey[SnapshotAssertion]()
_CHECKED_KEY = pytest.StashKey[bool]()
# The longest snapshot file name: 255 bytes, less a pending answer's ".new" and room for a
# temporary file's suffix (".<pid>.tmp").
_NAME_MAX = 255 - len(".new.4194304.tmp")


@dataclass(frozen=True)
class SnapshotOutcome:
    # "new" (recorded now) | "missing" (none recorded yet; fails) | "unchanged" | "changed"
    # | "drifted" (within tolerance) | "not-comparable" (native numerics on another CPU; skips)
    # | "none"
    status: str
    diff: str | None
    failure: str | None  # the one message to fail the test with, or None
    similarity: float | None = None  # of the normalized answers, when they differ
    pending: dict[str, Any] | None = None  # the candidate kept for `llmcheck review`
    skip: str | None = None  # the one line to skip the test with ("not-comparable")


class LLMAnswerExtension(TextSingleFileExtension):
    """One answer per ``.txt`` file, compared on the answer only (see the module doc).

    ``compare_header`` is switched on under ``--snapshot-update`` so that a new
    fingerprint for an unchanged answer is written too. ``tolerance`` is the question's:
    an answer within it matches, so syrupy neither fails nor rewrites it.
    """

    file_extension = "txt"
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
    kept as a pending candidate beside the snapshot (see ``snapshots/pending.py``); one within it
    passes as "drifted" and the snapshot stays as it is.
    """
    from pytest_llmcheck.snapshots.pending import Candidate, remove_stale

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
    if (reason := not_comparable(old.fingerprint, fingerprint)) is not None:
        # nothing to review: an answer of this CPU would fail on the one that recorded it
        return SnapshotOutcome("not-comparable", diff, None, similarity=score,
                               skip=f"answer snapshot {where} {reason}")
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
    stem = file_stem(assertion.test_location.snapshot_name)
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


def numerics_of(fingerprint: dict[str, Any]) -> str | None:
    """The numerics a fingerprint records: ``native``, a portable recipe (``portable-v1``), or
    None when it does not say (engines without CPU-bound arithmetic: a server, replay). A
    fingerprint with a ``cpu`` but no ``numerics`` was recorded before fingerprints named their
    numerics, when every answer was native."""
    value = fingerprint.get("numerics")
    if isinstance(value, str):
        return value
    return NATIVE if "cpu" in fingerprint else None


def not_comparable(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why a changed answer says nothing about the model, or None when it does.

    A native answer holds on the CPU kind it was recorded on: one recorded natively on another
    CPU is not comparable. Nor is a portable answer where this machine cannot run portable
    numerics (its fingerprint says why, ``numerics_note``). Otherwise (same CPU, both portable,
    or the numerics changed by choice) a changed answer is a change, as ever.
    """
    before, after = numerics_of(old), numerics_of(new)
    note = new.get("numerics_note")
    hint = f"no portable numerics here: {note}" if note else "record it with --llm-numerics=portable"
    if before == NATIVE and after == NATIVE and old.get("cpu") != new.get("cpu"):
        return (f"was recorded with native numerics on CPU {_show_cpu(old.get('cpu'))}; this CPU is "
                f"{_show_cpu(new.get('cpu'))}: not comparable ({hint})")
    if before is not None and before.startswith(PORTABLE) and after == NATIVE and note:
        return (f"was recorded with {before} numerics; this machine runs native numerics: "
                f"not comparable ({hint})")
    return None


def _show_cpu(value: Any) -> str:
    return repr(value) if isinstance(value, str) else "(unknown)"


def _with_numerics(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """``fingerprint`` with its numerics named (``native`` for one recorded before they were)."""
    numerics = numerics_of(fingerprint)
    if numerics is None or "numerics" in fingerprint:
        return fingerprint
    return {**fingerprint, "numerics": numerics}


def fingerprint_note(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What the fingerprints say about a changed answer, in one line.

    Changed weights come first, since they explain the answer whatever else changed: a content
    digest of the weights (``weights.sha256``, llama.cpp's ``weights.source_sha256``) recorded
    on both sides and different. A digest only the new fingerprint has (a snapshot recorded
    before fingerprints carried one) says nothing about the weights and is listed as any key.
    Changed numerics (``numerics native -> portable-v1``: re-record) come next.
    """
    if not old:
        return "fingerprint unknown: the snapshot does not record one"
    old, new = _with_numerics(old), _with_numerics(new)
    changes = _numerics_first(fingerprint_changes(old, new))
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
    rest = _numerics_first(fingerprint_changes({k: v for k, v in before.items() if k not in digests},
                                               {k: v for k, v in after.items() if k not in digests}))
    return f"fingerprint changed: the weights changed ({weights})" + "".join(f"; {c}" for c in rest)


def _numerics_first(changes: list[str]) -> list[str]:
    return sorted(changes, key=lambda change: not change.startswith("numerics "))


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
        syrupy = snapshot_session(session.config)
        if syrupy is None:
            return
        hide_pending(session.config.option, syrupy)
        pseudo: list[pytest.Item] = [*other_model_items(self.collected, models)]
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
    clean = file_stem
    pattern = re.compile(
        re.escape(clean(scope + head))
        + r"(?P<model>[A-Za-z0-9._@-]+?)"
        + re.escape(clean(tail))
        + r"(?:\.\d+)?\.txt"
    )
    return pattern, head, tail
