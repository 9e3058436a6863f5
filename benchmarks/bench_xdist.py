"""Two models under pytest-xdist: loads and wall time, serial against ``-n 2``.

    python benchmarks/bench_xdist.py            # the five riddles, 64 new tokens
    python benchmarks/bench_xdist.py --quick    # 16 new tokens
    python benchmarks/bench_xdist.py --copies 4 # each riddle 4 times: answering outweighs start-up

The two models are the embedded SmolLM2 GGUF under two references (the alias and the
file's path), so they are two models to pytest (two names, two loads) sharing one INT4
cache entry, which a first, untimed run fills. Each timed run is a fresh pytest process
on the riddle suite with a report; "loads" is the sum over workers from report.json.
Rows: serial at 1 thread and at 2 threads (the default on 2 CPUs); ``-n 2`` with the
model scheduler (each model on one worker) at 1 thread per worker; ``-n 2 --dist load``
(xdist's own, each worker loads the models it meets) at 1 thread per worker. All use the
same 2 cores. "vs serial" divides the wall time by the serial run at the same threads
per model (1): with one model per worker it is about 0.5 when the answers dominate; each
worker also starts its own Python, torch and transformers. Two more runs with one new
token per answer measure that fixed part, and the rest (the answers' further tokens) is
compared on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def run(project: Path, cache: Path, models: str, args: list[str], tokens: int) -> tuple[float, int, str]:
    report = project / f"report-{time.monotonic_ns()}"
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
        f"--llm-model={models}", f"--llm-cache-dir={cache}", f"--llm-max-new-tokens={tokens}",
        "--llm-soft", "--snapshot-update", f"--llm-report={report}", *args,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, env={**os.environ, "CI": "1"})
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.exit(f"pytest failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    data = json.loads((report / "report.json").read_text(encoding="utf-8"))
    loads = sum(int(m["loads"]) for m in data["models"])
    cases = sum(len(m["cases"]) for m in data["models"])
    return seconds, loads, f"{cases} answers"


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--quick", action="store_true", help="16 new tokens instead of 64")
    parser.add_argument(
        "--copies", type=int, default=1,
        help="each riddle K times (ids riddle-1-2, ...): more answering per model load (default: 1)",
    )
    args = parser.parse_args()
    if args.copies < 1:
        parser.error(f"--copies: {args.copies} is too small; expected a whole number >= 1")
    tokens = 16 if args.quick else 64

    from pytest_llmcheck.config.registry import resolve

    ref = resolve("smollm2")
    gguf = Path(ref.location) / str(ref.gguf_file)
    with tempfile.TemporaryDirectory(prefix="llmcheck-xdist-") as tmp:
        project, cache = Path(tmp) / "project", Path(tmp) / "cache"
        project.mkdir()
        write_suite(project / "riddles.llm.yaml", args.copies)
        models = f"smollm2,{gguf}"
        run(project, cache, models, ["--llm-threads=2"], tokens)  # fill the INT4 cache entry
        suite = "riddle suite" if args.copies == 1 else f"riddle suite x{args.copies}"
        print(f"two models (SmolLM2 INT4 twice), {suite}, {tokens} new tokens; {cpu_name()}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before", flush=True)
        widths = (24, 14, 6, 7, 10, 10)
        print(line(("run", "threads", "loads", "wall s", "vs serial", "answers"), widths))
        print(line(tuple("-" * w for w in widths), widths), flush=True)
        serial_1 = None
        walls: dict[str, float] = {}
        for label, extra in (
            ("serial", ["--llm-threads=1"]),
            ("serial", ["--llm-threads=2"]),
            ("-n 2 (model scheduler)", ["-n", "2", "--llm-threads=1"]),
            ("-n 2 --dist load", ["-n", "2", "--dist", "load", "--llm-threads=1"]),
        ):
            seconds, loads, answers = run(project, cache, models, extra, tokens)
            serial_1 = serial_1 or seconds
            ratio = f"{seconds / serial_1:.2f}" if extra[-1].endswith("=1") else "-"
            threads = extra[-1].split("=")[1] + (" per worker" if "-n" in extra else "")
            cells = (label, threads, str(loads), f"{seconds:.1f}", ratio, answers)
            print(line(cells, widths), flush=True)
            walls[label if "-n" in extra else f"serial {threads}"] = seconds
        # the same two runs with one new token per answer: what does not shrink with more workers
        fixed_serial, _, _ = run(project, cache, models, ["--llm-threads=1"], 1)
        fixed_n2, _, _ = run(project, cache, models, ["-n", "2", "--llm-threads=1"], 1)
        answers_serial = walls["serial 1"] - fixed_serial
        answers_n2 = walls["-n 2 (model scheduler)"] - fixed_n2
        print(f"\nwith 1 new token per answer (start-up, collection, loads, prompts): "
              f"serial {fixed_serial:.1f} s, -n 2 {fixed_n2:.1f} s")
        print(f"the rest (the {tokens - 1} further tokens of each answer): serial {answers_serial:.1f} s, "
              f"-n 2 {answers_n2:.1f} s = {answers_n2 / answers_serial:.2f} x")
        print(f"load average {os.getloadavg()[0]:.1f} after")


def write_suite(path: Path, copies: int) -> None:
    """The riddle suite, each question ``copies`` times under its own id (the same greedy answer)."""
    import yaml

    suite = yaml.safe_load((ROOT / "examples" / "riddles" / "riddles.llm.yaml").read_text(encoding="utf-8"))
    if copies > 1:
        suite["questions"] = [
            {**q, "id": f"{q['id']}-{k}"} for k in range(1, copies + 1) for q in suite["questions"]
        ]
    path.write_text(yaml.safe_dump(suite, allow_unicode=True, sort_keys=False), encoding="utf-8")


def line(cells: tuple[str, ...], widths: tuple[int, ...]) -> str:
    return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()


if __name__ == "__main__":
    main()
