"""The real transformers + torchao path: a tiny random model and the embedded SmolLM2."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from pytest_llmcheck.config.registry import resolve
from pytest_llmcheck.engines.base import GenerationConfig
from pytest_llmcheck.engines.transformers.engine import TransformersEngine
from pytest_llmcheck.engines.transformers.quantize import LlmcheckWarning, QuantizationError, get_quantizer
from pytest_llmcheck.storage.cache import Cache
from tests.tiny_model import build_tiny_model


def test_tiny_model_end_to_end_through_pytest(pytester: pytest.Pytester, tiny_model: Path) -> None:
    pytester.makepyfile(
        """
        def test_answer(llm):
            answer = llm.ask("What is the capital of France?")
            assert answer.new_tokens == 12
            assert answer.prompt_tokens > 5
            assert 0 < answer.ttft <= answer.seconds
            assert answer.tokens_per_second > 0
        """
    )
    result = pytester.runpytest(
        f"--llm-model={tiny_model}",
        "--llm-max-new-tokens=12",
        "--llm-threads=1",
        "-v",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_answer[[]tiny-llama[]] PASSED*",
            "tiny-llama (*tiny-llama): loaded 1x in *s; "
            "int4: 14/14 linear layers, weights * MiB -> * MiB, *s",
        ]
    )


def test_same_question_gives_byte_identical_answers_in_two_sessions(
    pytester: pytest.Pytester, tiny_model: Path
) -> None:
    pytester.makepyfile(
        """
        import os
        def test_write(llm):
            answer = llm.ask("明明和白白谁喜欢谁？")
            with open(os.environ["ANSWER_FILE"], "ab") as f:
                f.write(answer.text.encode("utf-8") + b"\\0")
        """
    )
    answers = []
    for run in range(2):
        out = pytester.path / f"answer{run}.bin"
        pytester._monkeypatch.setenv("ANSWER_FILE", str(out))
        result = pytester.runpytest_subprocess(
            f"--llm-model={tiny_model}",
            "--llm-max-new-tokens=24",
            "--llm-threads=2",
            "-p",
            "no:cacheprovider",
        )
        result.assert_outcomes(passed=1)
        answers.append(out.read_bytes())
    assert len(answers[0]) > 24
    assert answers[0] == answers[1]


def test_int4_refuses_a_model_it_cannot_quantize(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / "odd", hidden=40)  # no input size (40, 80) is a multiple of 32
    with pytest.raises(QuantizationError, match=r"int4: 0 of 14 linear layers were quantized"):
        TransformersEngine.load(resolve(str(folder)), folder, get_quantizer("int4"), threads=1)


def test_int4_warns_when_few_layers_are_quantized(tmp_path: Path) -> None:
    # hidden 48: only the two down_proj layers (input 96) fit the group size 32
    folder = build_tiny_model(tmp_path / "few", hidden=48)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = TransformersEngine.load(resolve(str(folder)), folder, get_quantizer("int4"), threads=1)
    assert (engine.quant.layers_quantized, engine.quant.layers_total) == (2, 14)
    assert any(issubclass(w.category, LlmcheckWarning) and "were quantized" in str(w.message) for w in caught)


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["none", "bf16", "int4"])
def test_smollm2_knows_the_capital_of_france(quant: str, tmp_path: Path) -> None:
    ref = resolve("smollm2")
    cache = Cache(tmp_path / "cache")  # GGUF -> converted (fp32, bf16) or INT4 entry, written once
    engine = TransformersEngine.load(ref, Path(ref.location), get_quantizer(quant), threads=2, cache=cache)
    assert not engine.facts.from_cache
    kinds = [e["kind"] for e in cache.list() if e["kind"] != "decode-check"]  # and the fast loop's check
    assert kinds == ["quantized" if quant == "int4" else "converted"]
    try:
        answer = engine.generate(
            "What is the capital of France? Answer in one word.",
            system=None,
            config=GenerationConfig(max_new_tokens=24, threads=2),
        )
    finally:
        engine.close()
    assert "Paris" in answer.text
    if quant == "int4":
        assert engine.quant.layers_quantized == engine.quant.layers_total == 210
        assert engine.quant.bytes_after < engine.quant.bytes_before * 0.6


@pytest.mark.slow
def test_smollm2_converted_cache_reloads_without_the_gguf(tmp_path: Path) -> None:
    ref = resolve("smollm2")
    cache = Cache(tmp_path / "cache")
    config = GenerationConfig(max_new_tokens=16, threads=2)
    first = TransformersEngine.load(ref, Path(ref.location), get_quantizer("bf16"), threads=2, cache=cache)
    expected = first.generate("What is the capital of France?", system=None, config=config).text
    first.close()
    again = TransformersEngine.load(ref, Path(ref.location), get_quantizer("bf16"), threads=2, cache=cache)
    assert again.facts.from_cache
    assert again.generate("What is the capital of France?", system=None, config=config).text == expected


def test_repeats_with_sampling_give_different_reproducible_answers(
    pytester: pytest.Pytester, tiny_model: Path
) -> None:
    pytester.makepyfile(
        """
        import json, os
        def test_sample(llm):
            llm.ask("hello")
            with open(os.environ["ANSWERS"], "a", encoding="utf-8") as f:
                f.write(json.dumps([a.text for a in llm.answers]) + "\\n")
        """
    )
    out = pytester.path / "answers.jsonl"
    pytester._monkeypatch.setenv("ANSWERS", str(out))
    args = (f"--llm-model={tiny_model}", "--llm-repeat=5", "--llm-temperature=1.0", "--llm-max-new-tokens=8",
            "--llm-threads=1", "-p", "no:cacheprovider", "--llm-no-cache")
    pytester.runpytest(*args).assert_outcomes(passed=1)
    pytester.runpytest(*args).assert_outcomes(passed=1)
    first, second = (json.loads(line) for line in out.read_text(encoding="utf-8").splitlines())
    assert len(first) == 5
    assert len(set(first)) > 1  # each repeat is its own sample
    assert first == second  # seeded: the same five samples in every session
