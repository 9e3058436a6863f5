"""The lean greedy decode loop: same tokens as generate(), verified at load, falls back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.config.registry import resolve
from pytest_llmcheck.engines.base import GenerationConfig
from pytest_llmcheck.engines.transformers import decode_step, fastpath, kernels
from pytest_llmcheck.engines.transformers.engine import TransformersEngine
from pytest_llmcheck.engines.transformers.quantize import get_quantizer
from pytest_llmcheck.storage.cache import Cache
from tests.tiny_model import tiny_in_memory

needs_compiler = pytest.mark.skipif(
    kernels.compiler_missing() is not None, reason="no C++ compiler for the C++ decode step"
)


@pytest.fixture(scope="module")
def step_library(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The C++ step's library, loaded in this process (built once into a private cache)."""
    return decode_step.load_library(Cache(tmp_path_factory.mktemp("step-cache")))

PROMPTS = ["What is the capital of France?", "明明和白白谁喜欢谁？", "hello world " * 12]


def _load(folder: Path, quant: str, decode: str = "fast") -> TransformersEngine:
    quantizer = get_quantizer(quant)
    return TransformersEngine.load(resolve(str(folder)), folder, quantizer, threads=1, decode=decode)


def _answers(engine: TransformersEngine, tokens: int = 20) -> list[tuple[str, int]]:
    config = GenerationConfig(max_new_tokens=tokens, threads=1)
    return [(a.text, a.new_tokens) for a in (engine.generate(p, system=None, config=config) for p in PROMPTS)]


@pytest.mark.parametrize("quant", ["int4", "bf16", "none"])
def test_fast_loop_answers_as_generate_does(tiny_model: Path, quant: str) -> None:
    fast = _load(tiny_model, quant)
    slow = _load(tiny_model, quant, decode="generate")
    assert fast.fast is not None, fast.facts.details["decode"]
    assert fast.facts.details["decode"].startswith("fast")
    # a torchao INT4 product is named where the C++ step runs INT4 calls, none for bf16
    assert ("int4_product" in fast.facts.details) == (quant == "int4" and fast.fast.native is not None)
    assert slow.fast is None
    assert slow.facts.details["decode"] == "generate() (--llm-decode=generate)"
    got, expected = _answers(fast), _answers(slow)
    assert got == expected
    assert all(n == 20 for _, n in got)  # random weights, no stop token: the loop ran to the end


def test_fast_loop_stops_where_generate_stops(tiny_model: Path) -> None:
    engine = _load(tiny_model, "int4")
    assert engine.fast is not None
    config = GenerationConfig(max_new_tokens=20, threads=1)
    ids = engine.fast.greedy(engine._encode(PROMPTS[0], None), 20, set())
    engine.model.generation_config.eos_token_id = ids[3]  # a token of the answer ends the turn now
    engine.fast = None
    expected = engine.generate(PROMPTS[0], system=None, config=config)
    engine.use_fast_decode()
    assert engine.fast is not None
    got = engine.generate(PROMPTS[0], system=None, config=config)
    assert (got.text, got.new_tokens) == (expected.text, expected.new_tokens)
    assert got.new_tokens < 20


@pytest.mark.parametrize("head_dim", [16, 64], ids=["k-v-apart", "q-k-v-fused"])
@pytest.mark.parametrize("int4", [True, False], ids=["int4", "bf16"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_models_decode_as_generate(arch: str, int4: bool, head_dim: int) -> None:
    import torch

    model, inputs = tiny_in_memory(arch, int4, head_dim=head_dim)
    decoder = fastpath.FastDecoder.build(model)
    qkv = decoder.layers[0].qkv
    assert bool(qkv.int4) is int4
    assert (qkv.single is not None) is (int4 and head_dim == 64)  # the branch under test
    with torch.inference_mode():
        assert decoder.verify(inputs, steps=4) is None
        expected = model.generate(**inputs, max_new_tokens=16, do_sample=False)[0, 7:].tolist()
        assert decoder.greedy(inputs, 16, set()) == expected
        assert decoder.greedy(inputs, 0, set()) == []


@needs_compiler
@pytest.mark.parametrize("head_dim", [16, 64], ids=["k-v-apart", "q-k-v-fused"])
@pytest.mark.parametrize("int4", [True, False], ids=["int4", "bf16"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cpp_step_gives_the_python_steps_logits(
    arch: str, int4: bool, head_dim: int, step_library: str
) -> None:
    import torch

    model, inputs = tiny_in_memory(arch, int4, head_dim=head_dim)
    decoder = fastpath.FastDecoder.build(model)
    native = decode_step.build(decoder)
    with torch.inference_mode():
        assert decoder.verify_steps(inputs, [None, native], steps=4) == [None, None]
        expected = model.generate(**inputs, max_new_tokens=16, do_sample=False)[0, 7:].tolist()
        decoder.native = native
        started: list[list[int]] = []  # the C++ step holds the prompt's cache once greedy starts

        def first() -> None:
            started.append([int(k.shape[-2]) for k in native.key_cache()])

        assert decoder.greedy(inputs, 16, set(), on_first=first) == expected
        assert started == [[7, 7]]
        # and the logits of every step, bit for bit, side by side with the Python step
        logits, _, keys, values = decoder._prefill(inputs)
        python = decoder._stepper(list(keys), list(values))
        cpp = decoder._stepper(list(keys), list(values), native)
        token = logits.float().argmax()
        for position in range(7, 12):
            a, b = python(token, position), cpp(token, position)
            assert torch.equal(a, b)
            token = a.float().argmax()
        assert [k.shape[-2] for k in native.key_cache()] == [12, 12]  # the C++ step holds the cache
        decoder.greedy(inputs, 4, set())
        assert native.key_cache() == []  # and lets it go when an answer is done


@needs_compiler
@pytest.mark.parametrize("head_mv", [True, False], ids=["mv", "linear"])
def test_lm_head_as_mv_or_linear_gives_the_forwards_logits(head_mv: bool, step_library: str) -> None:
    import torch

    model, inputs = tiny_in_memory("llama", True, head_dim=64)
    decoder = fastpath.FastDecoder.build(model)
    decoder.head_mv = head_mv  # whichever the build's timing picked: both are exact
    native = decode_step.build(decoder)
    with torch.inference_mode():
        assert decoder.verify_steps(inputs, [None, native], steps=3) == [None, None]
    assert isinstance(fastpath._mv_is_faster(model.lm_head.weight), bool)


@needs_compiler
def test_a_cpp_step_that_differs_is_caught_and_the_python_step_runs(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, step_library: str
) -> None:
    real = decode_step._set_norm

    def other_eps(native: Any, layer: int, slot: int, norm: Any) -> None:
        real(native, layer, slot, norm)
        if layer == -1:  # the final norm with another epsilon: logits move in the last bits
            native.set_norm(-1, 0, False, norm.weight, float(norm.variance_epsilon) * 1e3)

    monkeypatch.setattr(decode_step, "_set_norm", other_eps)
    engine = _load(tiny_model, "int4")
    assert engine.fast is not None
    assert engine.fast.native is None
    decision = "fast, Python step (C++ step: logits differ from the model's forward at decode step 1; "
    assert engine.facts.details["decode"].startswith(decision)
    # said on the summary line: it explains a slower model
    assert engine.facts.summary.endswith("; decode: " + engine.facts.details["decode"])
    monkeypatch.undo()
    assert _answers(engine) == _answers(_load(tiny_model, "int4", decode="generate"))


@needs_compiler
def test_an_mv_lm_head_that_differs_falls_back_to_linear(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, step_library: str
) -> None:
    import torch

    real_mv = torch.mv
    calls = []

    def off_by_a_step(weight: Any, h: Any) -> Any:  # as if mv rounded otherwise on this CPU
        calls.append(h.shape)
        out = real_mv(weight, h)
        return out + out.abs().max() * 2**-6

    monkeypatch.setattr(fastpath, "_mv_is_faster", lambda weight: True)
    monkeypatch.setattr(torch, "mv", off_by_a_step)
    engine = _load(tiny_model, "int4")
    monkeypatch.undo()
    assert calls  # the loop first ran its lm_head as mv
    assert engine.fast is not None
    assert engine.fast.head_mv is False  # linear, the model's own call, after mv failed the check
    assert engine.fast.native is not None
    assert engine.facts.details["decode"].startswith("fast, C++ step (")
    assert _answers(engine) == _answers(_load(tiny_model, "int4", decode="generate"))


def test_a_cache_the_step_cannot_be_built_in_is_a_reason_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Cache(tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / kernels.CACHE_KIND).write_text("not a folder")
    monkeypatch.setattr(decode_step, "_registered", lambda: False)  # as in a fresh process
    with pytest.raises(decode_step.StepUnavailable, match=r"^the C\+\+ step could not be built: "):
        decode_step.load_library(cache)


@needs_compiler
def test_decode_choices_and_what_the_load_facts_say(tiny_model: Path, step_library: str) -> None:
    cpp = _load(tiny_model, "int4")
    assert cpp.fast is not None
    assert cpp.fast.native is not None
    assert cpp.facts.details["decode"] == (
        "fast, C++ step (already loaded; same logits as the model's forward on a probe)"
    )
    assert "; decode:" not in cpp.facts.summary  # the fastest path is not worth a word
    python = _load(tiny_model, "int4", decode="python")
    assert python.fast is not None
    assert python.fast.native is None
    assert python.facts.details["decode"] == (
        "fast, Python step (--llm-decode=python; same logits as the model's forward on a probe)"
    )
    assert "; decode:" not in python.facts.summary  # asked for
    assert _answers(cpp) == _answers(python) == _answers(_load(tiny_model, "int4", decode="generate"))


def test_no_compiler_keeps_the_python_step_and_says_so(
    pytester: pytest.Pytester, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-llmcheck")  # a fresh process: nothing loaded yet
    pytester.makepyfile("def test_ask(llm):\n    assert llm.ask('hello world').text\n")
    result = pytester.runpytest_subprocess(
        f"--llm-model={tiny_model}", "--llm-max-new-tokens=4", f"--llm-cache-dir={pytester.path / 'cache'}",
        "-p", "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "tiny-llama (*): loaded 1x in *; decode: fast, Python step (no C++ compiler "
        "'no-such-compiler-llmcheck' on PATH; same logits as the model's forward on a probe)"
    ])


@pytest.mark.parametrize(
    ("setting", "value"),
    [("min_new_tokens", 8), ("num_beams", 3), ("cache_implementation", "static"),
     ("repetition_penalty", 1.3)],
)
def test_generation_settings_that_change_decoding_keep_generate(setting: str, value: Any) -> None:
    import torch

    model, inputs = tiny_in_memory("llama", True, head_dim=64)
    with torch.inference_mode():
        plain = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, 7:].tolist()
    model.generation_config.eos_token_id = plain[2]  # so that min_new_tokens has an effect
    setattr(model.generation_config, setting, value)
    with pytest.raises(fastpath.Unsupported, match=f"generation config sets {setting}"):
        fastpath.FastDecoder.build(model)


def test_a_loop_that_differs_is_caught_at_load(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def sum_in_other_order(x: Any, cos: Any, signed_sin: Any) -> Any:
        # the same terms as transformers', added the other way round (x*sin first) and with
        # the product rounded once: what a fused kernel would do; differs in the last bits
        import torch

        return torch.addcmul(torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin, x, cos)

    monkeypatch.setattr(fastpath, "_rope", sum_in_other_order)
    engine = _load(tiny_model, "int4")
    assert engine.fast is None
    assert engine.facts.details["decode"] == (
        "generate() (logits differ from the model's forward at decode step 1)"
    )
    monkeypatch.undo()
    assert _answers(engine) == _answers(_load(tiny_model, "int4", decode="generate"))


def test_a_generation_setting_keeps_generate_on_the_summary_line(tiny_model: Path) -> None:
    from transformers import GenerationConfig as HFGenerationConfig

    engine = _load(tiny_model, "int4", decode="generate")
    engine.model.generation_config.repetition_penalty = 1.3
    assert engine.use_fast_decode() == "generate() (the model's generation config sets repetition_penalty)"
    assert engine.fast is None
    engine.use_fast_decode()  # said once on the summary line, however often asked
    assert engine.facts.summary.count("; decode: ") == 1
    assert engine.facts.summary.endswith(
        "; decode: generate() (the model's generation config sets repetition_penalty)"
    )
    engine.model.generation_config.repetition_penalty = HFGenerationConfig().repetition_penalty
    engine.use_fast_decode()
    assert engine.fast is not None
    assert "; decode: generate()" not in engine.facts.summary  # no longer true, no longer said
    engine.close()
    assert engine.fast is None  # the loop holds the model: close lets it go


def test_sampling_still_goes_through_generate(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _load(tiny_model, "int4")
    assert engine.fast is not None
    monkeypatch.setattr(engine.fast, "greedy", None)  # would raise if called
    config = GenerationConfig(max_new_tokens=8, temperature=0.7)
    answer = engine.generate(PROMPTS[0], system=None, config=config)
    assert answer.new_tokens == 8


def test_decode_option_is_checked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--llm-decode=fastest", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --llm-decode: invalid value 'fastest'; allowed: fast, python, generate"]
    )


@pytest.mark.slow
def test_smollm2_int4_fast_loop_matches_generate() -> None:
    ref = resolve("smollm2")
    engine = TransformersEngine.load(ref, Path(ref.location), get_quantizer("int4"), threads=1)
    try:
        assert engine.fast is not None, engine.facts.details["decode"]
        config = GenerationConfig(max_new_tokens=40, threads=1)
        prompts = [
            "Write three sentences about the city of Paris.",
            "小明的妈妈有三个孩子，老大叫大毛，老二叫二毛，老三叫什么？",
        ]
        got = [engine.generate(p, system=None, config=config).text for p in prompts]
        engine.fast = None
        assert got == [engine.generate(p, system=None, config=config).text for p in prompts]
    finally:
        engine.close()


def _load_cached(folder: Path, cache: Cache, threads: int = 1) -> TransformersEngine:
    quantizer = get_quantizer("int4")
    return TransformersEngine.load(resolve(str(folder)), folder, quantizer, threads=threads, cache=cache,
                                   decode="python")


def test_the_check_at_load_is_kept_once_per_machine(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second load with the same cache recalls the first load's check (the model's forward is
    not run again); the same decoding, fingerprint and answers. Another key checks again."""
    from pytest_llmcheck.engines.transformers import decode_check

    cache = Cache(tmp_path / "cache")
    first = _load_cached(tiny_model, cache)
    assert first.fast is not None
    assert first.facts.details["decode"] == (
        "fast, Python step (--llm-decode=python; same logits as the model's forward on a probe)"
    )
    assert [e["kind"] for e in cache.list()].count(decode_check.KIND) == 1

    def checked_again(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("checked again")

    monkeypatch.setattr(fastpath.FastDecoder, "verify_steps", checked_again)
    second = _load_cached(tiny_model, cache)
    assert second.fast is not None
    assert second.facts.details["decode"] == (
        "fast, Python step (--llm-decode=python; same logits as the model's forward on a probe, "
        "checked at an earlier load on this machine)"
    )
    assert second.fingerprint() == first.fingerprint()
    assert _answers(second) == _answers(first)
    with pytest.raises(AssertionError, match="checked again"):  # threads are part of the key
        _load_cached(tiny_model, cache, threads=2)


def test_an_unreadable_check_record_is_checked_again(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_llmcheck.engines.transformers import decode_check

    cache = Cache(tmp_path / "cache")
    _load_cached(tiny_model, cache)
    (entry,) = [e for e in cache.list() if e["kind"] == decode_check.KIND]
    record = Path(str(entry["path"])) / decode_check.RECORD
    record.write_text('{"problems": "none", "head_mv": 1}', encoding="utf-8")
    calls: list[int] = []
    real = fastpath.FastDecoder.verify_steps

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(fastpath.FastDecoder, "verify_steps", counted)
    engine = _load_cached(tiny_model, cache)
    assert calls
    assert engine.fast is not None
