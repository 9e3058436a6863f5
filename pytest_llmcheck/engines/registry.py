"""The engine axis: which engines exist, and which one a model reference asks for.

A model runs on one engine, named by ``--llm-engine`` for all models or by a suffix on
one reference (``qwen@itrex``). Built-in engines are listed here by import path, so
nothing heavy is imported until a model of that engine loads; other plugins add theirs
through the ``pytest_llmcheck_engines`` hook. An engine may also own a reference scheme
(``openai:...``): such references need no ``@engine`` suffix.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_llmcheck.config.modelref import (
    DEFAULT_ENGINE as DEFAULT_ENGINE,  # re-exported: defined here before modelref.py
)
from pytest_llmcheck.config.modelref import HUB_SCHEMES as HUB_SCHEMES
from pytest_llmcheck.config.modelref import ModelRef, ModelRefError
from pytest_llmcheck.errors import LlmcheckError
from pytest_llmcheck.text.redact import has_credentials

if TYPE_CHECKING:
    from pytest_llmcheck.config.settings import Settings
    from pytest_llmcheck.engines.base import Engine

Loader = Callable[["ModelRef", "Settings"], "Engine"]


class EngineError(LlmcheckError):
    """An engine name or scheme that nothing provides."""


@dataclass(frozen=True)
class EngineSpec:
    """One engine: its name, what it is for, and how to load a model on it.

    ``load`` is a callable or an import path ``"package.module:function"`` resolved on
    first use, so listing an engine costs nothing.
    """

    name: str
    description: str
    load: Loader | str
    schemes: tuple[str, ...] = ()  # reference schemes this engine owns, e.g. ("openai",)
    # How a reference of those schemes is named (test ids, snapshot files: letters, digits,
    # '.', '_', '-', '@'); default: the text after the scheme, cleaned up.
    ref_name: Callable[[str], str] | None = None
    # Loading is cheap and answers come from elsewhere (a server): under xdist its tests
    # spread over all workers, so N requests are in flight, instead of one worker per model.
    remote: bool = False

    def loader(self) -> Loader:
        if not isinstance(self.load, str):
            return self.load
        module, _, attr = self.load.partition(":")
        func: Loader = getattr(importlib.import_module(module), attr)
        return func


OPENAI_URL_CREDENTIALS = (
    "openai: the server URL carries credentials (user:password@ or api_key=...); put the key in an "
    "environment variable and name it with --llm-openai-key-env"
)


def openai_ref_name(rest: str) -> str:
    """``openai:<model>`` or ``openai:<base url>#<model>`` is named ``<model>@openai``.

    The served model names the tests; the suffix keeps its snapshot files apart from the
    same model run in process (``smollm2`` vs ``smollm2@openai``). A URL with credentials
    is refused here, before anything is collected or printed: the engine sends the key only
    in the Authorization header, so they would be dropped and could only leak.
    """
    if has_credentials(rest):
        raise ModelRefError(OPENAI_URL_CREDENTIALS)
    model = rest.rsplit("#", 1)[1] if "#" in rest else rest
    return (re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-.") or "model") + "@openai"


BUILTIN_ENGINES: tuple[EngineSpec, ...] = (
    EngineSpec(
        "transformers",
        "transformers + torch in this process; --llm-quant int4 (torchao), bf16 or none",
        "pytest_llmcheck.engines.transformers.loader:load_transformers",
    ),
    EngineSpec(
        "replay",
        "answers from recorded answers (--llm-replay=report.json, a recorded-answers file or snapshots)",
        "pytest_llmcheck.engines.replay:load_replay",
        schemes=("replay",),
    ),
    EngineSpec(
        "llamacpp",
        "llama.cpp in this process (extra [llamacpp]): GGUF files, folders and hub repos; "
        "--llm-gguf-quant picks a file, float GGUFs are quantized (--llm-gguf-requant)",
        "pytest_llmcheck.engines.llamacpp:load_llamacpp",
    ),
    EngineSpec(
        "openai",
        "an OpenAI-compatible chat-completions server (vLLM, llama.cpp, TGI, Ollama...): "
        "openai:<model> with --llm-openai-url, or openai:<base url>#<model>",
        "pytest_llmcheck.engines.openai:load_openai",
        schemes=("openai",),
        ref_name=openai_ref_name,
        remote=True,
    ),
    EngineSpec(
        "itrex",
        "Intel Extension for Transformers RTN INT4 (the seed's recipe) in its own Python; "
        "create it once with: llmcheck env create itrex",
        "pytest_llmcheck.engines.itrex.engine:load_itrex",
    ),
)


class EngineRegistry:
    """Engines by name, and reference schemes by the engine that owns them."""

    def __init__(self, specs: Iterable[EngineSpec] = BUILTIN_ENGINES) -> None:
        self._specs: dict[str, EngineSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: EngineSpec) -> None:
        if not spec.name or "@" in spec.name or ":" in spec.name:
            raise EngineError(f"engine name {spec.name!r} must be a plain word (no '@' or ':')")
        if spec.name in self._specs:
            raise EngineError(f"engine {spec.name!r} is registered twice")
        for scheme in spec.schemes:
            owner = self.scheme_owner(scheme)
            if owner is not None or scheme in HUB_SCHEMES:
                raise EngineError(f"scheme {scheme!r} of engine {spec.name!r} is already taken")
        self._specs[spec.name] = spec

    @property
    def names(self) -> list[str]:
        return list(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def get(self, name: str) -> EngineSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise EngineError(f"unknown engine {name!r}; allowed: {', '.join(self._specs)}") from None

    def scheme_owner(self, scheme: str) -> EngineSpec | None:
        return next((s for s in self._specs.values() if scheme in s.schemes), None)

    @property
    def schemes(self) -> list[str]:
        return ["modelscope", "hf", *(s for spec in self._specs.values() for s in spec.schemes)]

    def load(self, ref: ModelRef, settings: Settings) -> Engine:
        return self.get(ref.engine).loader()(ref, settings)
