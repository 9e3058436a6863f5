"""Per-machine cache of things that are expensive to make (downloads, converted models).

Every entry is a folder ``root/<kind>/<slug>-<hash>`` that is either complete or absent:
it is built in a temporary sibling folder under a file lock and renamed into place
only after its ``.complete`` marker was written. A crash mid-build (even SIGKILL)
therefore leaves at most a temporary folder, which is never taken as ready and is
removed by whoever next takes the entry's lock (a build, ``clear``, ``gc``).

The lock, not the builder's pid, tells a leftover from a live build: the builder holds
the entry's lock (an ``flock``, freed by the kernel when the process dies) for as long
as its temporary folder exists, while a pid means nothing in another container that
shares the cache volume. Whoever holds a lock records itself in ``<lock>.holder``
(pid, host, since when, what for), so a waiter can say whom it waits for; waits end
after ``$LLMCHECK_LOCK_TIMEOUT`` seconds (2 hours by default) with a one-line error.

Asking for a ready entry (``Cache.entry``) counts as using it: the marker's modification
time is set to now, so ``Cache.gc`` can remove what no session used for a while, or the
least recently used entries above a size cap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from filelock import FileLock, Timeout

CACHE_ENV = "LLMCHECK_CACHE_DIR"
MARKER = ".complete"
KEY_FILE = "key.json"
SCRATCH = "_scratch"  # not an entry kind: the kind pattern needs a letter or digit first
_TMP = ".tmp-"
_LOCK = ".lock"
_HOLDER = ".holder"  # beside a lock file: who holds it (``<entry>.lock.holder``)
LOCK_TIMEOUT_ENV = "LLMCHECK_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 2 * 3600.0  # downloading and quantizing a 7B model can take tens of minutes
NOTICE_AFTER = 5.0  # seconds of silent waiting before saying whom we wait for
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_KIND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_Rows = list[dict[str, object]]  # Cache.list() rows (``list`` is a method name inside Cache)
_Paths = list[Path]


class CacheError(RuntimeError):
    """The cache cannot be used as asked; the message is one line for the user."""


def default_cache_dir() -> Path:
    """Where the cache lives: ``$LLMCHECK_CACHE_DIR`` or the platform's user cache folder."""
    override = os.environ.get(CACHE_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("pytest-llmcheck"))


def canonical_key(key: Mapping[str, object]) -> str:
    """The key as stable JSON, so equal keys hash equally whatever their order."""
    return json.dumps(dict(key), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _slug(key: Mapping[str, object]) -> str:
    """A readable folder-name prefix; never contains a separator or starts with a dot."""
    name = key.get("name")
    text = _SAFE.sub("-", str(name)) if name is not None else ""
    return text.strip(".-")[:64].strip(".-") or "entry"


class LockBusy(CacheError):
    """Another process held a cache lock for longer than we could wait; the message names it."""


def lock_timeout() -> float:
    """Seconds to wait for a cache lock: ``$LLMCHECK_LOCK_TIMEOUT``, or 2 hours.

    Long enough for another session's 7B download and quantization, short enough that a
    hung builder (or a lock a network filesystem never freed) does not block CI forever.
    """
    text = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_LOCK_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if math.isnan(seconds) or seconds < 0:
        raise CacheError(f"{LOCK_TIMEOUT_ENV}={text!r}: expected seconds >= 0 (inf waits forever)")
    return seconds


def _holder_file(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + _HOLDER)


def _is_lock_file(name: str) -> bool:
    """A lock file or its holder record: never an entry, never removed by ``clear``."""
    return name.endswith(_LOCK) or name.endswith(_LOCK + _HOLDER)


def lock_holder(lock_path: Path) -> str:
    """Who holds ``lock_path``, as its holder recorded it: "pid 123 on host-x since ... (building)"."""
    try:
        info = json.loads(_holder_file(lock_path).read_text(encoding="utf-8"))
        pid, host, doing = int(info["pid"]), str(info["host"]), str(info["doing"])
        since = float(info["since"])
    except (OSError, ValueError, KeyError, TypeError, OverflowError):
        return "another process (it recorded no holder details)"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    return f"pid {pid} on {host} since {when} ({doing})"


@contextlib.contextmanager
def hold_lock(lock_path: Path, what: str, *, doing: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the file lock ``lock_path`` and record this process as its holder meanwhile.

    Waits at most ``timeout`` seconds (None: ``lock_timeout()``; 0: one try), with a line
    on stderr after a few seconds saying whom it waits for, so a long wait is not silent;
    past the timeout raises LockBusy, one line naming the holder. ``what`` names the
    locked thing ("cache entry quantized/x-1234"), ``doing`` this holder's work ("building").
    """
    limit = lock_timeout() if timeout is None else timeout
    lock = FileLock(str(lock_path))
    start = time.monotonic()
    try:
        if limit <= NOTICE_AFTER:
            lock.acquire(timeout=limit)
        else:
            try:
                lock.acquire(timeout=NOTICE_AFTER)
            except Timeout:
                print(f"llmcheck: waiting for {what}, held by {lock_holder(lock_path)} ...",
                      file=sys.stderr, flush=True)
                lock.acquire(timeout=max(0.0, limit - (time.monotonic() - start)))
    except Timeout:
        waited = time.monotonic() - start
        raise LockBusy(
            f"{what} is locked by {lock_holder(lock_path)}; waited {waited:.0f} s "
            f"({LOCK_TIMEOUT_ENV} sets how long); if that process is gone, remove {lock_path}"
        ) from None
    holder = _holder_file(lock_path)
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "doing": doing}
        with contextlib.suppress(OSError):  # only a courtesy to waiters
            holder.write_text(json.dumps(record) + "\n", encoding="utf-8")
        yield
    finally:
        with contextlib.suppress(OSError):  # before releasing: the next holder's record stays
            holder.unlink()
        lock.release()


def tree_size(path: Path) -> int:
    """Bytes under ``path``, not following symlinks."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _temps_in(kind_dir: Path) -> list[Path]:
    """The temporary build folders in one kind's folder."""
    return [p for p in sorted(kind_dir.iterdir()) if _TMP in p.name and not _is_lock_file(p.name)]


def _remove(path: Path) -> int:
    """Delete a file or folder; return the bytes it held."""
    if not path.exists() and not path.is_symlink():
        return 0
    freed = tree_size(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
    return freed


class CacheEntry:
    """One cache folder: ready once its ``.complete`` marker exists, absent otherwise."""

    def __init__(self, path: Path, kind: str, key: Mapping[str, object]) -> None:
        self.path = path
        self.kind = kind
        self.key = dict(key)
        self.lock_path = path.with_name(path.name + _LOCK)

    def __repr__(self) -> str:
        return f"CacheEntry({str(self.path)!r}, ready={self.ready})"

    @property
    def ready(self) -> bool:
        """True only after a build finished: the marker is written last, then renamed in."""
        return (self.path / MARKER).is_file()

    def temp_folders(self) -> list[Path]:
        """Temporary build folders of this entry (live builds and crash leftovers)."""
        parent = self.path.parent
        if not parent.is_dir():
            return []
        return sorted(parent.glob(f"{glob_escape(self.path.name)}{_TMP}*"))

    @property
    def name(self) -> str:
        """How messages name the entry: ``kind/folder``."""
        return f"{self.kind}/{self.path.name}"

    def discard(self, timeout: float | None = None) -> None:
        """Remove a ready entry that proved unusable (under its lock): the next build redoes it."""
        with hold_lock(self.lock_path, f"cache entry {self.name}", doing="removing it", timeout=timeout):
            (self.path / MARKER).unlink(missing_ok=True)  # not ready from here on, even if removal stalls
            _remove(self.path)

    def _clean_stale(self) -> None:
        """Remove every temp folder of this entry; only called while holding its lock, so
        none of them belongs to a live build (a builder holds the lock until its folder is gone)."""
        for tmp in self.temp_folders():
            _remove(tmp)

    @contextlib.contextmanager
    def build(self, timeout: float | None = None) -> Iterator[Path | None]:
        """Build the entry once across processes.

        Yields None when the entry is (or became, while we waited for the lock) ready;
        the caller then just uses ``.path``. Otherwise yields an empty temp folder to fill;
        on normal exit it is completed and renamed to ``.path``, on an exception deleted.
        Waits for another builder at most ``timeout`` seconds (None: ``lock_timeout()``),
        then raises LockBusy naming it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with hold_lock(self.lock_path, f"cache entry {self.name}", doing="building it", timeout=timeout):
            self._clean_stale()
            if self.ready:
                yield None
                return
            tmp = self.path.with_name(f"{self.path.name}{_TMP}{os.getpid()}-{secrets.token_hex(4)}")
            tmp.mkdir()
            try:
                yield tmp
                (tmp / KEY_FILE).write_text(canonical_key(self.key) + "\n", encoding="utf-8")
                with open(tmp / MARKER, "w", encoding="utf-8") as marker:
                    marker.write(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
                    marker.flush()
                    os.fsync(marker.fileno())
                if self.path.exists() or self.path.is_symlink():
                    _remove(self.path)  # an incomplete leftover: never ready, safe to replace
                os.replace(tmp, self.path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise


def glob_escape(text: str) -> str:
    """Escape glob metacharacters (slugs never contain them, but be exact)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


class Cache:
    """The cache folder of this machine; see the module docstring for the layout."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    def entry(self, kind: str, key: Mapping[str, object]) -> CacheEntry:
        """The entry for ``key`` (ready or not); the key decides the folder, nothing else.

        A ready entry is marked as used now (its marker's mtime), for ``gc``.
        """
        if not _KIND.match(kind):
            raise CacheError(f"bad cache kind {kind!r}: use letters, digits, '_' and '-'")
        digest = hashlib.sha256(canonical_key(key).encode("utf-8")).hexdigest()[:16]
        path = self.root / kind / f"{_slug(key)}-{digest}"
        root = self.root.resolve()
        resolved = path.resolve()
        if resolved == root or not resolved.is_relative_to(root):
            raise CacheError(f"cache entry {path} would lie outside {root}")
        entry = CacheEntry(path, kind, key)
        with contextlib.suppress(OSError):  # absent (not ready), or a read-only cache
            os.utime(path / MARKER)
        return entry

    def scratch(self, name: str) -> Path:
        """A folder for a tool's own files (e.g. a hub client's cache); not an entry, never listed."""
        if not _KIND.match(name):
            raise CacheError(f"bad scratch name {name!r}")
        return self.root / SCRATCH / name

    def _kind_dirs(self, kind: str | None) -> list[Path]:
        if kind is not None:
            if not _KIND.match(kind):
                raise CacheError(f"bad cache kind {kind!r}")
            return [self.root / kind] if (self.root / kind).is_dir() else []
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and _KIND.match(p.name))

    def list(self) -> list[dict[str, object]]:
        """Every entry folder: kind, path, key (None if unreadable), size in bytes, ready,
        last_used (a timestamp; None when not ready)."""
        found: list[dict[str, object]] = []
        for kind_dir in self._kind_dirs(None):
            for path in sorted(kind_dir.iterdir()):
                if not path.is_dir() or _TMP in path.name or path.name.endswith(_LOCK):
                    continue
                key: object = None
                with contextlib.suppress(OSError, ValueError):
                    key = json.loads((path / KEY_FILE).read_text(encoding="utf-8"))
                last_used: float | None = None
                with contextlib.suppress(OSError):
                    last_used = (path / MARKER).stat().st_mtime
                found.append(
                    {
                        "kind": kind_dir.name,
                        "path": path,
                        "key": key,
                        "size": tree_size(path),
                        "ready": (path / MARKER).is_file(),
                        "last_used": last_used,
                    }
                )
        return found

    def temp_folders(self, kind: str | None = None) -> _Paths:
        """Temporary build folders (live builds and crash leftovers), of one kind or all."""
        return [p for kind_dir in self._kind_dirs(kind) for p in _temps_in(kind_dir)]

    def _leftover_builds(
        self, kind_dir: Path, *, prefix: str = "", dry_run: bool = False
    ) -> tuple[_Rows, _Rows]:
        """Temp build folders in ``kind_dir`` as (leftovers, removed unless ``dry_run``; live builds, kept).

        Judged by the entry's lock, never by the pid in the folder's name (another
        container's pid means nothing here): a builder holds the lock while its folder exists.
        """
        temps: dict[str, list[Path]] = {}
        for path in _temps_in(kind_dir):
            if path.name.startswith(prefix):
                temps.setdefault(path.name.rsplit(_TMP, 1)[0], []).append(path)
        removed: _Rows = []
        busy: _Rows = []
        for name, paths in temps.items():
            rows: _Rows = [{"kind": kind_dir.name, "path": p, "key": None, "size": tree_size(p),
                            "ready": False, "last_used": None} for p in paths]
            try:
                with hold_lock(kind_dir / (name + _LOCK), f"cache entry {kind_dir.name}/{name}",
                               doing="removing a dead build's leftovers", timeout=0):
                    if not dry_run:
                        for path in paths:
                            _remove(path)
                removed += rows
            except LockBusy:
                busy += rows
        return removed, busy

    def clear(self, kind: str | None = None, *, prefix: str = "") -> int:
        """Delete entries (of one kind, or all, then scratch too) and dead builds' leftovers;
        return bytes freed. ``prefix``: only entries whose folder name starts with it.

        What is locked right now (an entry being built, its temp folders) is left alone;
        ``temp_folders`` afterwards shows the builds that were. Lock files stay: deleting
        one that another process has open would let two builders in at once.
        """
        freed = 0
        for kind_dir in self._kind_dirs(kind):
            gone, _building = self._leftover_builds(kind_dir, prefix=prefix)
            freed += sum(int(str(row["size"])) for row in gone)
            for path in sorted(kind_dir.iterdir()):
                if _is_lock_file(path.name) or _TMP in path.name or not path.name.startswith(prefix):
                    continue
                lock, what = path.with_name(path.name + _LOCK), f"cache entry {kind_dir.name}/{path.name}"
                try:
                    with hold_lock(lock, what, doing="removing it", timeout=0):
                        freed += _remove(path)
                except LockBusy:
                    continue
        if kind is None and not prefix:
            freed += _remove(self.root / SCRATCH)
        return freed

    def gc(
        self, *, older_than: float | None = None, max_size: int | None = None, dry_run: bool = False
    ) -> tuple[_Rows, _Rows]:
        """Remove entries unused for ``older_than`` seconds, then the least recently used
        until the ready ones fit in ``max_size`` bytes; and incomplete leftovers of dead builds.

        Returns (removed, kept because in use), temp build folders included. An entry
        whose lock is held (being built right now) is never removed, nor its temp folders;
        ``dry_run`` only says what would go.
        """
        now = time.time()
        removed: _Rows = []
        busy: _Rows = []
        for kind_dir in self._kind_dirs(None):
            gone, building = self._leftover_builds(kind_dir, dry_run=dry_run)
            removed += gone
            busy += building
        entries = self.list()
        doomed = [e for e in entries if not e["ready"]]  # half-built leftovers of a crash
        ready = sorted((e for e in entries if e["ready"]), key=lambda e: float(str(e["last_used"])))
        if older_than is not None:
            doomed += [e for e in ready if now - float(str(e["last_used"])) > older_than]
        if max_size is not None:
            kept = [e for e in ready if e not in doomed]
            total = sum(int(str(e["size"])) for e in kept)
            for e in kept:  # least recently used first
                if total <= max_size:
                    break
                doomed.append(e)
                total -= int(str(e["size"]))
        for e in doomed:
            path = Path(str(e["path"]))
            try:
                with hold_lock(path.with_name(path.name + _LOCK), f"cache entry {e['kind']}/{path.name}",
                               doing="removing it", timeout=0):
                    if not dry_run:
                        _remove(path)
                removed.append(e)
            except LockBusy:
                busy.append(e)
        return removed, busy
