"""From a ModelRef to a loaded engine: files onto disk, then load and quantize."""

from __future__ import annotations

from pathlib import Path

from pytest_llmcheck.config.registry import ModelRef
from pytest_llmcheck.config.settings import Settings
from pytest_llmcheck.engines.transformers.engine import TransformersEngine
from pytest_llmcheck.engines.transformers.quantize import get_quantizer
from pytest_llmcheck.storage.cache import Cache


def model_files(ref: ModelRef, settings: Settings, *, progress: bool = False) -> Path:
    """A local folder holding the model (downloaded from a hub when needed)."""
    if ref.source in ("modelscope", "hf"):
        from pytest_llmcheck.storage.hub import download

        return download(ref, Cache(settings.cache_dir), offline=settings.offline, progress=progress)
    return Path(ref.location)


def load_transformers(ref: ModelRef, settings: Settings) -> TransformersEngine:
    """The transformers engine's loader: files onto disk, then load and quantize."""
    folder = model_files(ref, settings, progress=settings.progress)
    return TransformersEngine.load(
        ref,
        folder,
        get_quantizer(settings.quant),
        threads=settings.threads,
        trust_remote_code=ref.trust_remote_code,
        cache=Cache(settings.cache_dir) if settings.use_cache else None,
        decode=settings.engine_options.get("decode", "fast"),
        numerics=settings.numerics,
    )
