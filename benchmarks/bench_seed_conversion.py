"""Time and memory of the native Qwen v1 conversion and its INT4 build, at real layer width.

Builds a random checkpoint in Qwen-7B-Chat's exact layout and widths (hidden 4096, 32
heads, MLP 2 x 11008, vocab 151936, bf16 safetensors shards, the real ``qwen.tiktoken``)
with only a few layers, then measures each step in a fresh process (peak RSS included):
the conversion, and loading the converted folder in bf16 + torchao INT4. Per-layer and
fixed costs are then scaled to the real 32 layers.

    python benchmarks/bench_seed_conversion.py --quick      # 2 layers (~3.3 GB of bf16 on disk)
    python benchmarks/bench_seed_conversion.py --layers 4

The tiktoken file is taken from ``$LLMCHECK_SEED_MODELS`` / ``../shared/seed-models``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL_LAYERS = 32
WIDTH = {
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "kv_channels": 128,
    "intermediate_size": 22016,
    "vocab_size": 151936,
}

STEP = r"""
import json, resource, sys, time
from pathlib import Path
step, src, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
start = time.perf_counter()
if step == "convert":
    from pytest_llmcheck.engines.transformers.conversions import convert
    convert(src, out)
else:
    import torch
    from transformers import AutoModelForCausalLM
    from pytest_llmcheck.engines.transformers.quantize import get_quantizer
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16)
    loaded = time.perf_counter() - start
    report = get_quantizer("int4").apply(model)
    print(json.dumps({"load_bf16": loaded, "int4": report.seconds}), file=sys.stderr)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss": rss}))
"""


def seed_tiktoken() -> Path:
    base = Path(os.environ.get("LLMCHECK_SEED_MODELS") or ROOT.parent / "shared" / "seed-models")
    return base / "qwen-7b-chat-tiny" / "qwen.tiktoken"


def build(folder: Path, layers: int) -> int:
    """A random bf16 Qwen v1 checkpoint (one shard per layer, plus one for the embeddings)."""
    import shutil

    import torch
    from safetensors.torch import save_file

    config = {
        "model_type": "qwen",
        "architectures": ["QWenLMHeadModel"],
        "num_hidden_layers": layers,
        "no_bias": True,
        "rotary_pct": 1.0,
        "rotary_emb_base": 10000,
        "layer_norm_epsilon": 1e-6,
        "seq_length": 8192,
        **WIDTH,
    }
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    shutil.copy(seed_tiktoken(), folder / "qwen.tiktoken")
    h, ff, v = WIDTH["hidden_size"], WIDTH["intermediate_size"] // 2, WIDTH["vocab_size"]

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape) * 0.02).to(torch.bfloat16)

    shards: list[dict[str, torch.Tensor]] = [
        {
            "transformer.wte.weight": rand(v, h),
            "lm_head.weight": rand(v, h),
            "transformer.ln_f.weight": torch.ones(h, dtype=torch.bfloat16),
        }
    ]
    for i in range(layers):
        p = f"transformer.h.{i}."
        shards.append(
            {
                p + "ln_1.weight": torch.ones(h, dtype=torch.bfloat16),
                p + "ln_2.weight": torch.ones(h, dtype=torch.bfloat16),
                p + "attn.c_attn.weight": rand(3 * h, h),
                p + "attn.c_attn.bias": rand(3 * h),
                p + "attn.c_proj.weight": rand(h, h),
                p + "mlp.w1.weight": rand(ff, h),
                p + "mlp.w2.weight": rand(ff, h),
                p + "mlp.c_proj.weight": rand(h, ff),
            }
        )
    weight_map, total = {}, 0
    for n, shard in enumerate(shards, 1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        for key, t in shard.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}), encoding="utf-8"
    )
    return total


def run_step(step: str, src: Path, out: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", STEP, step, str(src), str(out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    for line in done.stderr.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="2 layers")
    args = parser.parse_args()
    layers = 2 if args.quick else args.layers
    gib = 2**30
    with tempfile.TemporaryDirectory(prefix="bench-seed-") as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        src.mkdir()
        out.mkdir()
        t = time.perf_counter()
        total = build(src, layers)
        print(
            f"built a {layers}-layer Qwen v1 checkpoint at real width: {total / gib:.2f} GiB bf16 "
            f"({time.perf_counter() - t:.1f}s)"
        )
        conv = run_step("convert", src, out)
        int4 = run_step("int4", src, out)
    per_layer_bytes = (total - 2 * WIDTH["vocab_size"] * WIDTH["hidden_size"] * 2) / layers
    real_bytes = total + per_layer_bytes * (REAL_LAYERS - layers)
    scale = real_bytes / total
    print(
        f"convert: {conv['seconds']:.1f}s, {total / gib / conv['seconds']:.2f} GiB/s, "
        f"peak RSS {conv['peak_rss'] / gib:.2f} GiB"
    )
    print(
        f"load bf16 {int4['load_bf16']:.1f}s + int4 {int4['int4']:.1f}s (1 thread), "
        f"peak RSS {int4['peak_rss'] / gib:.2f} GiB"
    )
    print(
        f"scaled to {REAL_LAYERS} layers ({real_bytes / gib:.1f} GiB bf16): "
        f"convert ~{conv['seconds'] * scale:.0f}s, "
        f"int4 ~{int4['int4'] * (REAL_LAYERS / layers):.0f}s on 1 thread"
    )


if __name__ == "__main__":
    main()
