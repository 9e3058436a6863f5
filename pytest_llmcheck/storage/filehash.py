"""sha256 of model files, hashed once per file version on a machine.

Cache entries made from local files (converted and INT4 weights) are keyed by what the
files hold, not where they lie or when they were written: the same GGUF in two virtual
environments, or a model folder copied elsewhere, maps to the same entry. Hashing a
multi-GB file takes seconds, so each digest is remembered in a small JSON memo in the
cache root under the file's (real path, size, mtime_ns, inode, device); an unchanged file
is never read again, a replaced or rewritten one is.

The memo is only a shortcut: a lost or corrupt memo means hashing again, never a wrong
key. Writers merge under a lock and replace the file atomically (temp file + rename), so
concurrent sessions (xdist workers, CI jobs on one runner) never see half a memo. A file
modified less than ``RACY_SECONDS`` ago is hashed but not remembered: a write in the same
clock tick could change it without changing its modification time (git's "racy" case).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

MEMO_FILE = "filehashes.json"
MEMO_VERSION = 1
RACY_SECONDS = 2.0
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """The file's sha256, read in 1 MiB chunks (the memo counts calls to this)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(stat: os.stat_result) -> dict[str, int]:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino, "device": stat.st_dev}


class FileHashes:
    """Digests of files, memoized in ``root/filehashes.json`` (no memo when ``root`` is None)."""

    def __init__(self, root: Path | None) -> None:
        self.memo_path = root / MEMO_FILE if root is not None else None

    def digests(self, paths: Iterable[Path]) -> dict[Path, str]:
        """sha256 of each file (keyed by the path given), reading only files not memoized."""
        memo = self._read()
        found: dict[Path, str] = {}
        learned: dict[str, dict[str, Any]] = {}
        for path in paths:
            real = os.path.realpath(path)  # a hub cache's symlinks: the blob is the file
            stat = os.stat(real)
            stamp = _stamp(stat)
            known = memo.get(real)
            if isinstance(known, dict) and {k: known.get(k) for k in stamp} == stamp and known.get("sha256"):
                found[path] = str(known["sha256"])
                continue
            digest = sha256_file(Path(real))
            found[path] = digest
            after = os.stat(real)
            settled = time.time_ns() - after.st_mtime_ns > RACY_SECONDS * 1e9
            if _stamp(after) == stamp and settled:
                learned[real] = {**stamp, "sha256": digest}
        if learned:
            self._save(learned)
        return found

    def _read(self) -> dict[str, Any]:
        if self.memo_path is None:
            return {}
        try:
            data = json.loads(self.memo_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        files = data.get("files") if isinstance(data, dict) and data.get("version") == MEMO_VERSION else None
        return files if isinstance(files, dict) else {}

    def _save(self, learned: dict[str, dict[str, Any]]) -> None:
        """Merge into the memo on disk; files that are gone are dropped. Best effort."""
        if self.memo_path is None:
            return
        path = self.memo_path
        with contextlib.suppress(OSError, Timeout):
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(path) + ".lock", timeout=10):
                files = {real: info for real, info in self._read().items() if os.path.exists(real)}
                files.update(learned)
                tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
                try:
                    tmp.write_text(json.dumps({"version": MEMO_VERSION, "files": files}, indent=1), "utf-8")
                    os.replace(tmp, path)
                finally:
                    with contextlib.suppress(OSError):
                        tmp.unlink()
