"""The int4-a8 kernel's two bodies, side by side: AVX512-VNNI and AVX2 (an AVX2-only runner's),
each with its weights on ordinary 4 KB pages and in 2 MB pages (as the engine places them).

    python benchmarks/bench_w4a8_bodies.py                 # Qwen2-1.5B layer, 1 and 2 threads
    python benchmarks/bench_w4a8_bodies.py --size 7b --threads 2

One transformer layer's products as the decode loop runs them (q/k/v fused, gate/up fused,
o, down; group 32, random weights), at one token and at a 512-token prompt, each body in
turn in one process, median of ``--repeats`` timings; one token goes through ``--layers``
distinct copies of the layer in turn, 20 layers in all (the weights come from memory, as in
decoding, not from a cache a repeated layer would sit in), a prompt through one. "4 KB"
columns: the weights as torch allocates them; "2 MB": the same bytes copied into an arena
advised for 2 MB pages (``hugepages.py``, where ``w4a8.convert`` puts them at load). The
outputs of every body and placement are compared bit for bit (they must be equal: w4a8.cpp
says why). Needs a CPU with AVX512-VNNI to show both bodies; elsewhere the AVX2 ones alone.
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
    parser.add_argument("--layers", type=int, default=8,
                        help="distinct copies of a layer one token goes through")
    args = parser.parse_args()
    if args.layers < 1:
        parser.error(f"--layers must be at least 1, got {args.layers}")
    import platform

    import torch

    from pytest_llmcheck.engines.transformers import w4a8
    from pytest_llmcheck.engines.transformers.hugepages import Arena
    from pytest_llmcheck.storage.cache import Cache

    with tempfile.TemporaryDirectory(prefix="bench-w4a8-") as folder:  # the library stays loaded
        w4a8.load_kernel(Cache(Path(folder)))
    hidden, inter, qkv = SHAPES[args.size]
    layer = [(qkv, hidden), (hidden, hidden), (2 * inter, hidden), (hidden, inter)]  # (N, K)
    small = [[w4a8.quantize(torch.randn(n, k).to(torch.bfloat16), 32) for n, k in layer]
             for _ in range(args.layers)]
    flat = [t for copy in small for pair in copy for t in pair]
    arena = Arena(Arena.size_of(flat))
    huge = [[(arena.take(p), arena.take(sz)) for p, sz in copy] for copy in small]
    places = {"4 KB": small, "2 MB": huge}
    bodies = ["avx512-vnni", "avx2"] if w4a8.cpu_has_vnni() else ["avx2"]
    print(f"{platform.processor() or platform.machine()}, Qwen2-{args.size} layer {layer} (N, K), group 32; "
          f"median of {args.repeats}, ms per layer; {args.layers} copies of the layer for one token; "
          f"arena advised for 2 MB pages: {arena.advised}\n")
    columns = [(b, p) for b in bodies for p in places]
    rows = [["rows", "threads", *(f"{b} {p} ms" for b, p in columns),
             *(f"{b} 4 KB / 2 MB" for b in bodies), "AVX2 / VNNI (2 MB)", "same bits"]]
    for m in (1, 512):
        inputs = [torch.randn(m, k).to(torch.bfloat16) for _, k in layer]
        copies = args.layers if m == 1 else 1
        passes = 20 if m == 1 else 1  # layers a timing goes through
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            times, outs = {}, []
            for body, place in columns:
                w4a8.body(body)
                weights = places[place]
                laps = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    for i in range(passes):
                        got = [torch.ops.llmcheck.w4a8_mm(x, p, sz, None, 32)
                               for x, (p, sz) in zip(inputs, weights[i % copies], strict=True)]
                    laps.append((time.perf_counter() - start) / passes * 1e3)
                times[body, place] = statistics.median(laps)
                outs.append(got)
            same = all(torch.equal(a.view(torch.int16), b.view(torch.int16))
                       for out in outs[1:] for a, b in zip(outs[0], out, strict=True))
            pages = [f"{times[b, '4 KB'] / times[b, '2 MB']:.2f}" for b in bodies]
            ratio = f"{times['avx2', '2 MB'] / times[bodies[0], '2 MB']:.2f}" if len(bodies) == 2 else "-"
            rows.append([str(m), str(threads), *(f"{times[c]:.2f}" for c in columns), *pages, ratio,
                         "yes" if same else "NO"])
    print(table(rows))


if __name__ == "__main__":
    main()
