"""syrupy's private API (pinned in pyproject.toml; see ``tests/test_compat.py``).

- ``config._syrupy``: the run's ``SnapshotSession``; nothing public reaches it. The
  snapshot guard marks stand-in items as run and adds an ignored file extension on it,
  just before syrupy builds its report.
- ``SingleFileSnapshotExtension._write_mode``: ``WriteMode.TEXT`` is how syrupy's own
  docs make the single-file extension write text, yet the name is private.
- ``SingleFileSnapshotExtension._sanitize_filename``: how a snapshot name becomes a file
  name; the name-length check and the guard must predict the very file syrupy writes.
"""

from __future__ import annotations

import pytest
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode
from syrupy.session import SnapshotSession


def snapshot_session(config: pytest.Config) -> SnapshotSession | None:
    """syrupy's session of this run, or None when syrupy is not active."""
    session = getattr(config, "_syrupy", None)
    return session if isinstance(session, SnapshotSession) else None


class TextSingleFileExtension(SingleFileSnapshotExtension):
    """syrupy's one-snapshot-per-file extension, writing UTF-8 text instead of bytes."""

    _write_mode = WriteMode.TEXT


def file_stem(snapshot_name: str) -> str:
    """The file name (without index and extension) syrupy's single-file extension gives
    ``snapshot_name``."""
    return str(SingleFileSnapshotExtension._sanitize_filename(snapshot_name))
