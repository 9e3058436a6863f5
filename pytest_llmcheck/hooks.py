"""Hook specifications other plugins (and test conftests) implement."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .engines.base import Engine
    from .registry import ModelRef
    from .settings import Settings


@pytest.hookspec(firstresult=True)
def pytest_llmcheck_make_engine(ref: ModelRef, settings: Settings) -> Engine | None:
    """Load ``ref`` and return a ready Engine, or None to leave it to the next implementation.

    The built-in implementation (tried last) downloads, converts and quantizes with
    transformers + torch. A plugin can serve its own schemes (``myengine:...``) or
    engines here.
    """
