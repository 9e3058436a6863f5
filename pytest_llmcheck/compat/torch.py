"""torch's private API (pinned in pyproject.toml; see ``tests/test_compat.py``).

- ``torch.ops.aten._weight_int4pack_mm_for_cpu``: the CPU INT4 matmul that torchao's
  ``Int4OpaqueTensor`` itself calls; the lean decode loop and the int4-a8 check call it
  directly, to compute exactly what torchao computes.
- ``torch.ops.aten._convert_weight_to_int4pack_for_cpu``: the packing torchao's CPU INT4
  weights get (its layout depends on the level ATen dispatches to); int4-a8 packs a probe
  with it to learn the layout it repacks from.
- ``torch.cpu._is_avx2_supported`` and its kin (``CPU_PROBES``): which CPU extensions the
  machine has, whatever kernels torch was told to use; they decide portable numerics and go
  into cache keys and fingerprints. ``torch.backends.cpu.get_cpu_capability()`` is public
  but names only the one level torch dispatches to.

torch is imported inside the functions: importing the plugin never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CPU_PROBES = {
    "AVX2": "_is_avx2_supported",
    "BF16": "_is_avx512_bf16_supported",
    "VNNI": "_is_vnni_supported",
    "AMX": "_is_amx_tile_supported",
}


def convert_weight_to_int4pack_for_cpu() -> Callable[..., Any]:
    """``(q int32 (N, K) in 0..15, inner_k_tiles) -> packed uint8`` as torchao packs its CPU INT4 weights."""
    import torch

    op: Callable[..., Any] = torch.ops.aten._convert_weight_to_int4pack_for_cpu
    return op


def int4pack_mm_for_cpu() -> Callable[..., Any]:
    """``(x, packed, group_size, scale_and_zero) -> x @ W.T`` for torchao's CPU INT4 layout."""
    import torch

    op: Callable[..., Any] = torch.ops.aten._weight_int4pack_mm_for_cpu
    return op


def cpu_supports(extension: str) -> bool:
    """Whether this CPU has ``extension`` (a key of ``CPU_PROBES``); False where torch has no
    probe for it."""
    import torch

    probe = getattr(torch.cpu, CPU_PROBES[extension], None)
    return bool(probe()) if probe is not None else False
