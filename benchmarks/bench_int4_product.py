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
median over ``--runs`` runs of a layer's time; one token goes through ``--layers`` distinct
copies of the layer in turn, 20 layers in all, so that the weights come from memory as in
decoding and not from a cache a repeated layer would sit in; a prompt through one layer.
Ratios against torch's AVX2 kernel in the same process. The last two columns: the least time
the fp32 arithmetic ``int4_mm`` repeats can take at this core's measured FMA rate
(``fma_peak.cpp``: per weight two FMA lanes for one token, a quarter of an 8-lane FMA; one lane
per weight and row for a prompt), and the share of it ``int4_mm`` reaches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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


def layer_weights(size: str, copies: int) -> tuple[list[list[tuple[Any, Any]]], list[Any]]:
    """``copies`` distinct copies of one layer's INT4 weights (the values do not matter to speed)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    layer, inputs = [], []
    for n, k in SHAPES[size]:
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        scale_zero = (torch.randn(k // GROUP, n, 2, generator=gen) * 0.02).to(torch.bfloat16)
        layer.append((packed, scale_zero))
        inputs.append(torch.randn(1, k, generator=gen).to(torch.bfloat16))
    layers = [layer] + [[(p.clone(), s.clone()) for p, s in layer] for _ in range(copies - 1)]
    return layers, inputs


def layer_ms(
    product: Any, layers: list[list[tuple[Any, Any]]], inputs: list[Any], runs: int, repeat: int
) -> float:
    """Median over runs of the mean time of ``repeat`` layers (the copies in turn), in ms."""
    for (p, s), x in zip(layers[0], inputs, strict=True):
        product(x, p, s)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for i in range(repeat):
            for (p, s), x in zip(layers[i % len(layers)], inputs, strict=True):
                product(x, p, s)
        times.append((time.perf_counter() - start) / repeat * 1e3)
    return statistics.median(times)


def worker(spec: dict[str, Any]) -> None:
    """Runs in a child process whose ATEN_CPU_CAPABILITY the parent set; prints JSON."""
    import torch

    out: dict[str, Any] = {"level": str(torch.backends.cpu.get_cpu_capability())}
    torch.set_num_threads(spec["threads"])
    rows, repeat = spec["rows"], (20 if spec["rows"] == 1 else 1)
    weights, inputs = layer_weights(spec["size"], spec["layers"] if rows == 1 else 1)
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
            for (p, s), x in zip(weights[0], inputs, strict=True)
        )
        out["own"] = layer_ms(lambda x, p, s: own(x, p, GROUP, s), weights, inputs, spec["runs"], repeat)
    print(json.dumps(out))


def fma_peak() -> tuple[float, float] | None:
    """This core's 256-bit FMAs a second: twelve independent sums, and one dependent sum (its
    4-cycle latency gives the clock); ``fma_peak.cpp``, built here. None without a compiler."""
    import tempfile

    import torch

    from pytest_llmcheck.engines.transformers import kernels

    if kernels.compiler_missing() is not None:
        return None
    out = Path(tempfile.mkdtemp(prefix="fma-peak-")) / "fma_peak.so"
    problem = kernels.compile_library(Path(__file__).with_name("fma_peak.cpp"), out,
                                      ("-O2", "-shared", "-fPIC", "-std=c++17"))
    if problem is not None:
        print(f"(no FMA floor: {problem})")
        return None
    torch.ops.load_library(str(out))
    shutil.rmtree(out.parent, ignore_errors=True)
    independent, dependent = torch.ops.llmcheck_bench.fma_peak(200_000_000, 3)
    return float(independent), float(dependent)


def floor_ms(size: str, rows: int, threads: int, peak: float) -> float:
    """The least time the arithmetic int4_mm must repeat can take for a layer at ``peak``
    8-lane FMAs a second a core: per weight and row one FMA lane on the sum, and for one row
    a second lane for the weight (a prompt dequantizes each weight once per 96 rows: left out)."""
    weights = sum(n * k for n, k in SHAPES[size])
    per_weight = 2 / 8 if rows == 1 else rows / 8
    return weights * per_weight / (peak * threads) * 1e3


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
    parser.add_argument("--layers", type=int, default=8,
                        help="distinct copies of a layer one token goes through")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.layers < 1:
        parser.error(f"--layers {args.layers}: must be 1 or more")
    from pytest_llmcheck.compat.torch import cpu_supports

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{datetime.now():%Y-%m-%d %H:%M}; median of {args.runs} runs; ms per layer, one token (rows 1) "
          f"or a prompt")
    peak = fma_peak() if cpu_supports("AVX2") else None
    if peak:
        print(f"one core: {peak[0] / 1e9:.2f} G 256-bit FMAs a second, independent sums; one dependent sum "
              f"{peak[1] / 1e9:.2f} G, i.e. {peak[1] * 4 / 1e9:.2f} GHz at 4 cycles a step, "
              f"{peak[0] / (peak[1] * 4):.2f} FMAs a cycle")
    header = ["shape", "rows", "threads", "torch AVX2", "int4_mm", "torch AVX-512",
              "int4_mm vs torch AVX2", "same bits", "x28 layers, int4_mm", "FMA floor", "int4_mm at"]
    rows = [header]
    for m in [1] + ([args.prompt] if args.prompt > 1 else []):
        for size in args.sizes.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                spec = {"size": size, "threads": threads, "runs": args.runs, "own": True, "rows": m,
                        "layers": args.layers}
                held = child(spec, "avx2")
                wide = child({**spec, "own": False}, None) if cpu_supports("AVX2") else None
                native = wide["torch"] if wide and wide["level"] != "AVX2" else None
                rows.append([
                    f"Qwen2-{size.upper()} layer", str(m), str(threads), f"{held['torch']:.2f}",
                    f"{held['own']:.2f}",
                    f"{native:.2f}" if native else "-", f"{held['torch'] / held['own']:.2f}x",
                    "yes" if held["same"] else "NO", f"{held['own'] * LAYERS[size] / 1e3:.2f} s",
                    *((f"{floor:.2f}", f"{floor / held['own']:.0%} of it")
                      if peak and (floor := floor_ms(size, m, threads, peak[0])) else ("-", "-")),
                ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
