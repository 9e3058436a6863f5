"""The C++ step's lm_head screen: the full lm_head's greedy token, from fewer bytes.

``decode_step.cpp`` bounds every logit from an int8 copy of the bf16 lm_head and computes
exactly (torch's own ``linear`` on the gathered rows) only the rows that could hold the
maximum. These tests hold it to the full lm_head's ``logits.float().argmax()``: exact ties
(first index), near ties one bf16 step apart, outliers, refusals (zero, infinite or NaN
inputs, a weight that is not finite, a flat distribution), the kernel's rows computed alone
as in the full product, the bound on torch's own rounding, and the decode loop with it
(checked at load, off when the check finds a difference, same answers as generate()).
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llmcheck.engines.transformers import decode_step, fastpath, kernels
from pytest_llmcheck.storage.cache import Cache
from tests.tiny_model import tiny_in_memory

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(kernels.compiler_missing() is not None, reason="no C++ compiler")


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> str:
    return decode_step.load_library(Cache(tmp_path_factory.mktemp("step-cache")))


@pytest.fixture(autouse=True)
def aten_linear() -> Any:
    """As portable numerics run it: ATen's own bf16 kernel, not oneDNN's."""
    from pytest_llmcheck.config.numerics import PORTABLE
    from pytest_llmcheck.engines.transformers.engine import portable_arithmetic

    with portable_arithmetic(PORTABLE):
        yield


def _full(h: Any, weight: Any) -> Any:
    return torch.nn.functional.linear(h.reshape(1, 1, -1), weight)[0, 0]


def _screen(h: Any, weight: Any, limit: int | None = None) -> tuple[int, Any]:
    built = decode_step.head_screen(weight)
    assert built is not None
    limit = weight.shape[0] if limit is None else limit
    token, candidates = torch.ops.llmcheck_decode.screen_argmax(h, weight, *built, limit)
    return int(token), candidates


def _weight(rows: int, hidden: int, gen: Any, std: float = 0.02) -> Any:
    return (torch.randn(rows, hidden, generator=gen) * std).to(torch.bfloat16)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_screen_picks_the_full_lm_heads_token(library: str, threads: int) -> None:
    gen = torch.Generator().manual_seed(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows, hidden in [(4096, 256), (5000, 96), (3000, 1536)]:
            weight = _weight(rows, hidden, gen)
            built = decode_step.head_screen(weight)
            assert built is not None
            decided = 0
            for i in range(40):
                h = torch.randn(hidden, generator=gen) * (1 + 4 * torch.rand(hidden, generator=gen))
                if i % 5 == 0:
                    h[i % hidden] *= 200  # an outlier dimension, as real hidden states have
                h = h.to(torch.bfloat16)
                full = _full(h, weight)
                token, candidates = torch.ops.llmcheck_decode.screen_argmax(h, weight, *built, rows // 4)
                assert int(token) == int(full.float().argmax())
                if candidates.numel():
                    decided += 1
                    assert int(token) in candidates.tolist()
                    assert candidates.tolist() == sorted(set(candidates.tolist()))
                    assert candidates.numel() < rows  # it did skip rows
            assert decided >= 30, (rows, hidden, decided)  # and mostly decided on its own
    finally:
        torch.set_num_threads(before)


def test_exact_ties_go_to_the_first_index_as_argmax_does(library: str) -> None:
    gen = torch.Generator().manual_seed(3)
    weight = _weight(2048, 128, gen)
    h = torch.randn(128, generator=gen).to(torch.bfloat16)
    best = int(_full(h, weight).float().argmax())
    for copy in sorted({5, min(best + 1, 2047), 2047} - {best}):  # the winner's row, before and after it
        tied = weight.clone()
        tied[copy] = weight[best]
        token, candidates = _screen(h, tied)
        assert token == min(copy, best) == int(_full(h, tied).float().argmax())
        assert {copy, best} <= set(candidates.tolist())


def test_near_ties_one_bf16_step_apart(library: str) -> None:
    """Rows that differ from the winner in one element by one bf16 step: logits equal or one
    bf16 step apart, the screen's int8 copies of them identical."""
    gen = torch.Generator().manual_seed(4)
    weight = _weight(1024, 256, gen)
    for trial in range(20):
        h = torch.randn(256, generator=gen).to(torch.bfloat16)
        best = int(_full(h, weight).float().argmax())
        near = weight.clone()
        for j, row in enumerate((trial, 500 + trial, 1000 + trial % 24)):
            if row == best:
                continue
            near[row] = weight[best]
            bits = near[row].view(torch.int16)
            bits[(trial + j) % 256] += 1 if j % 2 else -1  # one step up or down in one element
        full = _full(h, near)
        token, _ = _screen(h, near)
        assert token == int(full.float().argmax()), trial


def test_bf16_rounding_ties_need_the_rounding_allowance(library: str) -> None:
    """Rows the int8 copy holds exactly, so the screen's estimates are the exact sums: 1000 for
    row 0 and 1001 for row 1. Both round to bf16 1000, so torch's argmax is row 0 (the first of
    a tie), which only the allowance for torch's rounding keeps among the candidates."""
    x = torch.ones(64)
    x[0] = 127  # amax 127: the screen's int8 copy of x is x itself
    q = torch.zeros(40, 64)
    q[:, 0] = 127  # every row's amax 127 / 16: its int8 copy is q itself, scale 1/16
    q[0, 1], q[0, 2] = -127, -2  # 16129 - 129 = 16000, 1000 after the scale
    q[1, 1] = -113  # 16129 - 113 = 16016, 1001
    q[2:, 1:] = -127  # 16129 - 63 * 127 = 8128, 508
    weight = (q / 16).to(torch.bfloat16)
    h = x.to(torch.bfloat16)
    assert torch.equal(weight.float() * 16, q)  # exact in bf16
    full = _full(h, weight)
    assert float(full[0]) == float(full[1]) == 1000.0
    assert int(full.float().argmax()) == 0
    token, candidates = _screen(h, weight)
    assert token == 0
    assert candidates.tolist() == [0, 1]


def test_candidates_logits_are_the_full_products_rows(library: str) -> None:
    """The assumption the screen rests on: torch's kernel computes each row as it does alone."""
    gen = torch.Generator().manual_seed(5)
    weight = _weight(6000, 1536, gen)
    h = (torch.randn(1536, generator=gen) * 3).to(torch.bfloat16)
    full = _full(h, weight)
    for size in (1, 2, 7, 33, 500, 5999):
        idx = torch.randperm(6000, generator=gen)[:size].sort().values
        assert torch.equal(_full(h, weight.index_select(0, idx)), full[idx]), size


def test_torchs_rounding_stays_within_the_screens_allowance(library: str) -> None:
    """|torch's bf16 logit - the exact sum| <= 2^-7 |sum| + K 2^-20 |x| |w|, the allowance
    the screen adds: checked against float64 sums with large, cancelling and tiny terms."""
    gen = torch.Generator().manual_seed(6)
    for hidden, std in [(1536, 0.02), (3584, 1.0), (256, 1e-3)]:
        weight = _weight(2000, hidden, gen, std)
        h = (torch.randn(hidden, generator=gen) * 10).to(torch.bfloat16)
        got = _full(h, weight).double()
        exact = weight.double() @ h.double()
        sums = h.double().norm() * weight.double().norm(dim=1)
        allowance = 2.0**-7 * exact.abs() + hidden * 2.0**-20 * sums
        assert bool(((got - exact).abs() <= allowance).all()), hidden


def test_what_the_screen_cannot_bound_takes_all_the_logits(library: str) -> None:
    gen = torch.Generator().manual_seed(7)
    weight = _weight(1024, 64, gen)
    cases = {
        "zero": torch.zeros(64),
        "infinite": torch.full((64,), float("inf")),
        "nan": torch.cat([torch.full((1,), float("nan")), torch.ones(63)]),
    }
    for name, h in cases.items():
        h = h.to(torch.bfloat16)
        token, candidates = _screen(h, weight)
        assert candidates.numel() == 0, name
        assert token == int(_full(h, weight).float().argmax()), name
    flat = weight[:1].repeat(1024, 1)  # every logit equal: more candidates than the limit
    h = torch.randn(64, generator=gen).to(torch.bfloat16)
    token, candidates = _screen(h, flat, limit=64)
    assert (token, candidates.numel()) == (0, 0)


def test_no_screen_for_weights_it_cannot_bound(library: str) -> None:
    gen = torch.Generator().manual_seed(8)
    weight = _weight(256, 64, gen)
    bad = weight.clone()
    bad[17, 3] = float("nan")
    assert decode_step.head_screen(bad) is None
    bad[17, 3] = float("inf")
    assert decode_step.head_screen(bad) is None
    assert decode_step.head_screen(weight.float()) is None  # bf16 only
    assert decode_step.head_screen(_weight(256, 48, gen)) is None  # hidden not a multiple of 32
    zero_row = weight.clone()
    zero_row[5] = 0
    q, _, wnorm, dnorm = decode_step.head_screen(zero_row)
    assert q[5].abs().sum() == 0
    assert float(wnorm[5]) == float(dnorm[5]) == 0.0


def _portable_decoder(arch: str, int4: bool) -> tuple[Any, Any, Any]:
    model, inputs = tiny_in_memory(arch, int4, head_dim=16, vocab=3000)
    decoder = fastpath.FastDecoder.build(model, portable=True)
    native = decode_step.build(decoder)
    return model, inputs, (decoder, native)


@pytest.mark.parametrize("int4", [True, False], ids=["int4", "bf16"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_decode_loop_answers_through_the_screen_as_generate(arch: str, int4: bool, library: str) -> None:
    model, inputs, (decoder, native) = _portable_decoder(arch, int4)
    assert decoder.screen  # portable numerics, a bf16 lm_head: the step has one
    with torch.inference_mode():
        assert decoder.verify_steps(inputs, [None, native], steps=4) == [None, None]
        assert decoder.screen_problem is None
        expected = model.generate(**inputs, max_new_tokens=16, do_sample=False)[0, 7:].tolist()
        decoder.native = native
        assert decoder.greedy(inputs, 16, set()) == expected
    decided, kept = native.screened()
    assert decided >= 10  # the screen decided (most of) the 15 steps
    assert kept >= decided


def test_native_numerics_keep_the_full_lm_head(library: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "_mv_is_faster", lambda weight: False)  # linear, as in portable
    model, _ = tiny_in_memory("qwen2", True, head_dim=16, vocab=3000)
    decoder = fastpath.FastDecoder.build(model, portable=False)
    assert not decoder.head_mv
    decode_step.build(decoder)
    assert not decoder.screen  # oneDNN may block a bf16 product by its shape: no per-row promise


def test_the_screen_and_mv_do_not_mix(library: str) -> None:
    _, _, (decoder, native) = _portable_decoder("qwen2", True)
    screen = decode_step.head_screen(decoder.lm_head)
    native.set_head_mv(True)  # the screen computes its candidates as linear: it goes
    with pytest.raises(RuntimeError, match="not mv"):
        native.set_head_screen(*screen, 64)
    native.set_head_mv(False)
    bad = screen[0].clone()
    bad[0, 0] = -128  # the dot product's sign trick needs -127 at the least
    with pytest.raises(RuntimeError, match=r"\[-127, 127\]"):
        native.set_head_screen(bad, *screen[1:], 64)


def test_a_check_record_keeps_the_screens_verdict(tmp_path: Any) -> None:
    from pytest_llmcheck.engines.transformers import decode_check

    cache = Cache(tmp_path)
    entry = decode_check.entry_for(cache, {"k": 1})
    decode_check.remember(entry, [None, None], False, "the lm_head screen picks another token")
    again = decode_check.entry_for(cache, {"k": 1})
    assert decode_check.recall(again, 2) == ([None, None], False, "the lm_head screen picks another token")
    older = decode_check.entry_for(cache, {"k": 2})  # a record from before the screen: no "screen"
    with older.build() as tmp:
        (tmp / decode_check.RECORD).write_text('{"problems": [null], "head_mv": false}', encoding="utf-8")
    assert decode_check.recall(decode_check.entry_for(cache, {"k": 2}), 1) == ([None], False, None)


def test_a_screen_that_differs_is_caught_and_switched_off(library: str) -> None:
    model, inputs, (decoder, native) = _portable_decoder("qwen2", True)
    q, scale, wnorm, dnorm = decode_step.head_screen(decoder.lm_head)
    # a screen whose copy is negated and whose bounds claim no error: it picks the smallest logit
    native.set_head_screen(-q, scale, wnorm, torch.zeros_like(dnorm), 3000)
    with torch.inference_mode():
        assert decoder.verify_steps(inputs, [None, native], steps=4) == [None, None]  # logits still equal
        assert decoder.screen_problem is not None
        assert "lm_head screen" in decoder.screen_problem
        from pytest_llmcheck.engines.transformers.engine import TransformersEngine

        TransformersEngine._screen_verdict(decoder, [None, native])
        assert not decoder.screen
        expected = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, 7:].tolist()
        decoder.native = native
        assert decoder.greedy(inputs, 8, set()) == expected
    assert native.screened() == [0, 0]
