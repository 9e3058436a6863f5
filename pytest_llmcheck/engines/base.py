"""The small interfaces every engine and quantizer implements.

Kept free of heavy imports: the plugin and the fake engine use these types without
pulling in torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings; part of every answer's fingerprint."""

    max_new_tokens: int = 256
    seed: int = 0
    threads: int = 1
    temperature: float = 0.0  # 0 means greedy

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "threads": self.threads,
            "temperature": self.temperature,
        }


@dataclass(frozen=True)
class Answer:
    """One generated answer with the numbers a latency report needs."""

    text: str
    prompt: str
    prompt_tokens: int
    new_tokens: int
    seconds: float
    ttft: float  # time to first token, seconds
    system: str | None = None
    # CPU time spent on this answer (all threads). Unlike wall time it barely moves when
    # other processes compete for the cores, so CPU-based limits hold on shared CI runners.
    # In-process engines leave it None and the plugin measures the process; engines that
    # compute elsewhere (a worker, a server) report their own figure or leave it None.
    cpu_seconds: float | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_cpu_second(self) -> float | None:
        if self.cpu_seconds is None or self.cpu_seconds <= 0:
            return None
        return self.new_tokens / self.cpu_seconds

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class LoadFacts:
    """How a model got ready, in terms every engine can fill: no torch types here.

    An in-process engine, a worker in another Python and a remote server all report
    the same four facts; the summary line says the engine-specific part.
    """

    seconds: float  # time to get the model ready, excluding ``prepare_seconds``
    summary: str  # one line, e.g. "int4: 210/210 linear layers" or "llama.cpp Q4_K_M, 2 threads"
    quant: str = ""  # the weights' form, e.g. "int4", "bf16", "Q4_K_M"; "" when the engine cannot tell
    from_cache: bool = False  # converted/quantized weights came from the per-machine cache
    prepare_seconds: float = 0.0  # quantizing or converting in this session (0 when cached)
    in_process: bool = True  # computes in pytest's process: its CPU time is the answer's
    uses_threads: bool = True  # --llm-threads reaches the computation (not a server's, not a replay)
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able, for reports


@runtime_checkable
class Engine(Protocol):
    """A loaded model that answers prompts; one instance per model per session."""

    name: str  # engine name, e.g. "transformers"
    facts: LoadFacts

    def generate(self, prompt: str, *, system: str | None, config: GenerationConfig) -> Answer:
        """Answer one prompt; must be deterministic for a greedy config."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """Everything besides the prompt that decides the answer (versions, recipe, source)."""
        ...

    def close(self) -> None:
        """Release memory; called before the next model loads."""
        ...
