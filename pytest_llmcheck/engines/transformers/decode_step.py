"""The decode loop's per-token step in C++ (``decode_step.cpp``).

:meth:`fastpath.FastDecoder.step` makes about 35 small ATen calls per layer; from Python
each costs microseconds of argument parsing and dispatch, a fifth of a small model's time
per token. The C++ step makes the same calls on the same tensors, so its logits are the
same bit for bit; the engine still checks that at load (as it checks the Python step
against the model's forward) and keeps the Python step when the library cannot be built
here (no compiler) or does not check out.

What it earns: ``benchmarks/bench_decode.py``'s rows "torch int4, fast loop" (this step)
against "torch int4, fast loop, Python step" on SmolLM2, in docs/performance.md: 95.5 / 96.7
against 86.4 decode tokens per second at 1 thread, 125.0 / 147.9 against 112.9 at 2; its
split table, 10.1 against 11.8 ms per token (1 thread).

Where torch's INT4 kernel is its AVX2 one (portable numerics, or an AVX2 CPU), the step runs
the file's own ``int4_mm`` instead: the same roundings in the same order per output, about
twice as fast at one token, 1.9-2.0x at a 512-token prompt (``benchmarks/bench_int4_product.py``);
prompts then run the model's forward with its INT4 layers on ``int4_mm`` too
(:func:`int4_prompt`). The check at load covers both: the prompt's logits and keys against the
forward's, every step's logits against the forward's.

In portable numerics the step also picks greedy tokens through a screen of the bf16 lm_head
(:func:`head_screen`; the reasoning is in ``decode_step.cpp``): an int8 copy bounds every
logit, torch's ``linear`` computes only the rows that could be the largest, and the token is
the full lm_head's. About 1.1x decode at Qwen2-1.5B's shape, where the lm_head alone went from
22.5 to 11.4 ms a token on one core (``benchmarks/bench_head_screen.py``). Native numerics keep
the full lm_head: oneDNN may block a bf16 product by its shape, so a row computed alone need
not round as in the full product; ATen's own kernel (portable) computes each row on its own.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmcheck.engines.transformers import kernels
from pytest_llmcheck.engines.transformers.int4 import W4A8Call, int4_parts
from pytest_llmcheck.storage.cache import Cache, CacheError

if TYPE_CHECKING:
    from pytest_llmcheck.engines.transformers.fastpath import FastDecoder, Projection

SOURCE = Path(__file__).with_name("decode_step.cpp")
LIBRARY = "decode_step.so"
FLAGS = ("-O2", "-shared", "-fPIC", "-std=c++17", "-fopenmp", "-w")  # OpenMP: at::parallel_for
PLAIN, INT4, W4A8 = 0, 1, 2  # the kinds of call in decode_step.cpp
SLOTS = ("qkv", "o", "gate_up", "down")


class StepUnavailable(Exception):
    """The C++ step cannot be had here; the message says why (the Python step runs)."""


def _registered() -> bool:
    import torch

    try:
        torch.classes.llmcheck_decode.Decoder  # noqa: B018
    except (RuntimeError, AttributeError):
        return False
    return True


def _load(path: Path) -> None:
    problem = kernels.load_library(path)
    if problem is not None:
        raise StepUnavailable(f"the C++ step's library {path} does not load: {problem}")
    if not _registered():
        raise StepUnavailable(f"the C++ step's library {path} lacks the llmcheck_decode.Decoder class")


def _compile(folder: Path) -> Path:
    """Build the step into ``folder`` (load_library has checked for a compiler)."""
    out = folder / LIBRARY
    problem = kernels.compile_library(SOURCE, out, FLAGS)
    if problem is not None:
        raise StepUnavailable(f"building the C++ step failed ({kernels.compiler()}): {problem}")
    return out


def load_library(cache: Cache | None) -> str:
    """Make ``torch.classes.llmcheck_decode`` available; says how (``built in 9.1s``,
    ``cached``, ``already loaded``), or raises :class:`StepUnavailable`. One library per
    process: torch allows one registration of a namespace."""
    if _registered():
        return "already loaded"
    missing = kernels.compiler_missing()
    if missing:
        raise StepUnavailable(f"no C++ compiler {missing!r} on PATH")
    try:
        key = kernels.library_key("decode_step", SOURCE, FLAGS)
        return kernels.build_and_load(cache, key, LIBRARY, _compile, _load, (StepUnavailable,))
    except (OSError, CacheError, subprocess.SubprocessError) as exc:  # e.g. a cache it cannot write
        raise StepUnavailable(f"the C++ step could not be built: {exc}") from None


def own_int4_here() -> bool:
    """Whether the step may run its own INT4 product: only where torch's INT4 kernel in this
    process is the AVX2 one, whose weight layout and arithmetic ``int4_mm`` reproduces."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability()) == "AVX2"


def int4_product(native: Any) -> str:
    """Which INT4 product the step runs, for the load facts and the decode check's key:
    ``int4_mm on 56 of 56 calls``, ``torch's`` (``int4_mm`` takes none here), or ``none``
    (no torchao INT4 call: bf16, or int4-a8, whose products are its own kernel's)."""
    own, total = native.int4_calls()
    if not total:
        return "none"
    return f"int4_mm on {own} of {total} calls" if own else "torch's"


def int4_prompt(linears: list[Any]) -> Callable[[], AbstractContextManager[None]]:
    """A context in which ``linears`` (torchao INT4 ``nn.Linear`` modules that ``int4_mm``
    takes) compute with ``int4_mm`` while a prompt goes through the model's forward, as
    torchao's own linear does around torch's kernel (2-D input, bias added after, same
    dtype); their ``forward`` is the class's again afterwards. At 512 prompt tokens it is
    1.9-2.0x torch's AVX2 kernel (``benchmarks/bench_int4_product.py``), the same bits."""
    import torch
    import torch.nn.functional as F

    def forward_of(module: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        parts = int4_parts(module.weight)
        assert parts is not None
        packed, group, scale_zero = parts
        weight, bias, outputs = module.weight, module.bias, int(module.weight.shape[0])
        product = torch.ops.llmcheck_decode.int4_mm

        def forward(x: torch.Tensor) -> torch.Tensor:
            if x.dtype != torch.bfloat16:  # int4_mm takes bf16 only: the model's own call
                return F.linear(x, weight, bias)
            y: torch.Tensor = product(x.reshape(-1, x.shape[-1]).contiguous(), packed, group, scale_zero)
            y = y.reshape(*x.shape[:-1], outputs)
            if bias is not None:
                y += bias
            return y

        return forward

    @contextlib.contextmanager
    def products() -> Iterator[None]:
        patched = []
        try:
            for module in linears:
                module.forward = forward_of(module)
                patched.append(module)
            yield
        finally:
            for module in patched:  # the instance attribute goes: the class's forward again (a
                module.__dict__.pop("forward", None)  # concurrent answer may have taken it: same bits)

    return products


def check_products(model: Any, inputs: dict[str, Any], products: Callable[[], AbstractContextManager[None]],
                   steps: int = 3) -> str | None:
    """None when the model's forward gives the same logits with ``products`` as without, on
    ``inputs`` and ``steps`` greedy decode steps after it (each with its own cache); else what
    differed. For generate(), whatever the architecture: only the model's own forward is called."""
    import torch

    def logits() -> list[torch.Tensor]:
        out = model(**inputs, use_cache=True)
        seen = [out.logits[0, -1]]
        mask = inputs.get("attention_mask")
        for _ in range(steps):
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((1, 1))], dim=-1)
            token = seen[-1].float().argmax().view(1, 1)
            cache = out.past_key_values
            out = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
            seen.append(out.logits[0, -1])
        return seen

    with torch.inference_mode():
        try:
            reference = logits()
            with products():
                own = logits()
        except Exception as exc:  # a model whose forward takes other arguments: generate() as it is
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return f"the probe failed: {first}"
    for step, (a, b) in enumerate(zip(reference, own, strict=True)):
        if not torch.equal(a, b):
            return f"logits differ from the model's forward at step {step} (0: the prompt)"
    return None


def int4_linears(model: Any) -> list[Any]:
    """The model's INT4 linear layers that ``int4_mm`` takes (whole blocks of 32 outputs, the
    AVX2 layout), or none where torch's INT4 kernel is not the AVX2 one."""
    import torch

    if not own_int4_here():
        return []
    fits = torch.ops.llmcheck_decode.int4_mm_fits
    found = []
    for module in model.modules():
        parts = int4_parts(getattr(module, "weight", None))
        if isinstance(module, torch.nn.Linear) and parts is not None and fits(parts[0], parts[2], parts[1]):
            found.append(module)
    return found


def head_screen(weight: Any) -> tuple[Any, Any, Any, Any] | None:
    """The int8 screen of a bf16 lm_head ``weight`` (vocab, hidden) for ``Decoder.set_head_screen``
    (``llmcheck_decode::head_screen``: q int8, s, |w_n|, |w_n - s q_n| in double, the norms
    rounded up), or None where it cannot bound the logits: not bf16, a value not finite, hidden
    not a multiple of 32 or above 65536. The extra memory is the int8 copy, half the lm_head."""
    import torch

    if weight.dtype != torch.bfloat16 or weight.dim() != 2:
        return None
    hidden = int(weight.shape[1])
    if hidden % 32 or hidden > 65536:
        return None
    built = torch.ops.llmcheck_decode.head_screen(weight.contiguous())
    if not built:
        return None
    q, scale, wnorm, dnorm = built
    return q, scale, wnorm, dnorm


def set_screen(native: Any, weight: Any, limit: int | None = None) -> bool:
    """Give ``native`` the lm_head screen of ``weight`` where one can be built; whether it has one.
    More candidates than ``limit`` (default: a sixteenth of the vocabulary, where gathering them
    would cost more than the screen saves, and at least 64) take the full lm_head for that token."""
    screen = head_screen(weight)
    if screen is None:
        return False
    native.set_head_screen(*screen, max(64, int(weight.shape[0]) // 16) if limit is None else limit)
    return True


def screen_off(native: Any) -> None:
    """Switch ``native``'s lm_head screen off (its check found a difference)."""
    import torch

    native.set_head_screen(torch.empty(0, dtype=torch.int8), *(torch.empty(0, dtype=torch.float64),) * 3, 0)


def _add_projection(native: Any, layer: int, slot: int, proj: Projection) -> None:
    import torch

    empty = torch.empty(0)
    if not proj.int4:
        for weight, bias in zip(proj.weights, proj.biases, strict=True):
            sizes = [int(weight.shape[0])]
            native.add_call(layer, slot, PLAIN, weight, empty, [] if bias is None else [bias], 0, sizes)
        return
    for call in proj.int4:
        biases = [] if call.bias is None else [call.bias]
        if isinstance(call, W4A8Call):
            native.add_call(layer, slot, W4A8, call.packed, call.sz, biases, call.group, call.sizes)
        else:
            native.add_call(layer, slot, INT4, call.packed, call.scale_zero, biases, call.group, call.sizes)


def _set_norm(native: Any, layer: int, slot: int, norm: Any) -> None:
    from pytest_llmcheck.engines.transformers.w4a8 import is_w4a8_norm

    native.set_norm(layer, slot, is_w4a8_norm(norm), norm.weight, float(norm.variance_epsilon))


def build(decoder: FastDecoder) -> Any:
    """The C++ twin of ``decoder`` (a ``torch.classes.llmcheck_decode.Decoder``), holding the
    same tensors; the library must be loaded (:func:`load_library`). Raises
    :class:`StepUnavailable` when the C++ side refuses the model."""
    try:
        return _build(decoder)
    except Exception as exc:  # a TORCH_CHECK of decode_step.cpp (c10 errors come as several types)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StepUnavailable(f"C++ step: {first}") from None


def _build(decoder: FastDecoder) -> Any:
    import torch

    linears = int4_linears(decoder.model)
    decoder.native_prompt = int4_prompt(linears) if linears else None

    native = torch.classes.llmcheck_decode.Decoder(
        decoder.embed.weight, decoder.inv_freq, float(decoder.rope_scale), decoder.heads, decoder.kv_heads,
        decoder.head_dim, float(decoder.scaling), decoder.gqa, len(decoder.layers),
    )
    native.set_own_int4(own_int4_here())  # before the calls: each decides as it is added
    for i, layer in enumerate(decoder.layers):
        for slot, name in enumerate(SLOTS):
            _add_projection(native, i, slot, getattr(layer, name))
        _set_norm(native, i, 0, layer.norm1)
        _set_norm(native, i, 1, layer.norm2)
    _set_norm(native, -1, 0, decoder.final_norm)
    empty = torch.empty(0)
    if decoder.head is not None:
        head = decoder.head
        native.add_call(-1, 0, W4A8, head.packed, head.sz, [] if head.bias is None else [head.bias],
                        head.group, head.sizes)
    else:
        native.add_call(-1, 0, PLAIN, decoder.lm_head, empty, [], 0, [int(decoder.lm_head.shape[0])])
        native.set_head_mv(decoder.head_mv)
        if decoder.portable and not decoder.head_mv:  # ATen's own bf16 kernel: each row on its own
            decoder.screen = set_screen(native, decoder.lm_head)
    return native
