"""Decode speed of the torch INT4 path against llama.cpp on the same GGUF, before and after
the lean decode loop.

    python benchmarks/bench_decode.py            # 64 new tokens, median of 3
    python benchmarks/bench_decode.py --quick    # 32 new tokens, one repetition

One run, the embedded SmolLM2-135M-Instruct Q4_1 GGUF, the same prompt, greedy, at 1 and
2 threads. Each row runs in a fresh process (a "session"), one after the other:

- ``torch int4, generate()``: the default engine as it was, ``--llm-decode=generate``;
- ``torch int4, fast loop, Python step``: the lean loop with its per-token step in Python
  (``--llm-decode=python``, the default before the C++ step);
- ``torch int4 portable``: the default numerics (``--llm-numerics=portable``: torch held to
  AVX2, oneDNN off, ``lm_head`` as ``linear``), the same fast loop, two sessions;
- ``torch int4, fast loop``: ``--llm-numerics=native`` (``--llm-decode=fast``: the same step
  in C++, ``decode_step.cpp``), run in two sessions: "same answer" says whether both gave
  the same text byte for byte, and the same text as ``generate()`` and the Python step;
- ``torch int4-a8, fast loop``: ``--llm-quant=int4-a8``, the same INT4 weights times int8
  activations (llama.cpp's way; other answers, its own snapshots), two sessions;
- ``llama.cpp (engine)``: llama-cpp-python as the ``llamacpp`` engine runs it (on an AMX
  build, without llama.cpp's repacked weight buffers, which crash on batched prompts);
- ``llama.cpp (repacked)``: the same file with llama.cpp's repacked/AMX weights, the
  fastest this llama.cpp build decodes (the prompt fed one token at a time so that it
  does not crash); on a build without AMX it is what the engine runs.

``decode tok/s`` counts the tokens after the first over the time after the first (what
``llama-bench``'s tg test measures); ``vs llama.cpp`` divides by the fastest llama.cpp row
of the same thread count (the target is >= 0.5); ``RSS MiB`` is the process's resident
memory after the answers. Machines are noisy: compare rows of one run, not runs.

A second table splits the fast loop's time per token (one fresh process): the whole
step in C++, then the Python step whole, with its INT4 kernel calls replaced by ready
zeros, and with the ``lm_head`` product replaced too (run as ``linear`` or ``mv``, whichever the loop
timed faster at build); the differences are what those two
cost, and the first two columns' difference is what the C++ step saves. Beside it,
``lm_head`` alone as ``linear`` (what transformers calls) and as ``mv``.
For int4-a8 every product (lm_head included) is one of its kernel's calls: one column.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_engines import table  # noqa: E402

if TYPE_CHECKING:
    from pytest_llmcheck.storage.cache import Cache

PROMPT = "Write three sentences about the city of Paris."
TARGET = 0.5


def torch_worker(
    decode: str, threads: int, tokens: int, repeats: int, quant: str = "int4", numerics: str = "native"
) -> dict[str, object]:
    if numerics == "portable":  # as the plugin does, before anything imports torch
        from pytest_llmcheck.config.numerics import apply_portable_env

        apply_portable_env()
    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.engines.base import GenerationConfig
    from pytest_llmcheck.engines.transformers.engine import TransformersEngine
    from pytest_llmcheck.engines.transformers.quantize import get_quantizer

    ref = resolve("smollm2")
    engine = TransformersEngine.load(
        ref, Path(ref.location), get_quantizer(quant), threads=threads, decode=decode, cache=machine_cache(),
        numerics=numerics,
    )
    config = GenerationConfig(max_new_tokens=tokens, threads=threads)
    engine.generate(PROMPT, system=None, config=GenerationConfig(max_new_tokens=8, threads=threads))
    rates, text = [], ""
    for _ in range(repeats):
        answer = engine.generate(PROMPT, system=None, config=config)
        rates.append((answer.new_tokens - 1) / (answer.seconds - answer.ttft))
        text = answer.text
    return {"rate": statistics.median(rates), "text": text, "decode": engine.facts.details["decode"],
            "rss": rss_mib()}


def machine_cache() -> Cache:
    """The per-machine cache: INT4 weights and compiled libraries built once, not per row."""
    from pytest_llmcheck.storage.cache import Cache, default_cache_dir

    return Cache(default_cache_dir())


def rss_mib() -> float:
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def split_worker(threads: int, tokens: int, repeats: int, quant: str = "int4") -> dict[str, object]:
    """Milliseconds per token of the fast loop, whole and without its big products (for
    int4-a8 every product, lm_head included, is one of the kernel's)."""
    import torch
    import torch.nn.functional as F

    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.engines.transformers import fastpath
    from pytest_llmcheck.engines.transformers.engine import TransformersEngine
    from pytest_llmcheck.engines.transformers.quantize import get_quantizer

    ref = resolve("smollm2")
    engine = TransformersEngine.load(
        ref, Path(ref.location), get_quantizer(quant), threads=threads, cache=machine_cache()
    )
    decoder = engine.fast
    assert decoder is not None, engine.facts.details["decode"]
    inputs = engine._encode(PROMPT, None)
    torch.set_num_threads(threads)

    def ms_per_token() -> float:
        runs = []
        with torch.inference_mode():
            decoder.greedy(inputs, 8, set())  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                decoder.greedy(inputs, 1, set())
                prefill = time.perf_counter() - start
                start = time.perf_counter()
                decoder.greedy(inputs, tokens, set())
                runs.append((time.perf_counter() - start - prefill) / (tokens - 1) * 1000)
        return statistics.median(runs)

    def product_ms(fn: object, x: object) -> float:
        with torch.inference_mode():
            for _ in range(5):
                fn(x)  # type: ignore[operator]
            start = time.perf_counter()
            for _ in range(50):
                fn(x)  # type: ignore[operator]
        return (time.perf_counter() - start) / 50 * 1000

    zeros: dict[int, torch.Tensor] = {}

    def no_int4(self: fastpath.Int4Call | fastpath.W4A8Call, x: torch.Tensor) -> torch.Tensor:
        n = sum(self.sizes)
        return zeros.setdefault(n, torch.zeros(1, 1, n, dtype=x.dtype))

    assert decoder.native is not None, engine.facts.details["decode"]
    cpp = ms_per_token()  # the C++ step; the parts below replace the Python step's calls
    decoder.native = None
    whole = ms_per_token()
    if quant == "int4-a8":
        real = fastpath.W4A8Call.raw
        try:
            fastpath.W4A8Call.raw = no_int4  # type: ignore[method-assign,assignment]
            rest = ms_per_token()
        finally:
            fastpath.W4A8Call.raw = real  # type: ignore[method-assign]
        return {"cpp": cpp, "whole": whole, "int4": whole - rest, "rest": rest}
    head = decoder.lm_head
    hidden = torch.randn(head.shape[1], dtype=head.dtype)
    linear = product_ms(lambda h: F.linear(h[None], head), hidden)
    mv = product_ms(lambda h: torch.mv(head, h), hidden)
    real_raw, real_head = fastpath.Int4Call.raw, fastpath.FastDecoder._head
    try:
        fastpath.Int4Call.raw = no_int4  # type: ignore[method-assign]
        without_int4 = ms_per_token()
        logits = torch.zeros(head.shape[0], dtype=head.dtype)
        fastpath.FastDecoder._head = lambda self, h: logits  # type: ignore[method-assign,assignment]
        rest = ms_per_token()
    finally:
        fastpath.Int4Call.raw, fastpath.FastDecoder._head = real_raw, real_head  # type: ignore[method-assign]
    return {"cpp": cpp, "whole": whole, "int4": whole - without_int4, "lm_head": without_int4 - rest,
            "rest": rest, "linear": linear, "mv": mv, "chosen": "mv" if decoder.head_mv else "linear"}


def llamacpp_engine_worker(
    threads: int, tokens: int, repeats: int, numerics: str = "portable"
) -> dict[str, object]:
    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.config.settings import Settings
    from pytest_llmcheck.engines.base import GenerationConfig
    from pytest_llmcheck.engines.llamacpp import load_llamacpp

    settings = Settings(threads=threads, no_cache=True, numerics=numerics)
    engine = load_llamacpp(resolve("smollm2@llamacpp"), settings)
    config = GenerationConfig(max_new_tokens=tokens, threads=threads)
    engine.generate(PROMPT, system=None, config=GenerationConfig(max_new_tokens=8, threads=threads))
    rates = []
    for _ in range(repeats):
        answer = engine.generate(PROMPT, system=None, config=config)
        rates.append((answer.new_tokens - 1) / (answer.seconds - answer.ttft))
    library = "native" if engine.fingerprint().get("numerics") == "native" else "x86-64-v3"
    return {"rate": statistics.median(rates), "extra_buffers": engine.extra_buffers, "library": library}


def llamacpp_repacked_worker(threads: int, tokens: int, repeats: int) -> dict[str, object]:
    """Decode with llama.cpp's default (repacked) weights, greedy, the prompt token by token."""
    import llama_cpp

    from pytest_llmcheck.config.registry import smollm2_path

    llm = llama_cpp.Llama(
        str(smollm2_path()), n_ctx=2048, n_batch=512, n_ubatch=512,
        n_threads=threads, n_threads_batch=threads, seed=0, verbose=False,
    )
    prompt = llm.tokenize(
        f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n".encode(), special=True
    )
    rates = []
    for _ in range(repeats + 1):  # the first is the warm-up
        llm.reset()  # type: ignore[no-untyped-call]
        for token in prompt:
            llm.eval([token])
        token = llm.sample(temp=0.0, repeat_penalty=1.0)
        start = time.perf_counter()
        for _ in range(tokens - 1):
            llm.eval([token])
            token = llm.sample(temp=0.0, repeat_penalty=1.0)
        rates.append((tokens - 1) / (time.perf_counter() - start))
    return {"rate": statistics.median(rates[1:])}


def run(kind: str, threads: int, tokens: int, repeats: int) -> dict[str, object] | None:
    """One row in a fresh process; None when it failed (its stderr's last line is printed)."""
    command = [sys.executable, __file__, "--worker", kind, str(threads), str(tokens), str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        print(f"  {kind} at {threads} threads failed: {tail}", file=sys.stderr)
        return None
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def cost_rows(tokens: int, repeats: int) -> list[list[str]]:
    """Portable against native, torch and llama.cpp, each row a fresh process, one run side by side."""
    rows = [["engine", "threads", "decode tok/s", "vs native llama.cpp", "decode path / library"]]
    kinds = [("torch int4 portable (default)", "torch-portable"), ("torch int4 native", "torch-fast"),
             ("llama.cpp engine, portable (x86-64-v3 build)", "llamacpp-engine"),
             ("llama.cpp engine, native build", "llamacpp-native")]
    for threads in (1, 2):
        results = {kind: run(kind, threads, tokens, repeats) for _, kind in kinds}
        native = results["llamacpp-native"]
        best = float(native["rate"]) if native else None  # type: ignore[arg-type]
        for label, kind in kinds:
            result = results[kind]
            if result is None:
                rows.append([label, str(threads), "failed", "-", ""])
                continue
            rate = float(result["rate"])  # type: ignore[arg-type]
            where = str(result.get("decode") or result.get("library") or "").split(" (")[0]
            rows.append([label, str(threads), f"{rate:.1f}", f"{rate / best:.2f}" if best else "-", where])
    return rows


def worker(kind: str, threads: int, tokens: int, repeats: int) -> None:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # libraries' prints stay out of the JSON line
        if kind.startswith("split"):
            result = split_worker(threads, tokens, repeats, "int4-a8" if kind == "split-a8" else "int4")
        elif kind == "torch-portable":
            result = torch_worker("fast", threads, tokens, repeats, numerics="portable")
        elif kind == "torch-a8":
            result = torch_worker("fast", threads, tokens, repeats, quant="int4-a8")
        elif kind.startswith("torch-"):
            result = torch_worker(kind.removeprefix("torch-"), threads, tokens, repeats)
        elif kind == "llamacpp-engine":
            result = llamacpp_engine_worker(threads, tokens, repeats)
        elif kind == "llamacpp-native":  # install.sh --native-llama's library, when built
            result = llamacpp_engine_worker(threads, tokens, repeats, numerics="native")
        else:
            result = llamacpp_repacked_worker(threads, tokens, repeats)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="32 tokens, one repetition")
    parser.add_argument("--cost", action="store_true",
                        help="only the cost of portable numerics: torch int4 portable and native, llama.cpp "
                        "portable (v3 build) and native (install.sh --native-llama)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, threads, tokens, repeats = args.worker
        worker(kind, int(threads), int(tokens), int(repeats))
        return
    tokens, repeats = (32, 1) if args.quick else (64, 3)
    from bench_xdist import cpu_name

    from pytest_llmcheck.engines.transformers.cpu import cpu_capability

    print(f"{cpu_name()} ({cpu_capability()}), {os.cpu_count()} CPUs")
    print(f"SmolLM2-135M-Instruct Q4_1 GGUF, greedy, {tokens} new tokens, median of {repeats}\n")
    rows = [["engine", "threads", "decode tok/s", "vs llama.cpp", "same answer", "decode path", "RSS MiB"]]
    if args.cost:
        print(table(cost_rows(tokens, repeats)))
        print("\nvs llama.cpp: against the native llama.cpp engine row of the same thread count "
              "(floor: portable torch int4 >= 0.5)")
        return
    for threads in (1, 2):
        before = run("torch-generate", threads, tokens, repeats)
        python = run("torch-python", threads, tokens, repeats)
        fast = [run("torch-fast", threads, tokens, repeats) for _ in range(2)]
        portable = [run("torch-portable", threads, tokens, repeats) for _ in range(2)]
        a8 = [run("torch-a8", threads, tokens, repeats) for _ in range(2)]
        engine = run("llamacpp-engine", threads, tokens, repeats)
        repacked = run("llamacpp-repacked", threads, tokens, repeats)
        best = max((float(r["rate"]) for r in (engine, repacked) if r), default=None)  # type: ignore[arg-type]

        def cells(
            name: str, result: dict[str, object] | None, same: str = "", path: str = "",
            threads: int = threads, best: float | None = best,
        ) -> list[str]:
            if result is None:
                return [name, str(threads), "failed", "-", same, path, "-"]
            rate = float(result["rate"])  # type: ignore[arg-type]
            ratio = f"{rate / best:.2f}" if best else "-"
            rss = f"{float(result['rss']):.0f}" if "rss" in result else "-"  # type: ignore[arg-type]
            return [name, str(threads), f"{rate:.1f}", ratio, same, path, rss]

        texts = {str(r["text"]) for r in fast if r}
        others = {str(r["text"]) for r in (before, python) if r}
        same = "yes" if len(texts) == 1 and before and python and others == texts else "NO"
        rows.append(cells("torch int4, generate()", before, path="generate()"))
        rows.append(cells("torch int4, fast loop, Python step", python, same, "fast, Python step"))
        for n, result in enumerate(fast, 1):
            path = str(result["decode"]).split(" (")[0] if result else ""
            rows.append(cells(f"torch int4, fast loop (session {n})", result, same, path))
        texts = {str(r["text"]) for r in portable if r}
        same = "yes" if len(texts) == 1 and all(portable) else "NO"
        for n, result in enumerate(portable, 1):
            path = str(result["decode"]).split(" (")[0] if result else ""
            rows.append(cells(f"torch int4 portable (default), fast loop (session {n})", result, same, path))
        texts = {str(r["text"]) for r in a8 if r}
        same = "yes" if len(texts) == 1 and len(a8) == 2 and all(a8) else "NO"
        for n, result in enumerate(a8, 1):
            path = str(result["decode"]).split(" (")[0] if result else ""
            rows.append(cells(f"torch int4-a8, fast loop (session {n})", result, same, path))
        rows.append(cells("llama.cpp (engine)", engine))
        rows.append(cells("llama.cpp (repacked)", repacked))
    print(table(rows))
    print(f"\ntarget: fast loop >= {TARGET} x the fastest llama.cpp row, same answer in both sessions")
    print("same answer: int4 rows against each other and generate(); int4-a8 rows against each other\n")
    parts = [["recipe", "threads", "ms/token C++ step", "ms/token Python step", "INT4 kernel",
              "lm_head (as the loop ran it)", "the rest", "lm_head as linear", "as mv"]]
    for threads in (1, 2):
        split = run("split", threads, tokens, repeats)
        if split is not None:
            chosen = str(split.pop("chosen"))
            ms = {k: float(v) for k, v in split.items()}  # type: ignore[arg-type]
            columns = [f"{ms[k]:.1f}" for k in ("cpp", "whole", "int4", "lm_head", "rest", "linear", "mv")]
            columns[3] = f"{columns[3]} ({chosen})"
            parts.append(["int4", str(threads), *columns])
        split = run("split-a8", threads, tokens, repeats)
        if split is not None:
            ms = {k: float(v) for k, v in split.items()}  # type: ignore[arg-type]
            parts.append(["int4-a8", str(threads), f"{ms['cpp']:.1f}", f"{ms['whole']:.1f}",
                          f"{ms['int4']:.1f}", "(in kernel)", f"{ms['rest']:.1f}", "-", "-"])
    print("time per token of the fast loop, ms (a product's cost: the step without it, subtracted)")
    print(table(parts))


if __name__ == "__main__":
    main()
