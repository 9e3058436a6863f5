"""Quantizers: turn a loaded transformers model into its test-time form.

Each quantizer names the dtype the model should be loaded in and then converts it in
place, reporting how many linear layers it converted. A recipe that silently skips
layers is the classic trap (torchao's default group size 128 skips most layers of a
135M model), so every quantizer counts and the caller refuses a model where nothing
was converted.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pytest_llmcheck.errors import LlmcheckError, LlmcheckWarning

if TYPE_CHECKING:
    import torch

    from pytest_llmcheck.storage.cache import Cache


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
        text = (
            f"{self.method}: {self.layers_quantized}/{self.layers_total} linear layers, "
            f"weights {_mib(self.bytes_before)} -> {_mib(self.bytes_after)}, {when}"
        )
        if "w4a8_layers" in self.details:  # int4-a8: what runs with int8 activations
            head = " incl. lm_head" if self.details.get("w4a8_lm_head") else ""
            kernel = self.details.get("kernel_status", "")
            pages = "; weights advised for 2 MB pages" if self.details.get("w4a8_huge_pages") else ""
            layers = self.details["w4a8_layers"]
            text += f"; int8 activations in {layers} layers{head} (kernel {kernel}){pages}"
        return text


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class QuantizationError(LlmcheckError):
    """The recipe could not be applied in a way worth testing."""


class Quantizer(Protocol):
    # read-only properties, so the frozen dataclasses below satisfy the protocol
    @property
    def name(self) -> str:
        ...

    @property
    def load_dtype(self) -> str:
        """``"float32"`` or ``"bfloat16"``."""
        ...

    def recipe(self) -> dict[str, Any]:
        """What makes the result differ; part of cache keys and fingerprints."""
        ...

    def apply(self, model: torch.nn.Module) -> QuantReport:
        """The conversion whose result the cache keeps."""
        ...

    def weights_recipe(self) -> dict[str, Any]:
        """What the cached weights depend on (recipes sharing them share one entry)."""
        ...

    def finish(self, model: torch.nn.Module, report: QuantReport, cache: Cache | None) -> None:
        """What is done after every load, from the cache or not."""
        ...


@contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes held by parameters, counting the packed inner tensors of quantized ones."""
    total = 0
    for param in model.parameters():
        total += _tensor_bytes(param)
    return total


def _tensor_bytes(t: Any) -> int:
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None:
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    return int(t.numel() * t.element_size())


def _linear_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    import torch

    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def count_quantized(model: torch.nn.Module) -> tuple[int, int]:
    """(linear layers a recipe may touch, those whose weight is now quantized); lm_head excluded."""
    linears = [m for n, m in _linear_layers(model) if not n.endswith("lm_head")]
    return len(linears), sum(is_quantized_weight(m.weight) for m in linears)


def is_quantized_weight(weight: Any) -> bool:
    import torch

    return type(weight) not in (torch.Tensor, torch.nn.Parameter)


# the attribute of a meta-device model that reads its weights while ``TorchaoInt4.apply``
# quantizes them: (quantize one layer: (module, fqn) -> seconds) -> seconds spent quantizing
STREAM_ATTR = "llmcheck_read_weights"


@dataclass(frozen=True)
class NoQuant:
    """Keep the weights as loaded, in fp32 (``none``) or bf16 (``bf16``)."""

    name: str = "none"
    load_dtype: str = "float32"

    def recipe(self) -> dict[str, Any]:
        return {"method": self.name, "dtype": self.load_dtype}

    def apply(self, model: torch.nn.Module) -> QuantReport:
        size = weight_bytes(model)
        layers = len(_linear_layers(model))
        return QuantReport(method=self.name, layers_total=layers, bytes_before=size, bytes_after=size)

    def weights_recipe(self) -> dict[str, Any]:
        return self.recipe()

    def finish(self, model: torch.nn.Module, report: QuantReport, cache: Cache | None) -> None:
        pass


@dataclass(frozen=True)
class TorchaoInt4:
    """torchao's CPU INT4 weight-only path on a bf16 model; ``lm_head`` stays bf16.

    Measured on SmolLM2-135M, 1 thread: 28 tok/s against 19 for bf16 and 14 for fp32.
    """

    group_size: int = 32
    name: str = "int4"
    load_dtype: str = "bfloat16"
    min_fraction: float = 0.5

    def recipe(self) -> dict[str, Any]:
        return {"method": "torchao-int4-weight-only", "group_size": self.group_size, "skip": ["lm_head"]}

    def eligible(self, module: Any, fqn: str) -> bool:
        """torchao's ``filter_fn(module, fqn)``: linear layers the group size divides, not lm_head."""
        import torch

        return (
            isinstance(module, torch.nn.Linear)
            and not fqn.endswith("lm_head")
            and module.in_features % self.group_size == 0
        )

    def preflight(self) -> None:
        """What must hold before any INT4 work starts (nothing for plain INT4)."""

    def torchao_config(self) -> Any:
        with quiet_loggers("torchao", "torch.utils._pytree"):
            # torchao logs missing GPU kernels and torch pytree notices on import: noise on a CPU
            from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

        return PrototypeInt4WeightOnlyConfig(group_size=self.group_size)

    def apply(self, model: torch.nn.Module) -> QuantReport:
        """Quantize ``model``'s eligible layers in place.

        A model built on the meta device by ``stream`` carries ``STREAM_ATTR``: a function
        that reads its weights and quantizes each eligible layer (``quantize_module``) as
        soon as it is complete, so the whole model never exists in bf16. Either way this
        is the one step that quantizes (the cache tests interrupt builds through it).
        """
        self.preflight()
        config = self.torchao_config()
        from torchao.quantization import quantize_

        before = weight_bytes(model)  # of meta tensors too: their shapes and dtypes
        read_weights = getattr(model, STREAM_ATTR, None)
        if read_weights is not None:
            return self.report(model, before, read_weights(self.quantize_module))
        start = time.perf_counter()
        quantize_(model, config, filter_fn=self.eligible)
        return self.report(model, before, time.perf_counter() - start)

    def quantize_module(self, module: torch.nn.Module, fqn: str) -> float:
        """Quantize one linear layer the way ``apply`` does (the streamed build, ``stream``);
        returns the seconds it took. Each weight is packed from itself alone, so layer by
        layer gives the bytes ``apply`` gives on the whole model."""
        if not self.eligible(module, fqn):
            raise QuantizationError(f"{fqn} ({type(module).__name__}) is not an INT4-eligible linear layer")
        config = self.torchao_config()
        from torchao.quantization import quantize_

        start = time.perf_counter()
        quantize_(module, config, filter_fn=lambda m, _fqn: m is module)
        return time.perf_counter() - start

    def report(self, model: torch.nn.Module, before: int, seconds: float) -> QuantReport:
        """What ``apply`` reports for a model quantized in ``seconds`` from ``before`` bytes."""
        total, done = count_quantized(model)
        report = QuantReport(  # what the cache keeps: the INT4 weights, whichever recipe uses them
            method="int4",
            layers_total=total,
            layers_quantized=done,
            bytes_before=before,
            bytes_after=weight_bytes(model),
            seconds=seconds,
            details=self.weights_recipe(),
        )
        check_coverage(report, self.min_fraction)
        return report

    def weights_recipe(self) -> dict[str, Any]:
        return TorchaoInt4.recipe(self)

    def finish(self, model: torch.nn.Module, report: QuantReport, cache: Cache | None) -> None:
        pass


@dataclass(frozen=True)
class TorchaoInt4A8(TorchaoInt4):
    """``int4``'s weights (the same cache entry) multiplied by int8 activations, the way
    llama.cpp multiplies: faster per token, other answers; in portable numerics the same on
    every x86-64 CPU with AVX2 (see ``w4a8``)."""

    name: str = "int4-a8"

    def recipe(self) -> dict[str, Any]:
        from pytest_llmcheck.engines.transformers.w4a8 import kernel_source_digest

        group = self.group_size
        return {
            "method": "torchao-int4-weight-only", "group_size": group,
            "activations": f"int8, dynamic, per {group}",
            "lm_head": f"int4, per {group}, when its shape fits the kernel",
            "rms_norm": "one kernel call", "kernel": f"w4a8.cpp {kernel_source_digest()}",
        }

    def preflight(self) -> None:
        from pytest_llmcheck.engines.transformers import w4a8

        w4a8.preflight()  # before the INT4 work: a machine that cannot run the kernel says so first

    def finish(self, model: torch.nn.Module, report: QuantReport, cache: Cache | None) -> None:
        from pytest_llmcheck.engines.transformers import w4a8

        kernel = f"{w4a8.load_kernel(cache)}, {w4a8.body()} body"
        start = time.perf_counter()
        layers = w4a8.convert(model, lm_head_group=self.group_size)
        norms = w4a8.convert_norms(model)
        report.method = self.name
        report.bytes_after = weight_bytes(model) + w4a8.buffer_bytes(model)
        # kept for "from cache (built in ...)"
        built = {k: v for k, v in report.details.items() if k == "built_seconds"}
        report.details = {**built, **self.recipe(), "w4a8_layers": layers, "w4a8_norms": norms,
                          "w4a8_lm_head": w4a8.is_w4a8(getattr(model, "lm_head", None)),
                          "w4a8_huge_pages": w4a8.in_huge_pages(model),
                          "repack_seconds": round(time.perf_counter() - start, 3), "kernel_status": kernel}


def check_coverage(report: QuantReport, min_fraction: float) -> None:
    """Refuse a model where no layer was converted; warn loudly when few were."""
    if report.layers_total == 0 or report.layers_quantized == 0:
        raise QuantizationError(
            f"{report.method}: 0 of {report.layers_total} linear layers were quantized; "
            "the recipe does not fit this model (try --llm-quant=bf16 or none)"
        )
    if report.layers_quantized < min_fraction * report.layers_total:
        warnings.warn(
            LlmcheckWarning(
                f"{report.method}: only {report.layers_quantized} of {report.layers_total} linear layers "
                "were quantized; the rest stay in full precision"
            ),
            stacklevel=2,
        )


QUANTIZERS: dict[str, Quantizer] = {
    "int4": TorchaoInt4(),
    "int4-a8": TorchaoInt4A8(),
    "bf16": NoQuant(name="bf16", load_dtype="bfloat16"),
    "none": NoQuant(name="none", load_dtype="float32"),
}


def get_quantizer(name: str) -> Quantizer:
    try:
        return QUANTIZERS[name]
    except KeyError:
        raise QuantizationError(f"unknown quantization {name!r}; allowed: {', '.join(QUANTIZERS)}") from None
