"""Portable (x86-64-v3) against native llama.cpp builds: the answers, and what portable costs.

    python benchmarks/bench_llamacpp_builds.py                  # both tables
    python benchmarks/bench_llamacpp_builds.py --answers --tokens 64
    python benchmarks/bench_llamacpp_builds.py --speed --native-lib ~/llama-native/lib

Two libraries, each loaded in fresh processes: the one llama-cpp-python installed
(``install.sh`` builds it for x86-64-v3: AVX2, FMA, F16C, no native flags) and a native
build for this CPU (``install.sh --native-llama``; or ``--native-lib``, a folder holding
``libllama.so`` and its ggml libraries, given to llama-cpp-python as ``LLAMA_CPP_LIB_PATH``).

Answers: ``smollm2@llamacpp`` answers the riddle suite plus the 20 varied prompts of
``bench_portable.py`` greedily, per library, with llama.cpp's repacked weight buffers off
(the portable engine's choice) and on, at 1, 2, 3 and 4 threads (one process per library
and buffer setting; the threads change between answers, as the engine changes them).
``differ`` counts answers unlike that library's row at 1 thread without repacking;
``vs portable`` counts answers unlike the portable library's. Waiting threads sleep
(``OMP_WAIT_POLICY=PASSIVE``) so that 4 threads on fewer cores finish; waiting changes no sum.

Speed: decode tok/s, the tokens after the first over the time after the first (what
``llama-bench``'s tg test measures; llama.cpp's own timers for the engine rows), median of
``--repeats`` answers after a warm-up, 1 and 2 threads, each row a fresh process:
the engine as it runs in each mode (portable: the v3 build, no repacking; native: the
native build, repacked weights) and llama-cpp-python called directly with llama.cpp's
defaults on each library (prompt in one batch, then one token at a time, greedy).
``llama-bench`` itself needs llama.cpp's common library, which llama-cpp-python's build
does not make; these rows measure the same decode loop. Machines are noisy: compare rows
of one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_engines import table  # noqa: E402

SPEED_PROMPT = "Write three sentences about the city of Paris."
THREADS = (1, 2, 3, 4)


def prompts() -> list[str]:
    import yaml
    from bench_portable import MORE_PROMPTS

    suite = yaml.safe_load((ROOT / "examples" / "riddles" / "riddles.llm.yaml").read_text(encoding="utf-8"))
    return [q["prompt"] for q in suite["questions"]] + MORE_PROMPTS


def _engine(numerics: str, threads: int, extra_buffers: bool | None) -> Any:
    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.config.settings import Settings
    from pytest_llmcheck.engines.llamacpp import LlamaCppEngine, prepare

    ref = resolve("smollm2@llamacpp")
    settings = Settings(numerics=numerics, threads=threads, threads_given=True, no_cache=True)
    return LlamaCppEngine.load(
        ref, prepare(ref, settings), threads=threads, seed=0, numerics=numerics, extra_buffers=extra_buffers
    )


def answers_child(extra_buffers: bool, tokens: int, count: int) -> dict[str, Any]:
    """Per thread count, the answers' digests; the engine asked for portable numerics."""
    from pytest_llmcheck.engines.base import GenerationConfig

    engine = _engine("portable", 1, extra_buffers)
    try:
        digests = {}
        for threads in THREADS:
            config = GenerationConfig(max_new_tokens=tokens, threads=threads)
            digests[str(threads)] = [
                hashlib.sha256(engine.generate(p, system=None, config=config).text.encode()).hexdigest()[:12]
                for p in prompts()[:count]
            ]
        fingerprint = engine.fingerprint()
    finally:
        engine.close()
    return {"digests": digests, "numerics": fingerprint["numerics"], "extra_buffers": engine.extra_buffers}


def speed_child(kind: str, threads: int, tokens: int, repeats: int) -> dict[str, Any]:
    """``engine-portable``, ``engine-native`` or ``direct``: median decode tok/s."""
    from pytest_llmcheck.engines.base import GenerationConfig

    if kind.startswith("engine-"):
        numerics = kind.removeprefix("engine-")
        engine = _engine(numerics, threads, None)
        config = GenerationConfig(max_new_tokens=tokens, threads=threads)
        try:
            warm = GenerationConfig(max_new_tokens=8, threads=threads)
            engine.generate(SPEED_PROMPT, system=None, config=warm)
            rates = []
            for _ in range(repeats):
                answer = engine.generate(SPEED_PROMPT, system=None, config=config)
                rates.append((answer.new_tokens - 1) / (answer.seconds - answer.ttft))
            return {"rate": statistics.median(rates), "numerics": engine.fingerprint()["numerics"],
                    "extra_buffers": engine.extra_buffers}
        finally:
            engine.close()
    import llama_cpp

    from pytest_llmcheck.config.registry import smollm2_path

    llm = llama_cpp.Llama(
        str(smollm2_path()), n_ctx=2048, n_batch=512, n_ubatch=512,
        n_threads=threads, n_threads_batch=threads, seed=0, verbose=False,
    )
    prompt = llm.tokenize(
        f"<|im_start|>user\n{SPEED_PROMPT}<|im_end|>\n<|im_start|>assistant\n".encode(), special=True
    )
    rates = []
    for _ in range(repeats + 1):  # the first is the warm-up
        llm.reset()  # type: ignore[no-untyped-call]
        llm.eval(prompt)
        token = llm.sample(temp=0.0, repeat_penalty=1.0)
        start = time.perf_counter()
        for _ in range(tokens - 1):
            llm.eval([token])
            token = llm.sample(temp=0.0, repeat_penalty=1.0)
        rates.append((tokens - 1) / (time.perf_counter() - start))
    llm.close()
    return {"rate": statistics.median(rates[1:])}


def spawn(lib: Path | None, args: list[str], extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_CPP_LIB_PATH"}
    if lib is not None:
        env["LLAMA_CPP_LIB_PATH"] = str(lib)
    env.update(extra_env or {})
    done = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True,
                          text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} (library {lib or 'installed'}) failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def features(lib: Path | None) -> str:
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_CPP_LIB_PATH"}
    if lib is not None:
        env["LLAMA_CPP_LIB_PATH"] = str(lib)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return " ".join(sorted(p.split(" = ")[0].split(": ")[-1].strip() for p in out.stdout.split("|")
                           if p.strip().endswith("= 1")))


def answers_table(libraries: dict[str, Path | None], tokens: int, count: int) -> list[list[str]]:
    rows = [["library", "repacked weights", "fingerprint numerics", "threads", "differ", "vs portable"]]
    portable_ref: list[str] | None = None
    for name, lib in libraries.items():
        own_ref: list[str] | None = None
        for extra in (False, True):
            start = time.perf_counter()
            data = spawn(lib, ["answers", str(int(extra)), str(tokens), str(count)],
                         {"OMP_WAIT_POLICY": "PASSIVE"})
            for threads, digests in data["digests"].items():
                own_ref = own_ref or digests
                portable_ref = portable_ref or digests
                differ = sum(a != b for a, b in zip(own_ref, digests, strict=True))
                vs = sum(a != b for a, b in zip(portable_ref, digests, strict=True))
                rows.append([name, "on" if data["extra_buffers"] else "off", str(data["numerics"]), threads,
                             f"{differ}/{len(digests)}", f"{vs}/{len(digests)}"])
            print(f"  answers: {name}, repack {'on' if extra else 'off'}: {time.perf_counter() - start:.0f}s",
                  file=sys.stderr, flush=True)
    return rows


def speed_table(libraries: dict[str, Path | None], tokens: int, repeats: int) -> list[list[str]]:
    rows = [["threads", "portable engine (v3)", "native engine", "native/portable",
             "direct, v3 library", "direct, native library"]]
    for threads in (1, 2):
        cells: dict[str, dict[str, Any] | None] = {}
        plan = [("portable", "engine-portable"), ("native", "engine-native"),
                ("portable", "direct"), ("native", "direct")]
        for (name, kind), label in zip(plan, ("pe", "ne", "pd", "nd"), strict=True):
            if name not in libraries:
                cells[label] = None
                continue
            cells[label] = spawn(libraries[name], ["speed", kind, str(threads), str(tokens), str(repeats)])
            print(f"  speed: {kind} on {name}, {threads} thread(s): {cells[label]}", file=sys.stderr,
                  flush=True)
        rate = {k: (None if c is None else float(c["rate"])) for k, c in cells.items()}
        shown = {k: "-" if r is None else f"{r:.1f}" for k, r in rate.items()}
        pe, ne = rate["pe"], rate["ne"]
        ratio = f"{ne / pe:.2f}x" if pe and ne else "-"
        rows.append([str(threads), shown["pe"], shown["ne"], ratio, shown["pd"], shown["nd"]])
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        what, *rest = sys.argv[2:]
        if what == "answers":
            print(json.dumps(answers_child(bool(int(rest[0])), int(rest[1]), int(rest[2]))))
        else:
            print(json.dumps(speed_child(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--answers", action="store_true", help="only the answers table")
    parser.add_argument("--speed", action="store_true", help="only the speed table")
    parser.add_argument("--native-lib", type=Path, help="folder of a native libllama (default: install.sh's)")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per answer (answers table)")
    parser.add_argument("--prompts", type=int, default=25, help="how many of the 25 prompts (answers table)")
    parser.add_argument("--speed-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from pytest_llmcheck.engines.llamacpp import native_library_dir

    given = os.environ.get("LLAMA_CPP_LIB_PATH")
    native = args.native_lib or (Path(given) if given else native_library_dir())
    libraries: dict[str, Path | None] = {"portable": None}
    if native is not None:
        libraries["native"] = native.expanduser()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M')}; SmolLM2-135M-Instruct Q4_1 GGUF, greedy; "
          "each row a fresh process")
    for name, lib in libraries.items():
        print(f"  {name} library: {lib or 'installed'}: {features(lib)}")
    if native is None:
        print("  no native library (install.sh --native-llama builds one): its rows are left out")
    if not args.speed:
        print(f"\nanswers: {args.prompts} prompts, {args.tokens} new tokens")
        print(table(answers_table(libraries, args.tokens, args.prompts)))
    if not args.answers:
        print(f"\ndecode tok/s: {args.speed_tokens} new tokens, median of {args.repeats}")
        print(table(speed_table(libraries, args.speed_tokens, args.repeats)))


if __name__ == "__main__":
    main()
