"""Native conversions of checkpoints whose own code no longer runs on transformers 5.

Qwen-7B-Chat (``model_type: qwen``) and ChatGLM3-6B (``model_type: chatglm``) ship 2023
modeling code written for transformers 4.3x. Their architectures are plain ones that
transformers 5 has built in, so instead of running (and patching) that code, the
checkpoint is rewritten once into a built-in model folder: Qwen v1 -> ``Qwen2ForCausalLM``,
ChatGLM2/3 -> ``GlmForCausalLM``, with a fast ``tokenizer.json`` rebuilt from the repo's
own vocabulary file, the model's chat format as a chat template and its stop ids in
``generation_config.json``. No ``.py`` file of the repo is read or imported.

Each conversion has a mapping version; bump it whenever its output changes, so cached
conversions (keyed on the source files and this version) are rebuilt.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmcheck.engines.transformers.conversions.base import Conversion, ConversionError, TensorMap

__all__ = ["Conversion", "ConversionError", "TensorMap", "convert", "detect", "shards", "write_companions"]

if TYPE_CHECKING:
    import torch

SHARD_PREFIX = "model"
INDEX_FILE = "model.safetensors.index.json"
RECORD_FILE = "conversion.json"
ITREX_HINT = "--llm-model={name}@itrex runs such code in its own pinned environment"


def _registry() -> dict[str, Conversion]:
    from pytest_llmcheck.engines.transformers.conversions.chatglm import CHATGLM
    from pytest_llmcheck.engines.transformers.conversions.qwen import QWEN

    return {c.model_type: c for c in (QWEN, CHATGLM)}


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json as a dict ({} when absent or unreadable: not ours to judge)."""
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def detect(folder: Path) -> Conversion | None:
    """The conversion a model folder needs, by its config.json's ``model_type``; else None."""
    model_type = read_config(folder).get("model_type")
    if not isinstance(model_type, str):
        return None
    return _registry().get(model_type)


# -- reading the source checkpoint -------------------------------------------------


def shards(folder: Path) -> list[Path]:
    """The weight files in load order, from the index when there is one."""
    for index_name in (INDEX_FILE, "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise ConversionError(f"{folder}: {index_name} lists {missing[0]}, which is missing")
            return [folder / n for n in names]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    raise ConversionError(f"{folder} has no weights (model*.safetensors or pytorch_model*.bin)")


def read_shard(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of one weight file; ``.bin`` files are read with ``weights_only``."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118  (safe_open is not a mapping)
                yield name, f.get_tensor(name)
        return
    # weights_only: a downloaded pickle must not run code; mmap keeps one shard's pages at most
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    yield from state.items()


# -- writing the converted folder --------------------------------------------------


def expected_shapes(conversion: Conversion, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every parameter the target model has, with its shape, built on the meta device."""
    import torch
    import transformers

    target_cls = getattr(transformers, conversion.target)
    with torch.device("meta"):
        model = target_cls(conversion.target_config(config))
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def convert_tensors(
    conversion: Conversion, config: dict[str, Any], tensors: Iterator[tuple[str, torch.Tensor]]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Map source tensors to target tensors; unknown source names stop the conversion."""
    for name, tensor in tensors:
        if conversion.ignored.fullmatch(name):
            continue
        yield from conversion.map_tensor(config, name, tensor)


def check_complete(
    conversion: Conversion,
    produced: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
    where: str,
) -> None:
    """The converted tensors are exactly the target model's parameters, shape for shape."""
    missing = sorted(set(expected) - set(produced))
    extra = sorted(set(produced) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise ConversionError(
            f"{where} does not fit the {conversion.source} -> {conversion.target} mapping: {what} "
            f"({len(missing)} missing, {len(extra)} unexpected)"
        )
    for name, shape in produced.items():
        if expected[name] != shape:
            raise ConversionError(
                f"{where}: {name} has shape {list(shape)} after conversion, {conversion.target} "
                f"expects {list(expected[name])}"
            )


def convert(src: Path, out: Path, conversion: Conversion | None = None) -> dict[str, Any]:
    """Write the built-in form of the checkpoint in ``src`` into the (empty) folder ``out``.

    One source shard is in memory at a time: each becomes one safetensors shard of the
    same dtype (bf16/fp16 upcast exactly to fp32 later, so nothing is lost here).
    Returns the record also written to ``conversion.json``.
    """
    from safetensors.torch import save_file

    start = time.perf_counter()
    conversion = conversion or detect(src)
    if conversion is None:
        raise ConversionError(
            f"{src}: no native conversion for model_type {read_config(src).get('model_type')!r}"
        )
    config = read_config(src)
    expected = expected_shapes(conversion, config)
    files = shards(src)
    produced: dict[str, tuple[int, ...]] = {}
    weight_map: dict[str, str] = {}
    total = 0
    dtypes: set[str] = set()
    for i, shard in enumerate(files, 1):
        name = f"{SHARD_PREFIX}-{i:05d}-of-{len(files):05d}.safetensors"
        part: dict[str, torch.Tensor] = {}
        for key, tensor in convert_tensors(conversion, config, read_shard(shard)):
            if key in produced:
                raise ConversionError(f"{src}: {key} is produced twice (duplicate source tensors?)")
            part[key] = tensor.contiguous()
            produced[key] = tuple(tensor.shape)
            total += tensor.numel() * tensor.element_size()
            dtypes.add(str(tensor.dtype).removeprefix("torch."))
            weight_map[key] = name
        if part:
            save_file(part, str(out / name), metadata={"format": "pt"})
        del part
    check_complete(conversion, produced, expected, str(src))
    (out / INDEX_FILE).write_text(
        json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=1
        ),
        encoding="utf-8",
    )
    write_companions(src, out, conversion, config, dtypes)
    record = {
        **conversion.tag,
        "seconds": round(time.perf_counter() - start, 3),
        "tensors": len(produced),
        "bytes": total,
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def write_companions(
    src: Path, out: Path, conversion: Conversion, config: dict[str, Any], dtypes: set[str]
) -> None:
    """The converted folder's small files: config.json, the tokenizer, generation_config.json.

    Apart from the weights so that the streamed INT4 build (``stream``), which reads the
    source through ``map_tensor`` itself, gets the very same files. ``dtypes``: those of
    the converted tensors; config.json records the dtype when they all agree.
    """
    from transformers import GenerationConfig

    target_config = conversion.target_config(config)
    target_config.architectures = [conversion.target]
    if len(dtypes) == 1:
        target_config.dtype = next(iter(dtypes))
    target_config.save_pretrained(str(out))
    tokenizer = conversion.build_tokenizer(src, config)
    tokenizer.save_pretrained(str(out))
    generation: Any = GenerationConfig  # untyped in transformers 5
    generation(**conversion.generation(config, tokenizer)).save_pretrained(str(out))


# -- models whose own code cannot run here -------------------------------------------

_MISSING_PACKAGES = re.compile(
    r"requires the following packages that were not found in your environment: ([^.]+)"
)
_CANNOT_IMPORT = re.compile(r"cannot import name '([^']+)' from '([^']+)'")


def code_problem(folder: Path) -> str | None:
    """Why a model folder cannot load with transformers' built-in classes alone, or None.

    ``"remote"``: its config maps to its own code (``auto_map``) for a model_type that
    transformers does not have; ``"unknown"``: such a model_type and no code at all.
    Folders with a native conversion, GGUF files and built-in types have no problem.
    """
    from transformers.models.auto import configuration_auto

    builtin: Any = getattr(configuration_auto, "CONFIG_MAPPING_NAMES")  # noqa: B009  (not re-exported)

    config = read_config(folder)
    model_type = config.get("model_type")
    if not config or not isinstance(model_type, str) or detect(folder) is not None:
        return None
    if model_type in builtin:
        return None
    return "remote" if config.get("auto_map") else "unknown"


def _transformers_version() -> str:
    from importlib.metadata import version

    return version("transformers")


def remote_code_message(name: str, spec: str, folder: Path, exc: BaseException | None) -> str | None:
    """One line for a model whose own code is needed and cannot run, or None when ``exc`` is not that.

    ``exc`` None: the code was not allowed to run (no --llm-trust-remote-code). Otherwise
    the error the allowed code raised: a missing package, or a name it imports that this
    transformers no longer has (code written for transformers 4.x).
    """
    config = read_config(folder)
    model_type = config.get("model_type", "?")
    written_for = config.get("transformers_version")
    era = f" (written for transformers {written_for})" if written_for else ""
    itrex = ITREX_HINT.format(name=name)
    if exc is None:
        return (
            f"model {name!r} ({spec}) ships its own modeling code for model_type {model_type!r}{era}; "
            f"allow it with --llm-trust-remote-code={name} (or ini llmcheck_trust_remote_code), or {itrex}"
        )
    text = str(exc)
    missing = _MISSING_PACKAGES.search(text)
    if isinstance(exc, ImportError) and missing:
        packages = ", ".join(p.strip() for p in missing.group(1).split(","))
        return (
            f"model {name!r} ({spec}): its own code{era} needs package(s) not installed here: {packages}; "
            f"install them (pip install {packages.replace(',', '')}) if they work with transformers "
            f"{_transformers_version()}, or {itrex}"
        )
    older = _CANNOT_IMPORT.search(text)
    from_remote = any("transformers_modules" in (frame.filename or "") for frame in _frames(exc))
    if (isinstance(exc, ImportError) and older and older.group(2).startswith("transformers")) or (
        from_remote and isinstance(exc, (ImportError, AttributeError, TypeError, NameError))
    ):
        why = f"cannot import {older.group(1)} from {older.group(2)}" if older else _first_line(text)
        return (
            f"model {name!r} ({spec}): its own code{era} targets an older transformers than "
            f"{_transformers_version()} ({why}); {itrex}"
        )
    return None


def unknown_architecture_message(name: str, spec: str, folder: Path) -> str:
    """One line for a config whose model_type transformers does not know and that ships no code."""
    config = read_config(folder)
    return (
        f"model {name!r} ({spec}): model_type {config.get('model_type')!r} is not built into transformers "
        f"{_transformers_version()} and the folder ships no code for it (no auto_map in config.json); "
        f"natively converted here: {', '.join(sorted(_registry()))}; {ITREX_HINT.format(name=name)}"
    )


def _frames(exc: BaseException) -> list[Any]:
    import traceback

    return list(traceback.extract_tb(exc.__traceback__)) if exc.__traceback__ else []


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else "error"
