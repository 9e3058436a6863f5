"""The bridge to pytest-benchmark: time the one real generation, never a second one.

pytest-benchmark is optional. When it is absent, disabled (``--benchmark-disable``) or
has turned itself off (under xdist), the generation still runs once and its latency is
still recorded by the plugin for the summary and the report.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmcheck.engines.base import Answer
from pytest_llmcheck.errors import LlmcheckWarning

if TYPE_CHECKING:
    from pytest_llmcheck.config.modelref import ModelRef
    from pytest_llmcheck.engines.base import Engine
    from pytest_llmcheck.reporting.results import ModelResult


def _benchmark(request: pytest.FixtureRequest) -> Any | None:
    try:
        return request.getfixturevalue("benchmark")
    except pytest.FixtureLookupError:
        return None


def _timer_name(config: pytest.Config) -> str:
    return str(config.getoption("benchmark_timer", None) or "")


def _cpu_timer(config: pytest.Config) -> bool:
    """Whether pytest-benchmark times with a CPU clock of this process."""
    return _timer_name(config).endswith(("process_time", "thread_time", "process_time_ns", "thread_time_ns"))


def cpu_timer_note(config: pytest.Config, threads: int) -> str | None:
    """A header note when pytest-benchmark times with a CPU clock at more than one thread:
    such a gate is steady only while nothing else runs (``benchmarks/bench_noise.py``:
    1 thread moved CPU time by 0-3% beside busy processes, 2 threads by 3-4x)."""
    if threads <= 1 or not _cpu_timer(config):
        return None
    return (
        f"--benchmark-timer={_timer_name(config)} at {threads} threads: CPU time also counts OpenMP "
        "spin-waits whenever other work shares the CPUs; --llm-threads=1 keeps a CPU-time gate steady"
    )


def run_timed(
    request: pytest.FixtureRequest,
    once: Callable[[], None],
    *,
    rounds: int,
    group: str,
    use_benchmark: bool,
    in_process: bool = True,
) -> bool:
    """Call ``once`` ``rounds`` times; return whether pytest-benchmark timed them."""
    bench = _benchmark(request) if use_benchmark else None
    if bench is not None and not bench.disabled and not in_process and _cpu_timer(request.config):
        warnings.warn(
            LlmcheckWarning(
                f"--benchmark-timer={_timer_name(request.config)} times pytest's own process, but model "
                f"{group!r} computes in another (a worker or a server): its benchmark record is not "
                "its CPU time; gate on max_cpu_seconds or the cpu_seconds in extra_info instead"
            ),
            stacklevel=2,
        )
    if bench is None or bench.disabled:
        def all_rounds() -> None:
            for _ in range(rounds):
                once()

        if bench is None:
            all_rounds()
        else:
            # A disabled fixture calls its target once; going through it marks the
            # fixture used, else pytest-benchmark warns "Benchmark fixture was not used
            # at all in this test!" on every test (--benchmark-disable, xdist).
            bench.pedantic(all_rounds, rounds=1, iterations=1, warmup_rounds=0)
        return False
    bench.group = group
    bench.pedantic(once, rounds=rounds, iterations=1, warmup_rounds=0)
    return True


def annotate(
    request: pytest.FixtureRequest, answers: Sequence[Answer], *, ref: ModelRef, engine: Engine,
    model: ModelResult,
) -> None:
    """Put what a latency reviewer needs next to the timing in the benchmark JSON: the
    model's reference, engine and load facts (``model``), and the last answer's numbers."""
    bench = request.getfixturevalue("benchmark")
    last = answers[-1]
    bench.extra_info.update(
        {
            "model": ref.name,
            "source": ref.spec,
            "quantization": engine.facts.quant,
            "engine": engine.name,
            "prompt_tokens": last.prompt_tokens,
            "new_tokens": last.new_tokens,
            "tokens_per_second": round(last.tokens_per_second, 3),
            "ttft_seconds": round(last.ttft, 4),
            "cpu_seconds": None if last.cpu_seconds is None else round(last.cpu_seconds, 4),
            "load_seconds": round(model.load_seconds, 3),
            "quantize_seconds": round(model.quantize_seconds, 3),
        }
    )
