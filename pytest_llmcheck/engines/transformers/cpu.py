"""What torch dispatches to on this CPU: a low module that weights, w4a8 and the engine all read."""

from __future__ import annotations


def is_x86() -> bool:
    """An x86-64 machine: the only one portable numerics and the int4-a8 kernel run on."""
    import platform

    return platform.machine().lower() in ("x86_64", "amd64")


def cpu_capability() -> str:
    """The SIMD level torch dispatches to, with the extensions its kernels pick paths by
    (e.g. ``AVX512 BF16 VNNI AMX``). torch's INT4 packing and its bf16 matmuls depend on
    them: on SmolLM2 INT4 an AMX machine and an AVX512-only one break a bf16 logit tie
    differently and answer differently, so cache keys and fingerprints carry them all."""
    import torch

    from pytest_llmcheck.compat.torch import cpu_supports

    try:
        level = str(torch.backends.cpu.get_cpu_capability())
        extras = [name for name in ("BF16", "VNNI", "AMX") if cpu_supports(name)]
        return " ".join([level, *extras])
    except Exception:  # informational; never stop a load for it
        return "unknown"
