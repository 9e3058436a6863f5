"""The session object: resolved models, the model pool and the results.

The plugin creates one per pytest session and keeps it in the config stash; hooks and
fixtures call its methods. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .engines.base import Engine, GenerationConfig
from .pool import ModelPool, ModelUnavailable
from .registry import ModelRef, ModelRefError, resolve
from .results import SessionResults
from .settings import Settings


def default_engine(ref: ModelRef, settings: Settings) -> Engine:
    """Files onto disk (hub or local), then transformers + the chosen quantizer."""
    from .loader import load_transformers

    return load_transformers(ref, settings)


@dataclass
class LlmcheckSession:
    """What one pytest session knows about its models."""

    settings: Settings
    make_engine: Callable[[ModelRef], Engine]
    rootpath: Path
    results: SessionResults = field(default_factory=SessionResults)
    _refs: list[ModelRef] | None = None
    _ref_error: str | None = None
    pool: ModelPool = field(init=False)

    def __post_init__(self) -> None:
        self.pool = ModelPool(self.make_engine, on_load=self._record_load)

    # -- models

    def resolve_models(self) -> list[ModelRef]:
        """Resolve ``--llm-model`` once; errors are usage errors (exit code 4)."""
        if self._refs is None:
            refs: list[ModelRef] = []
            names: dict[str, int] = {}
            for spec in self.settings.models:
                try:
                    ref = resolve(spec, root=self.rootpath)
                except ModelRefError as exc:
                    raise pytest.UsageError(f"--llm-model: {exc}") from None
                ref = _with(ref, trust_remote_code=self.settings.trusts(ref.name))
                count = names.get(ref.name, 0)
                names[ref.name] = count + 1
                if count:  # two folders named alike: keep test ids unique
                    ref = _with(ref, name=f"{ref.name}-{count + 1}")
                refs.append(ref)
            self._refs = refs
        return self._refs

    def ref_named(self, name: str) -> ModelRef:
        for ref in self.resolve_models():
            if ref.name == name:
                return ref
        raise KeyError(name)

    def engine(self, ref: ModelRef) -> Engine:
        """The loaded model, or fail this test with the load error (one line)."""
        try:
            return self.pool.get(ref)
        except ModelUnavailable as exc:
            reason = str(exc)
        pytest.fail(reason, pytrace=False)

    def _record_load(self, ref: ModelRef, engine: Engine, seconds: float) -> None:
        model = self.results.model(ref.name)
        model.source = ref.spec
        model.loads += 1
        model.load_seconds = engine.load_seconds
        model.quantize_seconds = engine.quant.seconds
        model.quant_summary = engine.quant.summary()
        model.fingerprint = engine.fingerprint()

    @property
    def generation(self) -> GenerationConfig:
        s = self.settings
        return GenerationConfig(
            max_new_tokens=s.max_new_tokens, seed=s.seed, threads=s.threads, temperature=s.temperature
        )

    def close(self) -> None:
        self.pool.release()


def _with(ref: ModelRef, **changes: Any) -> ModelRef:
    from dataclasses import replace

    return replace(ref, **changes)


def group_by_model(items: list[pytest.Item], model_of: Callable[[pytest.Item], str | None]) -> None:
    """Reorder in place so each model's items run together, keeping all other order.

    Only the slots held by model items are refilled, so unrelated tests keep their
    positions; within a model the collection order is kept.
    """
    slots = [i for i, item in enumerate(items) if model_of(item) is not None]
    if not slots:
        return
    order: dict[str, int] = {}
    for i in slots:
        order.setdefault(model_of(items[i]) or "", len(order))
    grouped = sorted((items[i] for i in slots), key=lambda it: order[model_of(it) or ""])
    for slot, item in zip(slots, grouped):
        items[slot] = item



SESSION_KEY = pytest.StashKey[LlmcheckSession]()
MODEL_KEY = pytest.StashKey[str]()  # model name of a suite item (Python tests use callspec)
ALIAS_CLASHES_KEY = pytest.StashKey[list[str]]()


def model_of(item: pytest.Item) -> str | None:
    """The model an item runs on, if it runs on one."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "llm" in callspec.params:
        return str(callspec.params["llm"])
    return item.stash.get(MODEL_KEY, None)
