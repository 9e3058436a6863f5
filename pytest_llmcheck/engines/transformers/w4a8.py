"""The ``int4-a8`` recipe: torchao's INT4 weights multiplied by int8 activations.

torch's CPU INT4 kernel keeps activations in bf16 and dequantizes every weight before
multiplying; at one token per step that dequantization is most of a small model's time.
llama.cpp quantizes the activations to int8 in blocks of 32 instead and multiplies integers.
This module does the same on torchao's INT4 weights (the same cached entry as
``--llm-quant=int4``, repacked at load), with a small C++ kernel (``w4a8.cpp``) compiled
once per machine into the cache.

The answers differ from ``int4`` (activations lose precision), so the recipe is opt-in and
has snapshots of its own. They repeat across sessions and thread counts (every output is
summed by one thread in a fixed order) and across CPUs: the kernel's AVX512-VNNI and AVX2
bodies compute the same bits (integer sums, then the same fp32 operations), so with portable
numerics (the plugin's default) an answer recorded on an AVX512 laptop holds on an AVX2-only
CI runner.

What the kernel earns: ``benchmarks/bench_decode.py``'s row "torch int4-a8, fast loop"
against "torch int4, fast loop" (the C++ step over torch's INT4 kernel) on SmolLM2, in
docs/performance.md: 174.9 / 192.0 against 95.5 / 96.7 decode tokens per second at 1
thread, 254.8 / 248.3 against 125.0 / 147.9 at 2 (llama.cpp as the engine runs it: 155.6
and 186.4); the AVX2 body against the VNNI one and llama.cpp's x86-64-v3 build:
``benchmarks/bench_size.py --rows int4-a8,int4-a8-avx2,Q4_0``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmcheck.engines.transformers import int4, kernels
from pytest_llmcheck.errors import LlmcheckError
from pytest_llmcheck.storage.cache import Cache

if TYPE_CHECKING:
    import torch

SOURCE = Path(__file__).with_name("w4a8.cpp")
LIBRARY = "w4a8.so"
CACHE_KIND = kernels.CACHE_KIND
TILE = 16  # the kernel's outputs per tile (and torchao's required multiple)
# no ISA flags: each body names its own target, so the library loads on any x86-64 CPU and
# picks its body at run time; no fp contraction (both bodies' fp32 operations are the source's)
FLAGS = ("-O3", "-shared", "-fPIC", "-std=c++20", "-fopenmp", "-ffp-contract=off", "-w")
MAX_PROBE_ERROR = 0.05  # relative error of a layer's product against torch's kernel, checked at load


class W4A8Error(LlmcheckError):
    """The int4-a8 recipe cannot run here (CPU, compiler or model shape)."""


BODY_ENV = "LLMCHECK_W4A8_BODY"  # read by the kernel when it loads: avx2 runs an AVX2-only CPU's body


def cpu_problem() -> str | None:
    """Why this CPU cannot run the kernel, or None."""
    import platform

    from pytest_llmcheck.compat.torch import cpu_supports
    from pytest_llmcheck.engines.transformers.cpu import is_x86

    if not is_x86():
        return f"it needs an x86-64 CPU with AVX2; this one is {platform.machine()}"
    if not cpu_supports("AVX2"):
        return "it needs an x86-64 CPU with AVX2; this one has no AVX2"
    return None


def cpu_has_vnni() -> bool:
    """Whether this CPU runs the kernel's AVX512-VNNI body (its default where it can)."""
    from pytest_llmcheck.compat.torch import cpu_supports

    return cpu_problem() is None and cpu_supports("VNNI")


def body(name: str = "") -> str:
    """The kernel's body (``avx512-vnni`` or ``avx2``: the same bits, see w4a8.cpp); a
    ``name`` sets it (tests; the AVX2 runner's stand-in in benchmarks). The kernel must be loaded."""
    import torch

    return str(torch.ops.llmcheck.w4a8_body(name))


def _registered() -> bool:
    """Both ops of this kernel are in the process."""
    import torch

    return all(hasattr(torch.ops.llmcheck, op) for op in ("w4a8_mm", "rms_norm", "w4a8_body"))


def _namespace_taken() -> bool:
    """Some library registered ``llmcheck`` ops: loading a second one would abort the process
    (torch allows one TORCH_LIBRARY block per namespace)."""
    import torch

    return hasattr(torch.ops.llmcheck, "w4a8_mm") or hasattr(torch.ops.llmcheck, "rms_norm")


def _load(path: Path) -> None:
    problem = kernels.load_library(path)
    if problem is not None:
        raise W4A8Error(f"--llm-quant=int4-a8: its kernel {path} does not load: {problem}")
    if not _registered():
        raise W4A8Error(f"--llm-quant=int4-a8: its kernel {path} lacks the w4a8_mm, rms_norm and "
                        "w4a8_body ops")


def _compile(folder: Path) -> Path:
    """Build the kernel into ``folder`` with the compiler torch extensions use."""
    missing = kernels.compiler_missing()
    if missing:
        raise W4A8Error(f"--llm-quant=int4-a8: no C++ compiler {missing!r} on PATH to build its kernel "
                        "(install g++, or set CXX)")
    out = folder / LIBRARY
    problem = kernels.compile_library(SOURCE, out, FLAGS)
    if problem is not None:
        raise W4A8Error(f"--llm-quant=int4-a8: building its kernel failed ({kernels.compiler()}): {problem}")
    return out


def kernel_source_digest() -> str:
    """The kernel source's digest: int4-a8 fingerprints carry it (a changed kernel may
    change answers)."""
    return kernels.source_digest(SOURCE)


def kernel_key() -> dict[str, Any]:
    """What the compiled library depends on: its source, flags, torch and the compiler."""
    return kernels.library_key("w4a8", SOURCE, FLAGS)


def _check_body_env() -> None:
    asked = os.environ.get(BODY_ENV, "")
    if asked not in ("", "avx2"):
        raise W4A8Error(f"{BODY_ENV}={asked!r}: allowed: avx2 (or unset: VNNI where this CPU has it)")


def preflight() -> None:
    """Refuse early (before any INT4 work) on a CPU or machine the kernel cannot run on."""
    _check_body_env()
    if _namespace_taken():
        return
    problem = cpu_problem()
    if problem:
        raise W4A8Error(f"--llm-quant=int4-a8 cannot run on this machine: {problem}; use --llm-quant=int4")
    missing = kernels.compiler_missing()
    if missing:
        raise W4A8Error(f"--llm-quant=int4-a8: no C++ compiler {missing!r} on PATH to build its kernel "
                        "(install g++, or set CXX)")


def load_kernel(cache: Cache | None) -> str:
    """Make the kernel's ops available; says how (``built in 5.61s``, ``cached``, ``already
    loaded``). Built once per machine into the cache (see kernels.build_and_load)."""
    if _namespace_taken():
        _check_body_env()
        if not _registered():
            raise W4A8Error("--llm-quant=int4-a8: another version of its kernel is loaded in this process")
        how = "already loaded"  # (the kernel read LLMCHECK_W4A8_BODY when it loaded)
    else:
        preflight()
        how = kernels.build_and_load(cache, kernel_key(), LIBRARY, _compile, _load, (W4A8Error,))
    if body() == "none":  # AVX2 without FMA: no body runs here
        raise W4A8Error("--llm-quant=int4-a8 cannot run on this machine: it needs AVX2 and FMA; "
                        "use --llm-quant=int4")
    return how


@functools.cache
def packing_block() -> int:
    """How many outputs torch's INT4 packing interleaves in this process (64 at its AVX512
    level, 32 at AVX2, as in portable numerics), found by packing a probe with the op torchao
    packs with: whatever level ATen really dispatches to, not what it is said to be. Another
    layout (ATen's DEFAULT level packs neighbours in pairs) is refused with one line."""
    import torch

    from pytest_llmcheck.compat.torch import convert_weight_to_int4pack_for_cpu

    probe = (torch.arange(64, dtype=torch.int32) // 16)[:, None].expand(64, 32).contiguous()  # n -> n // 16
    packed = convert_weight_to_int4pack_for_cpu()(probe, 1)
    # byte 0 holds output 0 (low nibble, 0) and, high: output 32 (2) in a block of 64, 16 (1) in
    # a block of 32 (output 1 (0) in DEFAULT's pairs)
    block = {0x20: 64, 0x10: 32}.get(int(packed.flatten()[0]))
    if block is None:
        level = torch.backends.cpu.get_cpu_capability()
        raise W4A8Error(f"--llm-quant=int4-a8 reads torch's INT4 weights packed at its AVX2 or AVX512 level; "
                        f"torch packs them another way here ({level}; ATEN_CPU_CAPABILITY=default?): "
                        "use --llm-quant=int4")
    return block


def repack(qdata: torch.Tensor, scale_zero: torch.Tensor, group: int,
           block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's INT4 layout -> the kernel's (see w4a8.cpp).

    torchao: ``qdata`` uint8 (N, K/2), per ``block`` outputs (:func:`packing_block`) and per k
    ``block / 2`` bytes whose low nibbles are the block's first half of outputs and high
    nibbles its second, then the last N % block outputs per k with two neighbours per byte
    (low nibble first); ``scale_zero`` bf16 (K/group, N, 2). torchao packs only N divisible
    by 16, which is the kernel's tile. Each layer is checked against torch's kernel at load.
    """
    import torch

    block = packing_block() if block is None else block
    n, k = int(qdata.shape[0]), int(qdata.shape[1]) * 2
    full = n // block * block
    parts = []
    if full:
        blocks = qdata[:full].reshape(full // block, k, block // 2)
        parts.append(torch.cat([blocks & 0xF, blocks >> 4], dim=2).permute(0, 2, 1).reshape(full, k))
    if n > full:  # the last n % block outputs: per k, one byte per two neighbouring outputs
        tail = qdata[full:].reshape(k, (n - full) // 2)
        parts.append(torch.stack([tail & 0xF, tail >> 4], dim=2).reshape(k, n - full).t())
    q = torch.cat(parts) if len(parts) > 1 else parts[0]  # (N, K), 0..15
    return _tiles(q.contiguous(), scale_zero[..., 0].t(), scale_zero[..., 1].t(), group)


def _tiles(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's layout of ``q`` (N, K) in 0..15 with ``scale`` and ``zero`` (N, K/group)."""
    import torch

    n, k = int(q.shape[0]), int(q.shape[1])
    tiles = q.view(n // 16, 16, k // 8, 2, 4).permute(0, 2, 1, 4, 3)  # tile, k/8, n, j, low/high
    packed = (tiles[..., 0] | (tiles[..., 1] << 4)).contiguous().view(n // 16, k // 8, 64)
    sz = torch.stack([scale, zero], dim=-1).to(torch.bfloat16)  # (N, K/group, 2)
    sz = sz.view(n // 16, 16, k // group, 2).permute(0, 2, 3, 1).contiguous()
    return packed, sz


def quantize(weight: torch.Tensor, group: int, rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain (N, K) weight to 4 bits per group of ``group`` (min/max, as torchao's
    asymmetric INT4: ``w = (q - 8) * scale + zero``) in the kernel's layout; ``rows`` outputs
    at a time, so that a large vocabulary's fp32 temporaries stay small."""
    import torch

    parts = [_quantize_rows(weight[i : i + rows], group) for i in range(0, int(weight.shape[0]), rows)]
    return torch.cat([p for p, _ in parts]), torch.cat([z for _, z in parts])


def _quantize_rows(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    n, k = int(weight.shape[0]), int(weight.shape[1])
    w = weight.detach().float().view(n, k // group, group)
    low, high = w.amin(-1), w.amax(-1)
    scale = ((high - low) / 15).to(torch.bfloat16).float()  # the kernel reads bf16 scales and zeros
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = ((w - low[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.uint8).view(n, k)
    zero = low + 8 * scale
    return _tiles(q, scale, zero, group)


def dequantize(packed: torch.Tensor, sz: torch.Tensor, group: int) -> torch.Tensor:
    """The fp32 (N, K) weight the kernel multiplies by (for checks)."""
    import torch

    tiles, k8 = int(packed.shape[0]), int(packed.shape[1])
    b = packed.view(tiles, k8, 16, 4)
    q = torch.stack([b & 0xF, b >> 4], dim=3).permute(0, 2, 1, 3, 4).reshape(tiles * 16, k8 * 8).float()
    s = sz.float().permute(0, 3, 1, 2).reshape(tiles * 16, -1, 2)  # (N, K/group, 2)
    scale = s[..., 0].repeat_interleave(group, dim=1)
    zero = s[..., 1].repeat_interleave(group, dim=1)
    return (q - 8) * scale + zero


NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "GlmRMSNorm")  # transformers' modules of one same formula


def _module_classes() -> tuple[type, type]:
    import torch

    class W4A8Linear(torch.nn.Module):
        """A linear layer computed by the w4a8 kernel (bf16 in, bf16 out)."""

        def __init__(self, packed: torch.Tensor, sz: torch.Tensor, bias: torch.Tensor | None,
                     in_features: int, out_features: int, group: int) -> None:
            super().__init__()
            self.in_features, self.out_features, self.group = in_features, out_features, group
            self.huge_pages = False  # whether packed and sz lie in an arena of 2 MB pages (convert)
            self.register_buffer("packed", packed)
            self.register_buffer("sz", sz)
            self.register_buffer("bias", bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = torch.ops.llmcheck.w4a8_mm(x.contiguous(), self.packed, self.sz, self.bias,
                                                           self.group)
            return out

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, group={self.group}"

    class W4A8RMSNorm(torch.nn.Module):
        """transformers' RMSNorm in one kernel call (``rms_norm`` in w4a8.cpp)."""

        def __init__(self, weight: torch.Tensor, eps: float) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(weight.detach(), requires_grad=False)
            self.variance_epsilon = eps

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            norm = torch.ops.llmcheck.rms_norm
            out: torch.Tensor = norm(x.contiguous(), self.weight, self.variance_epsilon)
            return out

    return W4A8Linear, W4A8RMSNorm


_CLASSES: list[tuple[type, type]] = []


def _classes() -> tuple[type, type]:
    """The module types int4-a8 layers become (made once: torch is imported lazily)."""
    if not _CLASSES:
        _CLASSES.append(_module_classes())
    return _CLASSES[0]


def linear_class() -> type:
    return _classes()[0]


def is_w4a8(module: Any) -> bool:
    return bool(_CLASSES) and isinstance(module, _CLASSES[0][0])


def is_w4a8_norm(module: Any) -> bool:
    return bool(_CLASSES) and isinstance(module, _CLASSES[0][1])


def _check(name: str, layer: Any, reference: Callable[[torch.Tensor], torch.Tensor], generator: Any) -> None:
    """Refuse a layer whose product is off from ``reference`` beyond int8 activations' error."""
    import torch

    probe = torch.randn(1, layer.in_features, generator=generator).to(torch.bfloat16)
    with torch.inference_mode():
        want = reference(probe).float()
        if layer.bias is not None:
            want += layer.bias.float()
        got = layer(probe).float()
    error = float((got - want).norm() / want.norm().clamp_min(1e-12))
    if not error < MAX_PROBE_ERROR:
        raise W4A8Error(f"--llm-quant=int4-a8: layer {name} computes wrongly (relative error {error:.3f} "
                        f"on a probe, allowed {MAX_PROBE_ERROR}); use --llm-quant=int4")


def convert(model: torch.nn.Module, lm_head_group: int = 32, *, huge_pages: bool = True) -> int:
    """Replace every torchao INT4 linear layer of ``model``, and its bf16 ``lm_head`` (the
    largest single product of a small model: llama.cpp keeps it in 4-8 bits too), by a
    :func:`linear_class` layer; returns how many. Each layer is checked on a probe input:
    INT4 layers against torch's INT4 kernel (so a layout this code does not know is
    refused, not answered with), ``lm_head`` against its dequantized weights' first rows.

    With ``huge_pages`` the repacked weights go straight into two arenas of 2 MB pages (see
    ``hugepages``), every ``packed`` in module order in one and every ``sz`` in the other, so
    that a projection's members (q/k/v, gate/up) lie back to back and fuse without a copy;
    the sizes are known from the shapes before any layer is repacked, so nothing is held twice."""
    import torch

    from pytest_llmcheck.engines.transformers.hugepages import Arena

    cls = linear_class()
    generator = torch.Generator().manual_seed(0)
    plan = _plan(model, lm_head_group)
    arenas = None
    if huge_pages and plan:
        arenas = (Arena(sum(Arena.padded(n * k // 2) for _, n, k, _ in plan)),
                  Arena(sum(Arena.padded(n * (k // group) * 4) for _, n, k, group in plan)))

    def place(packed: torch.Tensor, sz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if arenas is None:
            return packed, sz
        want = n * k // 2, n * (k // group) * 4  # the bytes the arenas hold for this layer
        if (packed.nbytes, sz.nbytes) != want:
            raise W4A8Error(f"--llm-quant=int4-a8: layer {name} repacks to {packed.nbytes} + {sz.nbytes} "
                            f"bytes, not the {want[0]} + {want[1]} its shape gives (use --llm-quant=int4)")
        return arenas[0].take(packed), arenas[1].take(sz)

    # names, not modules: a replaced layer's INT4 weights are freed as the loop goes on
    for name, n, k, group in plan:
        module: Any = model.get_submodule(name)
        parts = int4.int4_parts(module.weight)
        bias = None if module.bias is None else module.bias.detach().to(torch.bfloat16)
        if parts is not None:
            qdata, _, scale_zero = parts
            layer = cls(*place(*repack(qdata, scale_zero, group)), bias, k, n, group)
            reference = functools.partial(int4.int4_product, packed=qdata, group=group, scale_zero=scale_zero)
            _check(name, layer, reference, generator)
        else:  # lm_head
            layer = cls(*place(*quantize(module.weight, group)), bias, k, n, group)
            tiles = min(64, n // 16)  # the first 1024 outputs: enough to catch a wrong layout
            head = cls(layer.packed[:tiles], layer.sz[:tiles], None if bias is None else bias[: tiles * 16],
                       k, tiles * 16, group)
            weight = dequantize(head.packed, head.sz, group)

            def dequantized_product(x: torch.Tensor, w: torch.Tensor = weight) -> torch.Tensor:
                return x.float() @ w.t()

            _check(name, head, dequantized_product, generator)
        layer.huge_pages = arenas is not None and arenas[0].advised
        del module, parts
        _replace(model, name, layer)
    for arena in arenas or ():
        arena.settle()
    return len(plan)


def _plan(model: torch.nn.Module, lm_head_group: int) -> list[tuple[str, int, int, int]]:
    """(name, outputs, inputs, group) of each linear layer :func:`convert` replaces, in module
    order; a layer the kernel cannot take is refused here, before any work."""
    import torch

    plan = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        n, k = int(module.weight.shape[0]), int(module.weight.shape[1])
        parts = int4.int4_parts(module.weight)
        if parts is not None:
            group = parts[1]
            if n % TILE or group % 8:
                raise W4A8Error(f"--llm-quant=int4-a8: layer {name} has {n} outputs (group {group}); the "
                                f"kernel needs a multiple of {TILE} (use --llm-quant=int4)")
            plan.append((name, n, k, group))
        elif type(module.weight) not in (torch.Tensor, torch.nn.Parameter):
            raise W4A8Error(f"--llm-quant=int4-a8: layer {name} holds weights of type "
                            f"{type(module.weight).__name__}, which the kernel does not take")
        elif name.endswith("lm_head") and n % TILE == 0 and k % lm_head_group == 0:
            plan.append((name, n, k, lm_head_group))
    return plan


def in_huge_pages(model: torch.nn.Module) -> bool:
    """Whether the kernel layers' weights lie in arenas advised for 2 MB pages."""
    layers = [m for m in model.modules() if is_w4a8(m)]
    return bool(layers) and all(m.huge_pages for m in layers)


def buffer_bytes(model: torch.nn.Module) -> int:
    """Bytes of the kernel layers' weights (buffers, which parameter counts miss)."""
    return sum(int(b.numel() * b.element_size()) for m in model.modules() if is_w4a8(m) for b in m.buffers())


def _replace(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, module)


def convert_norms(model: torch.nn.Module) -> int:
    """Replace transformers' bf16 RMSNorm modules (Llama, Qwen2, GLM) by the kernel's
    one-call version; returns how many. Each is checked against the module it replaces."""
    import torch

    norm_class = _classes()[1]
    generator = torch.Generator().manual_seed(1)
    converted = 0
    for name, module in list(model.named_modules()):
        if type(module).__name__ not in NORMS or module.weight.dtype != torch.bfloat16:
            continue
        norm = norm_class(module.weight, float(module.variance_epsilon))
        probe = torch.randn(2, int(module.weight.shape[0]), generator=generator).to(torch.bfloat16)
        with torch.inference_mode():
            want, got = module(probe).float(), norm(probe).float()
        error = float((got - want).norm() / want.norm().clamp_min(1e-12))
        if not error < 0.01:  # bf16 rounding of a sum taken in another order, no more
            raise W4A8Error(f"--llm-quant=int4-a8: norm {name} computes wrongly (relative error {error:.4f})")
        _replace(model, name, norm)
        converted += 1
    return converted
