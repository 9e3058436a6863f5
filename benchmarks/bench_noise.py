"""Wall time against CPU time per answer, on a quiet machine and beside a busy process.

    python benchmarks/bench_noise.py            # SmolLM2 INT4, 48 tokens, 5 answers per row
    python benchmarks/bench_noise.py --quick    # 24 tokens, 3 answers per row

For each thread count (1 and the usable CPUs) the same answers are generated twice: on
the machine as it is, then with ``--busy`` spinning processes per usable CPU beside it (default 2).
The table shows the median wall and CPU seconds of each, and how far each moved
(busy / quiet). The target of the CPU-time figure: it moves by less than 20% while wall
time moves several-fold. Run it on an otherwise idle machine; the quiet row is only as
quiet as the machine is.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_engines import table  # noqa: E402

PROMPT = "Write three sentences about the city of Paris."


def _spin(stop: float) -> None:
    x = 0
    while time.monotonic() < stop:
        x += 1


def _measure(engine: object, threads: int, tokens: int, repeats: int) -> tuple[float, float]:
    from pytest_llmcheck.engines.base import GenerationConfig

    config = GenerationConfig(max_new_tokens=tokens, threads=threads)
    wall, cpu = [], []
    for _ in range(repeats):
        start_cpu, start = time.process_time(), time.perf_counter()
        engine.generate(PROMPT, system=None, config=config)  # type: ignore[attr-defined]
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--busy", type=int, default=2, help="spinning processes per usable CPU (default: 2)")
    args = parser.parse_args()
    tokens, repeats = (24, 3) if args.quick else (48, 5)

    from pytest_llmcheck.engines.transformers.engine import TransformersEngine
    from pytest_llmcheck.engines.transformers.quantize import get_quantizer
    from pytest_llmcheck.registry import resolve
    from pytest_llmcheck.settings import usable_cpus

    cpus = usable_cpus()
    ref = resolve("smollm2")
    engine = TransformersEngine.load(ref, Path(ref.location), get_quantizer("int4"), threads=1)
    rows = [["threads", "wall quiet s", "wall busy s", "wall moved", "cpu quiet s", "cpu busy s", "cpu moved",
             "target"]]
    for threads in sorted({1, cpus}):
        _measure(engine, threads, 8, 1)  # warm-up
        quiet = _measure(engine, threads, tokens, repeats)
        ctx = multiprocessing.get_context("spawn")
        stop = time.monotonic() + 3600
        spinners = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(cpus * args.busy)]
        for p in spinners:
            p.start()
        try:
            time.sleep(0.5)
            busy = _measure(engine, threads, tokens, repeats)
        finally:
            for p in spinners:
                p.terminate()
                p.join()
        wall_moved, cpu_moved = busy[0] / quiet[0], busy[1] / quiet[1]
        rows.append([
            str(threads), f"{quiet[0]:.2f}", f"{busy[0]:.2f}", f"{wall_moved:.2f}x",
            f"{quiet[1]:.2f}", f"{busy[1]:.2f}", f"{cpu_moved:.2f}x",
            "PASS" if abs(cpu_moved - 1) < 0.2 else "FAIL",
        ])
    print(f"SmolLM2-135M INT4 (torchao), {tokens} new tokens, median of {repeats}; {cpus} usable CPU(s); "
          f"busy = {cpus * args.busy} spinning process(es) beside it")
    print(table(rows))


if __name__ == "__main__":
    main()
