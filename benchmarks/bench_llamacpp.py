"""The llamacpp engine against llama-cpp-python called directly, and the default torchao INT4 engine.

    python benchmarks/bench_llamacpp.py            # 64 new tokens, median of 3
    python benchmarks/bench_llamacpp.py --quick    # 32 new tokens, one repetition

One run, the embedded SmolLM2-135M GGUF (Q4_1), the same prompt, greedy, the same
number of new tokens, at 1 and 2 threads:

- ``transformers int4``: the default engine (torchao INT4 weights from the same GGUF);
- ``llamacpp engine``: ``smollm2@llamacpp`` through the plugin's engine;
- ``llama-cpp-python``: the standalone reference, ``Llama(...).create_chat_completion``
  on the same file with the same threads, batch size and context (its prompt cache
  reset before each call, as the engine does).

``tok/s`` is new tokens over the wall time of one answer (prompt included) for all three;
``ratio`` is against the standalone reference (target: the engine within 5%, >= 0.95).
``llama.cpp ms`` is llama.cpp's own compute time (prompt eval + decode, from its perf
counters); ``overhead ms`` is the rest of the answer's wall time (chat template,
tokenizing, llama-cpp-python's Python token loop, detokenizing). ``vs ref ms`` is the
engine's overhead minus the standalone call's (compute time cancels out, and with it
most machine noise). ``plugin ms`` is the plugin's own work per answer, timed alone over
50 rounds: rendering the chat template, tokenizing, detokenizing (target < 5 ms).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_engines import table  # noqa: E402

PROMPT = "Write three sentences about the city of Paris."
RATIO_TARGET = 0.95
OVERHEAD_TARGET_MS = 5.0


@dataclass
class Run:
    wall: float  # seconds for one answer
    tokens: int
    ttft: float | None = None  # seconds, when the engine measures it
    compute: float | None = None  # llama.cpp's prompt eval + decode, seconds


def measure(call: Callable[[], Run], repeats: int) -> list[Run]:
    call()  # warm-up: first-call allocations, page cache
    return [call() for _ in range(repeats)]


def transformers_int4(threads: int, tokens: int, repeats: int) -> list[Run]:
    import torch

    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.engines.base import GenerationConfig
    from pytest_llmcheck.engines.transformers.engine import TransformersEngine
    from pytest_llmcheck.engines.transformers.quantize import get_quantizer

    ref = resolve("smollm2")
    engine = TransformersEngine.load(ref, Path(ref.location), get_quantizer("int4"), threads=threads)
    torch.set_num_threads(threads)
    config = GenerationConfig(max_new_tokens=tokens, threads=threads)

    def one() -> Run:
        start = time.perf_counter()
        answer = engine.generate(PROMPT, system=None, config=config)
        return Run(time.perf_counter() - start, answer.new_tokens, answer.ttft)

    try:
        return measure(one, repeats)
    finally:
        engine.close()


def llamacpp_engine(threads: int, tokens: int, repeats: int) -> tuple[list[Run], bool, float]:
    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.config.settings import Settings
    from pytest_llmcheck.engines.base import GenerationConfig
    from pytest_llmcheck.engines.llamacpp import load_llamacpp

    engine = load_llamacpp(resolve("smollm2@llamacpp"), Settings(threads=threads, no_cache=True))
    config = GenerationConfig(max_new_tokens=tokens, threads=threads)

    def one() -> Run:
        start = time.perf_counter()
        answer = engine.generate(PROMPT, system=None, config=config)
        return Run(time.perf_counter() - start, answer.new_tokens, answer.ttft, answer.seconds)

    try:
        runs = measure(one, repeats)
        answer = engine.generate(PROMPT, system=None, config=config)
        out = list(engine.llama.tokenize(answer.text.encode("utf-8"), add_bos=False))
        rounds = []
        for _ in range(50):  # the plugin's own per-answer work, apart from generation
            start = time.perf_counter()
            engine._tokens(PROMPT, None)
            engine.llama.detokenize(out).decode("utf-8", errors="replace").strip()
            rounds.append(time.perf_counter() - start)
        return runs, engine.extra_buffers, statistics.median(rounds) * 1000
    finally:
        engine.close()


def standalone(threads: int, tokens: int, repeats: int) -> list[Run]:
    """llama-cpp-python as its README shows it, with the engine's threads, batch and context."""
    import contextlib

    import llama_cpp

    from pytest_llmcheck.config.registry import smollm2_path
    from pytest_llmcheck.engines.llamacpp import N_BATCH, N_CTX_MAX, amx_compiled, no_extra_buffers

    guard = no_extra_buffers(llama_cpp) if amx_compiled(llama_cpp) else contextlib.nullcontext()
    with guard:
        llm = llama_cpp.Llama(
            str(smollm2_path()),
            n_ctx=N_CTX_MAX,
            n_batch=N_BATCH,
            n_ubatch=N_BATCH,
            n_threads=threads,
            n_threads_batch=threads,
            seed=0,
            verbose=False,
        )
    messages: Any = [{"role": "user", "content": PROMPT}]

    def one() -> Run:
        llm.reset()  # type: ignore[no-untyped-call]  # no reuse of the previous call's prompt: the engine computes every prompt
        llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
        start = time.perf_counter()
        out: Any = llm.create_chat_completion(
            messages, max_tokens=tokens, temperature=0.0, repeat_penalty=1.0, seed=0
        )
        wall = time.perf_counter() - start
        perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
        compute = (perf.t_p_eval_ms + perf.t_eval_ms) / 1000
        return Run(wall, int(out["usage"]["completion_tokens"]), perf.t_p_eval_ms / 1000, compute)

    try:
        return measure(one, repeats)
    finally:
        llm.close()


def overhead_ms(runs: list[Run]) -> float:
    return statistics.median(r.wall - r.compute for r in runs if r.compute is not None) * 1000


def row(
    name: str,
    threads: int,
    runs: list[Run],
    reference: float | None,
    ref_runs: list[Run] | None = None,
    plugin_ms: float | None = None,
) -> list[str]:
    tokens = runs[0].tokens
    speed = statistics.median(r.tokens / r.wall for r in runs)
    ttft = [r.ttft for r in runs if r.ttft is not None]
    compute = [r.compute for r in runs if r.compute is not None]
    overhead = (
        statistics.median(r.wall - r.compute for r in runs if r.compute is not None) if compute else None
    )
    return [
        name,
        str(threads),
        str(tokens),
        f"{speed:.1f}",
        f"{speed / reference:.2f}" if reference else "1.00",
        f"{statistics.median(ttft):.3f}" if ttft else "-",
        f"{statistics.median(compute) * 1000:.0f}" if compute else "-",
        f"{overhead * 1000:.1f}" if overhead is not None else "-",
        f"{overhead * 1000 - overhead_ms(ref_runs):+.1f}" if ref_runs and overhead is not None else "-",
        f"{plugin_ms:.2f}" if plugin_ms is not None else "-",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="32 tokens, one repetition")
    args = parser.parse_args()
    tokens, repeats = (32, 1) if args.quick else (64, 3)
    start = time.perf_counter()
    print(f"SmolLM2-135M-Instruct (Q4_1 GGUF), greedy, {tokens} new tokens, median of {repeats}\n")
    header = [
        "engine",
        "threads",
        "tokens",
        "tok/s",
        "ratio",
        "ttft s",
        "llama.cpp ms",
        "overhead ms",
        "vs ref ms",
        "plugin ms",
    ]
    rows = [header]
    verdicts = []
    extra = True
    for threads in (1, 2):
        ref_runs = standalone(threads, tokens, repeats)
        reference = statistics.median(r.tokens / r.wall for r in ref_runs)
        engine_runs, extra, plugin_ms = llamacpp_engine(threads, tokens, repeats)
        int4_runs = transformers_int4(threads, tokens, repeats)
        rows.append(row("transformers int4 (torchao)", threads, int4_runs, reference))
        rows.append(row("llamacpp engine", threads, engine_runs, reference, ref_runs, plugin_ms))
        rows.append(row("llama-cpp-python (reference)", threads, ref_runs, None))
        engine_speed = statistics.median(r.tokens / r.wall for r in engine_runs)
        same_tokens = engine_runs[0].tokens == ref_runs[0].tokens
        verdicts.append(
            f"{threads} thread(s): engine/reference {engine_speed / reference:.3f} "
            f"({'PASS' if engine_speed / reference >= RATIO_TARGET else 'FAIL'} >= {RATIO_TARGET}), "
            f"plugin work per answer {plugin_ms:.2f} ms "
            f"({'PASS' if plugin_ms < OVERHEAD_TARGET_MS else 'FAIL'} < {OVERHEAD_TARGET_MS:g} ms), "
            f"same token count: {same_tokens}"
        )
    print(table(rows))
    print()
    for line in verdicts:
        print(line)
    if not extra:
        print("(this llama.cpp build has AMX kernels: both llama.cpp rows ran without extra weight buffers)")
    print(f"\n(benchmark took {time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()
