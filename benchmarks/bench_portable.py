"""Portable answers under stand-ins for other CPUs: the matrix of issue 22.

    python benchmarks/bench_portable.py                       # transformers and llamacpp, the full matrix
    python benchmarks/bench_portable.py --engines transformers --tokens 64 --quick
    python benchmarks/bench_portable.py --engines int4-a8 --quick   # the int4-a8 recipe's kernel too

One machine cannot be every CI runner, but it can be made to run the kernels another CPU
would: ``ATEN_CPU_CAPABILITY`` caps torch's own dispatch (an AVX2-only runner runs the
``avx2`` kernels), ``ONEDNN_MAX_CPU_ISA`` caps oneDNN, and the thread count changes how
work is split. Each configuration is a fresh process (these are read when torch is first
imported) that answers the riddle suite plus 20 more varied prompts (English, Chinese,
code, numbers) greedily and prints each answer's sha256. A table per engine and numerics
mode says, per configuration, how many answers differ from the first configuration.

Portable mode must show 0 everywhere. Native mode is the control: it must show
differences somewhere, which proves the stand-ins reach the kernels that make answers
differ (a cap that silently did nothing would make portable look good for free).
The int4-a8 rows (the transformers engine with ``--llm-quant=int4-a8``) add
``LLMCHECK_W4A8_BODY=avx2``: the AVX2 body of its own kernel, the one an AVX2-only runner runs.
The llamacpp rows use whatever library llama-cpp-python loads (``LLAMA_CPP_LIB_PATH``
picks another); its answers do not depend on torch's variables, so its matrix varies the
threads and repacked weight buffers are the engine's own choice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_engines import table  # noqa: E402

MORE_PROMPTS = [
    "Write three sentences about the city of Paris.",
    "Explain in two sentences why the sky is blue.",
    "List five prime numbers greater than 100.",
    "What is 17 times 23? Show your work.",
    "Convert 72 degrees Fahrenheit to Celsius.",
    "Write a Python function that reverses a linked list.",
    "Write a SQL query that counts orders per customer.",
    "What does the Unix command `ls -la` print?",
    "Give me a haiku about autumn rain.",
    "Summarize the plot of Romeo and Juliet in one sentence.",
    "用三句话介绍长城。",
    "请把“我今天很高兴”翻译成英文。",
    "一年有几个季节？分别是什么？",
    "写一首关于月亮的五言绝句。",
    "小明的妈妈有三个孩子，老大叫大毛，老二叫二毛，老三叫什么？",
    "12的平方根大约是多少？",
    "What is the capital of Australia? Answer in one word.",
    "Count from 1 to 20, separated by commas.",
    "If a train travels 60 km in 45 minutes, what is its speed in km/h?",
    "Name three programming languages and one use of each.",
]


def prompts() -> list[str]:
    import yaml

    suite = yaml.safe_load((ROOT / "examples" / "riddles" / "riddles.llm.yaml").read_text(encoding="utf-8"))
    return [q["prompt"] for q in suite["questions"]] + MORE_PROMPTS


def child(engine: str, numerics: str, threads: int, tokens: int, count: int) -> None:
    """One configuration, in a fresh process: answer and print the answers' digests."""
    from pytest_llmcheck.config import numerics as portable

    if numerics == portable.PORTABLE:
        portable.apply_portable_env()  # what the plugin does before anything imports torch
    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.config.settings import Settings
    from pytest_llmcheck.engines.base import GenerationConfig
    from pytest_llmcheck.engines.registry import EngineRegistry

    spec = "smollm2" if engine in ("transformers", "int4-a8") else f"smollm2@{engine}"
    quant = "int4-a8" if engine == "int4-a8" else "int4"
    settings = Settings(models=(spec,), numerics=numerics, threads=threads, threads_given=True, quant=quant)
    engines = EngineRegistry()
    loaded = engines.load(resolve(spec, engines=engines), settings)
    config = GenerationConfig(max_new_tokens=tokens, threads=threads)
    try:
        digests = [
            hashlib.sha256(loaded.generate(p, system=None, config=config).text.encode()).hexdigest()[:12]
            for p in prompts()[:count]
        ]
        numerics_seen = loaded.fingerprint().get("numerics", "?")
    finally:
        loaded.close()
    print(json.dumps({"digests": digests, "numerics": numerics_seen}))


def matrix(engine: str, quick: bool) -> list[tuple[dict[str, str], int]]:
    """(environment, threads) per configuration; the first is the reference."""
    threads = [1, 2] if quick else [1, 2, 3, 4]
    rows: list[tuple[dict[str, str], int]] = [({}, t) for t in threads]
    if engine not in ("transformers", "int4-a8"):
        return rows
    aten = ["avx2"] if quick else ["avx2", "avx512"]
    onednn = ["AVX2"] if quick else ["AVX2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16"]
    rows += [({"ATEN_CPU_CAPABILITY": a}, 1) for a in aten]
    rows += [({"ONEDNN_MAX_CPU_ISA": o}, 1) for o in onednn]
    rows += [({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, 2)]
    if engine == "int4-a8":
        runner = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "LLMCHECK_W4A8_BODY": "avx2"}
        rows += [({"LLMCHECK_W4A8_BODY": "avx2"}, 1), (runner, 2)]
    return rows


def run_matrix(engine: str, numerics: str, tokens: int, count: int, quick: bool) -> list[list[str]]:
    rows: list[list[str]] = []
    reference: list[str] | None = None
    for extra, threads in matrix(engine, quick):
        caps = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "LLMCHECK_W4A8_BODY")
        env = {k: v for k, v in os.environ.items() if k not in caps}
        env.pop("LLMCHECK_ENV_BEFORE_PORTABLE", None)
        env.update(extra)
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, __file__, "--child", engine, numerics, str(threads), str(tokens), str(count)],
            env=env, capture_output=True, text=True, check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"{engine} {numerics} {extra} t={threads} failed:\n{out.stderr[-3000:]}")
        data = json.loads(out.stdout.strip().splitlines()[-1])
        digests: list[str] = data["digests"]
        if reference is None:
            reference = digests
        differ = sum(a != b for a, b in zip(reference, digests, strict=True))
        label = " ".join(f"{k}={v}" for k, v in extra.items()) or "(as the machine is)"
        rows.append([engine, numerics, str(data["numerics"]), label, str(threads), f"{differ}/{len(digests)}",
                     f"{time.perf_counter() - start:.0f}"])
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        engine, numerics, threads, tokens, count = sys.argv[2:7]
        child(engine, numerics, int(threads), int(tokens), int(count))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="transformers,llamacpp")
    parser.add_argument("--numerics", default="portable,native")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=25, help="how many of the 25 prompts (5 riddles + 20)")
    parser.add_argument("--quick", action="store_true", help="fewer configurations")
    args = parser.parse_args()
    import platform

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {args.prompts} prompts, "
          f"{args.tokens} new tokens, greedy; each row a fresh process; "
          "'differ': answers unlike the first row's\n")
    rows = [["engine", "asked", "fingerprint numerics", "stand-in", "threads", "differ", "s"]]
    for engine in args.engines.split(","):
        for numerics in args.numerics.split(","):
            rows += run_matrix(engine, numerics, args.tokens, args.prompts, args.quick)
    print(table(rows))


if __name__ == "__main__":
    main()
