"""Per-machine cache of things that are expensive to make (downloads, converted models).

Every entry is a folder ``root/<kind>/<slug>-<hash>`` that is either complete or absent:
it is built in a temporary sibling folder under a file lock and renamed into place
only after its ``.complete`` marker was written. A crash mid-build (even SIGKILL)
therefore leaves at most a temporary folder, which is never taken as ready and is
removed by the next build once its process is gone.

Asking for a ready entry (``Cache.entry``) counts as using it: the marker's modification
time is set to now, so ``Cache.gc`` can remove what no session used for a while, or the
least recently used entries above a size cap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
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
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_KIND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_Rows = list[dict[str, object]]  # Cache.list() rows (``list`` is a method name inside Cache)


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


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _tmp_pid(name: str) -> int | None:
    """The builder's pid from ``<entry>.tmp-<pid>-<random>``, or None if malformed."""
    rest = name.rsplit(_TMP, 1)[-1]
    pid, _, _ = rest.partition("-")
    return int(pid) if pid.isdigit() else None


def _size(path: Path) -> int:
    """Bytes under ``path``, not following symlinks."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _remove(path: Path) -> int:
    """Delete a file or folder; return the bytes it held."""
    if not path.exists() and not path.is_symlink():
        return 0
    freed = _size(path)
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

    def discard(self) -> None:
        """Remove a ready entry that proved unusable (under its lock): the next build redoes it."""
        with FileLock(str(self.lock_path)):
            (self.path / MARKER).unlink(missing_ok=True)  # not ready from here on, even if removal stalls
            _remove(self.path)

    def _clean_stale(self) -> None:
        """Remove temp folders whose builder died; only called while holding the lock."""
        for tmp in self.temp_folders():
            pid = _tmp_pid(tmp.name)
            if pid is None or pid == os.getpid() or not _pid_alive(pid):
                _remove(tmp)

    @contextlib.contextmanager
    def build(self, timeout: float = -1) -> Iterator[Path | None]:
        """Build the entry once across processes.

        Yields None when the entry is (or became, while we waited for the lock) ready;
        the caller then just uses ``.path``. Otherwise yields an empty temp folder to fill;
        on normal exit it is completed and renamed to ``.path``, on an exception deleted.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.lock_path), timeout=timeout):
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
                        "size": _size(path),
                        "ready": (path / MARKER).is_file(),
                        "last_used": last_used,
                    }
                )
        return found

    def clear(self, kind: str | None = None) -> int:
        """Delete entries (of one kind, or all, then scratch too) and dead builds; return bytes freed.

        An entry being built right now (its lock is held) is left alone. Lock files stay:
        deleting one that another process has open would let two builders in at once.
        """
        freed = 0
        for kind_dir in self._kind_dirs(kind):
            for path in sorted(kind_dir.iterdir()):
                if path.name.endswith(_LOCK):
                    continue
                if _TMP in path.name:
                    pid = _tmp_pid(path.name)
                    if pid is None or not _pid_alive(pid):
                        freed += _remove(path)
                    continue
                lock = FileLock(str(path.with_name(path.name + _LOCK)), timeout=0)
                try:
                    with lock:
                        freed += _remove(path)
                except Timeout:
                    continue
        if kind is None:
            freed += _remove(self.root / SCRATCH)
        return freed

    def gc(
        self, *, older_than: float | None = None, max_size: int | None = None, dry_run: bool = False
    ) -> tuple[_Rows, _Rows]:
        """Remove entries unused for ``older_than`` seconds, then the least recently used
        until the ready ones fit in ``max_size`` bytes; and incomplete leftovers of dead builds.

        Returns (removed, kept because in use). An entry whose lock is held (being built
        right now) is never removed; ``dry_run`` only says what would go.
        """
        now = time.time()
        removed: _Rows = []
        busy: _Rows = []
        for kind_dir in self._kind_dirs(None):
            for path in sorted(kind_dir.glob(f"*{_TMP}*")):
                pid = _tmp_pid(path.name)
                if (pid is None or not _pid_alive(pid)) and not dry_run:
                    _remove(path)
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
            lock = FileLock(str(path.with_name(path.name + _LOCK)), timeout=0)
            try:
                with lock:
                    if not dry_run:
                        _remove(path)
                removed.append(e)
            except Timeout:
                busy.append(e)
        return removed, busy
