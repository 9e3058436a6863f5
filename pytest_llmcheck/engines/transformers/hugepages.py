"""Weights the int4-a8 decode streams, in anonymous memory of 2 MB pages.

Why: at one token per step the int4-a8 kernel reads every weight once, front to back, and is
bound by how fast memory delivers them. On ordinary 4 KB pages the hardware prefetcher stops
at every page boundary; in 2 MB pages it runs on. ``benchmarks/bench_w4a8_bodies.py`` times a
layer both ways (docs/performance.md has the figures). torch's allocator gives 2 MB pages only
when THP_MEM_ALLOC_ENABLE is set before the process starts, which a plugin cannot do, so the
kernel's weights are written at load into an anonymous mapping advised with
``madvise(MADV_HUGEPAGE)`` (the standard library's ``mmap``; no C++ needed).

Only where the bytes lie changes, never their values: the answers are the same. Where the
system gives no 2 MB pages, the mapping is ordinary pages and nothing else changes. Tensors
are placed back to back in the order given, so that neighbours that one kernel call reads
together (q/k/v, gate/up) stay one run: :func:`adjacent` joins them without a copy.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import mmap
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

HUGE_PAGE = 2 << 20
MADV_COLLAPSE = 25  # linux/mman.h; the mmap module names it from Python 3.13 on Linux 6.1+
ALIGN = 64  # each tensor starts on a cache line (the kernel's tiles are whole cache lines)


class Arena:
    """``size`` bytes in one anonymous mapping, 2 MB aligned and advised for 2 MB pages, handed
    out front to back by :meth:`empty` and :meth:`take`. Pages are touched (and counted in RSS)
    only as tensors are written in, so filling it layer by layer, each temporary freed as it
    goes, holds one layer more than the arena at peak."""

    def __init__(self, size: int) -> None:
        import torch

        if hasattr(mmap, "MAP_ANONYMOUS"):
            self._map = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        else:  # Windows: -1 is an anonymous mapping there
            self._map = mmap.mmap(-1, size + HUGE_PAGE)
        self.advised = False  # advised, and the kernel gives 2 MB pages on advice
        advice = getattr(mmap, "MADV_HUGEPAGE", None)  # Linux only
        if advice is not None and offered():
            with contextlib.suppress(OSError):  # a kernel without THP: ordinary pages
                self._map.madvise(advice)
                self.advised = True
        # holds the mapping while any view lives; never close ``_map``: the views would point at nothing
        whole = torch.frombuffer(self._map, dtype=torch.uint8)
        self._skip = -whole.data_ptr() % HUGE_PAGE
        self._bytes = whole[self._skip : self._skip + size]
        self._used = 0

    @staticmethod
    def padded(nbytes: int) -> int:
        """The room a tensor of ``nbytes`` takes (each starts on a cache line)."""
        return -(-nbytes // ALIGN) * ALIGN

    @staticmethod
    def size_of(tensors: list[torch.Tensor]) -> int:
        """The bytes an arena needs to :meth:`take` each of ``tensors``."""
        return sum(Arena.padded(t.numel() * t.element_size()) for t in tensors)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialized contiguous tensor in the next free bytes."""
        nbytes = math.prod(shape) * dtype.itemsize
        if self._used + nbytes > self._bytes.numel():
            raise ValueError(f"arena of {self._bytes.numel()} bytes has no room for {nbytes} more")
        view = self._bytes[self._used : self._used + nbytes].view(dtype).view(shape)
        self._used += self.padded(nbytes)
        return view

    def settle(self) -> None:
        """Ask Linux (6.1 and later) to put what was written into 2 MB pages now: where memory was
        fragmented when the pages were first touched, or the system's ``defrag`` setting let the
        faults take 4 KB pages, ``MADV_COLLAPSE`` compacts and copies them over synchronously,
        whatever that setting says. Advice only: an older kernel, or one that cannot, says no."""
        if not self.advised or not self._used:
            return
        length = min(-(-self._used // HUGE_PAGE) * HUGE_PAGE, len(self._map) - self._skip)
        with contextlib.suppress(OSError):
            self._map.madvise(getattr(mmap, "MADV_COLLAPSE", MADV_COLLAPSE), self._skip, length)

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """A copy of ``tensor`` (contiguous, same dtype and shape) in the next free bytes."""
        view = self.empty(tuple(tensor.shape), tensor.dtype)
        view.copy_(tensor)
        return view


def offered() -> bool:
    """Whether this system gives 2 MB pages where advised: Linux's transparent huge pages in
    ``always`` or ``madvise`` mode (``never``, or no such setting, gives ordinary pages)."""
    try:
        setting = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text(encoding="ascii")
    except OSError:
        return False
    return "[never]" not in setting


def adjacent(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """``tensors`` joined along dim 0 without a copy, when they already lie back to back in one
    storage (contiguous, same dtype and trailing shape); else None (the caller concatenates)."""
    import torch

    first = tensors[0]
    if any(
        t.dim() == 0 or not t.is_contiguous() or t.dtype != first.dtype or t.shape[1:] != first.shape[1:]
        for t in tensors
    ):
        return None
    storage = first.untyped_storage()
    for before, after in itertools.pairwise(tensors):
        if after.untyped_storage().data_ptr() != storage.data_ptr():
            return None
        if after.data_ptr() != before.data_ptr() + before.numel() * before.element_size():
            return None
    rows = sum(int(t.shape[0]) for t in tensors)
    joined = torch.empty(0, dtype=first.dtype)
    shape = (rows, *first.shape[1:])
    # contiguous strides from the shape: a one-row tensor's own dim-0 stride may be anything
    strides = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
    joined.set_(storage, first.storage_offset(), shape, strides)
    return joined
