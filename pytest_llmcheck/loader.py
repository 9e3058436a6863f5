"""From a ModelRef to a loaded engine: files onto disk, then load and quantize."""

from __future__ import annotations

from pathlib import Path

from .engines.transformers_engine import TransformersEngine
from .quantize import get_quantizer
from .registry import ModelRef
from .settings import Settings


def model_files(ref: ModelRef, settings: Settings) -> Path:
    """A local folder holding the model (downloaded from a hub when needed)."""
    if ref.source in ("modelscope", "hf"):
        from .cache import Cache
        from .hub import download

        return download(ref, Cache(settings.cache_dir), offline=settings.offline)
    return Path(ref.location)


def load_transformers(ref: ModelRef, settings: Settings) -> TransformersEngine:
    folder = model_files(ref, settings)
    return TransformersEngine.load(
        ref,
        folder,
        get_quantizer(settings.quant),
        threads=settings.threads,
        trust_remote_code=ref.trust_remote_code,
    )
