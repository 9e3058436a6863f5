"""The C++ step's own INT4 product: torch's AVX2 INT4 kernel's numbers, bit for bit.

Run by tests/test_int4_product.py in a process of their own with ATEN_CPU_CAPABILITY=avx2
(this project's test sessions run native numerics, so their torch runs its AVX-512 kernel
on a CPU that has it); not collected on its own (no test_ prefix).

``int4_mm`` (decode_step.cpp) replaces ``aten::_weight_int4pack_mm_for_cpu`` in the decode
loop where torch's kernel is its AVX2 one; a portable answer is only portable if the two
agree in every bit, at any thread count. These tests compare them directly; the decode
loop's check at load compares the logits again on every model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.engines.transformers import decode_step, fastpath, kernels
from pytest_llmcheck.storage.cache import Cache
from tests.tiny_model import tiny_in_memory

torch = pytest.importorskip("torch")

CACHE_ENV = "LLMCHECK_TEST_STEP_CACHE"  # the outer test's cache, the library already built in it


@pytest.fixture(scope="module")
def library() -> str:
    assert str(torch.backends.cpu.get_cpu_capability()) == "AVX2", "run with ATEN_CPU_CAPABILITY=avx2"
    assert kernels.compiler_missing() is None
    return decode_step.load_library(Cache(Path(os.environ[CACHE_ENV])))


def _weights(n: int, k: int, group: int, gen: Any, scale: float = 0.05) -> tuple[Any, Any]:
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    scale_zero = (torch.randn(k // group, n, 2, generator=gen) * scale).to(torch.bfloat16)
    return packed, scale_zero


def _bits(t: Any) -> Any:
    return t.view(torch.int16)


SHAPES = [  # (outputs, inputs, group, rows)
    (32, 64, 32, 1), (64, 128, 64, 1), (96, 256, 128, 3), (160, 512, 32, 1), (224, 256, 256, 2),
    (2048, 1536, 32, 1), (1536, 8960, 32, 1),  # Qwen2-1.5B's q/k/v and down
    # prompts: rows three at a time, then a pair or one alone (33, 77, 4); chunks of 96 rows, each regrouped
    # on its own, the last of 1, 4 or 2 rows (97, 193, 100, 98); group 256 across two groups (98)
    (64, 512, 64, 33), (2048, 1536, 32, 77), (64, 256, 32, 4),
    (64, 256, 32, 97), (64, 256, 32, 193), (64, 512, 64, 100), (96, 512, 256, 98),
]


@pytest.mark.parametrize("threads", [1, 2])
def test_int4_mm_is_torchs_avx2_kernel_bit_for_bit(library: str, threads: int) -> None:
    gen = torch.Generator().manual_seed(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n, k, group, rows in SHAPES:
            packed, scale_zero = _weights(n, k, group, gen)
            x = (torch.randn(rows, k, generator=gen) * 3).to(torch.bfloat16)
            expected = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, scale_zero)
            got = torch.ops.llmcheck_decode.int4_mm(x, packed, group, scale_zero)
            assert got.shape == expected.shape == (rows, n)
            assert torch.equal(_bits(got), _bits(expected)), (n, k, group, rows)
    finally:
        torch.set_num_threads(before)


def test_int4_mm_rounds_and_overflows_as_torch_does(library: str) -> None:
    """Sums that round to bf16 ties, overflow to infinity, or meet a NaN or an infinity."""
    gen = torch.Generator().manual_seed(7)
    packed, scale_zero = _weights(64, 256, 32, gen, scale=1.0)
    cases = [
        (torch.randn(1, 256, generator=gen) * 1e4).to(torch.bfloat16),  # large products
        (torch.randn(1, 256, generator=gen) * 3e37).to(torch.bfloat16),  # sums past fp32's range
        torch.full((1, 256), 2**-130).to(torch.bfloat16),  # subnormal inputs
    ]
    with_nan = (torch.randn(1, 256, generator=gen)).to(torch.bfloat16)
    with_nan[0, 17] = float("nan")
    with_inf = (torch.randn(1, 256, generator=gen)).to(torch.bfloat16)
    with_inf[0, 200] = float("inf")
    for x in [*cases, with_nan, with_inf]:
        expected = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, scale_zero)
        got = torch.ops.llmcheck_decode.int4_mm(x, packed, 32, scale_zero)
        assert torch.equal(_bits(got), _bits(expected))


def test_int4_mm_refuses_what_it_does_not_reproduce(library: str) -> None:
    gen = torch.Generator().manual_seed(3)
    packed, scale_zero = _weights(48, 64, 32, gen)  # a partial block of 16: torch's other path
    x = torch.randn(1, 64, generator=gen).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="whole blocks of 32 outputs"):
        torch.ops.llmcheck_decode.int4_mm(x, packed, 32, scale_zero)
    packed, scale_zero = _weights(32, 64, 32, gen)
    with pytest.raises(RuntimeError, match="x must be bf16"):
        torch.ops.llmcheck_decode.int4_mm(x.float(), packed, 32, scale_zero)


@pytest.mark.parametrize("head_dim", [16, 64], ids=["k-v-apart", "q-k-v-fused"])
def test_the_cpp_step_runs_int4_mm_and_keeps_the_forwards_logits(library: str, head_dim: int) -> None:
    model, inputs = tiny_in_memory("qwen2", True, head_dim=head_dim)
    decoder = fastpath.FastDecoder.build(model)
    native = decode_step.build(decoder)
    own, total = native.int4_calls()
    assert own == total > 0  # every projection has whole blocks of 32 outputs
    assert decode_step.int4_product(native) == f"int4_mm on {own} of {total} calls"
    with torch.inference_mode():
        assert decoder.verify_steps(inputs, [None, native], steps=4) == [None, None]


def test_prompts_run_int4_mm_with_the_forwards_logits_and_keys(library: str) -> None:
    model, inputs = tiny_in_memory("qwen2", True, head_dim=64)
    inputs = {"input_ids": torch.arange(3, 60).view(1, -1)}  # 57 prompt tokens: 19 passes of three rows
    decoder = fastpath.FastDecoder.build(model)
    native = decode_step.build(decoder)
    assert decoder.native_prompt is not None
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]
    assert len(linears) == 2 * 7  # q, k, v, o, gate, up, down per layer
    with torch.inference_mode():
        reference = decoder._prefill(inputs)
        with decoder.native_prompt():
            assert all("forward" in m.__dict__ for m in linears)  # every INT4 layer on int4_mm
        own = decoder._prefill(inputs, native=True)
        assert torch.equal(own[0], reference[0])
        for a, b in zip([*own[2], *own[3]], [*reference[2], *reference[3]], strict=True):
            assert torch.equal(a, b)
        assert decoder.verify_steps(inputs, [None, native], steps=3) == [None, None]
        expected = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, 57:].tolist()
        decoder.native = native
        assert decoder.greedy(inputs, 12, set()) == expected
    assert not any("forward" in m.__dict__ for m in linears)  # the class's forward again


def test_a_prompt_product_that_differs_is_caught(library: str) -> None:
    import contextlib
    from collections.abc import Iterator

    model, inputs = tiny_in_memory("llama", True, head_dim=64)
    decoder = fastpath.FastDecoder.build(model)
    native = decode_step.build(decoder)
    down = model.model.layers[1].mlp.down_proj

    @contextlib.contextmanager
    def off_by_a_bit() -> Iterator[None]:  # as if int4_mm rounded otherwise somewhere
        down.forward = lambda x: torch.nn.functional.linear(x, down.weight) * 1.01
        try:
            yield
        finally:
            del down.forward

    decoder.native_prompt = off_by_a_bit
    with torch.inference_mode():
        problems = decoder.verify_steps(inputs, [None, native], steps=2)
    assert problems == [None, "the prompt's logits or keys differ from the model's forward"]


def test_where_torchs_kernel_is_not_the_avx2_one_the_step_keeps_it(
    library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = tiny_in_memory("llama", True, head_dim=64)
    monkeypatch.setattr(decode_step, "own_int4_here", lambda: False)  # as under AVX-512 dispatch
    decoder = fastpath.FastDecoder.build(model)
    native = decode_step.build(decoder)
    assert native.int4_calls()[0] == 0
    assert decode_step.int4_product(native) == "torch's"
    assert decoder.native_prompt is None  # prompts through the model's forward as it is


def _generate_only(tiny_model: Path, tmp_path: Path) -> Path:
    """The tiny model with a repetition penalty: the lean loop refuses it, generate() runs."""
    import json
    import shutil

    folder = tmp_path / "penalty"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, "repetition_penalty": 1.3}))
    return folder


def _engine(folder: Path, decode: str = "fast") -> Any:
    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.engines.transformers.engine import TransformersEngine
    from pytest_llmcheck.engines.transformers.quantize import get_quantizer

    quantizer = get_quantizer("int4")
    return TransformersEngine.load(resolve(str(folder)), folder, quantizer, threads=1, decode=decode)


def _texts(engine: Any) -> list[str]:
    from pytest_llmcheck.engines.base import GenerationConfig

    config = GenerationConfig(max_new_tokens=16, threads=1)
    prompts = ["What is the capital of France?", "明明和白白谁喜欢谁？", "hello world " * 12]
    return [engine.generate(p, system=None, config=config).text for p in prompts]


def test_generate_runs_int4_mm_where_the_loop_does_not(
    library: str, tiny_model: Path, tmp_path: Path
) -> None:
    folder = _generate_only(tiny_model, tmp_path)
    engine = _engine(folder)
    assert engine.fast is None
    assert engine.facts.details["decode"].startswith("generate() (the model's generation config sets")
    assert engine.products is not None
    assert engine.facts.details["int4_product"] == "int4_mm on 14 layers, in generate()"
    plain = _engine(folder, decode="generate")
    assert plain.products is None
    assert "int4_product" not in plain.facts.details
    assert _texts(engine) == _texts(plain)  # the same answers, token for token


def test_generate_keeps_torchs_kernel_when_the_check_fails(
    library: str, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decode_step, "check_products", lambda *a, **k: "logits differ (as if)")
    engine = _engine(_generate_only(tiny_model, tmp_path))
    assert engine.fast is None
    assert engine.products is None
    assert "int4_product" not in engine.facts.details
