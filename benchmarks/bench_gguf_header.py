"""Why the llamacpp engine reads GGUF metadata with its own bounds-checked parser.

    python benchmarks/bench_gguf_header.py            # median of 5
    python benchmarks/bench_gguf_header.py --runs 3

The engine reads a GGUF's metadata (architecture, context length, chat template, ...) on every
model load and for ``llmcheck list``. ``gguf.GGUFReader`` parses every tensor record and every
token string into numpy arrays first; the engine needs a few scalars. One table: both readers on
the embedded SmolLM2-135M GGUF (49k-token vocabulary), median of ``--runs`` fresh reads each,
and their ratio. tests/test_llamacpp.py checks that both give the same scalars.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any


def timed(read: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        read()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import gguf

    from pytest_llmcheck.config.registry import smollm2_path
    from pytest_llmcheck.engines.llamacpp import read_gguf_metadata

    path = Path(smollm2_path())
    ours = timed(lambda: read_gguf_metadata(path), args.runs)
    theirs = timed(lambda: gguf.GGUFReader(path, "r"), args.runs)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {date.today()}, "
          f"median of {args.runs}, {path.name} ({path.stat().st_size / 2**20:.0f} MiB)")
    print(f"{'reader':<28}{'ms':>10}")
    print(f"{'read_gguf_metadata (ours)':<28}{ours * 1e3:>10.1f}")
    print(f"{'gguf.GGUFReader':<28}{theirs * 1e3:>10.1f}")
    print(f"GGUFReader / ours: {theirs / ours:.0f}x")


if __name__ == "__main__":
    main()
