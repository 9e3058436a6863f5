"""transformers' private API (pinned in pyproject.toml; see ``tests/test_compat.py``).

``PretrainedConfig._attn_implementation``: the attention implementation a loaded model
runs (``sdpa``, ``eager``...). transformers sets it at load and reads it everywhere, but
names it privately; the lean decode loop replaces attention only where it is ``sdpa``.
"""

from __future__ import annotations

from typing import Any


def attn_implementation(config: Any) -> str | None:
    """The attention implementation of a model's config, or None when unset."""
    value = getattr(config, "_attn_implementation", None)
    return value if isinstance(value, str) else None
