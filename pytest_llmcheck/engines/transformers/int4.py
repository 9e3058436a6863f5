"""torchao's CPU INT4 weights as the lean decode loop and the int4-a8 recipe read them.

Both :mod:`fastpath` (which calls the kernels per token) and :mod:`w4a8` (which repacks the
weights and checks its kernel against torch's) need the same view of a torchao INT4 weight
and the same kernel calls; they live here, below both, so neither imports the other for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_llmcheck.compat.torch import int4pack_mm_for_cpu

if TYPE_CHECKING:
    import torch


def int4_parts(weight: Any) -> tuple[torch.Tensor, int, torch.Tensor] | None:
    """(packed, group size, scale and zero) of a torchao CPU INT4 weight in the plain
    weight-only layout; None for anything else."""
    if type(weight).__name__ != "Int4OpaqueTensor":
        return None
    block = getattr(weight, "block_size", None)
    if (
        getattr(weight, "act_mapping_type", None) is not None
        or getattr(weight, "act_pre_scale", None) is not None
        or not block
        or block[0] != 1
        or weight.qdata.shape[0] != weight.shape[0]  # padded output features
    ):
        return None
    return weight.qdata, int(block[1]), weight.scale_and_zero


def int4_product(x: torch.Tensor, packed: torch.Tensor, group: int, scale_zero: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` for a weight of :func:`int4_parts`: exactly what torchao's Int4OpaqueTensor
    linear computes (it calls the same torch op)."""
    y: torch.Tensor = int4pack_mm_for_cpu()(x, packed, group, scale_zero)
    return y


@dataclass
class Int4Call:
    """One call of torch's CPU INT4 kernel for one or several projections."""

    packed: torch.Tensor
    group: int
    scale_zero: torch.Tensor
    sizes: list[int]  # output features of each member, in order
    bias: torch.Tensor | None

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 1, sum of sizes): exactly what torchao's Int4OpaqueTensor linear computes,
        for all members at once."""
        mm = int4pack_mm_for_cpu()
        y: torch.Tensor = mm(x.view(1, -1), self.packed, self.group, self.scale_zero).view(1, 1, -1)
        if self.bias is not None:
            y += self.bias
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        import torch

        y = self.raw(x)
        return list(torch.split(y, self.sizes, dim=-1)) if len(self.sizes) > 1 else [y]


@dataclass
class W4A8Call:
    """One call of the ``int4-a8`` kernel for one or several projections (see w4a8.py).
    Every 16 outputs are summed on their own, so a fused call gives each member's values."""

    packed: torch.Tensor
    sz: torch.Tensor
    group: int
    sizes: list[int]
    bias: torch.Tensor | None

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        mm = torch.ops.llmcheck.w4a8_mm
        y: torch.Tensor = mm(x.view(1, -1), self.packed, self.sz, self.bias, self.group)
        return y.view(1, 1, -1)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        import torch

        y = self.raw(x)
        return list(torch.split(y, self.sizes, dim=-1)) if len(self.sizes) > 1 else [y]
