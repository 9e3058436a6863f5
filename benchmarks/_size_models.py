"""Random-weight models at real shapes for ``bench_size.py``, written once per machine.

Speed and memory depend on shapes, not values, so random bf16 weights (std 0.02, seed 0)
stand in for Qwen2-1.5B, Qwen2-7B and the seed study's Qwen-7B-Chat (Qwen v1 layout:
its tensor names, config keys and sharding). The tokenizer is the real Qwen vocabulary
(``qwen.tiktoken`` of the tiny seed copy), turned into a ``tokenizer.json`` by the
project's own Qwen v1 conversion, so llama.cpp and the engines tokenize alike.

Each Qwen2-shape folder also gets an F16 GGUF made by llama.cpp's own
``convert_hf_to_gguf.py`` (from the llama-cpp-python sdist), which llama.cpp then
quantizes its own way. Folders are complete only when their ``done.json`` exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEED_QWEN = ROOT.parent / "shared" / "seed-models" / "qwen-7b-chat-tiny"
MODELS = Path(
    os.environ.get("LLMCHECK_BENCH_MODELS", Path.home() / ".cache" / "pytest-llmcheck" / "bench-models")
)
LLAMA_CPP_PYTHON = "0.3.36"  # the sdist whose vendored llama.cpp converts to GGUF
SRC = Path("/tmp/bench-size-src")
DONE = "done.json"
STD = 0.02


@dataclass(frozen=True)
class Shape:
    """A Qwen2ForCausalLM shape (from the real model's config.json)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    rope_theta: float = 1_000_000.0
    max_positions: int = 131072


SHAPES = {
    "1.5b": ("qwen2-1.5b", Shape(1536, 28, 12, 2, 8960, 151936, tied=True)),
    "7b": ("qwen2-7b", Shape(3584, 28, 28, 4, 18944, 152064, tied=False)),
}

# Qwen-7B-Chat's config.json (ModelScope qwen/Qwen-7B-Chat), keys as in the tiny seed copy.
QWEN_V1_7B = {
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "kv_channels": 128,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "seq_length": 8192,
}
QWEN_V1_SHARDS = 8  # the real repo's model-0000N-of-00008.safetensors


def _random(*shape: int, generator: Any) -> Any:
    import torch

    out = torch.empty(*shape, dtype=torch.bfloat16)
    return out.normal_(0.0, STD, generator=generator)


def _ones(n: int) -> Any:
    import torch

    return torch.ones(n, dtype=torch.bfloat16)


def _write_shards(out: Path, tensors: Any, count: int, total: int) -> None:
    """Stream (name, tensor) into about ``count`` safetensors shards of ``total/count`` bytes
    plus the index: one shard in memory at a time."""
    from safetensors.torch import save_file

    target = total / count
    groups: list[list[str]] = []
    part: dict[str, Any] = {}
    size = 0

    def flush() -> None:
        nonlocal part, size
        save_file(part, str(out / f"part-{len(groups)}.tmp"), metadata={"format": "pt"})
        groups.append(list(part))
        part, size = {}, 0

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if part and size + nbytes > target * 1.05 and len(groups) < count - 1:
            flush()
        part[name] = tensor
        size += nbytes
    flush()
    weight_map: dict[str, str] = {}
    for i, names in enumerate(groups):  # named by the count actually written
        shard = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        (out / f"part-{i}.tmp").rename(out / shard)
        weight_map.update(dict.fromkeys(names, shard))
    index_data = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(
        json.dumps(index_data, indent=2) + "\n", encoding="utf-8"
    )


def _qwen2_tensors(s: Shape) -> Any:
    import torch

    g = torch.Generator().manual_seed(0)
    head_dim = s.hidden // s.heads
    kv = s.kv_heads * head_dim
    yield "model.embed_tokens.weight", _random(s.vocab, s.hidden, generator=g)
    for i in range(s.layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", _ones(s.hidden)
        yield p + "self_attn.q_proj.weight", _random(s.hidden, s.hidden, generator=g)
        yield p + "self_attn.q_proj.bias", _random(s.hidden, generator=g)
        yield p + "self_attn.k_proj.weight", _random(kv, s.hidden, generator=g)
        yield p + "self_attn.k_proj.bias", _random(kv, generator=g)
        yield p + "self_attn.v_proj.weight", _random(kv, s.hidden, generator=g)
        yield p + "self_attn.v_proj.bias", _random(kv, generator=g)
        yield p + "self_attn.o_proj.weight", _random(s.hidden, s.hidden, generator=g)
        yield p + "post_attention_layernorm.weight", _ones(s.hidden)
        yield p + "mlp.gate_proj.weight", _random(s.intermediate, s.hidden, generator=g)
        yield p + "mlp.up_proj.weight", _random(s.intermediate, s.hidden, generator=g)
        yield p + "mlp.down_proj.weight", _random(s.hidden, s.intermediate, generator=g)
    yield "model.norm.weight", _ones(s.hidden)
    if not s.tied:
        yield "lm_head.weight", _random(s.vocab, s.hidden, generator=g)


def _qwen2_bytes(s: Shape) -> int:
    kv = s.kv_heads * (s.hidden // s.heads)
    layer = (
        2 * s.hidden
        + s.hidden * s.hidden * 2
        + s.hidden
        + 2 * (kv * s.hidden + kv)
        + 3 * s.intermediate * s.hidden
    )
    return 2 * (s.vocab * s.hidden * (1 if s.tied else 2) + s.layers * layer + s.hidden)


def qwen_tokenizer() -> Any:
    """The real Qwen vocabulary as a fast tokenizer (the project's Qwen v1 conversion builds it)."""
    from pytest_llmcheck.engines.transformers.conversions.qwen import build_tokenizer

    return build_tokenizer(SEED_QWEN, {"seq_length": 8192})


def write_qwen2(size: str) -> Path:
    """A Qwen2-shape safetensors folder (bf16), config, tokenizer and generation config."""
    from transformers import GenerationConfig, Qwen2Config

    name, s = SHAPES[size]
    out = MODELS / name
    if (out / DONE).is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    total = _qwen2_bytes(s)
    _write_shards(out, _qwen2_tensors(s), max(1, round(total / 4e9)), total)
    config: Any = Qwen2Config(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        hidden_act="silu",
        max_position_embeddings=s.max_positions,
        rms_norm_eps=1e-6,
        tie_word_embeddings=s.tied,
        rope_parameters={"rope_type": "default", "rope_theta": s.rope_theta},
        use_sliding_window=False,
        bos_token_id=151643,
        eos_token_id=151645,
    )
    config.architectures = ["Qwen2ForCausalLM"]
    config.dtype = "bfloat16"
    config.save_pretrained(str(out))
    qwen_tokenizer().save_pretrained(str(out))
    generation: Any = GenerationConfig
    generation(eos_token_id=[151645, 151643], pad_token_id=151643, bos_token_id=151643).save_pretrained(
        str(out)
    )
    _done(out, {"shape": s.__dict__, "bytes": total, "seconds": round(time.perf_counter() - start, 1)})
    return out


def write_qwen_v1_7b() -> Path:
    """Qwen-7B-Chat as its repo lays it out (Qwen v1 names and config, 8 bf16 shards, qwen.tiktoken)."""
    import torch

    out = MODELS / "qwen-7b-chat"
    if (out / DONE).is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    c = QWEN_V1_7B
    hidden, vocab, inter = c["hidden_size"], c["vocab_size"], c["intermediate_size"] // 2
    g = torch.Generator().manual_seed(0)

    def tensors() -> Any:
        yield "transformer.wte.weight", _random(vocab, hidden, generator=g)
        for i in range(c["num_hidden_layers"]):
            p = f"transformer.h.{i}."
            yield p + "ln_1.weight", _ones(hidden)
            yield p + "attn.c_attn.weight", _random(3 * hidden, hidden, generator=g)
            yield p + "attn.c_attn.bias", _random(3 * hidden, generator=g)
            yield p + "attn.c_proj.weight", _random(hidden, hidden, generator=g)
            yield p + "ln_2.weight", _ones(hidden)
            yield p + "mlp.w1.weight", _random(inter, hidden, generator=g)
            yield p + "mlp.w2.weight", _random(inter, hidden, generator=g)
            yield p + "mlp.c_proj.weight", _random(hidden, inter, generator=g)
        yield "transformer.ln_f.weight", _ones(hidden)
        yield "lm_head.weight", _random(vocab, hidden, generator=g)

    layer = 2 * hidden + 3 * hidden * hidden + 3 * hidden + hidden * hidden + 3 * inter * hidden
    total = 2 * (2 * vocab * hidden + c["num_hidden_layers"] * layer + hidden)
    _write_shards(out, tensors(), QWEN_V1_SHARDS, total)
    config = json.loads((SEED_QWEN / "config.json").read_text(encoding="utf-8"))
    config.update(c)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for name in ("configuration.json", "generation_config.json", "tokenizer_config.json", "qwen.tiktoken"):
        shutil.copyfile(SEED_QWEN / name, out / name)
    _done(out, {"config": c, "bytes": total, "seconds": round(time.perf_counter() - start, 1)})
    return out


def _done(out: Path, record: dict[str, Any]) -> None:
    (out / DONE).write_text(
        json.dumps({**record, "written": time.strftime("%Y-%m-%d %H:%M")}, indent=1) + "\n", encoding="utf-8"
    )


# -- the F16 GGUF, by llama.cpp's own converter -------------------------------------------------


def converter() -> Path:
    """``convert_hf_to_gguf.py`` of the llama.cpp that llama-cpp-python 0.3.36 vendors (sdist via pip)."""
    base = SRC / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    script = base / "convert_hf_to_gguf.py"
    if script.is_file() and (base / "gguf-py").is_dir() and (base / "conversion").is_dir():
        return script
    SRC.mkdir(parents=True, exist_ok=True)
    sdist = SRC / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(SRC),
            ],
            check=True,
        )
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        wanted = tuple(prefix + p for p in ("convert_hf_to_gguf.py", "gguf-py/", "conversion/"))
        members = [m for m in tar.getmembers() if m.name.startswith(wanted)]
        tar.extractall(SRC, members=members, filter="data")
    return script


def gguf_folder(folder: Path) -> Path:
    """Where a model folder's GGUFs live: beside it, not in it. A file added to or deleted from
    the model folder changes its content digest, and the engine then builds its INT4 again."""
    return folder.with_name(f"{folder.name}-gguf")


def move_ggufs(folder: Path) -> None:
    """GGUFs an earlier version of this script wrote into the model folder go beside it."""
    target = gguf_folder(folder)
    for path in [*folder.glob("model-*.gguf"), *folder.glob("model-*.tmp")]:
        if path.suffix == ".tmp":  # a conversion cut short
            path.unlink()
            continue
        target.mkdir(exist_ok=True)
        if not (target / path.name).exists():
            path.rename(target / path.name)


def f16_gguf(folder: Path) -> Path:
    """The folder's weights as an F16 GGUF (kept beside it until quantized)."""
    out = gguf_folder(folder) / "model-f16.gguf"
    out.parent.mkdir(exist_ok=True)
    if out.is_file():
        return out
    script = converter()
    # Qwen2's set_vocab imports sentencepiece before it sees there is no tokenizer.model (then uses
    # tokenizer.json): an empty stand-in module spares installing it.
    stub = SRC / "stub"
    stub.mkdir(exist_ok=True)
    (stub / "sentencepiece.py").write_text("class SentencePieceProcessor:\n    pass\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": f"{script.parent / 'gguf-py'}:{stub}"}
    tmp = out.with_suffix(".tmp")
    log = Path("/tmp/bench-size-logs") / f"convert-{folder.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as err:  # its per-tensor lines stay out of the tables
        subprocess.run(
            [sys.executable, str(script), str(folder), "--outtype", "f16", "--outfile", str(tmp)],
            check=True,
            env=env,
            stdout=err,
            stderr=err,
        )
    tmp.rename(out)
    return out


# -- the stand-in hub ------------------------------------------------------------------------------


def streaming_hub() -> Any:
    """tests/hubserver.py's HubServer: it hashes files once and streams bodies from disk, so it
    serves a 15 GB model without holding it in memory."""
    from tests.hubserver import HubServer

    return HubServer()


def main() -> None:
    """``python benchmarks/_size_models.py 1.5b|7b|qwen-7b-chat [--gguf]``: write one model now."""
    import argparse

    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", choices=[*SHAPES, "qwen-7b-chat"])
    parser.add_argument("--gguf", action="store_true", help="also the F16 GGUF (Qwen2 shapes)")
    args = parser.parse_args()
    start = time.perf_counter()
    folder = write_qwen_v1_7b() if args.model == "qwen-7b-chat" else write_qwen2(args.model)
    print(f"{folder} ({time.perf_counter() - start:.0f}s)")
    if args.gguf and args.model in SHAPES:
        start = time.perf_counter()
        print(f"{f16_gguf(folder)} ({time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()
