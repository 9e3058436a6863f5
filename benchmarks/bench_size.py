"""Speed and memory at real sizes (issue 24): the transformers engine's INT4 against llama.cpp.

    python benchmarks/bench_size.py --size 1.5b            # median of 3, 64 new tokens
    python benchmarks/bench_size.py --size 1.5b --quick    # 16 new tokens, one repetition
    python benchmarks/bench_size.py --size 7b --threads 2  # 7B rows, 2 threads only
    python benchmarks/bench_size.py --size 1.5b --rounds 3 # every row 3 times, interleaved
    python benchmarks/bench_size.py --size 7b --pipeline   # the seed's pipeline on Qwen-7B-Chat

Random-weight models at real shapes (``_size_models.py`` writes them once per machine under
~/.cache/pytest-llmcheck/bench-models/: speed and memory do not depend on the values): a
Qwen2-1.5B and a Qwen2-7B shape as bf16 safetensors, and each as an F16 GGUF made by
llama.cpp's ``convert_hf_to_gguf.py``, which llama.cpp quantizes its own way
(``llama_model_quantize``) to Q4_0, Q4_1 (the class of torchao INT4 g32) and Q4_K_M (what
users download).

Each row is a fresh process, one after the other in one run, under a watchdog that kills a
row whose resident memory passes ``--rss-limit-gb`` or when the machine runs short of memory:

- ``int4``: the engine's default (torchao INT4 g32, portable numerics, as the plugin runs it);
- ``int4-a8``: INT4 weights times int8 activations (portable numerics, its kernel's fastest body
  here: AVX512-VNNI where the CPU has it);
- ``int4-a8-avx2``: the same with the kernel's AVX2 body (``LLMCHECK_W4A8_BODY=avx2``), the one an
  AVX2-only CI runner runs, the same answers; against the x86-64-v3 llama.cpp rows it is the
  stand-in for such a runner;
- ``llama.cpp Q4_0/Q4_1/Q4_K_M``: llama-cpp-python's installed library (the x86-64-v3 build)
  and, when install.sh built it, the native build for this CPU (``LLAMA_CPP_LIB_PATH``), with
  llama.cpp's repacked weights (its fastest on a CPU without AMX).

Columns: ``decode tok/s`` counts the tokens after the first over the time after the first
(64 new tokens, greedy, end-of-text ignored so every row decodes the same count);
``prefill tok/s`` is a 512-token prompt over its time to first token (``TTFT s``);
``load s`` is the load from the cache (the quantized weights already built); ``peak RSS`` is
the row's own ``ru_maxrss``, measured. The cold table: a first load with an empty cache
(the engine: hash, load, quantize, write the cache; llama.cpp: quantize the F16 GGUF, then
load) against the second, each in a fresh process. Ratios are against the llama.cpp row of
the same library, threads and class; targets are printed beside them.

``--rounds N`` runs every measured row N times, the order reversed every other round: this VM's
speed drifts by tens of percent over minutes, so the ratios are taken within each round (rows run
minutes apart at most) and their median printed, with every round's beside it. The last table
sets decode against the memory wall: the weights one token reads (the engine's tensors; the
GGUF's), the GB/s that makes, and the machine's read bandwidth probed in this process right
after each row's process ended.

``--pipeline``: the seed's whole path on its model, Qwen-7B-Chat (Qwen v1 names and config,
``qwen.tiktoken``; random weights), served by a stand-in ModelScope on 127.0.0.1: download ->
conversion to Qwen2 -> INT4 -> one answer, in a fresh process, with each stage's time and
peak resident memory (``--size 1.5b`` serves the Qwen2-1.5B folder: no conversion stage).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import _size_models as models  # noqa: E402
from bench_engines import table  # noqa: E402

PROMPT = "Write three sentences about the city of Paris."
LONG_TOKENS = 512
LLAMA_TYPES = ("Q4_0", "Q4_1", "Q4_K_M")
# decode vs llama.cpp Q4_0/Q4_1 at the same threads
TARGETS = {"int4": 0.8, "int4-a8": 1.0, "int4-a8-avx2": 1.0}
PREFILL_TARGET = 1.0
ENGINE_ROWS = ("int4", "int4-a8", "int4-a8-avx2")
LOAD_TARGET = 0.10  # second load of 7B from the cache <= 10% of the first
LOG = Path("/tmp/bench-size-logs")


# -- inside a row's process ---------------------------------------------------------------------


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux ru_maxrss is in KiB): measured, not estimated."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def engine_cache(size: str, quant: str) -> Path:
    return models.MODELS / f"engine-cache-{size}-{quant}"


def fresh_engine_cache(size: str, quant: str, root: Path | None = None) -> Path:
    """An empty cache for a cold load, with this machine's compiled kernels copied in (built once
    per machine, not per model: a cold model load should not time a compiler)."""
    from pytest_llmcheck.storage.cache import default_cache_dir

    root = root or engine_cache(size, quant)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    kernels = default_cache_dir() / "kernel"
    if kernels.is_dir():
        shutil.copytree(kernels, root / "kernel", ignore=shutil.ignore_patterns("*.lock"))
    return root


def torch_row(size: str, quant: str, threads: int, tokens: int, repeats: int, cold: bool) -> dict[str, Any]:
    if quant == "int4-a8-avx2":  # read when the kernel loads
        os.environ["LLMCHECK_W4A8_BODY"] = "avx2"
    quant = quant.removesuffix("-avx2")
    numerics = "portable"  # what the plugin runs each with
    from pytest_llmcheck.config.numerics import apply_portable_env

    apply_portable_env()  # as the plugin does, before anything imports torch
    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.engines.base import GenerationConfig
    from pytest_llmcheck.engines.transformers.engine import TransformersEngine
    from pytest_llmcheck.engines.transformers.quantize import get_quantizer
    from pytest_llmcheck.storage.cache import Cache

    folder = models.MODELS / models.SHAPES[size][0]
    root = fresh_engine_cache(size, quant) if cold else engine_cache(size, quant)
    ref = resolve(str(folder))
    start = time.perf_counter()
    engine = TransformersEngine.load(
        ref, folder, get_quantizer(quant), threads=threads, cache=Cache(root), numerics=numerics
    )
    load = time.perf_counter() - start
    result: dict[str, Any] = {
        "load": load,
        "from_cache": engine.facts.from_cache,
        "decode_path": str(engine.facts.details.get("decode", "")).split(" (")[0]
        + (f", {product.split(' on ')[0]}" if (product := engine.facts.details.get("int4_product")) else "")
        + (f", {body.split(', ')[-1]}" if (body := engine.quant.details.get("kernel_status")) else ""),
        "quantize_s": engine.quant.seconds,
    }
    if cold:
        return result
    result["weight_mb"] = engine_weight_bytes(engine) / 1e6
    result["huge_mb"] = anon_huge_mib()  # int4-a8's weights: how much of them the kernel gave 2 MB pages
    engine._stop_ids = lambda: []  # type: ignore[method-assign]  # ignore end-of-text: same count in every row
    engine.model.generation_config.eos_token_id = None
    long_prompt = (LOG / "long-prompt.txt").read_text(encoding="utf-8")
    warm = GenerationConfig(max_new_tokens=4, threads=threads)
    engine.generate(PROMPT, system=None, config=warm)
    decode, prefill, ttft = [], [], []
    for _ in range(repeats):
        answer = engine.generate(
            PROMPT, system=None, config=GenerationConfig(max_new_tokens=tokens, threads=threads)
        )
        if answer.new_tokens != tokens:
            raise RuntimeError(f"decoded {answer.new_tokens} tokens, asked {tokens}")
        decode.append((answer.new_tokens - 1) / (answer.seconds - answer.ttft))
        first = engine.generate(
            long_prompt, system=None, config=GenerationConfig(max_new_tokens=1, threads=threads)
        )
        prefill.append(first.prompt_tokens / first.ttft)
        ttft.append(first.ttft)
    result.update(
        decode=statistics.median(decode),
        prefill=statistics.median(prefill),
        ttft=statistics.median(ttft),
        prompt_tokens=first.prompt_tokens,
    )
    return result


def anon_huge_mib() -> float:
    """This process's anonymous memory in 2 MB pages (0 where the system has no such count)."""
    try:
        text = Path("/proc/self/smaps_rollup").read_text(encoding="ascii")
    except OSError:
        return 0.0
    return int(text.split("AnonHugePages:")[1].split()[0]) / 1024 if "AnonHugePages:" in text else 0.0


def engine_weight_bytes(engine: Any) -> int:
    """The bytes of weights one decode step reads: every tensor of the model once (tied ones
    once), but the input embedding (a row per token) unless it is also the lm_head read whole;
    with the lm_head screen, its int8 copy (vocab x hidden bytes) in place of the bf16 lm_head."""
    model = engine.model
    seen: dict[int, int] = {}

    def add(tensor: Any) -> None:
        """A plain tensor's storage, or a tensor subclass's (torchao's INT4 weight) inner tensors."""
        if hasattr(tensor, "__tensor_flatten__"):
            for name in tensor.__tensor_flatten__()[0]:
                add(getattr(tensor, name))
            return
        seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()

    for tensor in [*model.parameters(), *model.buffers()]:
        add(tensor)
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    head_weight = getattr(head, "weight", None)
    screened = engine.fast is not None and engine.fast.native is not None and engine.fast.screen
    skip = {embedding.untyped_storage().data_ptr()}
    if head_weight is not None and screened:
        skip.add(head_weight.untyped_storage().data_ptr())
    total = sum(size for ptr, size in seen.items() if ptr not in skip)
    if head_weight is not None and not screened and head_weight.untyped_storage().data_ptr() in skip:
        total += head_weight.untyped_storage().nbytes()  # a tied bf16 lm_head, read whole
    if screened and head_weight is not None:
        total += head_weight.numel()  # the int8 copy
    return int(total)


def gguf_weight_bytes(path: Path) -> int:
    """The bytes of weights llama.cpp reads a token: every tensor but token_embd (a row per token),
    unless there is no output.weight (tied: token_embd is the output matrix, read whole)."""
    from gguf import GGUFReader

    sizes = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    tied = "output.weight" not in sizes
    return sum(size for name, size in sizes.items() if tied or name != "token_embd.weight")


def gguf_path(size: str, kind: str) -> Path:
    return models.gguf_folder(models.MODELS / models.SHAPES[size][0]) / f"model-{kind}.gguf"


def llama_row(
    size: str, kind: str, native: bool, threads: int, tokens: int, repeats: int, cold: bool
) -> dict[str, Any]:
    """llama.cpp as its own tools run it: repacked weights on, prompt in batches of 512, greedy."""
    if native:
        from pytest_llmcheck.engines.llamacpp import native_library_dir

        folder = native_library_dir()
        if folder is None:
            raise RuntimeError("no native llama.cpp build for this CPU (install.sh --native-llama)")
        os.environ["LLAMA_CPP_LIB_PATH"] = str(folder)
    else:
        os.environ.pop("LLAMA_CPP_LIB_PATH", None)
    import ctypes

    import llama_cpp

    from pytest_llmcheck.engines.llamacpp import ftype_names

    path = gguf_path(size, kind)
    result: dict[str, Any] = {}
    start = time.perf_counter()
    if cold or not path.is_file():
        source = gguf_path(size, "f16")
        if not source.is_file():
            raise RuntimeError(f"{source} is gone (deleted after quantizing): no cold load")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = {name: number for number, name in ftype_names().items()}[kind]
        params.nthread = threads
        tmp = path.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama.cpp could not quantize {source} to {kind}")
        tmp.rename(path)
        result["quantize_s"] = time.perf_counter() - start
        if not cold:  # made for this row, not timed as its load
            start = time.perf_counter()
    llm = llama_cpp.Llama(
        str(path),
        n_ctx=LONG_TOKENS + tokens + 64,
        n_batch=512,
        n_ubatch=512,
        n_threads=threads,
        n_threads_batch=threads,
        seed=0,
        verbose=False,
    )
    result["load"] = time.perf_counter() - start
    if cold:
        return result

    def chat(text: str) -> list[int]:
        formatted = (
            f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{text}"
            "<|im_end|>\n<|im_start|>assistant\n"
        )
        return list(llm.tokenize(formatted.encode(), add_bos=False, special=True))

    def run(prompt: list[int], new: int) -> tuple[float, float]:
        """(time to first token, time of the tokens after it)"""
        llm.reset()  # type: ignore[no-untyped-call]
        start = time.perf_counter()
        llm.eval(prompt)
        token = llm.sample(temp=0.0, repeat_penalty=1.0)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new - 1):  # end-of-text ignored: every row decodes the same count
            llm.eval([token])
            token = llm.sample(temp=0.0, repeat_penalty=1.0)
        return first, time.perf_counter() - start

    short = chat(PROMPT)
    long = chat((LOG / "long-prompt.txt").read_text(encoding="utf-8"))
    run(short, 4)
    decode, prefill, ttft = [], [], []
    for _ in range(repeats):
        decode.append((tokens - 1) / run(short, tokens)[1])
        first = run(long, 1)[0]
        prefill.append(len(long) / first)
        ttft.append(first)
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    result.update(
        decode=statistics.median(decode),
        prefill=statistics.median(prefill),
        ttft=statistics.median(ttft),
        prompt_tokens=len(long),
        library="AVX512" if "AVX512 = 1" in info else "AVX2",
        weight_mb=gguf_weight_bytes(path) / 1e6,
    )
    return result


def pipeline_row(size: str, threads: int, cache: str) -> dict[str, Any]:
    """Download -> conversion -> INT4 -> one answer, as ``pytest --llm-model=modelscope:...`` runs them;
    each stage's seconds and its own peak RSS (VmHWM, reset between stages)."""
    from pytest_llmcheck.config.numerics import apply_portable_env

    apply_portable_env()
    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.config.settings import Settings
    from pytest_llmcheck.engines.base import GenerationConfig
    from pytest_llmcheck.engines.transformers.engine import TransformersEngine
    from pytest_llmcheck.engines.transformers.loader import model_files
    from pytest_llmcheck.engines.transformers.quantize import get_quantizer
    from pytest_llmcheck.storage.cache import Cache

    stages: dict[str, dict[str, float]] = {}

    def hwm() -> float:
        with open("/proc/self/status", encoding="utf-8") as fh:
            return next(int(ln.split()[1]) / 1024 for ln in fh if ln.startswith("VmHWM:"))

    def reset_hwm() -> None:
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="utf-8") as fh:
            fh.write("5")  # resets the peak resident size (Linux >= 4.0)

    settings = Settings(cache_dir=Path(cache), quant="int4", threads=threads, numerics="portable")
    ref = resolve(f"modelscope:{pipeline_repo(size)}")
    reset_hwm()
    start = time.perf_counter()
    folder = model_files(ref, settings)
    stages["download"] = {"s": time.perf_counter() - start, "rss": hwm()}
    reset_hwm()
    start = time.perf_counter()
    engine = TransformersEngine.load(
        ref, folder, get_quantizer("int4"), threads=threads, cache=Cache(Path(cache)), numerics="portable"
    )
    whole = time.perf_counter() - start
    conversion = float(engine.facts.details.get("conversion", {}).get("seconds", 0.0))
    quantize = engine.quant.seconds
    stages["load (conversion + INT4)"] = {
        "s": whole,
        "rss": hwm(),
        "conversion_s": conversion,
        "quantize_s": quantize,
    }
    reset_hwm()
    start = time.perf_counter()
    answer = engine.generate(
        "What is the capital of France?",
        system=None,
        config=GenerationConfig(max_new_tokens=16, threads=threads),
    )
    stages["one answer (16 tokens)"] = {"s": time.perf_counter() - start, "rss": hwm()}
    return {"stages": stages, "answer_tokens": answer.new_tokens, "summary": engine.facts.summary}


def pipeline_repo(size: str) -> str:
    return "qwen/Qwen-7B-Chat" if size == "7b" else "Qwen/Qwen2-1.5B-Instruct"


def worker(spec: dict[str, Any]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # libraries' prints stay out of the JSON line
        kind = spec["kind"]
        if kind == "pipeline":
            result = pipeline_row(spec["size"], spec["threads"], spec["cache"])
        elif kind in ENGINE_ROWS:
            result = torch_row(
                spec["size"], kind, spec["threads"], spec["tokens"], spec["repeats"], spec["cold"]
            )
        else:
            result = llama_row(
                spec["size"],
                kind,
                spec["native"],
                spec["threads"],
                spec["tokens"],
                spec["repeats"],
                spec["cold"],
            )
    result["peak_rss"] = peak_rss_mib()
    result["loadavg"] = os.getloadavg()[0]  # the machine's 1-minute load at the row's end: co-tenants show
    print(json.dumps(result))


def read_bandwidth(threads: int, gib: int = 1, tries: int = 5) -> float:
    """This machine's read bandwidth now, GB/s at ``threads``: the best of ``tries`` sums over
    ``gib`` GiB (int64 adds: the loop waits on memory, not on arithmetic). Taken in the parent
    right after each measured row's process has ended (llama.cpp's threads spin a while after
    a graph), so a row's decode can be set against the ceiling of that moment: this VM's speed
    drifts between runs. The data lies in 2 MB pages where the system offers them (as the
    int4-a8 rows' weights do; on 4 KB pages the probe read less than those rows decode at)."""
    import torch

    from pytest_llmcheck.engines.transformers.hugepages import Arena

    torch.set_num_threads(threads)
    data = Arena(gib << 30).empty((gib << 27,), torch.int64)
    data.fill_(1)
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


# -- the parent: rows one at a time, each watched ------------------------------------------------


def mem_available_mib() -> float:
    with open("/proc/meminfo", encoding="utf-8") as fh:
        return next(int(ln.split()[1]) / 1024 for ln in fh if ln.startswith("MemAvailable:"))


def row_rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
            return next((int(ln.split()[1]) / 1024 for ln in fh if ln.startswith("VmRSS:")), 0.0)
    except OSError:
        return 0.0


def run_row(
    spec: dict[str, Any], limit_gb: float, env: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """One row in a fresh process, killed above ``limit_gb`` resident or under 1 GiB available;
    None when it failed (the reason is printed; the row's whole stderr is in /tmp/bench-size-logs)."""
    name = "-".join(str(spec[k]) for k in ("size", "kind", "threads")) + (
        "-native" if spec.get("native") else ""
    )
    name += "-cold" if spec.get("cold") else ""
    log = LOG / f"{name}.log"
    with log.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
            env=env,
        )
        killed, peak = "", 0.0

        def watch() -> None:
            nonlocal killed, peak
            while proc.poll() is None:
                rss = row_rss_mib(proc.pid)
                peak = max(peak, rss)
                if rss > limit_gb * 1024 or mem_available_mib() < 1024:
                    killed = (
                        f"killed by the watchdog at {rss / 1024:.1f} GiB RSS "
                        f"({mem_available_mib() / 1024:.1f} GiB available)"
                    )
                    proc.kill()
                    return
                time.sleep(0.25)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        out, _ = proc.communicate()
        watcher.join()
    if proc.returncode != 0:
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        why = killed or (lines[-1] if lines else f"exit {proc.returncode}")
        print(f"  {name} failed: {why} (watched peak {peak / 1024:.1f} GiB)", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    print(
        f"  {name}: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()})}",
        file=sys.stderr,
    )
    return result


def long_prompt(size: str) -> None:
    """A user message whose chat prompt is LONG_TOKENS tokens with the model's tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models.MODELS / models.SHAPES[size][0]))
    paragraph = (
        "The history of the city spans many centuries, with rivers, bridges, markets, churches, "
        "universities, printing shops, harbours, railways and theatres; each generation rebuilt "
        "what the previous one had left behind, and every street keeps a record of it. "
    )
    words = paragraph.split()

    def length(n: int) -> int:
        text = " ".join((words * 40)[:n])
        ids = tok.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        return len(ids)

    lo, hi = 1, len(words) * 40
    while lo < hi:  # the most words whose prompt fits LONG_TOKENS
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if length(mid) <= LONG_TOKENS else (lo, mid - 1)
    text_words = (words * 40)[:lo]
    LOG.mkdir(parents=True, exist_ok=True)
    (LOG / "long-prompt.txt").write_text(" ".join(text_words), encoding="utf-8")


def prepare(size: str, rows: list[str], cold: bool) -> None:
    """The models on disk (written once per machine); the F16 GGUF (15 GB at 7B) only while a llama.cpp
    row needs it: its quantized copy is missing, or its cold row quantizes again."""
    start = time.perf_counter()
    folder = models.write_qwen2(size)
    models.move_ggufs(folder)
    missing = [k for k in LLAMA_TYPES if k in rows and (cold or not gguf_path(size, k).is_file())]
    if missing and not gguf_path(size, "f16").is_file():
        models.f16_gguf(folder)
    print(f"models ready in {time.perf_counter() - start:.0f}s: {folder}")


def fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def speed(args: argparse.Namespace, tokens: int, repeats: int) -> None:
    threads = [int(t) for t in args.threads.split(",")]
    libraries = [False, True] if args.native_llama else [False]
    from pytest_llmcheck.engines.llamacpp import native_library_dir

    if args.native_llama and native_library_dir() is None:
        print("(no native llama.cpp build here: install.sh --native-llama; x86-64-v3 build only)")
        libraries = [False]
    kinds: list[tuple[str, bool]] = [(q, False) for q in ENGINE_ROWS if q in args.rows]
    kinds += [(k, native) for native in libraries for k in LLAMA_TYPES if k in args.rows]

    def label(kind: str, native: bool) -> str:
        if kind.startswith("int4"):
            return f"engine {kind}"
        return f"llama.cpp {kind} ({'native' if native else 'x86-64-v3'})"

    base = {"size": args.size, "tokens": tokens, "repeats": repeats}
    cold: dict[tuple[str, bool], dict[str, Any] | None] = {}
    f16 = gguf_path(args.size, "f16")

    def drop_f16() -> None:
        """Once the llama.cpp copies of these rows exist, the F16 GGUF goes (--delete-f16): 15 GB at 7B."""
        if (
            args.delete_f16
            and f16.is_file()
            and all(gguf_path(args.size, k).is_file() for k, _ in kinds if k in LLAMA_TYPES)
        ):
            f16.unlink()
            print(f"deleted {f16} (quantized copies kept)")

    # llama.cpp rows first, so the F16 GGUF can go before the engine's caches are written. The
    # measured rows run in rounds, every row once a round, the order reversed every other round
    # (A B C, C B A, ...): this VM's speed drifts over minutes, so rows compared are run close
    # together, and ratios are taken within a round. A row's cold load runs just before its
    # first measured run, in the first round, as a single run did it.
    order = sorted(kinds, key=lambda kn: kn[0].startswith("int4"))
    measured = [(kind, native, t) for kind, native in order for t in threads]
    rounds: list[dict[tuple[str, bool, int], dict[str, Any] | None]] = []
    for number in range(args.rounds):
        if args.rounds > 1:
            print(f"round {number + 1} of {args.rounds}", file=sys.stderr)
        done: dict[tuple[str, bool, int], dict[str, Any] | None] = {}
        for key in measured if number % 2 == 0 else measured[::-1]:
            kind, native, t = key
            if kind.startswith("int4"):
                drop_f16()
            if (
                number == 0
                and args.cold
                and (kind, native) not in cold
                and not (native and (kind, False) in cold)
            ):
                cold[(kind, native)] = run_row(  # llama.cpp: quantized once, by the v3 build
                    {**base, "kind": kind, "native": native, "threads": max(threads), "cold": True},
                    args.rss_limit_gb,
                )
            spec = {**base, "kind": kind, "native": native, "threads": t, "cold": False}
            row = done[key] = run_row(spec, args.rss_limit_gb)
            if row is not None:
                # the machine's read bandwidth now, and this row's share of it (within the round)
                row["read_gbs"] = read_bandwidth(t)
                row["wall_share"] = row["weight_mb"] * row["decode"] / 1e3 / row["read_gbs"]
                print(
                    f"  read bandwidth {row['read_gbs']:.1f} GB/s, "
                    f"decode at {100 * row['wall_share']:.0f}% of it",
                    file=sys.stderr,
                )
        rounds.append(done)
    drop_f16()
    results = {key: merge([r[key] for r in rounds]) for key in measured}

    rows = [
        [
            "engine",
            "threads",
            "decode tok/s",
            "prefill tok/s",
            "TTFT s (512)",
            "load s (cached)",
            "peak RSS MiB",
            "decode path / library",
            "loadavg",
        ]
    ]
    for kind, native in kinds:
        for t in threads:
            r = results[(kind, native, t)]
            if r is None:
                rows.append([label(kind, native), str(t), "failed", "-", "-", "-", "-", "", "-"])
                continue
            rows.append(
                [
                    label(kind, native),
                    str(t),
                    fmt(r.get("decode")),
                    fmt(r.get("prefill")),
                    fmt(r.get("ttft"), ".2f"),
                    fmt(r.get("load"), ".2f"),
                    fmt(r.get("peak_rss"), ".0f"),
                    str(r.get("decode_path") or r.get("library") or "")
                    + (
                        f" (ran in {r['rounds']} of {args.rounds} rounds)"
                        if r["rounds"] < args.rounds
                        else ""
                    ),
                    fmt(r.get("loadavg")),
                ]
            )
    print(table(rows))
    if any(k.startswith("int4") for k, _ in kinds) and any(not k.startswith("int4") for k, _ in kinds):
        print()
        print(ratio_table(kinds, threads, rounds))
        if args.rounds > 1:
            print()
            print(round_table(kinds, threads, rounds))
    print()
    print(bandwidth_table(kinds, threads, results, label))
    if args.cold:
        print(f"\nload: first (empty cache) against second (from the cache), threads {max(threads)}\n")
        crow = [
            [
                "engine",
                "1st load s",
                "of which quantize s",
                "2nd load s",
                "ratio",
                "target",
                "1st peak RSS MiB",
                "2nd peak RSS MiB",
            ]
        ]
        for kind, native in kinds:
            first = cold.get((kind, native))
            second = results.get((kind, native, max(threads)))
            if first is None or second is None:
                why = "(not run: quantized by the v3 build)" if (kind, native) not in cold else "failed"
                crow.append(
                    [
                        label(kind, native),
                        why,
                        "-",
                        fmt(second and second.get("load"), ".2f"),
                        "-",
                        "-",
                        "-",
                        "-",
                    ]
                )
                continue
            ratio = second["load"] / first["load"]
            target = (
                f"<= {LOAD_TARGET:.2f} {'PASS' if ratio <= LOAD_TARGET else 'FAIL'}"
                if args.size == "7b"
                else f"(7B: <= {LOAD_TARGET:.2f})"
            )
            crow.append(
                [
                    label(kind, native),
                    fmt(first["load"], ".2f"),
                    fmt(first.get("quantize_s"), ".2f"),
                    fmt(second["load"], ".2f"),
                    f"{ratio:.3f}",
                    target,
                    fmt(first["peak_rss"], ".0f"),
                    fmt(second["peak_rss"], ".0f"),
                ]
            )
        print(table(crow))


Rounds = list[dict[tuple[str, bool, int], dict[str, Any] | None]]


def merge(runs: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One row's rounds as one: the median of each number over the rounds it ran in (None when it
    failed in every round); the rest (paths, library) from its first run."""
    done = [r for r in runs if r is not None]
    if not done:
        return None
    merged = dict(done[0])
    for key, value in done[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = statistics.median(r[key] for r in done if isinstance(r.get(key), (int, float)))
    merged["rounds"] = len(done)
    return merged


def round_ratios(
    rounds: Rounds, mine: tuple[str, bool, int], other: tuple[str, bool, int], what: str
) -> list[float]:
    """``what`` of row ``mine`` over row ``other``, one ratio per round both ran in."""
    out = []
    for r in rounds:
        a, b = r.get(mine), r.get(other)
        if a and b and a.get(what) and b.get(what):
            out.append(a[what] / b[what])
    return out


def ratio_table(kinds: list[tuple[str, bool]], threads: list[int], rounds: Rounds) -> str:
    """The engine's rows over llama.cpp's of the same threads: Q4_0 and Q4_1 (the same class as INT4
    g32) with the target, Q4_K_M beside; against each llama.cpp library measured. With rounds, each
    cell is the median of the rounds' ratios (each taken between rows run minutes apart at most)."""
    libraries = sorted({native for k, native in kinds if not k.startswith("int4")})
    rows = [
        [
            "engine",
            "threads",
            "llama.cpp",
            "decode vs Q4_0",
            "vs Q4_1",
            "vs Q4_K_M",
            "target",
            "prefill vs Q4_0",
            "vs Q4_1",
            "vs Q4_K_M",
            "target",
        ]
    ]
    for quant in (q for q in ENGINE_ROWS if (q, False) in kinds):
        for t in threads:
            for native in libraries:
                cells = [f"engine {quant}", str(t), "native" if native else "x86-64-v3"]
                checks: dict[str, list[bool]] = {"decode": [], "prefill": []}
                for what in ("decode", "prefill"):
                    goal = TARGETS[quant] if what == "decode" else PREFILL_TARGET
                    for k in LLAMA_TYPES:
                        ratios = round_ratios(rounds, (quant, False, t), (k, native, t), what)
                        if not ratios:
                            cells.append("-")
                            continue
                        ratio = statistics.median(ratios)
                        cells.append(f"{ratio:.2f}")
                        if k != "Q4_K_M":
                            checks[what].append(ratio >= goal)
                    verdict = ("PASS" if all(checks[what]) else "FAIL") if checks[what] else "-"
                    cells.append(f">= {goal:.1f} vs Q4_0/Q4_1 {verdict}")
                rows.append(cells)
    return table(rows)


def round_table(kinds: list[tuple[str, bool]], threads: list[int], rounds: Rounds) -> str:
    """Every round's decode and prefill ratio against Q4_0 (the spread behind the medians)."""
    rows = [["engine", "threads", "llama.cpp", "decode vs Q4_0, by round", "prefill vs Q4_0, by round"]]
    for quant in (q for q in ENGINE_ROWS if (q, False) in kinds):
        for t in threads:
            for native in sorted({n for k, n in kinds if k == "Q4_0"}):
                cells = [f"engine {quant}", str(t), "native" if native else "x86-64-v3"]
                for what in ("decode", "prefill"):
                    ratios = round_ratios(rounds, (quant, False, t), ("Q4_0", native, t), what)
                    cells.append(" ".join(f"{r:.2f}" for r in ratios) or "-")
                rows.append(cells)
    return table(rows)


def bandwidth_table(
    kinds: list[tuple[str, bool]],
    threads: list[int],
    results: dict[tuple[str, bool, int], dict[str, Any] | None],
    label: Any,
) -> str:
    """Decode against the memory wall: the weights a token reads (MB), the rate that makes at the
    measured decode speed, and the machine's read bandwidth probed in the parent right after the
    row (``read_bandwidth``). Those are medians over the rounds; the share is each round's rate
    over that round's bandwidth, then the median (like the ratios), not a quotient of medians."""
    rows = [
        ["engine", "threads", "weights MB/token", "decode tok/s", "GB/s read", "machine GB/s", "% of machine"]
    ]
    for kind, native in kinds:
        for t in threads:
            r = results.get((kind, native, t))
            if r is None or not r.get("weight_mb") or not r.get("wall_share"):
                continue
            rate = r["weight_mb"] * r["decode"] / 1e3
            rows.append(
                [
                    label(kind, native),
                    str(t),
                    f"{r['weight_mb']:.0f}",
                    fmt(r["decode"]),
                    f"{rate:.1f}",
                    f"{r['read_gbs']:.1f}",
                    f"{100 * r['wall_share']:.0f}",
                ]
            )
    return table(rows)


def pipeline(args: argparse.Namespace) -> None:
    """Serve the stand-in on a local ModelScope and run the pipeline in a fresh, watched process."""
    folder = models.write_qwen_v1_7b() if args.size == "7b" else models.write_qwen2(args.size)
    cache = Path(args.pipeline_cache or tempfile.mkdtemp(prefix="bench-size-pipeline-", dir="/tmp"))
    if not args.pipeline_cache:
        fresh_engine_cache(args.size, "int4", cache)  # empty but for the compiled kernels
    hub = models.streaming_hub()
    start = time.perf_counter()
    hub.add_repo(pipeline_repo(args.size), folder)
    hashed = time.perf_counter() - start
    print(f"stand-in hub: {pipeline_repo(args.size)} from {folder} (hashed in {hashed:.0f}s)")
    env = {**os.environ, "LLMCHECK_MODELSCOPE_ENDPOINT": "", "HF_HUB_DISABLE_TELEMETRY": "1"}
    spec = {
        "kind": "pipeline",
        "size": args.size,
        "threads": max(int(t) for t in args.threads.split(",")),
        "cache": str(cache),
    }
    sessions: list[tuple[dict[str, Any] | None, float]] = []
    try:
        with hub:
            env["LLMCHECK_MODELSCOPE_ENDPOINT"] = hub.url
            for _ in range(2):  # the first session builds everything; the second finds it in the cache
                start = time.perf_counter()
                result = run_row(spec, args.rss_limit_gb, env=env)
                sessions.append((result, time.perf_counter() - start))
                if result is None:
                    break
    finally:
        used = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0
        if not args.keep_pipeline_cache:
            shutil.rmtree(cache, ignore_errors=True)
    print(
        f"\npipeline: modelscope:{pipeline_repo(args.size)} (stand-in hub on 127.0.0.1), INT4, portable, "
        f"cache {cache} ({used / 2**30:.1f} GiB, {'kept' if args.keep_pipeline_cache else 'deleted'})\n"
    )
    if sessions[0][0] is None:
        print("pipeline failed (see above)")
        return
    rows = [["stage", "1st session s", "peak RSS MiB", "2nd session s", "peak RSS MiB"]]
    first = sessions[0][0]
    second = sessions[1][0] if len(sessions) > 1 else None
    for stage, values in first["stages"].items():
        again = second["stages"][stage] if second else None
        rows.append(
            [
                stage,
                f"{values['s']:.1f}",
                f"{values['rss']:.0f}",
                fmt(again and again["s"]),
                fmt(again and again["rss"], ".0f"),
            ]
        )
        if "conversion_s" in values:
            rows.append(
                [
                    "  of which conversion (Qwen v1 -> Qwen2)",
                    f"{values['conversion_s']:.1f}",
                    "",
                    fmt(again and again["conversion_s"]),
                    "",
                ]
            )
            rows.append(
                [
                    "  of which INT4 quantize",
                    f"{values['quantize_s']:.1f}",
                    "",
                    fmt(again and again["quantize_s"]),
                    "",
                ]
            )
    rows.append(
        [
            "whole process",
            f"{sessions[0][1]:.1f}",
            f"{first['peak_rss']:.0f} (ru_maxrss)",
            fmt(second and sessions[1][1]),
            f"{second['peak_rss']:.0f} (ru_maxrss)" if second else "-",
        ]
    )
    print(table(rows))
    if second:
        key = "load (conversion + INT4)"
        ratio = second["stages"][key]["s"] / first["stages"][key]["s"]
        verdict = "PASS" if ratio <= LOAD_TARGET else "FAIL"
        print(f"\nsecond load / first load: {ratio:.3f} (target <= {LOAD_TARGET:.2f}: {verdict})")
    print(f"\n{first['summary']}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(models.SHAPES), default="1.5b")
    parser.add_argument("--quick", action="store_true", help="16 new tokens, one repetition")
    parser.add_argument("--repeats", type=int, help="runs per row, median taken (default 3; --quick 1)")
    parser.add_argument("--tokens", type=int, help="new tokens per decode (default 64; --quick 16)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument(
        "--rows",
        default="int4,int4-a8," + ",".join(LLAMA_TYPES),
        help="which rows: int4, int4-a8, int4-a8-avx2, Q4_0, Q4_1, Q4_K_M (comma-separated)",
    )
    parser.add_argument(
        "--no-cold",
        dest="cold",
        action="store_false",
        help="skip the first-load rows (they empty the engine's bench cache and requantize)",
    )
    parser.add_argument(
        "--no-native-llama",
        dest="native_llama",
        action="store_false",
        help="only llama-cpp-python's installed (x86-64-v3) library",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every measured row this many times, alternating the order; medians over rounds, "
        "ratios taken within each round (default 1)",
    )
    parser.add_argument("--delete-f16", action="store_true", help="delete the F16 GGUF once quantized (disk)")
    parser.add_argument(
        "--rss-limit-gb", type=float, default=20.0, help="kill a row above this RSS (default 20)"
    )
    parser.add_argument(
        "--pipeline", action="store_true", help="the seed's download -> convert -> INT4 -> answer"
    )
    parser.add_argument("--pipeline-cache", help="the pipeline's cache folder (default: a fresh one in /tmp)")
    parser.add_argument("--keep-pipeline-cache", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: a count of 1 or more")
    if args.worker:
        worker(json.loads(args.worker))
        return
    args.rows = args.rows.split(",")
    tokens, repeats = (16, 1) if args.quick else (64, 3)
    tokens, repeats = args.tokens or tokens, args.repeats or repeats
    from bench_xdist import cpu_name

    from pytest_llmcheck.engines.transformers.cpu import cpu_capability

    LOG.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(
        f"{cpu_name()} ({cpu_capability()}), {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, {platform.node()}, "
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}"
    )
    if args.pipeline:
        pipeline(args)
    else:
        name, shape = models.SHAPES[args.size]
        prepare(args.size, args.rows, args.cold)
        long_prompt(args.size)
        print(
            f"{name} shape ({shape.layers} layers, hidden {shape.hidden}, vocab {shape.vocab}), random bf16 "
            f"weights; greedy, {tokens} new tokens (EOS ignored), prompt of {LONG_TOKENS} tokens for "
            f"prefill; median of {repeats} run(s) per row, each row a fresh process"
            + (f"; {args.rounds} rounds, medians over them" if args.rounds > 1 else "")
            + "\n"
        )
        speed(args, tokens, repeats)
        print(
            "\ntargets: engine int4 decode >= 0.8 x llama.cpp (Q4_0/Q4_1, same threads), int4-a8 >= 1.0 x; "
            "prefill >= 1.0 x; 7B second load <= 0.10 x the first"
        )
    used = sum(p.stat().st_size for p in models.MODELS.rglob("*") if p.is_file())
    print(
        f"\nbench models on disk: {used / 2**30:.1f} GiB under {models.MODELS}; "
        f"benchmark took {time.perf_counter() - started:.0f}s"
    )


if __name__ == "__main__":
    main()
