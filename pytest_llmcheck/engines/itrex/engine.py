"""The ``itrex`` engine as the plugin sees it: a launcher for ``worker.py`` in the ITREX env.

One worker process per model per session. It is spoken to in JSON lines over pipes,
and every read has a deadline, so a hung or dead worker becomes one error line (with
the worker's last log lines attached to the test's report), never a hung session. The
worker cannot outlive the plugin: it is killed on ``close()`` (the pool releases a
model before the next loads, and at the session's end), by ``atexit`` if a session
ends without releasing it, and by the kernel or its lifeline pipe if pytest itself is
killed (see ``worker.py``). It runs in a session of its own, so Ctrl-C in the terminal
reaches pytest, which then closes it.

transformers 4.40 reads no GGUF, so for ``smollm2@itrex`` the launcher hands the worker
the transformers engine's converted safetensors folder from the cache, through a view
with a config the old stack reads (``compat.py``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmcheck.config.numerics import NATIVE, PORTABLE, native_environ
from pytest_llmcheck.config.registry import ModelRef
from pytest_llmcheck.config.settings import Settings
from pytest_llmcheck.engines.base import Answer, GenerationConfig, LoadFacts
from pytest_llmcheck.engines.itrex.compat import legacy_view
from pytest_llmcheck.engines.itrex.env import ItrexPython, locate
from pytest_llmcheck.errors import LlmcheckError

if TYPE_CHECKING:
    from pytest_llmcheck.storage.cache import Cache

WORKER = Path(__file__).with_name("worker.py")
# Runs worker.py as a script without putting its folder on sys.path (-I: no user site,
# no PYTHON* variables, no script folder), so nothing of the plugin can be imported there.
BOOT = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
QUANT_CHOICES = ("int4", "none")
DEFAULT_TIMEOUT = 600.0
START_TIMEOUT = 120.0
LOG_TAIL = 25  # log lines attached to a report
CACHE_KIND = "itrex-int4"  # cache entries of ITREX's saved INT4 weights
RECIPE = {"algorithm": "rtn", "bits": 4, "compute_dtype": "int8"}  # the worker's RtnConfig; part of the key
BUILT_FILE = "llmcheck-built.json"  # in such an entry: how long quantizing took
# ITREX's qbits kernels pick their instructions by the CPU they land on, whatever the
# environment says: its answers are native, per CPU kind, under any --llm-numerics.
NUMERICS_NOTE = "ITREX's kernels pick by CPU"

_LIVE: weakref.WeakSet[WorkerProcess] = weakref.WeakSet()

# What the worker may see of pytest's environment (see worker_env). It runs with -I, so
# PYTHON* variables would be ignored there anyway.
WORKER_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "TMP", "TEMP",
    "LD_LIBRARY_PATH", "LD_PRELOAD",  # e.g. a jemalloc/libiomp5 preload, as ITREX's docs suggest
    "ATEN_CPU_CAPABILITY", "CUDA_VISIBLE_DEVICES", "XDG_CACHE_HOME", "HF_HOME", "HF_MODULES_CACHE",
    "LOGLEVEL",  # neural-compressor's log level
})
WORKER_ENV_PREFIXES = ("LC_", "OMP_", "MKL_", "KMP_", "GOMP_", "ONEDNN_", "DNNL_", "OPENBLAS_", "TORCH_",
                       "LLMCHECK_")
_SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSW|KEY|CREDENTIAL|AUTH", re.IGNORECASE)


def worker_env(environ: Mapping[str, str], **settings: str) -> dict[str, str]:
    """The worker's environment: the allowed part of ``environ``, then ``settings``.

    The worker may run a model's own modeling code (``--llm-trust-remote-code``), so it
    gets what the ITREX stack needs (PATH, HOME, locale, temp folder, the OpenMP/MKL/oneDNN
    thread and kernel variables, the LLMCHECK_* it reads) and never the user's secrets:
    HF_TOKEN, OPENAI_API_KEY, AWS_*, GITHUB_* are not on the list, and a name with TOKEN,
    KEY, SECRET, PASSWORD, CREDENTIAL or AUTH in it is dropped even under an allowed prefix.
    """
    kept = {
        name: value for name, value in environ.items()
        if (name in WORKER_ENV_NAMES or name.startswith(WORKER_ENV_PREFIXES)) and not _SECRET_ENV.search(name)
    }
    return {**kept, **settings}


class WorkerError(LlmcheckError):
    """The worker failed, died or did not answer in time; ``details`` holds its last log lines."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class ItrexOptionError(LlmcheckError):
    """A bad value for one of the itrex engine's options."""


class WorkerProcess:
    """The worker's process and its pipes: requests out, replies in, each with a deadline."""

    def __init__(self, python: Path, workdir: Path, *, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.log_path = workdir / "worker.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in close())
        lifeline_r, self._lifeline = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [str(python), "-I", "-u", "-c", BOOT, str(WORKER),
                 "--parent", str(os.getpid()), "--lifeline", str(lifeline_r)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                cwd=workdir,  # neural-compressor writes nc_workspace/ into the working folder
                env=env,
                pass_fds=(lifeline_r,),
                start_new_session=True,  # Ctrl-C goes to pytest, which closes the worker
            )
        finally:
            os.close(lifeline_r)
        _LIVE.add(self)
        self.busy = False
        self._buffer = b""
        self._next_id = 0
        self.ready = self._read(START_TIMEOUT, "start")
        if self.ready.get("event") != "ready":
            raise self._error(f"the itrex worker sent {self.ready!r} instead of its ready line")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, op: str, timeout: float, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its reply; raise WorkerError on failure, death or timeout."""
        if not self.alive():
            raise self._error(f"the itrex worker (pid {self.pid}) is not running: {self._exit_text()}")
        self._next_id += 1
        line = json.dumps({"id": self._next_id, "op": op, **fields}, ensure_ascii=False) + "\n"
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode("utf-8"))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.proc.wait(timeout=5)
            raise self._error(f"the itrex worker (pid {self.pid}) {self._exit_text()} before {op}") from None
        self.busy = True
        reply = self._read(timeout, op)
        self.busy = False
        if reply.get("id") != self._next_id:
            raise self._error(
                f"the itrex worker answered request {reply.get('id')} to request {self._next_id}"
            )
        if not reply.get("ok"):
            raise WorkerError(
                f"itrex worker: {op} failed: {reply.get('error', 'no reason given')}",
                details=str(reply.get("traceback") or self.log_tail()),
            )
        return reply

    def _read(self, timeout: float, what: str) -> dict[str, Any]:
        """The next reply line, or WorkerError when the worker dies or the deadline passes."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise self._error(
                        f"the itrex worker gave no answer to {what} within {timeout:.0f}s "
                        "(--llm-itrex-timeout); it was stopped"
                    )
                if selector.select(min(left, 1.0)):
                    chunk = os.read(fd, 65536)
                    if not chunk:  # end of file: the worker is gone
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            self.proc.wait(timeout=5)
                        raise self._error(
                            f"the itrex worker (pid {self.pid}) {self._exit_text()} during {what}"
                        )
                    self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError:
            raise self._error(f"the itrex worker wrote a line that is not JSON: {line[:120]!r}") from None
        return message

    def _exit_text(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "stopped answering"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"died of {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def _error(self, message: str) -> WorkerError:
        return WorkerError(message, details=self.log_tail())

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        with contextlib.suppress(OSError):
            self._log.flush()
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            return "\n".join(text.strip().splitlines()[-lines:])
        return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def close(self) -> None:
        """Ask the worker to stop; kill it if it is busy or does not stop within seconds."""
        try:
            if self.proc.poll() is None and not self.busy:
                with contextlib.suppress(WorkerError, OSError, ValueError):
                    self._next_id += 1
                    assert self.proc.stdin is not None
                    request = {"id": self._next_id, "op": "shutdown"}
                    self.proc.stdin.write(json.dumps(request).encode() + b"\n")
                    self.proc.stdin.flush()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=10)
            self.kill()
        finally:
            for stream in (self.proc.stdin, self.proc.stdout):
                with contextlib.suppress(OSError):
                    if stream is not None:
                        stream.close()
            with contextlib.suppress(OSError):
                os.close(self._lifeline)
            self._log.close()
            _LIVE.discard(self)


@atexit.register
def _kill_live_workers() -> None:
    """A session that ended without releasing its model still takes its worker along."""
    for worker in list(_LIVE):
        with contextlib.suppress(Exception):
            worker.kill()


def check_remote_code(ref: ModelRef, folder: Path) -> None:
    """A model whose config names its own code (``auto_map``) needs those files beside it.

    Checked here, in one line, rather than as a long transformers traceback from the worker.
    """
    with contextlib.suppress(OSError, ValueError):
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        tok = folder / "tokenizer_config.json"
        tok_map = json.loads(tok.read_text(encoding="utf-8")).get("auto_map", {}) if tok.is_file() else {}
        targets = [*config.get("auto_map", {}).values(), *tok_map.values()]
        files = sorted({
            f"{t.split('.')[0]}.py"
            for target in targets
            for t in (target if isinstance(target, list) else [target])
            if isinstance(t, str) and "--" not in t  # "repo--module.Class" lives in another repo
        })
        missing = [f for f in files if not (folder / f).is_file()]
        if missing and ref.trust_remote_code:
            raise WorkerError(
                f"model {ref.name!r} ({ref.spec}) runs its own modeling code, but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not in {folder}; put the model repo's .py files "
                "beside its weights"
            )
        if files and not ref.trust_remote_code:
            raise WorkerError(
                f"model {ref.name!r} ({ref.spec}) ships its own modeling code; allow it with "
                f"--llm-trust-remote-code={ref.name.split('@')[0]}"
            )


def cpu_flags() -> str:
    """The widest x86 SIMD/AMX features ITREX's qbits kernels dispatch on (for fingerprints)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("amx_int8", "avx512_vnni", "avx512f", "avx_vnni", "avx2")
                return "+".join(f for f in wanted if f in flags) or "none"
    return "unknown"


class ItrexEngine:
    """A model loaded by the ITREX worker; the plugin's side of it."""

    name = "itrex"

    def __init__(self, ref: ModelRef, worker: WorkerProcess, python: ItrexPython, *, quant: str,
                 threads: int, timeout: float, workdir: Path) -> None:
        self.ref = ref
        self.worker = worker
        self.python = python
        self.quant = quant
        self.threads = threads
        self.timeout = timeout
        self.workdir = workdir
        self.facts = LoadFacts(seconds=0.0, summary="")
        self.loaded: dict[str, Any] = {}
        self.weights_id: dict[str, Any] = {}
        self.rewrites: list[str] = []
        self.quantize_seconds = 0.0  # quantizing and saving for the cache, in this session
        self._respawn: Callable[[], WorkerProcess] | None = None  # a fresh worker, same settings
        self._fingerprint: dict[str, Any] | None = None
        self.numerics_asked = NATIVE  # --llm-numerics; the worker runs natively whatever it says

    @classmethod
    def start(cls, ref: ModelRef, folder: Path, python: ItrexPython, *, quant: str = "int4",
              threads: int = 1, timeout: float = DEFAULT_TIMEOUT, modules_cache: Path | None = None,
              workdir: Path | None = None, cache: Cache | None = None,
              identity: dict[str, Any] | None = None, numerics: str = NATIVE) -> ItrexEngine:
        """Start a worker for the transformers folder ``folder`` and load the model in it.

        With a cache and the source's ``identity``, ITREX's INT4 weights are saved once per
        machine (kind ``itrex-int4``) and later sessions load them instead of quantizing.
        ``numerics`` is what was asked: the worker runs natively either way (``NUMERICS_NOTE``),
        and the summary line says so when portable was asked.
        """
        _check_quant(quant)
        check_remote_code(ref, folder)
        workdir = workdir or Path(tempfile.mkdtemp(prefix="llmcheck-itrex-"))
        view = workdir / "model"
        rewrites = legacy_view(folder, view)
        # Local folders only: the worker never waits on a hub. Its numerics are native (ITREX
        # picks kernels by CPU): it gets the user's own kernel variables back, not portable mode's.
        env = worker_env(native_environ(os.environ), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                         TOKENIZERS_PARALLELISM="false")
        # torch 2.3's OpenMP threads spin while they wait; on a busy 2-core machine two spinning
        # threads answered at 0.4 tok/s instead of 5. Passive waiting unless the user chose.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.setdefault("LOGLEVEL", "WARNING")  # neural-compressor's level: its INFO tables would fill the log
        if modules_cache is not None:  # where transformers copies a model's own code
            env["HF_MODULES_CACHE"] = str(modules_cache)
        try:
            worker = WorkerProcess(python.path, workdir, env=env)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        engine = cls(ref, worker, python, quant=quant, threads=threads, timeout=timeout, workdir=workdir)
        engine.rewrites = rewrites
        engine.numerics_asked = numerics
        engine._respawn = functools.partial(WorkerProcess, python.path, workdir, env=env)
        from_cache, quantized = False, 0.0

        def load(**extra: Any) -> dict[str, Any]:
            return engine.worker.request(
                "load", max(timeout * 3, START_TIMEOUT), path=str(view), quant=quant, threads=threads,
                trust_remote_code=ref.trust_remote_code, recipe=dict(RECIPE), **extra,
            )

        try:
            if quant == "int4" and cache is not None and identity is not None:
                cached = engine._load_cached(load, cache, identity, folder, view)
                engine.loaded, from_cache, quantized = cached
            else:
                engine.loaded = load()
        except BaseException as exc:
            engine.close()
            if isinstance(exc, WorkerError) and "trust_remote_code" in str(exc):
                raise WorkerError(
                    f"model {ref.name!r} ({ref.spec}) ships its own modeling code; allow it with "
                    f"--llm-trust-remote-code={ref.name.split('@')[0]}", exc.details
                ) from None
            raise
        engine.quantize_seconds = quantized
        engine.facts = engine._facts(engine.loaded, 0.0, from_cache)
        return engine

    def _load_cached(self, load: Callable[..., dict[str, Any]], cache: Cache, identity: dict[str, Any],
                     folder: Path, view: Path) -> tuple[dict[str, Any], bool, float]:
        """Load the INT4 weights from the cache, saving them there first if they are not yet:
        (the worker's load reply, whether it came from the cache, seconds spent quantizing
        and saving in this session).

        A saved copy is loaded back before its entry is committed, so an entry ITREX cannot
        load is never taken as good; a ready entry that fails to load is removed and built
        again, once."""
        key = {
            **identity,
            "recipe": dict(RECIPE),
            "config": hashlib.sha256((view / "config.json").read_bytes()).hexdigest()[:16],  # after rewrites
            "cpu": cpu_flags(),
            "versions": self.worker.ready.get("versions", {}),
        }
        entry = cache.entry(CACHE_KIND, key)
        for attempt in (1, 2):
            if entry.ready:
                try:
                    loaded = load(saved=self._link(entry.path))
                except WorkerError:
                    if attempt == 2:
                        raise
                    entry.discard()  # damaged or unreadable: build it again
                    if not self.worker.alive() and self._respawn is not None:  # ITREX may exit()
                        self.worker.close()
                        self.worker = self._respawn()
                    continue
                with contextlib.suppress(OSError, ValueError, KeyError):
                    built = json.loads((entry.path / BUILT_FILE).read_text(encoding="utf-8"))
                    loaded["built_seconds"] = float(built["seconds"])
                return loaded, True, 0.0
            with entry.build() as tmp:
                if tmp is None:  # another session built it meanwhile
                    continue
                for code in folder.glob("*.py"):  # a model's own code goes with its config
                    shutil.copy2(code, tmp / code.name)
                start = time.perf_counter()
                load(save_to=str(tmp))
                seconds = time.perf_counter() - start
                (tmp / BUILT_FILE).write_text(json.dumps({"seconds": seconds}), encoding="utf-8")
                # saving turned the layers into ITREX's public format: answer from the saved
                # copy, as every later session will, and commit the entry only if it loads
                loaded = load(saved=self._link(tmp))
            return loaded, False, seconds
        raise WorkerError(f"the itrex cache entry {entry.path} could not be built")

    def _link(self, saved: Path) -> str:
        """``saved`` under a plain name: transformers names a model's own code after its folder,
        and a folder name with dots (a cache temp folder's) is no module name."""
        link = self.workdir / "int4"
        link.unlink(missing_ok=True)
        link.symlink_to(saved, target_is_directory=True)
        return str(link)

    def _facts(self, loaded: dict[str, Any], prepare_seconds: float, from_cache: bool) -> LoadFacts:
        total, done = int(loaded["layers_total"]), int(loaded["layers_converted"])
        recipe = loaded.get("recipe") or {}
        if self.quant == "int4":
            if from_cache:
                built = loaded.get("built_seconds")
                when = f"from cache (built in {float(built):.2f}s)" if built is not None else "from cache"
            else:
                when = f"{float(loaded['seconds']) + self.quantize_seconds:.2f}s"
            summary = (f"itrex rtn int4: {done}/{total} linear layers ({recipe.get('weight_dtype')}, "
                       f"group {recipe.get('group_size')}, compute {recipe.get('compute_dtype')}), {when}")
        else:
            summary = f"itrex worker, not quantized (fp32), {total} linear layers"
        if self.numerics_asked == PORTABLE:  # its answers hold on this CPU kind only: said where it loads
            summary += f"; native numerics ({NUMERICS_NOTE})"
        return LoadFacts(
            seconds=float(loaded["seconds"]),
            summary=summary,
            quant="int4" if self.quant == "int4" else "fp32",
            from_cache=from_cache,
            prepare_seconds=prepare_seconds + self.quantize_seconds,
            in_process=False,  # answers carry the worker's CPU time
            details={
                "quantization": self.recipe(),
                "threads": self.threads,
                "worker_pid": self.worker.pid,
                "python": str(self.python.path),
                "python_from": self.python.origin,
                "versions": self.worker.ready.get("versions", {}),
                "chat": loaded.get("chat_mode"),
                "config_rewrites": self.rewrites,
                "weight_bytes": loaded.get("weight_bytes"),
                "numerics": NATIVE,
            },
        )

    def recipe(self) -> dict[str, Any]:
        if self.quant != "int4":
            return {"method": "none", "dtype": "float32"}
        return {"method": "itrex-rtn", **(self.loaded.get("recipe") or {})}

    def generate(self, prompt: str, *, system: str | None, config: GenerationConfig,
                 return_ids: bool = False) -> Answer:
        reply = self.generate_raw(prompt, system=system, config=config, return_ids=return_ids)
        return Answer(
            text=str(reply["text"]),
            prompt=prompt,
            system=system,
            prompt_tokens=int(reply["prompt_tokens"]),
            new_tokens=int(reply["new_tokens"]),
            seconds=float(reply["seconds"]),
            ttft=float(reply["ttft"]),
            cpu_seconds=float(reply["cpu_seconds"]) if reply.get("cpu_seconds") is not None else None,
        )

    def generate_raw(self, prompt: str, *, system: str | None, config: GenerationConfig,
                     return_ids: bool = False) -> dict[str, Any]:
        """The worker's reply as it came (with the new token ids when ``return_ids``)."""
        return self.worker.request(
            "generate", self.timeout, prompt=prompt, system=system, max_new_tokens=config.max_new_tokens,
            temperature=config.temperature, seed=config.seed, threads=config.threads, return_ids=return_ids,
        )

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            self._fingerprint = {
                "engine": self.name,
                "source": self.ref.source,
                "model": self.ref.spec,
                "revision": self.ref.revision,
                "quantization": self.recipe(),
                "chat": self.loaded.get("chat_mode"),
                "numerics": NATIVE,  # per CPU kind: snapshots compare only where the CPU matches
                "numerics_note": NUMERICS_NOTE,
                "cpu": cpu_flags(),
                "weights": self.weights_id,
                "versions": self.worker.ready.get("versions", {}),
            }
        return dict(self._fingerprint)

    def close(self) -> None:
        self.worker.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _option(settings: Settings, name: str) -> str | None:
    value = settings.engine_options.get(name)
    return value.strip() if value is not None and value.strip() else None


def _check_quant(quant: str) -> None:
    if quant not in QUANT_CHOICES:
        raise ItrexOptionError(
            f"--llm-itrex-quant: invalid value {quant!r}; allowed: {', '.join(QUANT_CHOICES)}"
        )


def _timeout(settings: Settings) -> float:
    raw = _option(settings, "itrex-timeout")
    if raw is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ItrexOptionError(f"--llm-itrex-timeout: invalid value {raw!r}; expected seconds > 0")
    return value


def model_folder(ref: ModelRef, settings: Settings, scratch: Path) -> tuple[Path, float, bool]:
    """A transformers folder of ``ref`` for the worker: (folder, seconds spent converting, from cache).

    A GGUF becomes the transformers engine's ``converted`` cache entry (fp32 safetensors);
    without the cache it is converted into ``scratch`` for this session only.
    """
    from pytest_llmcheck.engines.transformers.loader import model_files

    if ref.source == "plugin":
        raise ItrexOptionError(
            f"{ref.spec!r} belongs to another engine; the itrex engine loads model folders"
        )
    folder = model_files(ref, settings, progress=settings.progress)
    if ref.gguf_file is None:
        return folder, 0.0, False
    from pytest_llmcheck.engines.transformers.engine import quiet_transformers
    from pytest_llmcheck.engines.transformers.quantize import quiet_loggers
    from pytest_llmcheck.engines.transformers.weights import convert_gguf
    from pytest_llmcheck.storage.cache import Cache

    start = time.perf_counter()
    with quiet_loggers("torchao", "torch.utils._pytree"), quiet_transformers():
        path, built = convert_gguf(
            ref, folder, Cache(settings.cache_dir) if settings.use_cache else None,
            trust_remote_code=ref.trust_remote_code, scratch=scratch,
        )
    return path, (time.perf_counter() - start) if built else 0.0, not built


def load_itrex(ref: ModelRef, settings: Settings) -> ItrexEngine:
    """The itrex engine's loader (``EngineSpec.load``)."""
    quant = _option(settings, "itrex-quant") or "int4"
    _check_quant(quant)
    timeout = _timeout(settings)
    python = locate(settings.cache_dir, _option(settings, "itrex-python"))
    workdir = Path(tempfile.mkdtemp(prefix="llmcheck-itrex-"))
    try:
        folder, prepare, from_cache = model_folder(ref, settings, workdir / "converted")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    from pytest_llmcheck.engines.transformers.weights import source_identity, weights_identity
    from pytest_llmcheck.storage.cache import Cache

    source = Path(ref.location)
    weights = source if ref.gguf_file else folder
    cache = Cache(settings.cache_dir) if settings.use_cache else None
    identity = None
    if cache is not None:
        identity = source_identity(ref, weights, cache.root)
        if ref.gguf_file:  # the worker loads the converted folder: its entry (named by its key) counts
            identity["converted"] = folder.name
    engine = ItrexEngine.start(
        ref, folder, python, quant=quant, threads=settings.threads, timeout=timeout,
        modules_cache=Cache(settings.cache_dir).scratch("itrex-modules"), workdir=workdir,
        cache=cache, identity=identity, numerics=settings.numerics,
    )
    # the content digest of the INT4 cache key, or computed now (memoized per machine)
    content = str(identity["content"]) if identity is not None else None
    memo = cache.root if cache is not None else None
    engine.weights_id = weights_identity(ref, weights, memo, content=content)
    if quant == "int4" and cache is not None:  # "from cache" speaks of the INT4 weights then
        from_cache = engine.facts.from_cache
    engine.facts = engine._facts(engine.loaded, prepare, from_cache)
    return engine

