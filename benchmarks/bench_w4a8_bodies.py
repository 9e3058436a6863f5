"""The int4-a8 kernel's two bodies, side by side: AVX512-VNNI and AVX2 (an AVX2-only runner's).

    python benchmarks/bench_w4a8_bodies.py                 # Qwen2-1.5B layer, 1 and 2 threads
    python benchmarks/bench_w4a8_bodies.py --size 7b --threads 2

One transformer layer's products as the decode loop runs them (q/k/v fused, gate/up fused,
o, down; group 32, random weights), at one token and at a 512-token prompt, each body in
turn in one process, median of ``--repeats`` timings; the outputs of the two bodies are
compared bit for bit (they must be equal: w4a8.cpp says why). Needs a CPU with AVX512-VNNI
to show both; elsewhere the AVX2 row alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_engines import table  # noqa: E402

# (hidden, intermediate, q + k + v outputs) of one layer
SHAPES = {"1.5b": (1536, 8960, 1536 + 2 * 256), "7b": (3584, 18944, 3584 + 2 * 512)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SHAPES), default="1.5b")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import platform

    import torch

    from pytest_llmcheck.engines.transformers import w4a8
    from pytest_llmcheck.storage.cache import Cache

    with tempfile.TemporaryDirectory(prefix="bench-w4a8-") as folder:  # the library stays loaded
        w4a8.load_kernel(Cache(Path(folder)))
    hidden, inter, qkv = SHAPES[args.size]
    layer = [(qkv, hidden), (hidden, hidden), (2 * inter, hidden), (hidden, inter)]  # (N, K)
    weights = [w4a8.quantize(torch.randn(n, k).to(torch.bfloat16), 32) for n, k in layer]
    bodies = ["avx512-vnni", "avx2"] if w4a8.cpu_has_vnni() else ["avx2"]
    print(f"{platform.processor() or platform.machine()}, Qwen2-{args.size} layer {layer} (N, K), group 32; "
          f"median of {args.repeats}, ms per layer\n")
    rows = [["rows", "threads", *(f"{b} ms" for b in bodies), "AVX2 / VNNI", "same bits"]]
    for m in (1, 512):
        inputs = [torch.randn(m, k).to(torch.bfloat16) for _, k in layer]
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            times, outs = [], []
            for body in bodies:
                w4a8.body(body)
                laps = []
                inner = 20 if m == 1 else 1
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    for _ in range(inner):
                        got = [torch.ops.llmcheck.w4a8_mm(x, p, sz, None, 32)
                               for x, (p, sz) in zip(inputs, weights, strict=True)]
                    laps.append((time.perf_counter() - start) / inner * 1e3)
                times.append(statistics.median(laps))
                outs.append(got)
            same = all(torch.equal(a.view(torch.int16), b.view(torch.int16))
                       for a, b in zip(outs[0], outs[-1], strict=True))
            ratio = f"{times[-1] / times[0]:.2f}" if len(times) == 2 else "-"
            rows.append([str(m), str(threads), *(f"{t:.2f}" for t in times), ratio, "yes" if same else "NO"])
    print(table(rows))


if __name__ == "__main__":
    main()
