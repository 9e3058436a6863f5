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

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return self.text


@dataclass
class QuantReport:
    """What a quantizer did, shown in the session summary."""

    method: str
    layers_total: int = 0
    layers_quantized: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        if self.layers_quantized == 0 and self.method in ("none", "bf16"):
            dtype = "fp32" if self.method == "none" else "bf16"
            return f"not quantized ({dtype}), {_mib(self.bytes_before)} weights"
        when = (
            f"{self.seconds:.2f}s"
            if self.seconds
            else f"from cache (built in {self.details.get('built_seconds', 0):.2f}s)"
        )
        return (
            f"{self.method}: {self.layers_quantized}/{self.layers_total} linear layers, "
            f"weights {_mib(self.bytes_before)} -> {_mib(self.bytes_after)}, {when}"
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@runtime_checkable
class Engine(Protocol):
    """A loaded model that answers prompts; one instance per model per session."""

    name: str  # engine name, e.g. "transformers"
    load_seconds: float
    quant: QuantReport

    def generate(self, prompt: str, *, system: str | None, config: GenerationConfig) -> Answer:
        """Answer one prompt; must be deterministic for a greedy config."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """Everything besides the prompt that decides the answer (versions, recipe, source)."""
        ...

    def close(self) -> None:
        """Release memory; called before the next model loads."""
        ...
