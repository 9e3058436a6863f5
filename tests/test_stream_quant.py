"""The INT4 entry built tensor by tensor (``stream``) against the whole-model path it replaces.

Why: the streamed build exists to save memory, never to change a byte. So on the tiny
Llama and the tiny Qwen v1 seed model (read through its conversion) the streamed INT4
state, buffers, config, tokenizer and answers are compared with ``from_pretrained`` +
``quantize_`` bit for bit; a converted model must not leave a ``converted`` entry behind;
an interrupted build must not leave a ready entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.config.registry import ModelRef
from pytest_llmcheck.engines.transformers import stream
from pytest_llmcheck.engines.transformers.conversions import convert, detect
from pytest_llmcheck.engines.transformers.quantize import QuantReport, TorchaoInt4, get_quantizer
from pytest_llmcheck.engines.transformers.weights import (
    WEIGHTS_FILE,
    _from_pretrained,
    _save_quantized,
    load_model,
)
from pytest_llmcheck.storage.cache import Cache
from tests.test_seed_models import FIXTURES, seed_dir  # noqa: F401  (a fixture)
from tests.tiny_model import build_tiny_model

INT4 = TorchaoInt4()


def _parts(t: Any) -> dict[str, Any]:
    """A tensor's inner tensors and attributes (torchao's INT4 tensors flatten into several)."""
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is None:
        return {"": t}
    names, meta = t.__tensor_flatten__()
    return {"meta": repr(meta), **{n: getattr(t, n) for n in names}}


def _bytes(t: Any) -> Any:
    import torch

    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_same_tensors(old: dict[str, Any], new: dict[str, Any]) -> None:
    import torch

    assert sorted(old) == sorted(new)
    for name in old:
        a, b = old[name], new[name]
        assert type(a) is type(b), name
        pa, pb = _parts(a), _parts(b)
        assert pa.keys() == pb.keys(), name
        for part in pa:
            x, y = pa[part], pb[part]
            if isinstance(x, torch.Tensor):
                assert (x.dtype, x.shape) == (y.dtype, y.shape), f"{name}.{part}"
                assert torch.equal(_bytes(x), _bytes(y)), f"{name}.{part}"  # bits: -0.0 is not 0.0
            else:
                assert x == y, f"{name}.{part}"


def assert_same_model(old: tuple[Any, Any, QuantReport], new: stream.Streamed, tmp: Path) -> None:
    """State, buffers, report, saved entry files and greedy answers all equal."""
    import torch

    model, tokenizer, report = old
    assert_same_tensors(model.state_dict(), new.model.state_dict())
    assert_same_tensors(dict(model.named_buffers()), dict(new.model.named_buffers()))
    for field in ("method", "layers_total", "layers_quantized", "bytes_before", "bytes_after", "details"):
        assert getattr(report, field) == getattr(new.report, field), field
    _save_quantized(model, tokenizer, report, tmp / "old")
    _save_quantized(new.model, new.tokenizer, new.report, tmp / "new")
    files = sorted(p.name for p in (tmp / "old").iterdir())
    assert files == sorted(p.name for p in (tmp / "new").iterdir())
    for name in files:
        if name.endswith(".json") and name != "quant.json":  # quant.json holds the seconds
            old_json, new_json = ((tmp / side / name).read_text() for side in ("old", "new"))
            assert json.loads(old_json) == json.loads(new_json), name
    ids = tokenizer("What is the capital of France?", return_tensors="pt").input_ids
    with torch.no_grad():
        a = model.generate(ids, max_new_tokens=8, do_sample=False)
        b = new.model.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(a, b)


def _whole_model(folder: Path) -> tuple[Any, Any, QuantReport]:
    ref = ModelRef(name="t", source="local", location=str(folder))
    model, tokenizer = _from_pretrained(folder, ref, "bfloat16", False, False)
    return model, tokenizer, INT4.apply(model)


@pytest.mark.filterwarnings("ignore:int4. only:pytest_llmcheck.errors.LlmcheckWarning")
@pytest.mark.parametrize("hidden", [64, 48])  # 48: only down_proj (in 96) fits group 32
def test_streamed_llama_equals_the_whole_model_path(tmp_path: Path, hidden: int) -> None:
    folder = build_tiny_model(tmp_path / "tiny", hidden=hidden)
    new = stream.stream_int4(folder, INT4)
    assert new is not None
    old = _whole_model(folder)
    assert new.report.layers_quantized == (14 if hidden == 64 else 2)
    assert_same_model(old, new, tmp_path)


def test_streamed_tied_embeddings_equal_the_whole_model_path(tmp_path: Path) -> None:
    """A checkpoint without lm_head.weight (tied to the embeddings, as in Qwen2-1.5B)."""
    from safetensors.torch import load_file, save_file

    folder = build_tiny_model(tmp_path / "tiny")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    weights = load_file(str(folder / "model.safetensors"))
    del weights["lm_head.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    new = stream.stream_int4(folder, INT4)
    assert new is not None
    assert new.model.lm_head.weight is new.model.model.embed_tokens.weight
    assert_same_model(_whole_model(folder), new, tmp_path)


@pytest.mark.parametrize("model", ["qwen", "chatglm3"])  # safetensors and .bin shards
def test_streamed_conversion_reads_the_source_through_its_mapping(
    seed_dir: Path, tmp_path: Path, model: str  # noqa: F811
) -> None:
    source = seed_dir / FIXTURES[model]
    conversion = detect(source)
    assert conversion is not None
    new = stream.stream_int4(source, INT4, conversion=conversion)
    assert new is not None
    (tmp_path / "converted").mkdir()
    convert(source, tmp_path / "converted", conversion)
    assert_same_model(_whole_model(tmp_path / "converted"), new, tmp_path)


def test_quantized_qwen_v1_needs_no_converted_entry(seed_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    source = seed_dir / FIXTURES["qwen"]
    ref = ModelRef(name="qwen", source="local", location=str(source))
    cache = Cache(tmp_path / "cache")
    first = load_model(ref, source, get_quantizer("int4"), cache=cache, trust_remote_code=False)
    kinds = sorted((e["kind"], e["ready"]) for e in cache.list())
    assert kinds == [("quantized", True)]
    again = load_model(ref, source, get_quantizer("int4"), cache=cache, trust_remote_code=False)
    assert not first.from_cache
    assert again.from_cache
    assert_same_tensors(first.model.state_dict(), again.model.state_dict())


def test_an_interrupted_build_leaves_no_ready_entry(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = ModelRef(name="tiny", source="local", location=str(tiny_model))
    cache = Cache(tmp_path / "cache")
    calls: list[str] = []

    def failing(self: TorchaoInt4, module: Any, fqn: str) -> float:
        calls.append(fqn)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a Ctrl-C in the middle of the build
        return real(self, module, fqn)

    real = TorchaoInt4.quantize_module
    monkeypatch.setattr(TorchaoInt4, "quantize_module", failing)
    with pytest.raises(KeyboardInterrupt):
        load_model(ref, tiny_model, get_quantizer("int4"), cache=cache, trust_remote_code=False)
    assert not [e for e in cache.list() if e["ready"]]
    monkeypatch.setattr(TorchaoInt4, "quantize_module", real)
    loaded = load_model(ref, tiny_model, get_quantizer("int4"), cache=cache, trust_remote_code=False)
    assert not loaded.from_cache
    ready = [e for e in cache.list() if e["ready"]]
    assert len(ready) == 1
    assert (Path(str(ready[0]["path"])) / WEIGHTS_FILE).is_file()


def test_a_checkpoint_with_other_names_takes_the_whole_model_path(tmp_path: Path) -> None:
    """A name transformers would rename (or a missing tensor) is found before any weight is
    read, and the model goes through ``from_pretrained`` instead of failing half-way."""
    from safetensors.torch import load_file, save_file

    folder = build_tiny_model(tmp_path / "tiny")
    weights = load_file(str(folder / "model.safetensors"))
    weights["model.norm.gamma"] = weights.pop("model.norm.weight")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert stream.stream_int4(folder, INT4) is None


def _rewrite_header(path: Path, change: Any) -> None:
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    new = change(header, size)
    if isinstance(new, bytes):  # the whole file as given
        path.write_bytes(new)
        return
    text = json.dumps(new, separators=(",", ":")).encode()  # the data keeps its offsets after the header
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size:])


def _first_tensor(header: dict[str, Any]) -> dict[str, Any]:
    return next(v for k, v in header.items() if k != "__metadata__")


def _huge_size(header: dict[str, Any], size: int) -> bytes:
    return (2**62).to_bytes(8, "little") + b"{}"


def _offsets_outside(header: dict[str, Any], size: int) -> dict[str, Any]:
    _first_tensor(header)["data_offsets"] = [0, 10**12]
    return header


def _wrong_size(header: dict[str, Any], size: int) -> dict[str, Any]:
    start, end = _first_tensor(header)["data_offsets"]
    _first_tensor(header)["data_offsets"] = [start, end - 2]
    return header


def _not_a_table(header: dict[str, Any], size: int) -> list[int]:
    return [1, 2, 3]


@pytest.mark.parametrize(("change", "message"), [
    (_huge_size, r"not a safetensors file \(header of \d+ bytes in \d+\)"),
    (_offsets_outside, r"lies outside the file or has the wrong size"),
    (_wrong_size, r"lies outside the file or has the wrong size"),
    (_not_a_table, r"not a safetensors file \(its header is not a table\)"),
])
def test_a_crafted_safetensors_header_is_one_line_not_a_read(
    tmp_path: Path, change: Any, message: str
) -> None:
    """The streamed build reads safetensors itself (see stream._read): every offset and size in
    a header is checked against the file before anything is read on its word."""
    from pytest_llmcheck.engines.transformers.conversions import ConversionError

    folder = build_tiny_model(tmp_path / "tiny")
    (weights,) = sorted(folder.glob("*.safetensors"))
    _rewrite_header(weights, change)
    with pytest.raises(ConversionError, match=message) as caught:
        stream.stream_int4(folder, INT4)
    assert "\n" not in str(caught.value)
    assert str(weights) in str(caught.value)
