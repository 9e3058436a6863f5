"""Which model a collected item runs on: set at collection, read by the session, shards and snapshots.

Low in the package so that the snapshot extension can name an item's model without importing
the session that runs it.
"""

from __future__ import annotations

import pytest

MODEL_KEY = pytest.StashKey[str]()  # model name of a suite item (Python tests use callspec)


def model_of(item: pytest.Item) -> str | None:
    """The model an item runs on, if it runs on one."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "llm" in callspec.params:
        return str(callspec.params["llm"])
    return item.stash.get(MODEL_KEY, None)
