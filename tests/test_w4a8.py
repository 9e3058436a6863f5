"""The int4-a8 recipe: torchao's INT4 weights times int8 activations (w4a8.cpp).

The kernel against an integer reference written in torch, the repacking against torchao's
own layout, determinism (threads, batch), the lean loop on such a model, the pytest path
with its own model name and snapshots, the shared cache entry, and the refusals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.config.registry import resolve
from pytest_llmcheck.engines.base import GenerationConfig
from pytest_llmcheck.engines.transformers import decode_step, fastpath, int4, w4a8
from pytest_llmcheck.engines.transformers.engine import TransformersEngine
from pytest_llmcheck.engines.transformers.hugepages import HUGE_PAGE, Arena
from pytest_llmcheck.engines.transformers.quantize import get_quantizer
from pytest_llmcheck.storage.cache import Cache
from tests.tiny_model import build_tiny_model, tiny_in_memory

_CPU = w4a8.cpu_problem()


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> None:
    w4a8.load_kernel(Cache(tmp_path_factory.mktemp("kernel-cache")))


def needs_kernel(test: Any) -> Any:
    """Tests that run the kernel: on an x86-64 CPU with AVX2 (the refusals below run anywhere)."""
    test = pytest.mark.usefixtures("kernel")(test)
    return pytest.mark.skipif(_CPU is not None, reason=f"the kernel cannot run here: {_CPU}")(test)


def _torchao_weight(n: int, k: int, group: int, seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """Random 4-bit ints, scales and zeros, and torchao's packed form of them."""
    import torch

    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32)
    scale = (torch.rand(k // group, n, generator=g) * 0.02 + 0.001).to(torch.bfloat16)
    zero = (torch.rand(k // group, n, generator=g) * 0.02 - 0.01).to(torch.bfloat16)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    return q, scale, zero, packed


def _reference(x: Any, q: Any, scale: Any, zero: Any, group: int) -> Any:
    """The kernel's arithmetic, written plainly: int8 activations per group (fp32 scale
    max|x|/127, round half to even), integer dot products, then the scales (fp64 here)."""
    import torch

    m, k = x.shape
    xf = x.float().view(m, k // group, group)
    sa = xf.abs().amax(-1) / 127
    inverse = torch.where(sa > 0, 1 / sa, torch.zeros_like(sa))
    qa = torch.round(xf * inverse[..., None]).to(torch.int64)  # (m, groups, group)
    qw = q.to(torch.int64).view(q.shape[0], k // group, group)  # (n, groups, group)
    dots = torch.einsum("mgk,ngk->mng", qa, qw - 8).double()
    sums = qa.sum(-1).double()  # (m, groups)
    s, z = scale.double().t(), zero.double().t()  # (n, groups)
    return (sa.double()[:, None, :] * (s[None] * dots + z[None] * sums[:, None, :])).sum(-1)


@needs_kernel
def test_kernel_computes_the_integer_reference() -> None:
    import torch

    n, k, group = 192, 96, 32
    q, scale, zero, packed = _torchao_weight(n, k, group)
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    weights = w4a8.repack(packed, torch.stack([scale, zero], -1), group)
    got = torch.ops.llmcheck.w4a8_mm(x, *weights, None, group)
    want = _reference(x, q, scale, zero, group)
    assert got.dtype == torch.bfloat16
    assert got.shape == (3, n)
    # only the final rounding to bf16 (8 bits) and fp32 summation separate them
    assert torch.allclose(got.double(), want, rtol=1e-2, atol=1e-3 * float(want.abs().max()))
    # and it is the product it stands for, within what int8 activations cost
    exact = x.double() @ ((q.double() - 8) * scale.double().t().repeat_interleave(group, 1)
                          + zero.double().t().repeat_interleave(group, 1)).t()
    assert float((got.double() - exact).norm() / exact.norm()) < 0.02


def _vnni_and_avx2() -> list[str]:
    """Both bodies where this CPU has AVX512-VNNI (else the test has nothing to compare)."""
    if not w4a8.cpu_has_vnni():
        pytest.skip("this CPU runs only the kernel's AVX2 body: no second body to compare")
    return ["avx512-vnni", "avx2"]


@needs_kernel
@pytest.mark.parametrize(("n", "k", "group", "m"), [(16, 32, 32, 1), (192, 96, 32, 3), (512, 1536, 32, 1),
                                                    (256, 1536, 64, 7), (64, 512, 128, 40), (48, 256, 8, 5),
                                                    (128, 192, 24, 8)])
def test_both_bodies_compute_the_same_bits(n: int, k: int, group: int, m: int) -> None:
    """An answer recorded on an AVX512-VNNI machine holds on an AVX2-only runner: the AVX2
    body gives every output's bits, with outliers, zero, tiny, NaN and infinite groups, a bias,
    1 and 2 threads."""
    import torch

    bodies = _vnni_and_avx2()
    g = torch.Generator().manual_seed(n * k + m)
    _, scale, zero, packed = _torchao_weight(n, k, group, seed=m)
    weights = w4a8.repack(packed, torch.stack([scale, zero], -1), group)
    x = torch.randn(m, k, generator=g) * torch.rand(m, k, generator=g).pow(4) * 30
    x[0, k // 2] = 3e4  # an outlier: the rest of its group rounds to small integers
    if m > 1:
        x[1, :group] = 0
    if m > 2:
        x[2, :group] = 1e-38  # too small to scale: zeros
    if m > 4:
        x[3, 1] = float("nan")
        x[4, -1] = float("-inf")
    x = x.to(torch.bfloat16)
    bias = torch.randn(n, generator=g).to(torch.bfloat16)
    before, threads = w4a8.body(), torch.get_num_threads()
    results = []
    try:
        for name in bodies:
            w4a8.body(name)
            for count in (1, 2):
                torch.set_num_threads(count)
                results.append(torch.ops.llmcheck.w4a8_mm(x, *weights, bias, group))
                results.append(torch.ops.llmcheck.w4a8_mm(x, *weights, None, group))
    finally:
        w4a8.body(before)
        torch.set_num_threads(threads)
    with_bias, without = results[0::2], results[1::2]
    for got in with_bias[1:]:
        assert torch.equal(got.view(torch.int16), with_bias[0].view(torch.int16))
    for got in without[1:]:
        assert torch.equal(got.view(torch.int16), without[0].view(torch.int16))
    assert not torch.equal(with_bias[0], without[0])
    if m > 4:
        assert bool(with_bias[0][3].float().isnan().all())
        assert bool(with_bias[0][4].float().isnan().all())


@needs_kernel
def test_the_body_is_named_and_an_unknown_one_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = w4a8.body()
    assert before in ("avx512-vnni", "avx2")
    try:
        assert w4a8.body("avx2") == "avx2"
    finally:
        w4a8.body(before)
    with pytest.raises(RuntimeError, match="w4a8_body: unknown body 'avx1024'; allowed: avx2, avx512-vnni"):
        torch.ops.llmcheck.w4a8_body("avx1024")
    monkeypatch.setenv(w4a8.BODY_ENV, "AVX2")
    with pytest.raises(w4a8.W4A8Error, match=r"^LLMCHECK_W4A8_BODY='AVX2': allowed: avx2 \(or unset"):
        w4a8.load_kernel(None)


def _pack_by_hand(q: Any, block: int) -> Any:
    """torch's INT4 packing, written out (ATen's weight_to_int4pack_kernel): per ``block``
    outputs and per k, byte d holds output d (low nibble) and d + block/2 (high); the last
    N % block outputs two neighbours a byte."""
    import torch

    n, k = q.shape
    full = n // block * block
    parts = []
    if full:
        b = q[:full].view(full // block, block, k)
        parts.append((b[:, : block // 2] | (b[:, block // 2 :] << 4)).permute(0, 2, 1).reshape(-1))
    if n > full:
        t = q[full:].view((n - full) // 2, 2, k)
        parts.append((t[:, 0] | (t[:, 1] << 4)).t().reshape(-1))
    return torch.cat(parts).to(torch.uint8).view(n, k // 2)


@pytest.mark.parametrize("block", [64, 32])
@pytest.mark.parametrize("n", [16, 32, 48, 80, 96, 112, 176])
def test_repack_reads_both_packing_levels_written_by_hand(block: int, n: int) -> None:
    """Both layouts, whichever one this machine's torch packs: an AVX512 machine and an AVX2
    runner each test the other's too."""
    import torch

    k, group = 64, 32
    g = torch.Generator().manual_seed(n + block)
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32)
    scale = torch.rand(k // group, n, generator=g).to(torch.bfloat16)
    zero = torch.rand(k // group, n, generator=g).to(torch.bfloat16)
    packed, sz = w4a8.repack(_pack_by_hand(q, block), torch.stack([scale, zero], -1), group, block=block)
    scales = scale.float().t().repeat_interleave(group, 1)
    expected = (q.float() - 8) * scales + zero.float().t().repeat_interleave(group, 1)
    assert torch.equal(w4a8.dequantize(packed, sz, group), expected)


@pytest.mark.skipif(_CPU is not None, reason=f"the kernel cannot run here: {_CPU}")
def test_the_packing_probe_reads_this_torch() -> None:
    import torch

    block = w4a8.packing_block()
    q = torch.randint(0, 16, (96, 64), dtype=torch.int32)
    assert torch.equal(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1), _pack_by_hand(q, block))


def test_another_packing_layout_is_refused_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_llmcheck.compat import torch as adapter

    def pairs(q: Any, tiles: int) -> Any:  # ATen's DEFAULT level: neighbours in pairs
        import torch

        return (q[0::2] | (q[1::2] << 4)).t().contiguous().to(torch.uint8)

    monkeypatch.setattr(adapter, "convert_weight_to_int4pack_for_cpu", lambda: pairs)
    w4a8.packing_block.cache_clear()
    try:
        line = (r"^--llm-quant=int4-a8 reads torch's INT4 weights packed at its AVX2 or AVX512 level; torch "
                r"packs them another way here \(.*use --llm-quant=int4$")
        with pytest.raises(w4a8.W4A8Error, match=line):
            w4a8.packing_block()
    finally:
        w4a8.packing_block.cache_clear()


@needs_kernel
def test_repack_reads_torchao_layout_exactly() -> None:
    import torch

    n, k, group = 128, 64, 32
    q, scale, zero, packed = _torchao_weight(n, k, group, seed=3)
    kernel_packed, sz = w4a8.repack(packed, torch.stack([scale, zero], -1), group)
    scales = scale.float().t().repeat_interleave(group, 1)
    zeros = zero.float().t().repeat_interleave(group, 1)
    expected = (q.float() - 8) * scales + zeros
    assert torch.equal(w4a8.dequantize(kernel_packed, sz, group), expected)


@needs_kernel
def test_results_do_not_depend_on_threads_or_batch() -> None:
    import torch

    n, k, group = 256, 128, 32
    _, scale, zero, packed = _torchao_weight(n, k, group, seed=5)
    weights = w4a8.repack(packed, torch.stack([scale, zero], -1), group)
    bias = torch.randn(n).to(torch.bfloat16)
    x = torch.randn(5, k).to(torch.bfloat16)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        batch = torch.ops.llmcheck.w4a8_mm(x, *weights, bias, group)
        torch.set_num_threads(1)
        rows = [torch.ops.llmcheck.w4a8_mm(x[i : i + 1], *weights, bias, group)[0] for i in range(5)]
    finally:
        torch.set_num_threads(before)
    assert torch.equal(batch, torch.stack(rows))  # prompt rows as the decode steps compute them


@needs_kernel
def test_quantized_lm_head_stays_within_half_a_step() -> None:
    import torch

    weight = torch.randn(64, 96).to(torch.bfloat16)
    packed, sz = w4a8.quantize(weight, 32)
    back = w4a8.dequantize(packed, sz, 32)
    step = sz.float()[:, :, 0, :].permute(0, 2, 1).reshape(64, 3).repeat_interleave(32, 1)
    # half a step, plus the bf16 rounding of the zero point
    assert bool(((back - weight.float()).abs() <= step / 2 + 1e-2 * weight.float().abs().max()).all())


@needs_kernel
def test_rms_norm_is_transformers_within_bf16_rounding() -> None:
    import torch
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(576, eps=1e-5).to(torch.bfloat16)
    torch.nn.init.normal_(norm.weight, mean=1.0, std=0.3)
    x = (torch.randn(4, 576) * 3).to(torch.bfloat16)
    with torch.inference_mode():
        want = norm(x).float()
        got = torch.ops.llmcheck.rms_norm(x, norm.weight, 1e-5)
        rows = torch.cat([torch.ops.llmcheck.rms_norm(x[i : i + 1], norm.weight, 1e-5) for i in range(4)])
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, rows)  # a prompt's rows as decode steps compute them
    # the sum of squares in another order moves a value by at most a bf16 step or two
    assert bool(((got.float() - want).abs() <= 2 * 2**-8 * want.abs() + 1e-6).all())


@needs_kernel
@pytest.mark.parametrize("placed", [False, True], ids=["torch-pages", "arenas"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lean_loop_on_int4_a8_decodes_as_its_generate(arch: str, placed: bool) -> None:
    import torch

    # every product fits the kernel; a vocabulary of 320 so that lm_head is converted too
    model, inputs = tiny_in_memory(arch, True, head_dim=64, vocab=320)
    with torch.inference_mode():
        int4_logits = model(**inputs).logits
    assert w4a8.convert(model, huge_pages=placed) == 15  # 7 per layer and lm_head
    assert w4a8.convert_norms(model) == 5  # 2 per layer and the final one
    assert w4a8.is_w4a8(model.lm_head)
    assert w4a8.is_w4a8_norm(model.model.norm)
    layers = [m for m in model.modules() if w4a8.is_w4a8(m)]
    # the engine's placement: every packed in one arena, every sz in another; else one tensor each
    assert len({m.packed.untyped_storage().data_ptr() for m in layers}) == (1 if placed else 15)
    assert len({m.sz.untyped_storage().data_ptr() for m in layers}) == (1 if placed else 15)
    if placed:  # the same values as where torch puts them
        twin, _ = tiny_in_memory(arch, True, head_dim=64, vocab=320)
        w4a8.convert(twin, huge_pages=False)
        w4a8.convert_norms(twin)
        with torch.inference_mode():
            assert torch.equal(model(**inputs).logits, twin(**inputs).logits)
    attention = model.model.layers[0].self_attn
    where = attention.q_proj.packed.data_ptr(), attention.q_proj.sz.data_ptr()
    decoder = fastpath.FastDecoder.build(model)
    qkv = decoder.layers[0].qkv.single
    assert isinstance(qkv, int4.W4A8Call)
    assert qkv.sizes == [256, 128, 128]
    # in the arenas q/k/v lie back to back and fuse without a copy; else torch.cat copies them
    assert ((qkv.packed.data_ptr(), qkv.sz.data_ptr()) == where) is placed
    assert decoder.head is not None
    assert attention.v_proj.packed.data_ptr() == qkv.packed[-attention.v_proj.packed.shape[0]:].data_ptr()
    decode_step.load_library(None)  # the kernel built, so a compiler is at hand
    natives = [None, decode_step.build(decoder)]
    with torch.inference_mode():
        # bit for bit against the model's forward: the Python step and the C++ one
        assert decoder.verify_steps(inputs, natives, steps=4) == [None, None]
        expected = model.generate(**inputs, max_new_tokens=16, do_sample=False)[0, 7:].tolist()
        for native in natives:
            decoder.native = native
            assert decoder.greedy(inputs, 16, set()) == expected
        logits = model(**inputs).logits
    assert not torch.equal(logits, int4_logits)  # another recipe: other numbers, near the same
    cosine = torch.nn.functional.cosine_similarity
    similarity = cosine(logits.flatten().float(), int4_logits.flatten().float(), 0)
    assert similarity > 0.95


@needs_kernel
def test_members_placed_out_of_order_run_apart_rather_than_copied() -> None:
    import torch

    model, inputs = tiny_in_memory("llama", True, head_dim=64, vocab=320)
    w4a8.convert(model)
    attention = model.model.layers[0].self_attn
    k, v = attention.k_proj, attention.v_proj  # same shapes: swapped, out of the arena's order
    attention.k_proj, attention.v_proj = v, k
    arena = attention.q_proj.packed.untyped_storage().data_ptr()
    decoder = fastpath.FastDecoder.build(model)
    calls = decoder.layers[0].qkv.int4
    assert len(calls) == 3  # not fused: a fused copy would hold these bytes beside the arena's
    assert all(isinstance(c, int4.W4A8Call) and c.packed.untyped_storage().data_ptr() == arena for c in calls)
    assert isinstance(decoder.layers[1].qkv.single, int4.W4A8Call)  # the next layer, in order, fuses
    with torch.inference_mode():
        assert decoder.verify_steps(inputs, [None], steps=2) == [None]


def _entries(cache: Path) -> list[tuple[str, str]]:
    """(kind, kernel name) of each cache entry."""
    found = []
    for entry in Cache(cache).list():
        key = entry["key"]
        found.append((str(entry["kind"]), str(key.get("kernel", "")) if isinstance(key, dict) else ""))
    return sorted(found)


@needs_kernel
def test_int4_a8_through_pytest_is_portable_and_shares_the_int4_cache_entry(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Portable numerics (the default): a session on the VNNI body at 2 threads and one on the
    AVX2 body (an AVX2-only runner's) at 1 thread give the same bytes."""
    folder = build_tiny_model(tmp_path / "tiny-llama", hidden=128)  # k/v: 64 outputs
    pytester.makepyfile(
        """
        import os
        def test_write(llm):
            answer = llm.ask("明明和白白谁喜欢谁？")
            with open(os.environ["ANSWER_FILE"], "ab") as f:
                f.write(answer.text.encode("utf-8") + b"\\0")
        """
    )
    cache = pytester.path / "cache"
    answers = []
    for run, (threads, body) in enumerate([(2, None), (1, "avx2")]):
        out = pytester.path / f"answer{run}.bin"
        monkeypatch.setenv("ANSWER_FILE", str(out))
        if body:
            monkeypatch.setenv("LLMCHECK_W4A8_BODY", body)
        result = pytester.runpytest_subprocess(
            f"--llm-model={folder}", "--llm-quant=int4-a8", "--llm-numerics=portable",
            "--llm-max-new-tokens=24", f"--llm-threads={threads}",
            f"--llm-cache-dir={cache}", "-v", "-p", "no:cacheprovider",
        )
        result.assert_outcomes(passed=1)
        kernel = "kernel built in *s, * body" if run == 0 else "kernel cached, avx2 body"
        result.stdout.fnmatch_lines([
            "*test_write[[]tiny-llama-int4a8[]] PASSED*",
            f"tiny-llama-int4a8 (*): loaded 1x in *; int4-a8: 14/14 linear layers, *; "
            f"int8 activations in 14 layers ({kernel})*",  # lm_head: a vocabulary of 374 does not fit
        ])
        assert "native numerics" not in result.stdout.str()
        answers.append(out.read_bytes())
    monkeypatch.delenv("LLMCHECK_W4A8_BODY")
    assert len(answers[0]) > 24
    assert answers[0] == answers[1]  # two sessions, two bodies, 2 then 1 thread: the same bytes
    kinds = _entries(cache)
    # the two kernels and the one INT4 entry, beside the fast loop's checks (one per thread count)
    assert [k for k in kinds if k[0] != "decode-check"] == [("kernel", "decode_step"), ("kernel", "w4a8"),
                                                            ("quantized", "")]
    assert kinds.count(("decode-check", "")) == 2
    result = pytester.runpytest_subprocess(
        f"--llm-model={folder}", "--llm-max-new-tokens=24", f"--llm-cache-dir={cache}",
        "--llm-numerics=portable", "-p", "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["tiny-llama (*): loaded 1x in *; int4: 14/14 linear layers, *from cache*"])
    # int4 read the same entry (and its fast loop, another recipe, was checked once)
    weights = [k for k in kinds if k[0] != "decode-check"]
    assert [k for k in _entries(cache) if k[0] != "decode-check"] == weights


@needs_kernel
@pytest.mark.parametrize("n", [32, 96, 176])
def test_repack_reads_the_partial_last_block(n: int) -> None:
    import torch

    k, group = 64, 32
    q, scale, zero, packed = _torchao_weight(n, k, group, seed=n)  # n % block != 0: another layout at the end
    kernel_packed, sz = w4a8.repack(packed, torch.stack([scale, zero], -1), group)
    scales = scale.float().t().repeat_interleave(group, 1)
    zeros = zero.float().t().repeat_interleave(group, 1)
    assert torch.equal(w4a8.dequantize(kernel_packed, sz, group), (q.float() - 8) * scales + zeros)


@needs_kernel
def test_the_tiny_model_with_32_output_layers_converts_whole(tiny_model: Path) -> None:
    # hidden 64: k/v projections of 32 outputs, packed by torchao in its partial-block layout
    quantizer = get_quantizer("int4-a8")
    engine = TransformersEngine.load(resolve(str(tiny_model)), tiny_model, quantizer, threads=1)
    try:
        assert engine.quant.details["w4a8_layers"] == 14
        assert engine.fast is not None, engine.facts.details["decode"]
        # its products are the kernel's: the facts name no torchao INT4 product
        assert "int4_product" not in engine.facts.details
        answer = engine.generate("What is the capital of France?", system=None,
                                 config=GenerationConfig(max_new_tokens=8, threads=1))
        assert answer.new_tokens == 8
    finally:
        engine.close()


@needs_kernel
def test_weights_the_kernel_does_not_know_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _plain_tiny()
    get_quantizer("int4").apply(model)
    monkeypatch.setattr(int4, "int4_parts", lambda weight: None)  # as for a layout of another kind
    with pytest.raises(w4a8.W4A8Error, match=r"layer model\.layers\.0\.self_attn\.q_proj holds weights of "
                                              r"type Int4OpaqueTensor, which the kernel does not take"):
        w4a8.convert(model)


def test_no_compiler_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(w4a8.W4A8Error, match=r"no C\+\+ compiler 'no-such-compiler' on PATH"):
        w4a8._compile(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_compile_error_is_reported_and_nothing_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(w4a8, "SOURCE", broken)
    monkeypatch.setattr(w4a8, "_namespace_taken", lambda: False)
    monkeypatch.setattr(w4a8, "cpu_problem", lambda: None)
    cache = Cache(tmp_path / "cache")
    with pytest.raises(w4a8.W4A8Error, match=r"building its kernel failed"):
        w4a8.load_kernel(cache)
    assert cache.list() == []


def test_a_cpu_without_avx2_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    from pytest_llmcheck.compat import torch as adapter

    monkeypatch.setattr(adapter, "cpu_supports", lambda name: False)
    monkeypatch.setattr(w4a8, "_namespace_taken", lambda: False)
    line = ("^--llm-quant=int4-a8 cannot run on this machine: it needs an x86-64 CPU with AVX2; this one has "
            "no AVX2; use --llm-quant=int4$")
    with pytest.raises(w4a8.W4A8Error, match=line):
        w4a8.load_kernel(None)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(w4a8.W4A8Error, match=r"it needs an x86-64 CPU with AVX2; this one is aarch64;"):
        w4a8.load_kernel(None)
    # and before any INT4 work: the quantizer's first step refuses
    model = _plain_tiny()
    before = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    with pytest.raises(w4a8.W4A8Error, match=r"needs an x86-64 CPU with AVX2"):
        get_quantizer("int4-a8").apply(model)
    assert type(model.model.layers[0].mlp.down_proj.weight).__name__ == "Parameter"
    assert model.model.layers[0].mlp.down_proj.weight.equal(before)


def _plain_tiny() -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    return LlamaForCausalLM(config).to(torch.bfloat16).eval()


@needs_kernel
def test_nan_and_extreme_activations_give_nan_or_exact_zeros() -> None:
    import torch

    n, k, group = 64, 64, 32
    _, scale, zero, packed = _torchao_weight(n, k, group, seed=7)
    weights = w4a8.repack(packed, torch.stack([scale, zero], -1), group)
    x = torch.randn(4, k).to(torch.bfloat16)
    x[0, 3] = float("nan")
    x[1, 40] = float("inf")
    x[2] = 0
    x[3, :group] = 1e-38  # below what max|x|/127 can scale: counts as zeros
    y = torch.ops.llmcheck.w4a8_mm(x, *weights, None, group).float()
    assert bool(y[0].isnan().all())
    assert bool(y[1].isnan().all())  # not plausible numbers
    expected_zero = torch.ops.llmcheck.w4a8_mm(torch.zeros(1, k, dtype=torch.bfloat16), *weights, None, group)
    assert torch.equal(y[2], expected_zero[0].float())
    only_second = x[3:4].clone()
    only_second[0, :group] = 0
    assert torch.equal(y[3], torch.ops.llmcheck.w4a8_mm(only_second, *weights, None, group)[0].float())
    with pytest.raises(RuntimeError, match="contiguous uint8"):
        torch.ops.llmcheck.w4a8_mm(x, weights[0].transpose(0, 1), weights[1], None, group)


@pytest.mark.skipif(_CPU is not None, reason=f"the kernel cannot run here: {_CPU}")
def test_a_cached_kernel_that_does_not_load_is_built_again(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import sys; from pytest_llmcheck.storage.cache import Cache; "
        "from pytest_llmcheck.engines.transformers import w4a8; "
        "print(w4a8.load_kernel(Cache(sys.argv[1])))"
    )

    def session() -> str:
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip().splitlines()[-1]

    assert session().startswith("built in ")
    assert session() == "cached"
    (entry,) = [e for e in Cache(tmp_path).list() if e["kind"] == w4a8.CACHE_KIND]
    (Path(str(entry["path"])) / w4a8.LIBRARY).write_bytes(b"not a library")
    assert session().startswith("built in ")  # removed and built again, not an OSError forever
    assert session() == "cached"


@needs_kernel
@pytest.mark.slow
def test_smollm2_int4_a8_answers_and_repeats(tmp_path: Path) -> None:
    ref = resolve("smollm2")
    cache = Cache(tmp_path / "cache")
    prompts = ["What is the capital of France? Answer in one word.",
               "Write three sentences about the city of Paris."]
    texts = []
    for threads in (2, 1):
        engine = TransformersEngine.load(ref, Path(ref.location), get_quantizer("int4-a8"), threads=threads,
                                         cache=cache)
        config = GenerationConfig(max_new_tokens=40, threads=threads)
        try:
            assert engine.fast is not None, engine.facts.details["decode"]
            assert engine.quant.details["w4a8_layers"] == 211
            assert engine.quant.details["w4a8_lm_head"]
            assert engine.quant.details["w4a8_norms"] == 61
            assert engine.quant.details["w4a8_huge_pages"] is Arena(HUGE_PAGE).advised  # as here
            texts.append([engine.generate(p, system=None, config=config).text for p in prompts])
            engine.fast = None  # generate() on the same layers
            assert texts[-1] == [engine.generate(p, system=None, config=config).text for p in prompts]
        finally:
            engine.close()
    assert texts[0] == texts[1]  # 2 threads, then 1: the same answers
    assert "Paris" in texts[0][0]
