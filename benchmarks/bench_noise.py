"""Wall time against CPU time per answer, on a quiet machine and beside a busy process.

    python benchmarks/bench_noise.py                    # INT4 and @llamacpp, 48 tokens, 5 answers per row
    python benchmarks/bench_noise.py --quick            # 24 tokens, 3 answers per row
    python benchmarks/bench_noise.py --spincounts default,3000 --quant int4,int4-a8
    python benchmarks/bench_noise.py --engines llamacpp # only llama.cpp's rows

Each row is a fresh process that loads the model (INT4 weights from the per-machine
cache; for ``llamacpp`` the embedded Q4_1 GGUF as the engine runs it in portable mode)
and generates the same answers twice: on the machine as it is, then with
``--busy`` spinning processes per usable CPU beside it (default 2). The table shows the
median wall and CPU seconds of each, and how far each moved (busy / quiet). The target
of the CPU-time figure: it moves by less than 20% while wall time moves several-fold.

Rows: 1 thread, then the usable CPUs as threads once per ``--spincounts`` value, which is
put into ``GOMP_SPINCOUNT`` before torch loads: how long torch's OpenMP threads (libgomp)
spin at the end of each parallel region before they sleep ("default": libgomp's own,
300000 spins). llama.cpp's threads are OpenMP threads too (one libgomp per process, torch's
when torch came first), and they also wait in an OpenMP barrier after each operation.
A thread that spins while its sibling is descheduled burns CPU time that
the answer did not need; a thread that sleeps at once pays a wake-up on every region.
Run it on an otherwise idle machine; the quiet row is only as quiet as the machine is.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_engines import table  # noqa: E402

PROMPT = "Write three sentences about the city of Paris."
LLAMACPP = "llamacpp"  # the rows of smollm2@llamacpp, in place of a transformers recipe


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


def _load(quant: str, threads: int) -> object:
    """The engine of a row: ``llamacpp`` (portable numerics), else the transformers recipe."""
    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.storage.cache import Cache, default_cache_dir

    if quant == LLAMACPP:
        from pytest_llmcheck.config.settings import Settings
        from pytest_llmcheck.engines.llamacpp import load_llamacpp

        settings = Settings(numerics="portable", threads=threads, threads_given=True)
        return load_llamacpp(resolve("smollm2@llamacpp"), settings)
    from pytest_llmcheck.engines.transformers.engine import TransformersEngine
    from pytest_llmcheck.engines.transformers.quantize import get_quantizer

    ref = resolve("smollm2")
    return TransformersEngine.load(
        ref, Path(ref.location), get_quantizer(quant), threads=threads, cache=Cache(default_cache_dir())
    )


def child(quant: str, threads: int, tokens: int, repeats: int, busy: int) -> dict[str, float]:
    """One row, in this process: load, measure quiet, measure beside the spinners."""
    from pytest_llmcheck.config.settings import usable_cpus

    engine = _load(quant, threads)
    _measure(engine, threads, 8, 1)  # warm-up
    quiet = _measure(engine, threads, tokens, repeats)
    ctx = multiprocessing.get_context("spawn")
    stop = time.monotonic() + 3600
    spinners = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(usable_cpus() * busy)]
    for p in spinners:
        p.start()
    try:
        time.sleep(0.5)
        loud = _measure(engine, threads, tokens, repeats)
    finally:
        for p in spinners:
            p.terminate()
            p.join()
    return {"wall_quiet": quiet[0], "cpu_quiet": quiet[1], "wall_busy": loud[0], "cpu_busy": loud[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--busy", type=int, default=2, help="spinning processes per usable CPU (default: 2)")
    parser.add_argument("--quant", default="int4", help="comma list of transformers recipes (default: int4)")
    parser.add_argument("--engines", default="transformers,llamacpp",
                        help="comma list: transformers (its --quant recipes), llamacpp (default: both)")
    parser.add_argument(
        "--spincounts", default="default", help="comma list of GOMP_SPINCOUNT values (multi-thread rows)"
    )
    parser.add_argument("--child", nargs=2, metavar=("QUANT", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    tokens, repeats = (24, 3) if args.quick else (48, 5)
    if args.child:
        row = child(args.child[0], int(args.child[1]), tokens, repeats, args.busy)
        print(json.dumps(row))
        return

    from pytest_llmcheck.config.settings import usable_cpus

    cpus = usable_cpus()
    spincounts = [s.strip() for s in args.spincounts.split(",") if s.strip()]
    for spin in spincounts:
        if spin != "default" and not spin.isdigit():
            sys.exit(f"--spincounts: {spin!r} is neither 'default' nor a whole number")
    from pytest_llmcheck.config.settings import QUANT_CHOICES

    quants = [q.strip() for q in args.quant.split(",") if q.strip()]
    for quant in quants:
        if quant not in QUANT_CHOICES:
            sys.exit(f"--quant: {quant!r} is not one of {', '.join(QUANT_CHOICES)}")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for name in engines:
        if name not in ("transformers", LLAMACPP):
            sys.exit(f"--engines: {name!r} is neither transformers nor {LLAMACPP}")
    quants = (quants if "transformers" in engines else []) + ([LLAMACPP] if LLAMACPP in engines else [])
    plan = [(q, 1, "default") for q in quants]
    if cpus > 1:
        plan += [(q, cpus, spin) for q in quants for spin in spincounts]
    rows = [["recipe", "threads", "GOMP_SPINCOUNT", "wall quiet s", "wall busy s", "wall moved",
             "cpu quiet s", "cpu busy s", "cpu moved", "target"]]
    for quant, threads, spin in plan:
        env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
        if spin != "default":
            env["GOMP_SPINCOUNT"] = spin
        cmd = [sys.executable, __file__, "--child", quant, str(threads), "--busy", str(args.busy)]
        if args.quick:
            cmd.append("--quick")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"row {quant} {threads} {spin} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        wall_moved, cpu_moved = r["wall_busy"] / r["wall_quiet"], r["cpu_busy"] / r["cpu_quiet"]
        rows.append([
            quant, str(threads), spin if threads > 1 else "-",
            f"{r['wall_quiet']:.2f}", f"{r['wall_busy']:.2f}", f"{wall_moved:.2f}x",
            f"{r['cpu_quiet']:.2f}", f"{r['cpu_busy']:.2f}", f"{cpu_moved:.2f}x",
            "PASS" if abs(cpu_moved - 1) < 0.2 else "FAIL",
        ])
        print(f"  done: {quant}, {threads} thread(s), GOMP_SPINCOUNT {spin}", file=sys.stderr)
    print(f"SmolLM2-135M (torchao INT4 weights; llamacpp: the Q4_1 GGUF, portable), {tokens} new tokens, "
          f"median of {repeats}; {cpus} usable CPU(s); busy = {cpus * args.busy} spinning process(es) "
          f"beside it; {time.strftime('%Y-%m-%d %H:%M')}")
    print(table(rows))


if __name__ == "__main__":
    main()
