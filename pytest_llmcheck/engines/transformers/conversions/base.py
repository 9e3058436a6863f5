"""What a conversion is: the types the conversions package and each architecture share.

Kept apart from ``conversions/__init__`` (which registers qwen and chatglm) so that each
architecture imports these without importing its own registry back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmcheck.errors import LlmcheckError

if TYPE_CHECKING:
    import torch

__all__ = ["Conversion", "ConversionError", "TensorMap"]


class ConversionError(LlmcheckError):
    """A checkpoint that claims a convertible architecture but does not fit its mapping."""


TensorMap = Callable[[dict[str, Any], str, "torch.Tensor"], list[tuple[str, "torch.Tensor"]]]


@dataclass(frozen=True)
class Conversion:
    """How one source architecture becomes a built-in transformers model.

    ``map_tensor`` is pure (it only slices and renames), so it runs as well on meta
    tensors: the full-size mapping is checkable without allocating 15 GB.
    """

    model_type: str  # the source config's model_type
    source: str  # the source architecture, for messages
    target: str  # the transformers class it becomes
    version: int  # the mapping version: part of cache keys and fingerprints
    target_config: Callable[[dict[str, Any]], Any]  # source config.json -> transformers config
    map_tensor: TensorMap
    ignored: re.Pattern[str]  # source tensors with no counterpart (recomputed buffers)
    build_tokenizer: Callable[[Path, dict[str, Any]], Any]  # source folder -> PreTrainedTokenizerFast
    generation: Callable[[dict[str, Any], Any], dict[str, Any]]  # (config, tokenizer) -> generation_config

    @property
    def tag(self) -> dict[str, Any]:
        """What a cache key and a fingerprint record about this conversion."""
        return {"converted": True, "from": self.model_type, "to": self.target, "mapping": self.version}
