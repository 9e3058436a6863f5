"""Command-line options and ini values, read once into a frozen ``Settings``.

Every option has a canonical ``--llmcheck-*`` name and a short ``--llm-*`` alias. The
alias is added only when no other plugin took it (pytest-llm-assert registers
``--llm-model``, and pytest refuses to start when two plugins add the same option).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.checks.tolerance import Tolerance, ToleranceError, parse_tolerance
from pytest_llmcheck.compat.pytest import option_names
from pytest_llmcheck.config.numerics import CHOICE_ENV, NATIVE, PORTABLE
from pytest_llmcheck.distribution.shard import Shard, parse_shard
from pytest_llmcheck.storage.cache import default_cache_dir

QUANT_CHOICES = ("int4", "int4-a8", "bf16", "none")
NUMERICS_CHOICES = (PORTABLE, NATIVE)
QUANT_LABELS = {"int4": "int4", "int4-a8": "int4a8", "bf16": "bf16", "none": "fp32"}  # as a model-name suffix
DEFAULT_MODEL = "smollm2"


@dataclass(frozen=True)
class OptionSpec:
    """One option: its name without prefix, ini key, help, default (as ini text)."""

    name: str
    help: str
    default: str | None = None
    flag: bool = False
    ini_type: str = "string"
    engine: str | None = None  # an engine's own option: kept raw in Settings.engine_options
    choices: tuple[str, ...] = ()  # the values allowed, checked when the settings are built

    @property
    def canonical(self) -> str:
        return f"--llmcheck-{self.name}"

    @property
    def alias(self) -> str:
        return f"--llm-{self.name}"

    @property
    def dest(self) -> str:
        return "llmcheck_" + self.name.replace("-", "_")

    @property
    def ini(self) -> str:
        return self.dest


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("model", "models to test, a comma list of aliases, hub references "
               "(modelscope:owner/name[@rev], hf:owner/name[@rev]), model folders or .gguf files "
               f"(default: {DEFAULT_MODEL})"),
    OptionSpec("engine", "engine for models without an @engine suffix: transformers, llamacpp, itrex, or one "
               "a plugin adds (default: transformers; the replay engine with --llm-replay)"),
    OptionSpec("quant", f"transformers engine: weight quantization: {', '.join(QUANT_CHOICES)} "
               "(default: int4; int4-a8: the same weights times int8 activations, faster, other answers)",
               "int4"),
    OptionSpec("numerics", "portable: answers byte-identical on every x86-64 CPU from AVX2+FMA up, Intel or "
               "AMD, at any thread count (engines that cannot offer it say so in their fingerprint); native: "
               "each CPU's fastest kernels, answers that hold only on the CPU kind they were recorded on "
               "(default: portable)", "portable"),
    OptionSpec("max-new-tokens", "most tokens generated per answer (default: 128)", "128"),
    OptionSpec("threads", "CPU threads per model; fixed so answers are reproducible (default: the CPUs this "
               "process may use, divided among xdist workers)"),
    OptionSpec("seed", "random seed set before every generation (default: 0)", "0"),
    OptionSpec("cache-dir", "per-machine model cache (default: the user cache dir, or $LLMCHECK_CACHE_DIR)"),
    OptionSpec("no-cache", "load, convert and quantize from the source in every session "
               "(skip the weights cache)",
               flag=True, ini_type="bool"),
    OptionSpec("offline", "use only the model cache; never contact a hub", flag=True, ini_type="bool"),
    OptionSpec("trust-remote-code", "models allowed to run their own modeling code: a comma list of "
               "model names, or 'all'"),
    OptionSpec("report", "write report.html, report.md and report.json into this folder"),
    OptionSpec("soft", "record unmet expectations without failing their tests (use with --llm-min-pass-rate)",
               flag=True, ini_type="bool"),
    OptionSpec("min-pass-rate", "fail the session when a model's pass rate is below this (0..1)"),
    OptionSpec("repeat", "answers per question, for sampled decoding (default: 1)", "1"),
    OptionSpec("temperature", "sampling temperature; 0 means greedy (default: 0)", "0"),
    OptionSpec("shard", "run part K of N (K/N, e.g. 2/4) in one CI job: the models go round robin to the "
               "parts, or the tests when there are fewer models than parts"),
    OptionSpec("snapshot", "default answer snapshot tolerance: exact, normalized, or similar:0.9 "
               "(default: exact)"),
    OptionSpec("judge", "the model that grades judge: expectations (a model reference, as for --llm-model)"),
)
ENGINE_OPTIONS: tuple[OptionSpec, ...] = (  # each engine's own options (OptionSpec.engine set)
    OptionSpec("decode", "transformers engine: greedy decode loop: fast (a lean loop for Llama and Qwen2 "
               "models, its per-token step in C++ when a compiler is at hand, each used only when it "
               "gives the model's own logits bit for bit on a probe at load), python (the lean loop, "
               "its step in Python) or generate (transformers' generate()) (default: fast)", "fast",
               engine="transformers", choices=("fast", "python", "generate")),
    OptionSpec("itrex-python", "itrex engine: the Python of an environment with the ITREX stack (default: "
               "the one 'llmcheck env create itrex' built in the cache, or $LLMCHECK_ITREX_PYTHON)",
               engine="itrex"),
    OptionSpec("itrex-quant", "itrex engine: int4 (ITREX RTN, the default) or none (fp32 in the same worker, "
               "for parity checks)", engine="itrex"),
    OptionSpec("itrex-timeout", "itrex engine: seconds to wait for each answer of the worker; loading "
               "waits three times as long, at least 120 (default: 600)", engine="itrex"),
    OptionSpec("replay", "answer from recorded answers instead of a model: a report.json (or its folder), "
               "a recorded-answers YAML/JSON file or a folder of answer snapshots; "
               "implies --llm-engine=replay",
               engine="replay"),
    OptionSpec("gguf-quant", "llamacpp engine: which GGUF file of a folder or hub repo to run, by its quant "
               "(e.g. Q4_K_M) or file name; needed when there are several", engine="llamacpp"),
    OptionSpec("gguf-requant", "llamacpp engine: type a float (F32/F16/BF16) GGUF is quantized to, once per "
               "machine: Q4_K_M, Q5_K_M, Q8_0, ... or none (default: Q4_K_M)", "Q4_K_M", engine="llamacpp"),
    OptionSpec("openai-url", "openai engine: base URL of the server for openai:<model> references, "
               "e.g. http://127.0.0.1:8080/v1", engine="openai"),
    OptionSpec("openai-key-env", "openai engine: environment variable holding the API key; the key is "
               "never printed or stored (default: OPENAI_API_KEY)", "OPENAI_API_KEY", engine="openai"),
    OptionSpec("openai-timeout", "openai engine: seconds to wait for the server to connect or send the "
               "next part of an answer (default: 120)", "120", engine="openai"),
    OptionSpec("openai-retries", "openai engine: retries of a request answered 429 or 5xx, with "
               "exponential backoff (default: 3)", "3", engine="openai"),
)


def all_options() -> tuple[OptionSpec, ...]:
    return OPTIONS + ENGINE_OPTIONS


def add_options(parser: pytest.Parser) -> None:
    """Register the canonical options and ini keys."""
    group = parser.getgroup("llmcheck", "pytest-llmcheck: regression tests for local LLMs")
    for spec in all_options():
        if spec.flag:
            group.addoption(spec.canonical, action="store_true", default=None, dest=spec.dest, help=spec.help)
        else:
            group.addoption(spec.canonical, action="store", default=None, dest=spec.dest, help=spec.help)
        parser.addini(spec.ini, spec.help, type=spec.ini_type, default=spec.default)  # type: ignore[arg-type]


def add_aliases(parser: pytest.Parser) -> list[str]:
    """Add each free ``--llm-*`` alias; return the ones another plugin holds."""
    group = parser.getgroup("llmcheck")
    taken = option_names(parser)  # by any plugin: pytest itself checks only within a group
    clashes = []
    for spec in all_options():
        if spec.alias in taken:
            clashes.append(spec.alias)
            continue
        action = "store_true" if spec.flag else "store"
        group.addoption(
            spec.alias, action=action, default=None, dest=spec.dest, help=f"alias of {spec.canonical}"
        )
    return clashes


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads(workers: int | None = None) -> int:
    """One share of the usable CPUs per xdist worker, at least 1.

    Two workers each running 2 threads on 2 cores is the 14x slowdown the default
    used to cause; a share each keeps the cores busy without oversubscribing them.
    ``workers``: the worker count when known (the controller); a worker reads its own.
    """
    if workers is None:
        count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
        workers = int(count) if count.isdigit() else 1
    return max(1, usable_cpus() // max(1, workers))


def worker_threads(settings: Settings, option: Any) -> int:
    """The threads each model computes with, as seen from any process: xdist's controller
    (which prints the header) has no ``PYTEST_XDIST_WORKER_COUNT``; its ``tx`` list counts
    the workers it starts."""
    if settings.threads_given:
        return settings.threads
    workers = len(getattr(option, "tx", None) or []) if getattr(option, "dist", "no") != "no" else 0
    return default_threads(workers) if workers else settings.threads


def oversubscribed(threads: int = 1) -> str | None:
    """A warning when other work already keeps the CPUs busy (1-minute load average).

    At more than one thread, CPU time is no steadier than wall time on a busy machine:
    torch's OpenMP threads spin (libgomp: 300000 spins) while a descheduled sibling is
    away, so the warning names the two remedies that ``benchmarks/bench_noise.py`` measures.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cpus = usable_cpus()
    if load <= cpus + 0.5:
        return None
    text = (
        f"the load average ({load:.1f}) exceeds the {cpus} CPU(s) this process may use: wall-clock "
        "latencies will be noisy; compare CPU time instead (max_cpu_seconds, tok/CPU-s, "
        "--benchmark-timer=time.process_time)"
    )
    passive = os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"
    if threads > 1 and "GOMP_SPINCOUNT" not in os.environ and not passive:
        text += (
            f"; at {threads} threads CPU time also counts OpenMP spin-waits, and answers are slower than at "
            "one: use --llm-threads=1 (GOMP_SPINCOUNT=3000 in the environment cuts some of the waits)"
        )
    return text


# -- validators: each raises pytest.UsageError with one line naming value and what is allowed


def parse_list(value: str) -> tuple[str, ...]:
    items = [v.strip() for chunk in value.splitlines() for v in chunk.split(",")]
    return tuple(v for v in items if v)


def parse_choice(option: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise pytest.UsageError(f"{option}: invalid value {value!r}; allowed: {', '.join(choices)}")
    return value


def parse_int(option: str, value: str, *, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise pytest.UsageError(f"{option}: {value!r} is not a whole number; expected >= {minimum}") from None
    if number < minimum:
        raise pytest.UsageError(f"{option}: {number} is too small; expected a whole number >= {minimum}")
    return number


def parse_float(option: str, value: str, *, low: float, high: float | None = None) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not (number >= low and (high is None or number <= high)):
        allowed = f"a number in [{low}, {high}]" if high is not None else f"a number >= {low}"
        raise pytest.UsageError(f"{option}: invalid value {value!r}; expected {allowed}")
    return number


@dataclass(frozen=True)
class Settings:
    """Everything the plugin was told, validated once."""

    models: tuple[str, ...] = (DEFAULT_MODEL,)
    engine: str = "transformers"  # checked against the engine registry when models resolve
    engine_options: dict[str, str] = field(default_factory=dict)  # raw values of engines' own options
    quant: str = "int4"
    numerics: str = "portable"  # NUMERICS_CHOICES: see pytest_llmcheck/config/numerics.py
    max_new_tokens: int = 128
    threads: int = field(default_factory=lambda: default_threads())
    seed: int = 0
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    offline: bool = False
    no_cache: bool = False
    trust_remote_code: tuple[str, ...] = ()
    report_dir: Path | None = None
    soft: bool = False
    min_pass_rate: float | None = None
    repeat: int = 1
    temperature: float = 0.0
    snapshot: Tolerance = field(default_factory=Tolerance)  # the default answer snapshot tolerance
    judge: str | None = None  # the judge model's reference
    judge_from_ini: bool = False  # a suite's judge_model overrides an ini judge, not a command-line one
    progress: bool = False  # download bars on the terminal: not under -q, in CI or without a TTY
    models_given: bool = False  # the user chose models: resolve them at configure time (usage errors)
    threads_given: bool = False  # --llm-threads or its ini: not the per-worker default
    shard: Shard | None = None  # --llm-shard=K/N: this job runs part K of N

    @property
    def use_cache(self) -> bool:
        return not self.no_cache

    def trusts(self, model_name: str) -> bool:
        """Whether ``model_name`` may run its own code; ``qwen`` also allows ``qwen@itrex``."""
        names = {model_name, model_name.split("@", 1)[0]}
        return "all" in self.trust_remote_code or bool(names & set(self.trust_remote_code))

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        def raw(spec: OptionSpec) -> tuple[str, Any]:
            """The option's value and the name to show in errors: command line first, then ini."""
            value = config.getoption(spec.dest, default=None)
            if value is not None:
                return spec.alias, value
            return f"ini {spec.ini}", config.getini(spec.ini)

        values = {spec.name: raw(spec) for spec in all_options()}
        numerics_env = os.environ.get(CHOICE_ENV, "").strip()
        if numerics_env and config.getoption("llmcheck_numerics", default=None) is None:
            values["numerics"] = (f"${CHOICE_ENV}", numerics_env)

        def get(name: str, parse: Callable[[str, str], Any], fallback: Any = None) -> Any:
            where, value = values[name]
            if value in (None, "", []):
                return fallback
            if isinstance(value, bool):
                return value
            return parse(where, str(value))

        def flag(name: str) -> bool:
            """A store_true option (None when absent) or a bool ini value."""
            return bool(values[name][1])

        models_where, models_raw = values["model"]
        models = parse_list(str(models_raw or ""))
        if models_raw and not models:
            raise pytest.UsageError(f"{models_where}: no model given in {models_raw!r}")
        repeat = get("repeat", lambda w, v: parse_int(w, v, minimum=1), 1)
        temperature = get("temperature", lambda w, v: parse_float(w, v, low=0.0, high=5.0), 0.0)
        if repeat > 1 and temperature == 0.0:
            raise pytest.UsageError(
                f"--llm-repeat={repeat} needs sampled decoding: set --llm-temperature to a value > 0 "
                "(greedy answers are identical every time)"
            )
        def path(where: str, value: str) -> Path:
            """Command-line paths are relative to the current folder, ini paths to the ini file."""
            result = Path(value).expanduser()
            if where.startswith("ini ") and not result.is_absolute() and config.inipath is not None:
                result = config.inipath.parent / result
            return result

        def tolerance(where: str, value: str) -> Tolerance:
            try:
                return parse_tolerance(value, where)
            except ToleranceError as exc:
                raise pytest.UsageError(str(exc)) from None

        def engine_option(spec: OptionSpec) -> str:
            where, value = values[spec.name]
            text = str(value).strip()
            return parse_choice(where, text, spec.choices) if spec.choices else str(value)

        judge_where, judge = values["judge"]
        engine = str(values["engine"][1] or "").strip()
        if not engine:  # --llm-replay alone means: the replay engine
            engine = "replay" if values["replay"][1] not in (None, "", []) else "transformers"
        cache = get("cache-dir", path, None)
        report = get("report", path, None)
        threads = get("threads", lambda w, v: parse_int(w, v, minimum=1), None)
        return cls(
            models=models or (DEFAULT_MODEL,),
            models_given=bool(models),
            progress=config.get_verbosity() >= 0 and sys.stderr.isatty() and not os.environ.get("CI"),
            engine=engine,
            snapshot=get("snapshot", tolerance, Tolerance()),
            judge=str(judge).strip() or None if judge else None,
            judge_from_ini=judge_where.startswith("ini "),
            engine_options={
                spec.name: engine_option(spec)
                for spec in ENGINE_OPTIONS
                if values[spec.name][1] not in (None, "", [])
            },
            quant=get("quant", lambda w, v: parse_choice(w, v, QUANT_CHOICES), "int4"),
            numerics=get("numerics", lambda w, v: parse_choice(w, v.strip(), NUMERICS_CHOICES), "portable"),
            max_new_tokens=get("max-new-tokens", lambda w, v: parse_int(w, v, minimum=1), 128),
            threads=threads or default_threads(),
            threads_given=threads is not None,
            seed=get("seed", lambda w, v: parse_int(w, v, minimum=0), 0),
            cache_dir=cache if cache is not None else default_cache_dir(),
            offline=flag("offline"),  # LLMCHECK_OFFLINE / HF_HUB_OFFLINE are honoured by hub.download
            no_cache=flag("no-cache"),
            trust_remote_code=get("trust-remote-code", lambda w, v: parse_list(v), ()),
            report_dir=report,
            soft=flag("soft"),
            min_pass_rate=get("min-pass-rate", lambda w, v: parse_float(w, v, low=0.0, high=1.0), None),
            repeat=repeat,
            temperature=temperature,
            shard=get("shard", parse_shard, None),
        )
