"""What the decode step's lm_head screen earns (decode_step.cpp, ``screen_candidates``).

    python benchmarks/bench_head_screen.py              # Qwen2-1.5B shape, median of 3, 1 and 2 threads
    python benchmarks/bench_head_screen.py --size 7b --threads 2
    python benchmarks/bench_head_screen.py --size smollm2     # the embedded model: trained weights

The default recipe keeps the lm_head in bf16; at Qwen's 151936-token vocabulary it is the
largest single product of a token (467 MB at 1.5B, 1.1 GB at 7B). In greedy decoding the C++
step reads an int8 copy instead, bounds every logit, and computes exactly only the rows that
could be the largest, so the token is the full lm_head's. Side by side in one process, on the
random-weight model of ``bench_size.py`` (loaded from its engine cache as the plugin loads it,
portable numerics): decode tokens per second with the screen on and off, alternating, the
median of ``--runs`` answers each; that both answers are the same tokens; how many tokens the
screen decided and how many candidates it kept a token. Then the lm_head alone (random hidden
states through the model's final norm): the full product against the screen, ms per token.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

PROMPT = "Write three sentences about the city of Paris."


def load(size: str, threads: int) -> Any:
    from pytest_llmcheck.config.numerics import apply_portable_env

    apply_portable_env()  # before torch: as the plugin runs the default recipe
    import _size_models as models
    from bench_size import engine_cache

    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.engines.transformers.engine import TransformersEngine
    from pytest_llmcheck.engines.transformers.quantize import get_quantizer
    from pytest_llmcheck.storage.cache import Cache, default_cache_dir

    if size == "smollm2":  # the embedded model, trained weights, the per-machine cache
        ref = resolve("smollm2")
        folder, cache = Path(ref.location), Cache(default_cache_dir())
    else:
        folder = models.write_qwen2(size)  # once per machine (bench_size.py makes the same one)
        ref, cache = resolve(str(folder)), Cache(engine_cache(size, "int4"))
    engine = TransformersEngine.load(
        ref, folder, get_quantizer("int4"), threads=threads, cache=cache, numerics="portable"
    )
    if engine.fast is None or engine.fast.native is None or not engine.fast.screen:
        raise SystemExit(f"no screen in this load: {engine.facts.details.get('decode')}, "
                         f"{engine.facts.details.get('lm_head_screen')}")
    engine._stop_ids = lambda: []  # every answer decodes the same count
    engine.model.generation_config.eos_token_id = None
    return engine


def answer(engine: Any, tokens: int, threads: int) -> tuple[float, str]:
    from pytest_llmcheck.engines.base import GenerationConfig

    config = GenerationConfig(max_new_tokens=tokens, threads=threads)
    got = engine.generate(PROMPT, system=None, config=config)
    return (got.new_tokens - 1) / (got.seconds - got.ttft), got.text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1.5b", choices=["1.5b", "7b", "smollm2"])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    from bench_xdist import cpu_name

    model = "SmolLM2-135M-Instruct" if args.size == "smollm2" else f"Qwen2-{args.size} shape, random weights"
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, {datetime.now():%Y-%m-%d %H:%M}; {model}; default int4 "
          f"(portable numerics), greedy, {args.tokens} new tokens, "
          f"median of {args.runs} alternating answers a row")
    rows = []
    engine = None
    for threads in (int(t) for t in args.threads.split(",")):
        import torch

        from pytest_llmcheck.engines.transformers import decode_step

        engine = engine or load(args.size, threads)
        engine.threads = threads
        torch.set_num_threads(threads)
        decoder, native = engine.fast, engine.fast.native
        screen = decode_step.head_screen(decoder.lm_head)
        limit = max(1, int(decoder.lm_head.shape[0]) // 16)
        answer(engine, 4, threads)  # warm
        on, off, same, decided, kept = [], [], True, 0, 0
        for _ in range(args.runs):
            before = native.screened()
            native.set_head_screen(*screen, limit)
            speed_on, text_on = answer(engine, args.tokens, threads)
            after = native.screened()
            decided, kept = decided + after[0] - before[0], kept + after[1] - before[1]
            decode_step.screen_off(native)
            speed_off, text_off = answer(engine, args.tokens, threads)
            on.append(speed_on)
            off.append(speed_off)
            same = same and text_on == text_off
        native.set_head_screen(*screen, limit)
        # the lm_head alone: random hidden states through the model's final norm
        full_ms, screen_ms = [], []
        for i in range(8):
            x = decoder.final_norm(torch.randn(1, 1, decoder.lm_head.shape[1]) * (1 + i)).to(torch.bfloat16)
            start = time.perf_counter()
            torch.nn.functional.linear(x, decoder.lm_head).float().argmax()
            full_ms.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            torch.ops.llmcheck_decode.screen_argmax(x, decoder.lm_head, *screen, limit)
            screen_ms.append((time.perf_counter() - start) * 1e3)
        steps = args.runs * (args.tokens - 1)
        rows.append((threads, statistics.median(off), statistics.median(on), same, decided, steps,
                     kept / max(decided, 1), statistics.median(full_ms), statistics.median(screen_ms)))
    print("\n| threads | decode tok/s, full lm_head | with the screen | ratio | same answers |"
          " tokens screened | candidates a token | lm_head alone ms, full | screen |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t, off_s, on_s, same, decided, steps, per, full, scr in rows:
        print(f"| {t} | {off_s:.1f} | {on_s:.1f} | {on_s / off_s:.2f}x | {'yes' if same else 'NO'} | "
              f"{decided} of {steps} | {per:.1f} | {full:.1f} | {scr:.1f} |")


if __name__ == "__main__":
    main()
