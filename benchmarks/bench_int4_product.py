"""Why the decode step has its own INT4 product (``int4_mm`` in decode_step.cpp).

    python benchmarks/bench_int4_product.py             # median of 3, 1 and 2 threads
    python benchmarks/bench_int4_product.py --runs 5 --threads 1

In portable numerics torch runs its AVX2 INT4 kernel (ATEN_CPU_CAPABILITY=avx2), and at one
token per step that product reads every weight of the model once. ``int4_mm`` computes the
same roundings in the same order for every output (so the same bits; checked here for every
shape, and by tests/int4_product_checks.py), faster. One table: the INT4 products of one
transformer layer at Qwen2-1.5B's and Qwen2-7B's shapes (q/k/v fused, o, gate/up fused, down;
group 32, random weights), for one token and for a ``--prompt``-token prompt, per thread
count: torch's AVX2 kernel, ``int4_mm``, and, for scale, torch's AVX-512 kernel (another
process: a different layout and other numbers) where the CPU has one. Each figure is the
median over ``--runs`` runs of a layer's time (the mean of 20 layers for one token, one layer
for a prompt); ratios against torch's AVX2 kernel in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# one layer's INT4 products: (outputs, inputs)
SHAPES = {
    "1.5b": [(2048, 1536), (1536, 1536), (17920, 1536), (1536, 8960)],
    "7b": [(4608, 3584), (3584, 3584), (37888, 3584), (3584, 18944)],
}
LAYERS = {"1.5b": 28, "7b": 28}
GROUP = 32


def layer_weights(size: str) -> tuple[list[tuple[Any, Any]], list[Any]]:
    import torch

    gen = torch.Generator().manual_seed(0)
    weights, inputs = [], []
    for n, k in SHAPES[size]:
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        scale_zero = (torch.randn(k // GROUP, n, 2, generator=gen) * 0.02).to(torch.bfloat16)
        weights.append((packed, scale_zero))
        inputs.append(torch.randn(1, k, generator=gen).to(torch.bfloat16))
    return weights, inputs


def layer_ms(
    product: Any, weights: list[tuple[Any, Any]], inputs: list[Any], runs: int, repeat: int
) -> float:
    """Median over runs of the mean time of ``repeat`` layers, in ms."""
    for (p, s), x in zip(weights, inputs, strict=True):
        product(x, p, s)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(repeat):
            for (p, s), x in zip(weights, inputs, strict=True):
                product(x, p, s)
        times.append((time.perf_counter() - start) / repeat * 1e3)
    return statistics.median(times)


def worker(spec: dict[str, Any]) -> None:
    """Runs in a child process whose ATEN_CPU_CAPABILITY the parent set; prints JSON."""
    import torch

    out: dict[str, Any] = {"level": str(torch.backends.cpu.get_cpu_capability())}
    torch.set_num_threads(spec["threads"])
    weights, inputs = layer_weights(spec["size"])
    rows, repeat = spec["rows"], (20 if spec["rows"] == 1 else 1)
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(rows, x.shape[1], generator=gen).to(torch.bfloat16) for x in inputs]

    def aten(x: Any, p: Any, s: Any) -> Any:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, GROUP, s)

    out["torch"] = layer_ms(aten, weights, inputs, spec["runs"], repeat)
    if spec["own"]:
        from pytest_llmcheck.engines.transformers import decode_step
        from pytest_llmcheck.storage.cache import Cache, default_cache_dir

        decode_step.load_library(Cache(default_cache_dir()))
        own = torch.ops.llmcheck_decode.int4_mm
        out["same"] = all(
            torch.equal(aten(x, p, s).view(torch.int16), own(x, p, GROUP, s).view(torch.int16))
            for (p, s), x in zip(weights, inputs, strict=True)
        )
        out["own"] = layer_ms(lambda x, p, s: own(x, p, GROUP, s), weights, inputs, spec["runs"], repeat)
    print(json.dumps(out))


def child(spec: dict[str, Any], capability: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                          capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--sizes", default="1.5b,7b")
    parser.add_argument("--prompt", type=int, default=512, help="rows of the prompt table (0: none)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    from pytest_llmcheck.compat.torch import cpu_supports

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{datetime.now():%Y-%m-%d %H:%M}; median of {args.runs} runs; ms per layer, one token (rows 1) "
          f"or a prompt")
    header = ["shape", "rows", "threads", "torch AVX2", "int4_mm", "torch AVX-512",
              "int4_mm vs torch AVX2", "same bits", "x28 layers, int4_mm"]
    rows = [header]
    for m in [1] + ([args.prompt] if args.prompt > 1 else []):
        for size in args.sizes.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                spec = {"size": size, "threads": threads, "runs": args.runs, "own": True, "rows": m}
                held = child(spec, "avx2")
                wide = child({**spec, "own": False}, None) if cpu_supports("AVX2") else None
                native = wide["torch"] if wide and wide["level"] != "AVX2" else None
                rows.append([
                    f"Qwen2-{size.upper()} layer", str(m), str(threads), f"{held['torch']:.2f}",
                    f"{held['own']:.2f}",
                    f"{native:.2f}" if native else "-", f"{held['torch'] / held['own']:.2f}x",
                    "yes" if held["same"] else "NO", f"{held['own'] * LAYERS[size] / 1e3:.2f} s",
                ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
