"""The INT4 cache entry built tensor by tensor, never holding the whole bf16 model.

``from_pretrained`` + ``quantize_`` holds every bf16 weight before the first one is packed:
15 GB for a 7B model, 7.6 GB peak RSS for SmolLM2-1.7B's 1.15 GB of INT4 weights. Here the
model is built on the meta device from its config, the checkpoint is read one tensor at
a time (safetensors with ``readinto``, see ``_read``; ``.bin`` through
``torch.load(mmap=True)``), and each eligible linear layer is quantized, with the same
torchao config and filter as ``quantize_`` on the whole model, as soon as its last tensor
arrives (``TorchaoInt4.apply`` drives the reading, through ``STREAM_ATTR``).
Peak memory is about the INT4 model plus a layer or two in bf16 (plus, for ``.bin``, one
shard's mapped pages). ``benchmarks/bench_quantize_memory.py`` measures it: at Qwen2-1.5B
shape 1.5 GB above the imports for 1.2 GB of INT4 weights, against 4.9 to 5.4 GB before.

Why not transformers' own ``TorchAoConfig`` (which also quantizes while loading): with
the same torchao config on exactly the eligible weights (``FqnToConfig`` keyed by
``<module>.weight``; keyed by the module, transformers applies it to the bias as well and
torchao refuses) it gives the same bytes, but at Qwen2-1.5B shape it peaked at 4.3 GB
against 1.8 GB here (safetensors' mapped pages and the heap's holes stay resident), and it
reads only transformers folders, so a Qwen v1 / ChatGLM checkpoint would still need its
full bf16 ``converted`` copy on disk first. Here a conversion's ``map_tensor`` runs on
each source tensor as it is read.

Quantization is per-tensor (each group's scale and zero come from that weight alone), so
quantizing layer by layer gives the very bytes ``quantize_`` on the whole model gives;
``tests/test_stream_quant.py`` compares the two state dicts bit for bit. Models this path
does not fit (a checkpoint whose names need transformers' renaming, modules transformers
keeps in fp32, GGUF) return None and take the whole-model path.
"""

from __future__ import annotations

import ctypes
import functools
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmcheck.engines.transformers.conversions import (
    Conversion,
    ConversionError,
    check_complete,
    convert_tensors,
    read_config,
    shards,
    write_companions,
)
from pytest_llmcheck.engines.transformers.quantize import STREAM_ATTR, QuantReport, TorchaoInt4

if TYPE_CHECKING:
    import torch

# safetensors header dtypes -> torch dtype names
_SAFETENSORS_DTYPES = {
    "BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}
_WIDTHS = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


# Dense decoder families whose bf16 ``from_pretrained`` is a plain name-for-name load: no
# module kept in fp32, no weight renaming or fusing at load (``_plan`` checks names and
# shapes too). Others (MoE models whose routers stay fp32, remote code) take the
# whole-model path; add a type here once tests/test_stream_quant.py covers it.
STREAMED_TYPES = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "glm", "phi3", "gemma", "gemma2", "granite", "olmo2",
    "smollm3", "starcoder2",
})


@dataclass
class Streamed:
    """A model quantized while it was read, and what it took."""

    model: Any
    tokenizer: Any
    report: QuantReport
    seconds: float  # reading + quantizing, all of it


def _meta_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """A shard's tensors as meta tensors (names, shapes, dtypes), without reading their data."""
    import torch

    if path.suffix == ".safetensors":
        with path.open("rb") as f:
            header, _ = _safetensors_header(f)
        for name, info in header.items():
            yield name, torch.empty(info["shape"], dtype=_dtype(info["dtype"], path), device="meta")
        return
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for name, tensor in state.items():
        yield name, torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")


def _read(path: Path) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """A shard's tensors, one at a time, each with whether it lies on the file's mapped pages.

    safetensors files are read with plain ``readinto`` into memory of each tensor's own,
    not through ``safe_open``: its tensors lie on one mapping of the whole file, which
    stays (with every page read, counted in RSS) while any tensor of the file lives, a
    norm weight as much as the embeddings. A ``.bin`` read with ``mmap`` hands out tensors
    on the file's pages; those are copied before they are kept, and the mapping goes with
    the shard.
    """
    import torch

    if path.suffix == ".safetensors":
        with path.open("rb", buffering=0) as f:
            header, base = _safetensors_header(f)
            for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
                start, end = info["data_offsets"]
                data = torch.empty(end - start, dtype=torch.uint8)
                f.seek(base + start)
                view, done = data.numpy().data, 0
                while done < end - start:
                    got = f.readinto(view[done:])
                    if not got:
                        raise ConversionError(f"{path} ends inside tensor {name}")
                    done += got
                yield name, data.view(_dtype(info["dtype"], path)).reshape(info["shape"]), False
        return
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for name in list(state):
        yield name, state.pop(name), True


MAX_HEADER = 100_000_000  # the safetensors library's own limit on a header


def _safetensors_header(f: Any) -> tuple[dict[str, Any], int]:
    """A safetensors file's tensor table (name -> dtype, shape, data_offsets) and where data starts.

    Checked as the safetensors library checks it before anything is read on its word: the
    header's size within the file and the library's limit, each tensor's offsets inside the
    data and matching its shape and dtype. A file that fails is one ConversionError line.
    """
    name = getattr(f, "name", "a safetensors file")
    f.seek(0, 2)
    file_size = f.tell()
    f.seek(0)
    size = int.from_bytes(f.read(8), "little")
    if not 2 <= size <= min(MAX_HEADER, file_size - 8):
        raise ConversionError(f"{name}: not a safetensors file (header of {size} bytes in {file_size})")
    try:
        header = json.loads(f.read(size))
    except ValueError:
        raise ConversionError(f"{name}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{name}: not a safetensors file (its header is not a table)")
    header.pop("__metadata__", None)
    data_size = file_size - 8 - size
    for key, info in header.items():
        try:
            start, end = (int(x) for x in info["data_offsets"])
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            width = _WIDTHS.get(info["dtype"])  # another dtype: _dtype says it is not read here
        except (KeyError, TypeError, ValueError):
            raise ConversionError(f"{name}: tensor {key!r} has a malformed entry") from None
        if not 0 <= start <= end <= data_size or (width is not None and end - start != count * width):
            raise ConversionError(f"{name}: tensor {key!r} lies outside the file or has the wrong size")
    return header, 8 + size


def _dtype(name: str, path: Path) -> torch.dtype:
    import torch

    if name not in _SAFETENSORS_DTYPES:
        raise ConversionError(f"{path}: tensor dtype {name} is not read by the streamed INT4 build")
    dtype: torch.dtype = getattr(torch, _SAFETENSORS_DTYPES[name])
    return dtype


def _mapped(
    conversion: Conversion | None, config: dict[str, Any], tensors: Iterator[tuple[str, torch.Tensor, bool]]
) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """The target model's tensors: through the conversion's mapping when there is one."""
    for name, tensor, mapped in tensors:
        if conversion is None:
            yield name, tensor, mapped
            continue
        for key, out in convert_tensors(conversion, config, iter([(name, tensor)])):
            yield key, out, mapped


def _meta_model(config: Any, dtype: torch.dtype) -> Any:
    """The model with every parameter on the meta device and real, initialized buffers.

    Buffers (rotary ``inv_freq``) are not in checkpoints; ``from_pretrained`` recomputes
    them with the model's own ``initialize_weights``, and so does this (it is a no-op on
    meta parameters).
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        auto: Any = AutoModelForCausalLM  # from_config is untyped in transformers 5
        model = auto.from_config(config, dtype=dtype)
    for name, buffer in list(model.named_buffers()):
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, leaf, torch.empty_like(buffer, device="cpu"))
    model.initialize_weights()
    return model


def _plan(
    folder: Path, conversion: Conversion | None, config: dict[str, Any], model: Any
) -> list[Path] | None:
    """The shards to read, or None when their tensors do not fill this model one for one.

    Checked on meta tensors before any weight is read: a name transformers would rename
    or a missing tensor sends the model down the whole-model path rather than failing late.
    """
    try:
        files = shards(folder)
    except ConversionError:
        return None
    produced: dict[str, tuple[int, ...]] = {}
    for path in files:
        for name, tensor, _ in _mapped(conversion, config, ((n, t, False) for n, t in _meta_tensors(path))):
            produced[name] = tuple(tensor.shape)
    if conversion is not None:
        expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
        check_complete(conversion, produced, expected, str(folder))
        return files
    params = dict(model.named_parameters())  # one name per tensor: a tied alias is left out
    for name, param in params.items():
        if produced.get(name) != tuple(param.shape):
            return None
    persistent = set(model.state_dict()) - set(dict(model.named_parameters(remove_duplicate=False)))
    if any(name not in produced for name in persistent):
        return None
    return files


def stream_int4(
    folder: Path,
    quantizer: TorchaoInt4,
    *,
    conversion: Conversion | None = None,
    trust_remote_code: bool = False,
) -> Streamed | None:
    """Quantize the checkpoint in ``folder`` to ``quantizer``'s INT4 while reading it; None
    when the model does not fit this path (see the module doc).

    ``conversion``: the source is a Qwen v1 / ChatGLM checkpoint, read through its mapping;
    its config, tokenizer and generation config are written into a temporary folder and
    loaded from there, as from a ``converted`` entry: no full bf16 copy is written.
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    start = time.perf_counter()
    dtype = getattr(torch, quantizer.load_dtype)
    source_config = read_config(folder)
    if conversion is None and source_config.get("model_type") not in STREAMED_TYPES:
        return None  # before AutoConfig: an unknown type is the whole-model path's to report
    with tempfile.TemporaryDirectory(prefix="llmcheck-stream-") as scratch:
        meta: Path = folder
        if conversion is not None:
            meta = Path(scratch)
            dtypes = _source_dtypes(folder, conversion, source_config)
            write_companions(folder, meta, conversion, source_config, dtypes)
        config = AutoConfig.from_pretrained(str(meta), trust_remote_code=trust_remote_code)
        if getattr(config, "quantization_config", None) is not None:
            return None  # a pre-quantized checkpoint: transformers' own loader handles it
        if config.model_type not in STREAMED_TYPES or getattr(config, "auto_map", None):
            return None
        model = _meta_model(config, dtype)
        files = _plan(folder, conversion, source_config, model)
        if files is None:
            return None
        tokenizer = AutoTokenizer.from_pretrained(str(meta), trust_remote_code=trust_remote_code)
        if (meta / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(str(meta))

    def read_weights(quantize: Callable[[Any, str], float]) -> float:
        seconds = _fill(model, files, conversion, source_config, quantizer, dtype, quantize)
        model.tie_weights()
        stray = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
        if stray:
            raise RuntimeError(f"streamed INT4 build of {folder} left tensors unread: {', '.join(stray[:3])}")
        return seconds

    setattr(model, STREAM_ATTR, read_weights)
    try:
        report = quantizer.apply(model)  # reads the weights through read_weights
    finally:
        delattr(model, STREAM_ATTR)
    model.eval()
    return Streamed(model, tokenizer, report, time.perf_counter() - start)


def _source_dtypes(folder: Path, conversion: Conversion, config: dict[str, Any]) -> set[str]:
    """The dtypes of the converted tensors (the converted config records one when all agree)."""
    dtypes: set[str] = set()
    for path in shards(folder):
        for _, tensor in convert_tensors(conversion, config, _meta_tensors(path)):
            dtypes.add(str(tensor.dtype).removeprefix("torch."))
    return dtypes


def _fill(
    model: Any,
    files: list[Path],
    conversion: Conversion | None,
    config: dict[str, Any],
    quantizer: TorchaoInt4,
    dtype: torch.dtype,
    quantize: Callable[[Any, str], float],
) -> float:
    """Assign every tensor read; ``quantize`` each eligible linear once all of its tensors are
    in. Returns the seconds spent quantizing."""
    import torch

    params = dict(model.named_parameters())  # tied aliases left out: tie_weights restores them
    persistent = set(model.state_dict()) - set(dict(model.named_parameters(remove_duplicate=False)))
    modules = dict(model.named_modules())
    eligible = {name for name, module in modules.items() if quantizer.eligible(module, name)}
    seconds = 0.0
    for path in files:
        for name, tensor, mapped in _mapped(conversion, config, _read(path)):
            owner, _, leaf = name.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            if name in params:
                value = tensor.to(dtype=dtype) if tensor.is_floating_point() else tensor
                value = _own(value, mapped and value is tensor)
                setattr(module, leaf, torch.nn.Parameter(value, requires_grad=params[name].requires_grad))
            elif name in persistent:
                setattr(module, leaf, _own(tensor, mapped))
            else:  # an old rotary inv_freq or a tied alias: from_pretrained drops these too
                continue
            del tensor
            if owner in eligible and not any(p.is_meta for p in module.parameters(recurse=False)):
                seconds += quantize(module, owner)
                eligible.discard(owner)
                _trim()
    return seconds


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc
        return None


def _trim() -> None:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``).

    Each layer's bf16 weight and quantization temporaries are freed while its INT4 tensors
    stay, interleaved on the heap; glibc keeps the holes, so without this the resident
    memory grows by about a bf16 layer per layer (measured: 3.7 GB instead of 1.3 GB of
    anonymous memory at Qwen2-1.5B shape). Elsewhere (not glibc) nothing is done.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _own(tensor: torch.Tensor, mapped: bool) -> torch.Tensor:
    """``tensor`` in memory of its own: not on a file's pages, not a slice of a larger tensor
    (q/k/v split from Qwen v1's ``c_attn``), so that nothing larger stays alive through it."""
    import torch

    whole = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    if mapped or not whole or not tensor.is_contiguous():
        return tensor.clone(memory_format=torch.contiguous_format)
    return tensor
