"""Speed of the embedded SmolLM2 under each quantization, and the cache's effect on load time.

    python benchmarks/bench_engines.py            # full run, ~4 minutes on 2 cores
    python benchmarks/bench_engines.py --quick    # fewer tokens, one repetition

Table 1: tokens per second for fp32, bf16 and torchao INT4, at 1 and 2 threads, with
each model's load and quantize times (loaded straight from the GGUF, no cache); then
ITREX RTN INT4 on the same weights (the GGUF converted to fp32 safetensors, in a
temporary cache) in the itrex worker, when an ITREX environment is there (``llmcheck env
create itrex``). ITREX quantizes while it loads, so its "load s" includes quantizing.
Table 2: a model's first session (download from a stand-in hub on 127.0.0.1, convert,
quantize, write the cache) against the second session (INT4 weights from the cache),
each in a fresh process. "load" is the model's load alone, after torch and transformers
are imported (which every session pays, cached or not); "process" includes them.
"target ≤ 0.1" is PASS when the second load takes at most a tenth of the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "Write three sentences about the city of Paris."


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def speed_table(tokens: int, repeats: int) -> str:
    import torch

    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.engines.base import GenerationConfig
    from pytest_llmcheck.engines.transformers.engine import TransformersEngine
    from pytest_llmcheck.engines.transformers.quantize import get_quantizer

    ref = resolve("smollm2")
    rows = [
        ["quantization", "threads", "tok/s", "ttft s", "load s", "quantize s", "linear INT4", "weights MiB"]
    ]
    for quant in ("none", "bf16", "int4"):
        engine = TransformersEngine.load(ref, Path(ref.location), get_quantizer(quant), threads=1)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            config = GenerationConfig(max_new_tokens=tokens, threads=threads)
            engine.generate(PROMPT, system=None, config=GenerationConfig(max_new_tokens=8, threads=threads))
            answers = [engine.generate(PROMPT, system=None, config=config) for _ in range(repeats)]
            rows.append(
                [
                    {"none": "fp32", "bf16": "bf16", "int4": "int4 (torchao)"}[quant],
                    str(threads),
                    f"{statistics.median(a.tokens_per_second for a in answers):.1f}",
                    f"{statistics.median(a.ttft for a in answers):.3f}",
                    f"{engine.facts.seconds:.2f}",
                    f"{engine.quant.seconds:.2f}",
                    f"{engine.quant.layers_quantized}/{engine.quant.layers_total}",
                    f"{engine.quant.bytes_after / 2**20:.0f}",
                ]
            )
        engine.close()
    rows += itrex_rows(tokens, repeats)
    return table(rows)


def itrex_rows(tokens: int, repeats: int) -> list[list[str]]:
    """ITREX RTN INT4 in its worker, on the same model and prompt, when its environment exists."""
    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.config.settings import Settings
    from pytest_llmcheck.engines.base import GenerationConfig
    from pytest_llmcheck.engines.itrex.engine import load_itrex
    from pytest_llmcheck.engines.itrex.env import ItrexEnvError, locate
    from pytest_llmcheck.storage.cache import default_cache_dir

    try:
        python = locate(default_cache_dir())
    except ItrexEnvError as exc:
        print(f"(no ITREX row: {exc})")
        return []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(cache_dir=Path(tmp), threads=1, engine_options={"itrex-python": str(python.path)})
        engine = load_itrex(resolve("smollm2@itrex"), settings)
        try:
            total, done = engine.loaded["layers_total"], engine.loaded["layers_converted"]
            for threads in (1, 2):
                config = GenerationConfig(max_new_tokens=tokens, threads=threads)
                warm = GenerationConfig(max_new_tokens=8, threads=threads)
                engine.generate(PROMPT, system=None, config=warm)
                answers = [engine.generate(PROMPT, system=None, config=config) for _ in range(repeats)]
                rows.append(
                    [
                        "int4 (itrex rtn)",
                        str(threads),
                        f"{statistics.median(a.tokens_per_second for a in answers):.1f}",
                        f"{statistics.median(a.ttft for a in answers):.3f}",
                        f"{engine.facts.seconds:.2f}",
                        "in load",
                        f"{done}/{total}",
                        f"{engine.loaded['weight_bytes'] / 2**20:.0f}",
                    ]
                )
        finally:
            engine.close()
    return rows


LOAD_ONE = """
import json, sys, time
process_start = time.perf_counter()
import torch, transformers, torchao.quantization  # imports cost the same in every session
from pathlib import Path
from pytest_llmcheck.engines.base import GenerationConfig
from pytest_llmcheck.engines.transformers.loader import load_transformers
from pytest_llmcheck.config.registry import resolve
from pytest_llmcheck.config.settings import Settings
settings = Settings(cache_dir=Path(sys.argv[2]), quant="int4", threads=2, numerics="native")
start = time.perf_counter()
engine = load_transformers(resolve(sys.argv[1]), settings)
load = time.perf_counter() - start
answer = engine.generate(
    "What is the capital of France?", system=None, config=GenerationConfig(max_new_tokens=16)
)
print(json.dumps({"load": load, "process": time.perf_counter() - process_start,
                  "from_cache": engine.facts.from_cache, "answer": answer.text}))
"""


def _session(model: str, cache: Path, env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", LOAD_ONE, model, str(cache)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# The target: a second session loads the cached INT4 weights in at most a tenth
# of the first session's load time.
LOAD_RATIO_TARGET = 0.1


def cache_table() -> str:
    import os

    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.engines.transformers.engine import TransformersEngine
    from pytest_llmcheck.engines.transformers.quantize import get_quantizer
    from pytest_llmcheck.engines.transformers.weights import forget_gguf
    from tests.hubserver import HubServer

    header = ["model", "1st load s", "2nd load s", "ratio", f"target ≤ {LOAD_RATIO_TARGET}"]
    header += ["1st process s", "2nd process s"]
    rows = [[*header, "2nd cached", "same answer"]]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # A transformers folder of SmolLM2 for the stand-in hub to serve.
        ref = resolve("smollm2")
        engine = TransformersEngine.load(ref, Path(ref.location), get_quantizer("bf16"), threads=2)
        folder = work / "SmolLM2-135M-Instruct"
        forget_gguf(engine.model)
        engine.model.save_pretrained(folder)
        engine.tokenizer.save_pretrained(folder)
        engine.close()
        with HubServer() as hub:
            hub.add_repo("HuggingFaceTB/SmolLM2-135M-Instruct", folder)
            env = {**os.environ, "LLMCHECK_MODELSCOPE_ENDPOINT": hub.url, "LLMCHECK_HF_ENDPOINT": hub.url}
            for model in (
                "smollm2",
                "modelscope:HuggingFaceTB/SmolLM2-135M-Instruct",
                "hf:HuggingFaceTB/SmolLM2-135M-Instruct",
            ):
                cache = work / f"cache-{len(rows)}"
                first = _session(model, cache, env)
                second = _session(model, cache, env)
                ratio = float(second["load"]) / float(first["load"])  # type: ignore[arg-type]
                rows.append(
                    [
                        model,
                        f"{first['load']:.2f}",
                        f"{second['load']:.2f}",
                        f"{ratio:.3f}",
                        "PASS" if ratio <= LOAD_RATIO_TARGET else "FAIL",
                        f"{first['process']:.2f}",
                        f"{second['process']:.2f}",
                        str(second["from_cache"]),
                        str(first["answer"] == second["answer"]),
                    ]
                )
    return table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="32 tokens, one repetition")
    args = parser.parse_args()
    tokens, repeats = (32, 1) if args.quick else (64, 3)
    start = time.perf_counter()
    print(f"SmolLM2-135M-Instruct, greedy, {tokens} new tokens, median of {repeats}\n")
    print(speed_table(tokens, repeats))
    print("\nLoad time per session, INT4 (1st: download + convert + quantize; 2nd: from the cache)\n")
    print(cache_table())
    print(f"\n(benchmark took {time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()
