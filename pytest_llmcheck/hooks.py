"""Hook specifications other plugins (and test conftests) implement."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pytest_llmcheck.config.registry import ModelRef
    from pytest_llmcheck.config.settings import Settings
    from pytest_llmcheck.engines.base import Engine
    from pytest_llmcheck.engines.registry import EngineSpec


@pytest.hookspec
def pytest_llmcheck_engines() -> Sequence[EngineSpec]:
    """Engines this plugin adds to the engine axis (``--llm-engine``, ``model@engine``).

    Called once at configure time. An ``EngineSpec`` names the engine, the callable that
    loads a ``ModelRef`` on it, and the reference schemes it owns (``myengine:...``).
    """
    return ()


@pytest.hookspec(firstresult=True)
def pytest_llmcheck_make_engine(ref: ModelRef, settings: Settings) -> Engine | None:
    """Load ``ref`` and return a ready Engine, or None to leave it to its registered engine.

    A first chance to take over any model's loading (tests use it to wrap an engine);
    new engines are better added with ``pytest_llmcheck_engines``.
    """
