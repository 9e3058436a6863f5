"""A lean greedy decode loop for Llama-family models (Llama, SmolLM, Qwen2).

Per new token, transformers' ``generate()`` and the model's ``forward`` spend more time in
Python than in the matrix products of a small model: mask building, cache objects,
logits processors, output dataclasses and, for torchao INT4 weights, the tensor
subclass's dispatch around every one of the 210 linear layers of SmolLM2. This loop calls
the same kernels on the same tensors in the same order, so it produces the same logits
bit for bit, with the Python around them cut to a minimum:

- the INT4 products of q/k/v and of gate/up run as one call each on the weights
  concatenated along the output dimension, when every member's output size is a whole
  number of the kernel's 64-wide blocks (each block of outputs is then computed as it
  was alone; a partial block takes a tail path that rounds differently);
- the bf16 ``lm_head`` runs as ``linear`` (what the model calls), or as a matrix-vector
  product (``torch.mv``) when that is clearly faster on this machine at this thread count,
  timed once at build: ``mv`` was twice as fast on Intel Xeons with AMX, half as fast on an
  AMD EPYC (AVX512-BF16); the check below covers the one chosen, and the engine falls
  back to ``linear`` when ``mv`` fails it. In portable numerics it is always ``linear``: a
  choice timed per machine would differ between machines, and so could the answers;
- rotary embedding is ``x * cos + roll(x) * sin`` with rotate_half's sign moved onto
  ``sin`` (negation is exact), q and k rotated in one go when they come from one call.
- a model converted by ``--llm-quant=int4-a8`` (see ``w4a8``) runs its own kernel calls:
  q/k/v and gate/up fused (any size: each 16 outputs are summed on their own), its
  RMSNorm as one call and its INT4 ``lm_head``; the check below applies all the same.

- in portable numerics the C++ step picks a greedy token through an int8 screen of the bf16
  ``lm_head`` (``decode_step.cpp``, ``screen_candidates``): rigorous bounds on every logit from
  half the bytes, torch's ``linear`` on the rows that could be the largest, so the token is the
  full ``lm_head``'s (first index on ties); the check below compares it on every step too.

Nothing of this is taken on trust: :meth:`FastDecoder.verify_steps` runs a probe prompt through
both the model's own forward and this loop and compares the logits of every step exactly;
the engine uses the loop only when they are identical, and says so in its load facts.
The prompt (prefill) always goes through the model's own forward (with its INT4 layers on the C++
step's ``int4_mm`` while that step is in use: ``decode_step.int4_prompt``, checked like the rest).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_llmcheck.compat.transformers import attn_implementation
from pytest_llmcheck.engines.transformers.hugepages import adjacent
from pytest_llmcheck.engines.transformers.int4 import Int4Call, W4A8Call, int4_parts
from pytest_llmcheck.engines.transformers.w4a8 import is_w4a8_norm

if TYPE_CHECKING:
    import torch

ARCHITECTURES = ("llama", "qwen2")
# rope types whose cos/sin depend only on inv_freq and attention_scaling set at load
# ("dynamic" and "longrope" change inv_freq during the forward)
STATIC_ROPE = ("default", "linear", "llama3", "yarn")


FUSE_MULTIPLE = 64  # output sizes the INT4 kernel computes in whole blocks (see _projection)


def _w4a8_projection(linears: Sequence[Any]) -> Projection:
    """One fused kernel call for int4-a8 layers; the modules' buffers become views of it."""
    import torch

    apart = Projection(int4=[W4A8Call(lin.packed, lin.sz, lin.group, [lin.out_features], lin.bias)
                             for lin in linears])
    if len({lin.group for lin in linears}) != 1 or len({lin.bias is None for lin in linears}) != 1:
        return apart
    # already back to back (``w4a8.convert`` lays them out so): joined without a copy
    packed = adjacent([lin.packed for lin in linears])
    sz = adjacent([lin.sz for lin in linears])
    if packed is None or sz is None:
        if len({lin.packed.untyped_storage().data_ptr() for lin in linears}) == 1:
            return apart  # in one arena, but not in this order: a fused copy would hold the bytes twice
        packed = torch.cat([lin.packed for lin in linears], 0)
        sz = torch.cat([lin.sz for lin in linears], 0)
    bias = None if linears[0].bias is None else torch.cat([lin.bias for lin in linears])
    start = 0
    for lin in linears:
        tiles = lin.packed.shape[0]
        lin.packed, lin.sz = packed[start : start + tiles], sz[start : start + tiles]
        if bias is not None:
            lin.bias = bias[start * 16 : (start + tiles) * 16]
        start += tiles
    sizes = [lin.out_features for lin in linears]
    return Projection(int4=[W4A8Call(packed, sz, linears[0].group, sizes, bias)])


@dataclass
class Projection:
    """Projections of the same input (q/k/v, gate/up, or one alone): (1, 1, out) each."""

    int4: Sequence[Int4Call | W4A8Call]
    weights: tuple[torch.Tensor, ...] = ()  # plain weights, one linear each
    biases: tuple[torch.Tensor | None, ...] = ()

    @property
    def single(self) -> Int4Call | W4A8Call | None:
        """The one INT4 call that computes all members, if that is how they run."""
        return self.int4[0] if len(self.int4) == 1 else None

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        import torch.nn.functional as F

        if not self.int4:
            return [F.linear(x, w, b) for w, b in zip(self.weights, self.biases, strict=True)]
        return [y for call in self.int4 for y in call(x)]


def _projection(linears: Sequence[Any]) -> Projection:
    """The products for ``linears``. INT4 members are fused into one kernel call when every
    output size is a whole number of the kernel's blocks: a size that ends in a partial
    block takes another code path whose sums differ in the last bit (seen with 32 outputs),
    so such members get a call of their own, as in the model."""
    import torch

    from pytest_llmcheck.engines.transformers.w4a8 import is_w4a8

    if all(is_w4a8(lin) for lin in linears):
        return _w4a8_projection(linears)
    if any(is_w4a8(lin) for lin in linears):
        raise Unsupported("int4-a8 layers mixed with others")
    parts = [int4_parts(lin.weight) for lin in linears]
    if all(p is not None for p in parts):
        ints = [p for p in parts if p is not None]
        members = [
            Int4Call(packed, group, scale_zero, [int(lin.weight.shape[0])], lin.bias)
            for (packed, group, scale_zero), lin in zip(ints, linears, strict=True)
        ]
        fusable = (
            len(members) > 1
            and len({m.group for m in members}) == 1
            and all(m.sizes[0] % FUSE_MULTIPLE == 0 for m in members)
            and len({m.bias is None for m in members}) == 1
        )
        if not fusable:
            return Projection(int4=members)
        biases = [m.bias for m in members if m.bias is not None]
        packed = torch.cat([m.packed for m in members], 0)
        fused = Int4Call(
            packed,
            members[0].group,
            torch.cat([m.scale_zero for m in members], 1).contiguous(),
            [m.sizes[0] for m in members],
            torch.cat(biases) if biases else None,
        )
        # The model's own weights (still used for prompts) become views of the fused copy,
        # so fusing does not hold the packed weights twice (the small scales are copied).
        start = 0
        for lin, member in zip(linears, members, strict=True):
            size = member.sizes[0]
            lin.weight.qdata = packed[start : start + size]  # whole rows: contiguous, same bytes
            start += size
        return Projection(int4=[fused])
    plain = (torch.Tensor, torch.nn.Parameter)
    if any(p is not None for p in parts) or any(type(lin.weight) not in plain for lin in linears):
        raise Unsupported(f"weights of type {type(linears[0].weight).__name__}")
    weights = tuple(lin.weight for lin in linears)
    return Projection(int4=[], weights=weights, biases=tuple(lin.bias for lin in linears))


_KV = list["torch.Tensor"]  # one tensor per layer, (1, kv heads, tokens, head dim)


class Unsupported(Exception):
    """The model is outside what the lean loop reproduces exactly; generate() is used."""


@dataclass
class _Layer:
    qkv: Projection
    o: Projection
    gate_up: Projection
    down: Projection
    norm1: Any
    norm2: Any


MV_MARGIN = 0.9  # mv must take under this share of linear's time: a near tie keeps linear


def _mv_is_faster(weight: torch.Tensor, calls: int = 5) -> bool:
    """Whether ``torch.mv`` computes one token's logits clearly faster than ``F.linear`` (the
    model's own call) here, at the current thread count (best of a few calls each,
    interleaved). A near tie keeps ``linear``, so that sessions decide alike."""
    import time

    import torch
    import torch.nn.functional as F

    rng = torch.Generator().manual_seed(0)  # leaves the global generator alone
    h = torch.randn(1, 1, weight.shape[1], generator=rng).to(weight.dtype)
    best = {"mv": float("inf"), "linear": float("inf")}
    with torch.inference_mode():
        for i in range(calls + 1):
            for name in best:
                start = time.perf_counter()
                if name == "mv":
                    torch.mv(weight, h[0, -1])
                else:
                    F.linear(h, weight)
                if i:  # the first round warms up
                    best[name] = min(best[name], time.perf_counter() - start)
    return best["mv"] < MV_MARGIN * best["linear"]


def _rms(h: torch.Tensor, norm: Any) -> torch.Tensor:
    """LlamaRMSNorm / Qwen2RMSNorm, op for op (int4-a8's norm: its one kernel call)."""
    import torch

    if is_w4a8_norm(norm):
        fused: torch.Tensor = torch.ops.llmcheck.rms_norm(h, norm.weight, norm.variance_epsilon)
        return fused

    dtype = h.dtype
    h = h.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + norm.variance_epsilon)
    out: torch.Tensor = norm.weight * h.to(dtype)
    return out


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` with fewer ops: rotate_half(x) is roll(x) with the
    first half negated, and that sign is moved onto sin (negation is exact, so every product
    and sum is the one transformers computes). ``x``: (..., head_dim), any heads."""
    import torch

    out: torch.Tensor = (x * cos) + (torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin)
    return out


class FastDecoder:
    """Greedy decoding of one sequence with the model's own weights, no generate()."""

    def __init__(self, model: Any, *, portable: bool = False) -> None:
        import torch

        from pytest_llmcheck.engines.transformers.w4a8 import is_w4a8

        config = model.config
        self.model = model
        # transformers 5.x renamed forward's past_key_values to cache (with a FutureWarning)
        parameters = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.scaling = self.head_dim**-0.5
        self.gqa = self.heads != self.kv_heads
        rotary = model.model.rotary_emb
        self.inv_freq = rotary.inv_freq
        self.rope_scale = rotary.attention_scaling
        self.embed = model.model.embed_tokens
        self.final_norm = model.model.norm
        self.head: W4A8Call | None = None  # an int4-a8 lm_head
        self.head_mv = False  # a bf16 lm_head as torch.mv (else F.linear)
        self.native: Any = None  # the same step in C++ (decode_step), once checked
        self.portable = portable
        self.screen = False  # the C++ step picks greedy tokens through its lm_head screen
        self.screen_problem: str | None = None  # what its check found (then it is off)
        # the C++ step's products for prompts too (decode_step.int4_prompt), used with it
        self.native_prompt: Callable[[], AbstractContextManager[Any]] | None = None
        self._lock = threading.Lock()
        plain = (torch.Tensor, torch.nn.Parameter)
        if is_w4a8(model.lm_head):
            head = model.lm_head
            self.head = W4A8Call(head.packed, head.sz, head.group, [head.out_features], head.bias)
        elif model.lm_head.bias is not None or type(model.lm_head.weight) not in plain:
            raise Unsupported("a quantized lm_head or one with a bias")
        else:
            self.lm_head = model.lm_head.weight
            self.head_mv = not portable and _mv_is_faster(self.lm_head)
        self.layers = [
            _Layer(
                qkv=_projection([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
                o=_projection([layer.self_attn.o_proj]),
                gate_up=_projection([layer.mlp.gate_proj, layer.mlp.up_proj]),
                down=_projection([layer.mlp.down_proj]),
                norm1=layer.input_layernorm,
                norm2=layer.post_attention_layernorm,
            )
            for layer in model.model.layers
        ]

    @classmethod
    def build(cls, model: Any, *, portable: bool = False) -> FastDecoder:
        """The loop for ``model``, or :class:`Unsupported` saying why not. ``portable``: the
        model's own ``linear`` for the lm_head, not a kernel timed on this machine."""
        config = model.config
        if config.model_type not in ARCHITECTURES:
            known = ", ".join(ARCHITECTURES)
            raise Unsupported(f"architecture {config.model_type!r} (the loop knows {known})")
        attention = attn_implementation(config)
        if attention != "sdpa":
            raise Unsupported(f"attention implementation {attention!r}")
        if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or ())):
            raise Unsupported("sliding-window layers")
        if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "mlp_bias", False):
            raise Unsupported("an MLP other than SiLU without bias")
        if getattr(config, "pretraining_tp", 1) not in (None, 1):
            raise Unsupported("pretraining_tp > 1")
        rope_type = getattr(model.model.rotary_emb, "rope_type", "default")
        if rope_type not in STATIC_ROPE:
            raise Unsupported(f"rope type {rope_type!r}")
        unusual = _unusual_generation_settings(model.generation_config)
        if unusual:
            raise Unsupported(f"the model's generation config sets {', '.join(unusual)}")
        return cls(model, portable=portable)

    def step(self, token: torch.Tensor, position: int, keys: _KV, values: _KV) -> torch.Tensor:
        """Logits (vocab,) of the token after ``token`` at ``position``; appends to the KV cache."""
        import torch
        import torch.nn.functional as F

        h = F.embedding(token.view(1, 1), self.embed.weight)
        freqs = torch.tensor([[position]], dtype=torch.float32)[..., None] * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scale).to(h.dtype).unsqueeze(1)
        sin = (emb.sin() * self.rope_scale).to(h.dtype).unsqueeze(1)
        half = self.head_dim // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # rotate_half's sign, moved onto sin
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        for i, layer in enumerate(self.layers):
            residual = h
            x = _rms(h, layer.norm1)
            if layer.qkv.single is not None:  # one INT4 call: rotate q and k in one go
                y = layer.qkv.single.raw(x)
                qk = _rope(y[..., : (heads + kv_heads) * dim].view(1, 1, heads + kv_heads, dim), cos, sin)
                qk = qk.transpose(1, 2)
                q, k = qk[:, :heads], qk[:, heads:]
                v = y[..., (heads + kv_heads) * dim :].view(1, 1, kv_heads, dim).transpose(1, 2)
            else:
                q, k, v = layer.qkv(x)
                q = _rope(q.view(1, 1, heads, dim), cos, sin).transpose(1, 2)
                k = _rope(k.view(1, 1, kv_heads, dim), cos, sin).transpose(1, 2)
                v = v.view(1, 1, kv_heads, dim).transpose(1, 2)
            keys[i] = torch.cat([keys[i], k], dim=-2)
            values[i] = torch.cat([values[i], v], dim=-2)
            out = F.scaled_dot_product_attention(
                q, keys[i], values[i], attn_mask=None, dropout_p=0.0, scale=self.scaling,
                is_causal=False, enable_gqa=self.gqa,
            )
            out = out.reshape(1, -1, 1, dim).transpose(1, 2).contiguous()
            out = out.reshape(1, 1, -1).contiguous()
            h = residual + layer.o(out)[0]
            residual = h
            gate, up = layer.gate_up(_rms(h, layer.norm2))
            h = residual + layer.down(F.silu(gate) * up)[0]
        h = _rms(h, self.final_norm)
        if self.head is not None:
            return self.head.raw(h)[0, -1]
        return self._head(h)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """The bf16 lm_head's logits (vocab,) for ``h`` (1, 1, hidden)."""
        import torch
        import torch.nn.functional as F

        if self.head_mv:
            return torch.mv(self.lm_head, h[0, -1])
        return F.linear(h, self.lm_head)[0, -1]

    def _prefill(
        self, inputs: dict[str, torch.Tensor], native: bool = False
    ) -> tuple[torch.Tensor, Any, _KV, _KV]:
        """The prompt through the model's own forward: last logits, its cache, and the
        cache's per-layer keys and values for :meth:`step` to extend. ``native``: with the
        C++ step's INT4 products (:attr:`native_prompt`), where it has them."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        products = self.native_prompt() if native and self.native_prompt else contextlib.nullcontext()
        with products:
            out = self.model(**inputs, **{self.cache_kwarg: cache}, use_cache=True, logits_to_keep=1)
        layers: list[Any] = list(cache.layers)
        return out.logits[0, -1], cache, [la.keys for la in layers], [la.values for la in layers]

    def _stepper(self, keys: _KV, values: _KV, native: Any = None) -> Callable[[Any, int], torch.Tensor]:
        """``step(token, position)`` extending ``keys`` and ``values``: the Python step, or the
        C++ one (``native``, see decode_step), which then holds the cache."""
        if native is None:
            return lambda token, position: self.step(token, position, keys, values)
        native.start(keys, values)
        return native.step  # type: ignore[no-any-return]

    def greedy(
        self,
        inputs: dict[str, torch.Tensor],
        max_new_tokens: int,
        stop_ids: set[int],
        on_first: Callable[[], None] | None = None,
    ) -> list[int]:
        """New token ids, the stop token included when one ended the answer (as generate())."""
        if max_new_tokens < 1:
            return []
        with self._lock:  # the C++ step holds one answer's cache at a time
            logits, _, keys, values = self._prefill(inputs, native=self.native is not None)
            try:
                step = self._stepper(keys, values, self.native)
                position = int(inputs["input_ids"].shape[1])
                token = logits.float().argmax()  # as generate() does; bf16's argmax is slower
                tokens = [int(token)]
                if on_first is not None:
                    on_first()
                while len(tokens) < max_new_tokens and tokens[-1] not in stop_ids:
                    if self.native is not None:  # the same token, through its lm_head screen if any
                        token = self.native.step_token(token, position)
                    else:
                        token = step(token, position).float().argmax()  # as generate() does
                    position += 1
                    tokens.append(int(token))
            finally:
                if self.native is not None:
                    self.native.clear()  # the answer's KV cache goes now, as the Python step's does
        return tokens

    def verify(self, inputs: dict[str, torch.Tensor], steps: int = 3) -> str | None:
        """None when the Python step's logits equal the model forward's at every step of a
        probe; otherwise what differed."""
        return self.verify_steps(inputs, [None], steps)[0]

    def verify_steps(
        self, inputs: dict[str, torch.Tensor], natives: Sequence[Any], steps: int = 3
    ) -> list[str | None]:
        """For each step in ``natives`` (None: the Python step; else a C++ one), None when its
        logits equal the model forward's at every step of one probe, else what differed."""

        with self._lock:
            try:
                return self._verify_steps(inputs, natives, steps)
            finally:
                for native in natives:
                    if native is not None:
                        native.clear()

    def _verify_steps(
        self, inputs: dict[str, torch.Tensor], natives: Sequence[Any], steps: int
    ) -> list[str | None]:
        import torch

        logits, cache, keys, values = self._prefill(inputs)
        token = logits.float().argmax()
        position = int(inputs["input_ids"].shape[1])
        mask = inputs.get("attention_mask")
        problems: list[str | None] = [None] * len(natives)
        if self.native_prompt is not None and any(n is not None for n in natives):
            # the C++ step's prompt products: the same logits and keys and values as the forward's
            own = self._prefill(inputs, native=True)
            same = torch.equal(own[0], logits) and all(
                torch.equal(a, b) for a, b in zip([*own[2], *own[3]], [*keys, *values], strict=True)
            )
            if not same:
                differ = "the prompt's logits or keys differ from the model's forward"
                problems = [None if n is None else differ for n in natives]
        runs = [self._stepper(list(keys), list(values), native) for native in natives]
        screen_steps = 0  # probe steps on which the lm_head screen decided and was compared
        for step in range(steps):
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((1, 1))], dim=-1)
            reference = self.model(
                input_ids=token.view(1, 1),
                attention_mask=mask,
                **{self.cache_kwarg: cache},
                use_cache=True,
                cache_position=torch.tensor([position]),
                logits_to_keep=1,
            ).logits[0, -1]
            for i, run in enumerate(runs):
                if problems[i] is not None:
                    continue
                try:
                    same = torch.equal(reference, run(token, position))
                except Exception as exc:  # a C++ step's refusal (c10 errors): that step is not used
                    if natives[i] is None:
                        raise
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    problems[i] = f"failed at decode step {step + 1}: {first}"
                    continue
                if not same:
                    problems[i] = f"logits differ from the model's forward at decode step {step + 1}"
                elif natives[i] is not None and self.screen and self.screen_problem is None:
                    compared, self.screen_problem = _screen_problem(natives[i], reference, step + 1)
                    screen_steps += compared
            position += 1
            token = reference.float().argmax()
        checked_natives = any(n is not None for n in natives)
        if self.screen and self.screen_problem is None and screen_steps == 0 and checked_natives:
            self.screen_problem = "no probe step reached the lm_head screen's decision: not compared"
        return problems


def _screen_problem(native: Any, logits: torch.Tensor, step: int) -> tuple[bool, str | None]:
    """(whether the C++ step's lm_head screen decided this step, what differed): nothing when it
    keeps the full lm_head's token among its candidates with the full lm_head's logits (then it
    picks that token)."""
    import torch

    try:
        found = native.screen_last()
    except Exception as exc:  # a refusal of the screen (c10 errors): the screen is not used
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return False, f"the lm_head screen failed at decode step {step}: {first}"
    if not found:  # no decision on this step: the full lm_head picked the token
        return False, None
    idx, values = found
    token = int(logits.float().argmax())
    if not torch.equal(values, logits[idx]):
        return True, f"the lm_head screen's candidates' logits differ from the full lm_head's at step {step}"
    if int(idx[values.float().argmax()]) != token:
        return True, f"the lm_head screen picks another token than the full lm_head at decode step {step}"
    return True, None


# generation_config fields that do not change greedy decoding as the engine calls it
# (do_sample=False, max_new_tokens given, one sequence): special token ids (the loop stops
# on eos_token_id as generate() does), sampling-only settings, lengths that max_new_tokens
# overrides, and bookkeeping. Anything else (beams, min_new_tokens, forced or suppressed
# tokens, stop strings, a static cache, ...) keeps generate().
NEUTRAL_GENERATION_FIELDS = frozenset({
    "bos_token_id", "eos_token_id", "pad_token_id", "do_sample", "temperature", "top_k", "top_p",
    "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "max_length", "max_new_tokens",
    "transformers_version", "_from_model_config", "use_cache", "output_attentions",
    "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
})


def _unusual_generation_settings(config: Any) -> list[str]:
    """Fields of the model's generation config, set away from their defaults, that could
    make generate() decode otherwise than the plain greedy loop."""
    try:
        changed = config.to_diff_dict()
    except Exception as exc:  # not a transformers GenerationConfig: take the safe road
        return [f"an unreadable config ({type(exc).__name__})"]
    unusual = sorted(k for k in changed if k not in NEUTRAL_GENERATION_FIELDS)
    if changed.get("use_cache") is False:
        unusual.append("use_cache")
    return unusual
