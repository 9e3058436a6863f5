"""Holds at most one loaded model at a time, loading each once per session.

Items are grouped by model at collection (see ``session.group_by_model``), so a model
is loaded on its first test, shared by the rest, and released before the next model
loads: only one model is ever in memory. A model that fails to load fails each of its
tests with the same one-line reason, without trying again.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from pytest_llmcheck.config.registry import ModelRef
from pytest_llmcheck.engines.base import Engine
from pytest_llmcheck.errors import LlmcheckError
from pytest_llmcheck.text.redact import redact


class ModelUnavailable(Exception):
    """The model could not be loaded; ``str()`` is the one line to show, ``details`` more lines."""

    def __init__(self, reason: str, details: str = "") -> None:
        super().__init__(reason)
        self.details = details


@dataclass
class LoadRecord:
    """How one model's load went: its time, or the error every later test of it reports."""

    seconds: float = 0.0
    error: str | None = None
    details: str = ""  # e.g. a worker's last log lines, for the report


@dataclass
class ModelPool:
    make_engine: Callable[[ModelRef], Engine]
    on_load: Callable[[ModelRef, Engine, float], None] = lambda ref, engine, seconds: None
    # Told when an engine's close() raises; None raises it instead.
    on_close_error: Callable[[ModelRef, Exception], None] | None = None
    current: tuple[ModelRef, Engine] | None = None
    records: dict[str, LoadRecord] = field(default_factory=dict)

    def loaded(self, ref: ModelRef) -> bool:
        return self.current is not None and self.current[0] == ref

    def get(self, ref: ModelRef) -> Engine:
        if self.current is not None and self.current[0] == ref:  # loaded(ref), narrowed for mypy
            return self.current[1]
        record = self.records.setdefault(ref.name, LoadRecord())
        if record.error is not None:
            raise ModelUnavailable(record.error, record.details)
        self.release()
        start = time.perf_counter()
        try:
            engine = self.make_engine(ref)
        except Exception as exc:  # any load failure becomes one clear line per test
            record.error, record.details = _describe(ref, exc), str(getattr(exc, "details", "") or "")
            if not isinstance(exc, LlmcheckError):  # not the user's doing: the traceback goes in the report
                record.details = "".join(traceback.format_exception(exc))
            record.details = redact(record.details)  # a worker's log or a traceback may quote a URL
            raise ModelUnavailable(record.error, record.details) from exc
        if not isinstance(engine, Engine):
            record.error = (
                f"model {ref.name!r}: the engine {type(engine).__name__} lacks part of the Engine protocol "
                "(name, facts, generate, fingerprint, close)"
            )
            raise ModelUnavailable(record.error)
        record.seconds = time.perf_counter() - start
        self.current = (ref, engine)
        self.on_load(ref, engine, record.seconds)
        return engine

    def release(self) -> None:
        """Drop the loaded model. A close() that raises goes to ``on_close_error`` when set:
        the model is gone either way, and the next model must still load."""
        if self.current is not None:
            ref, engine = self.current
            self.current = None
            try:
                engine.close()
            except Exception as exc:
                if self.on_close_error is None:
                    raise
                self.on_close_error(ref, exc)


def _describe(ref: ModelRef, exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(f"model {ref.name!r} ({ref.spec}) failed to load: {type(exc).__name__}: {text}")
