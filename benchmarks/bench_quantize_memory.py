"""Peak memory of building the INT4 cache entry: whole model (old) against streamed (new).

The old path loads the whole model in bf16 (``from_pretrained``; for a Qwen v1 / ChatGLM
checkpoint after writing its full bf16 conversion) and then quantizes it; the streamed
path (``engines/transformers/stream.py``) quantizes each layer as its tensors are read.
Each build runs in a fresh process, saves the entry's weights file like the cache does,
and reports its peak RSS (``ru_maxrss``, which counts mapped file pages too). The target
is peak <= 1.5 x the INT4 weights + one shard.

    python benchmarks/bench_quantize_memory.py              # Qwen2-1.5B shape, random bf16, 3 shards
    python benchmarks/bench_quantize_memory.py --quick      # a small shape, for a smoke run
    python benchmarks/bench_quantize_memory.py --model FOLDER   # a real folder (model_type qwen too)

Random weights: time and memory do not depend on the values. One run per path (peak RSS
does not wobble like timings; the seconds are one run's, on whatever else the machine runs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {  # Qwen2 configs; "full" is Qwen2-1.5B's
    "full": {"hidden_size": 1536, "num_hidden_layers": 28, "intermediate_size": 8960, "vocab_size": 151936,
             "num_attention_heads": 12, "num_key_value_heads": 2, "shards": 3},
    "quick": {"hidden_size": 512, "num_hidden_layers": 8, "intermediate_size": 2048, "vocab_size": 32000,
              "num_attention_heads": 8, "num_key_value_heads": 2, "shards": 2},
}


def write_model(out: Path, shape: dict[str, Any]) -> Path:
    """A random bf16 Qwen2 folder: config, a small BPE tokenizer, safetensors in ``shards`` files."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    if (out / "model.safetensors.index.json").is_file():
        return out  # written before: the weights' values do not matter
    out.mkdir(parents=True, exist_ok=True)
    shape = dict(shape)
    count = shape.pop("shards")
    config = Qwen2Config(**shape, tie_word_embeddings=True, max_position_embeddings=4096)
    config.architectures = ["Qwen2ForCausalLM"]
    config.dtype = "bfloat16"
    config.save_pretrained(out)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["hello world"], trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>").save_pretrained(out)
    with torch.device("meta"):
        names = {n: (tuple(t.shape)) for n, t in Qwen2ForCausalLM(config).named_parameters()}
    per_shard = sum(int(torch.Size(s).numel()) for s in names.values()) / count
    gen = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    part: dict[str, Any] = {}
    size, index = 0, 1

    def flush() -> None:
        nonlocal part, size, index
        name = f"model-{index:05d}-of-{count:05d}.safetensors"
        save_file(part, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
        part, size, index = {}, 0, index + 1

    for name, dims in names.items():
        part[name] = (torch.randn(dims, generator=gen) * 0.02).to(torch.bfloat16)
        size += part[name].numel()
        if size >= per_shard and index < count:
            flush()
    if part:
        flush()
    total = sum(2 * int(torch.Size(s).numel()) for s in names.values())
    index_data = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index_data), encoding="utf-8")
    return out


def build(path: str, folder: Path) -> dict[str, Any]:
    """One INT4 build in this process, as the cache does it (weights file saved); its numbers."""
    from pytest_llmcheck.config.registry import ModelRef
    from pytest_llmcheck.engines.transformers.conversions import convert, detect
    from pytest_llmcheck.engines.transformers.quantize import TorchaoInt4
    from pytest_llmcheck.engines.transformers.stream import stream_int4
    from pytest_llmcheck.engines.transformers.weights import WEIGHTS_FILE, _from_pretrained, _save_quantized

    quantizer = TorchaoInt4()
    conversion = detect(folder)
    quantizer.torchao_config()  # torch, transformers and torchao imported: the floor both paths share
    import transformers  # noqa: F401
    from torchao.quantization import quantize_  # noqa: F401

    imported = _rss()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-int4-") as tmp:
        if path == "new":
            streamed = stream_int4(folder, quantizer, conversion=conversion)
            if streamed is None:
                raise SystemExit(f"{folder}: the streamed build does not fit this model")
            model, tokenizer, report = streamed.model, streamed.tokenizer, streamed.report
        elif path == "hf":
            model, tokenizer, report = _torchao_config_build(folder, quantizer)
        else:
            source = folder
            if conversion is not None:  # what the cache did: a full bf16 `converted` entry first
                source = Path(tmp) / "converted"
                source.mkdir()
                convert(folder, source, conversion)
            ref = ModelRef(name="bench", source="local", location=str(source))
            model, tokenizer = _from_pretrained(source, ref, quantizer.load_dtype, False, False)
            report = quantizer.apply(model)
        out = Path(tmp) / "entry"
        out.mkdir()
        _save_quantized(model, tokenizer, report, out)
        file_bytes = (out / WEIGHTS_FILE).stat().st_size
    return {"path": path, "peak": _peak(), "imported": imported, "int4": report.bytes_after,
            "file": file_bytes, "seconds": time.perf_counter() - start, "quant": report.seconds,
            "layers": f"{report.layers_quantized}/{report.layers_total}"}


def _torchao_config_build(folder: Path, quantizer: Any) -> tuple[Any, Any, Any]:
    """transformers' own quantize-while-loading: ``TorchAoConfig`` with the same torchao config
    on exactly the modules ``TorchaoInt4.eligible`` picks (``FqnToConfig``), for comparison."""
    import torch
    from torchao.quantization import FqnToConfig
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TorchAoConfig

    auto: Any = AutoModelForCausalLM
    with torch.device("meta"):
        meta = auto.from_config(AutoConfig.from_pretrained(str(folder)), dtype=torch.bfloat16)
    names = [n for n, m in meta.named_modules() if quantizer.eligible(m, n)]
    # keyed by the weight: keyed by the module, transformers applies it to the bias too, and fails
    config = TorchAoConfig(FqnToConfig({f"{n}.weight": quantizer.torchao_config() for n in names}))
    model = auto.from_pretrained(str(folder), dtype=torch.bfloat16, quantization_config=config)
    return model, AutoTokenizer.from_pretrained(str(folder)), quantizer.report(model, 0, 0.0)


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _shard_bytes(folder: Path) -> int:
    from pytest_llmcheck.engines.transformers.conversions import shards

    return max(p.stat().st_size for p in shards(folder))


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--quick", action="store_true", help="a small Qwen2 shape instead of Qwen2-1.5B's")
    parser.add_argument("--model", type=Path, help="a model folder to build from instead of a random one")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/stream-bench"), help="where random models go")
    parser.add_argument("--paths", default="old,new", help="builds to run, in order: old, new, and hf "
                        "(transformers' TorchAoConfig, for comparison; not for model_type qwen/chatglm)")
    parser.add_argument("--build", choices=["old", "new", "hf"], help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.build:
        print(json.dumps(build(args.build, args.model)))
        return
    name = "quick" if args.quick else "full"
    folder = args.model or write_model(args.dir / f"qwen2-{name}", SHAPES[name])
    shard = _shard_bytes(folder)
    print(f"model: {folder} (largest shard {shard / 2**20:.0f} MiB), one run per path, "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    rows = []
    for path in args.paths.split(","):
        child = subprocess.run(
            [sys.executable, __file__, "--build", path, "--model", str(folder)],
            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        if child.returncode:
            raise SystemExit(f"{path} build failed:\n{child.stderr[-3000:]}")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    mib = 2**20
    print("peak: the build process's ru_maxrss; build: peak less the RSS after importing torch,\n"
          "transformers and torchao (what the build itself added); target: 1.5 x INT4 + largest shard;\n"
          "seconds: the whole build, entry file saved; quant s: of which quantize_ itself")
    print(f"{'path':<5} {'peak MiB':>9} {'import MiB':>10} {'build MiB':>9} {'INT4 MiB':>9} {'file MiB':>9} "
          f"{'build/INT4':>10} {'target MiB':>10} {'meets':>5} {'seconds':>8} {'quant s':>8} {'layers':>8}")
    for r in rows:
        target, added = 1.5 * r["int4"] + shard, r["peak"] - r["imported"]
        print(f"{r['path']:<5} {r['peak'] / mib:>9.0f} {r['imported'] / mib:>10.0f} {added / mib:>9.0f} "
              f"{r['int4'] / mib:>9.0f} {r['file'] / mib:>9.0f} {added / r['int4']:>10.2f} "
              f"{target / mib:>10.0f} "
              f"{'yes' if added <= target else 'no':>5} {r['seconds']:>8.1f} {r['quant']:>8.1f} "
              f"{r['layers']:>8}")


if __name__ == "__main__":
    main()
