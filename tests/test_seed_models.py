"""The seed study's own models, Qwen-7B-Chat and ChatGLM3-6B, converted natively (no remote code).

- exactness on the shared tiny copies of both hub repos (``../shared/seed-models``, or
  ``$LLMCHECK_SEED_MODELS``): prompt ids, 16 greedy ids and the top-5 logits that each
  model's own code produced (``reference.json``);
- this file's own random checkpoints in both original layouts (other sizes, head and
  group counts, larger weights) against a forward pass written here in plain torch from
  the original code's math, with negative controls showing that a wrong rotary or head
  split would be caught;
- the real-size configs mapped on the meta device (no weights allocated);
- the seed's command through the stand-in ModelScope hub, with repo ``.py`` files that
  must never be imported.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from pytest_llmcheck.config.registry import ModelRef, resolve
from pytest_llmcheck.engines.base import GenerationConfig
from pytest_llmcheck.engines.transformers.conversions import (
    ConversionError,
    check_complete,
    convert,
    convert_tensors,
    detect,
    expected_shapes,
)
from pytest_llmcheck.engines.transformers.conversions.chatglm import CHATGLM
from pytest_llmcheck.engines.transformers.conversions.qwen import QWEN
from pytest_llmcheck.engines.transformers.engine import ModelLoadError, TransformersEngine
from pytest_llmcheck.engines.transformers.quantize import get_quantizer
from pytest_llmcheck.storage.cache import Cache
from pytest_llmcheck.storage.hub import ENDPOINT_ENV
from tests.hubserver import HubServer

pytest_plugins = ["tests.conftest_hub"]

ROOT = Path(__file__).resolve().parent.parent
SEED_ENV = "LLMCHECK_SEED_MODELS"
FIXTURES = {"qwen": "qwen-7b-chat-tiny", "chatglm3": "chatglm3-6b-tiny"}
HUB_IDS = {"qwen": "qwen/Qwen-7B-Chat", "chatglm3": "ZhipuAI/chatglm3-6b"}
REPO_CODE = {
    "qwen": ("modeling_qwen.py", "configuration_qwen.py", "tokenization_qwen.py", "qwen_generation_utils.py"),
    "chatglm3": ("modeling_chatglm.py", "configuration_chatglm.py", "tokenization_chatglm.py"),
}


def seed_models_dir() -> Path:
    """``$LLMCHECK_SEED_MODELS``, else ``shared/seed-models`` beside the clone (as CI lays it out)."""
    override = os.environ.get(SEED_ENV, "").strip()
    return Path(override).expanduser() if override else ROOT.parent / "shared" / "seed-models"


@pytest.fixture(scope="session")
def seed_dir() -> Path:
    folder = seed_models_dir()
    missing = [name for name in FIXTURES.values() if not (folder / name / "reference.json").is_file()]
    if missing:  # fail, never skip: these fixtures are the proof that the conversion is exact
        pytest.fail(
            f"seed model fixtures missing in {folder}: {', '.join(missing)}; set {SEED_ENV} "
            "to the folder holding qwen-7b-chat-tiny/ and chatglm3-6b-tiny/",
            pytrace=False,
        )
    return folder


def reference(seed_dir: Path, model: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (seed_dir / FIXTURES[model] / "reference.json").read_text(encoding="utf-8")
    )
    return data


@pytest.fixture(scope="session")
def converted(seed_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both shared fixtures converted once for this session."""
    out = {}
    for model, name in FIXTURES.items():
        folder = tmp_path_factory.mktemp("converted") / name
        folder.mkdir()
        record = convert(seed_dir / name, folder)
        assert record["converted"] is True
        out[model] = folder
    return out


# -- exactness on the shared fixtures ------------------------------------------------


@pytest.mark.parametrize("model", sorted(FIXTURES))
def test_detects_by_model_type(seed_dir: Path, model: str) -> None:
    conversion = detect(seed_dir / FIXTURES[model])
    assert conversion is not None
    assert conversion.target == {"qwen": "Qwen2ForCausalLM", "chatglm3": "GlmForCausalLM"}[model]


@pytest.mark.parametrize("model", sorted(FIXTURES))
def test_prompt_ids_exact(converted: dict[str, Path], seed_dir: Path, model: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(converted[model]))
    for riddle in reference(seed_dir, model)["riddles"]:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": riddle["prompt"]}], add_generation_prompt=True, return_dict=True
        )["input_ids"]
        assert ids == riddle["prompt_ids"], riddle["prompt"]


@pytest.mark.parametrize("model", sorted(FIXTURES))
def test_greedy_ids_and_top5_logits_exact(converted: dict[str, Path], seed_dir: Path, model: str) -> None:
    from transformers import AutoModelForCausalLM

    ref = reference(seed_dir, model)
    lm: Any = AutoModelForCausalLM.from_pretrained(str(converted[model]), dtype=torch.float32).eval()
    assert lm.generation_config.eos_token_id == ref["stop_ids"]
    for riddle in ref["riddles"]:
        ids = torch.tensor([riddle["prompt_ids"]])
        with torch.inference_mode():
            logits = lm(ids).logits[0, -1]
            out = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
        top = torch.topk(logits, 5)
        assert top.indices.tolist() == [i for i, _ in riddle["last_top5"]]
        assert top.values.tolist() == pytest.approx([v for _, v in riddle["last_top5"]], abs=1e-4)
        assert out[0, ids.shape[1] :].tolist() == riddle["greedy_ids"]


@pytest.mark.parametrize("model", sorted(FIXTURES))
def test_engine_answers_like_the_original_and_caches_the_conversion(
    seed_dir: Path, model: str, tmp_path: Path
) -> None:
    """Through the engine's load path (cache entry, fp32): each answer is the reference's greedy text."""
    ref_ = reference(seed_dir, model)
    spec = ModelRef(name=model, source="local", location=str(seed_dir / FIXTURES[model]))
    cache = Cache(tmp_path / "cache")
    config = GenerationConfig(max_new_tokens=16)
    engine = TransformersEngine.load(spec, Path(spec.location), get_quantizer("none"), threads=1, cache=cache)
    try:
        for riddle in ref_["riddles"]:
            answer = engine.generate(riddle["prompt"], system=None, config=config)
            assert answer.prompt_tokens == len(riddle["prompt_ids"])
            assert answer.text == riddle["greedy_text"].strip()  # the engine strips answers
        fingerprint = engine.fingerprint()
        assert fingerprint["conversion"] == {
            "converted": True,
            "from": detect(Path(spec.location)).model_type,  # type: ignore[union-attr]
            "to": {"qwen": "Qwen2ForCausalLM", "chatglm3": "GlmForCausalLM"}[model],
            "mapping": 2,  # 2: tokenizers built by transformers' converters (same ids)
        }
        assert "converted" in engine.facts.summary
        assert engine.facts.details["conversion"]["seconds"] > 0
        # the converted Qwen (Qwen2, q/k/v with bias) answered through the lean decode loop;
        # GLM is not one of its architectures and keeps generate()
        decode = engine.facts.details["decode"]
        expected = "fast" if model == "qwen" else "generate() (architecture 'glm'"
        assert decode.startswith(expected)
    finally:
        engine.close()
    entries = [e for e in cache.list() if e["kind"] == "converted"]
    assert len(entries) == 1
    assert entries[0]["ready"]
    assert not list(Path(str(entries[0]["path"])).glob("*.py"))
    again = TransformersEngine.load(spec, Path(spec.location), get_quantizer("none"), threads=1, cache=cache)
    try:
        assert again.facts.from_cache is True
        assert again.facts.details["conversion"]["seconds"] == 0.0
        first = ref_["riddles"][0]
        assert (
            again.generate(first["prompt"], system=None, config=config).text == first["greedy_text"].strip()
        )
    finally:
        again.close()


def test_no_cache_converts_into_a_temporary_folder(
    seed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    spec = ModelRef(name="chatglm3", source="local", location=str(seed_dir / FIXTURES["chatglm3"]))
    engine = TransformersEngine.load(spec, Path(spec.location), get_quantizer("none"), threads=1, cache=None)
    try:
        first = reference(seed_dir, "chatglm3")["riddles"][0]
        answer = engine.generate(first["prompt"], system=None, config=GenerationConfig(max_new_tokens=16))
        assert answer.text == first["greedy_text"].strip()
        assert engine.fingerprint()["conversion"]["mapping"] == 2
    finally:
        engine.close()
    assert list(scratch.iterdir()) == []  # the temporary conversion is gone


def test_chatglm_tokenizer_keeps_words_that_contain_special_names(converted: dict[str, Path]) -> None:
    """``sop``/``eop`` are ChatGLM3 special tokens and English letter runs: "people" stays text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(converted["chatglm3"]))
    ids = tokenizer("people desktop", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("eop") not in ids
    assert tokenizer.convert_tokens_to_ids("sop") not in ids
    assert tokenizer.decode(ids) == "people desktop"


# -- own variants: random checkpoints in the original layouts vs a plain-torch forward ----


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v: [T, heads, head_dim] -> [T, heads * head_dim], softmax(q k^T / sqrt(d)) v."""
    t, heads, dim = q.shape
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(dim)
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(t, heads * dim)


def qwen_v1_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensors of QWenLMHeadModel (modeling_qwen.py), by its own layer definitions."""
    hidden, vocab = cfg["hidden_size"], cfg["vocab_size"]
    proj = cfg["kv_channels"] * cfg["num_attention_heads"]
    ff = cfg["intermediate_size"] // 2
    shapes: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (vocab, hidden)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        shapes |= {
            p + "ln_1.weight": (hidden,),
            p + "attn.c_attn.weight": (3 * proj, hidden),
            p + "attn.c_attn.bias": (3 * proj,),
            p + "attn.c_proj.weight": (hidden, proj),
            p + "ln_2.weight": (hidden,),
            p + "mlp.w1.weight": (ff, hidden),
            p + "mlp.w2.weight": (ff, hidden),
            p + "mlp.c_proj.weight": (hidden, ff),
        }
    return shapes | {"transformer.ln_f.weight": (hidden,), "lm_head.weight": (vocab, hidden)}


def qwen_v1_forward(
    sd: dict[str, torch.Tensor], cfg: dict[str, Any], ids: torch.Tensor, *, rotary: str = "half"
) -> torch.Tensor:
    """Logits [T, vocab] the way modeling_qwen.py computes them (fp32, eager)."""
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    dim, eps, t = hidden // heads, cfg["layer_norm_epsilon"], ids.shape[0]
    inv = 1.0 / (cfg["rotary_emb_base"] ** (torch.arange(0, dim, 2).float() / dim))
    emb = torch.cat([torch.outer(torch.arange(t).float(), inv)] * 2, -1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]

    def rot(x: torch.Tensor) -> torch.Tensor:  # _rotate_half: (j d) -> j d, cat(-x2, x1)
        if rotary == "interleaved":  # a negative control: the wrong rotary layout
            x1, x2 = x[..., 0::2], x[..., 1::2]
            return x * cos + torch.stack((-x2, x1), -1).flatten(-2) * sin
        x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
        return x * cos + torch.cat((-x2, x1), -1) * sin

    x = sd["transformer.wte.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        h = _rms(x, sd[p + "ln_1.weight"], eps)
        qkv = h @ sd[p + "attn.c_attn.weight"].T + sd[p + "attn.c_attn.bias"]
        q, k, v = (part.reshape(t, heads, dim) for part in qkv.split(hidden, -1))
        x = x + _causal_attention(rot(q), rot(k), v) @ sd[p + "attn.c_proj.weight"].T
        h = _rms(x, sd[p + "ln_2.weight"], eps)
        a1, a2 = h @ sd[p + "mlp.w1.weight"].T, h @ sd[p + "mlp.w2.weight"].T
        x = x + (a1 * F.silu(a2)) @ sd[p + "mlp.c_proj.weight"].T
    return _rms(x, sd["transformer.ln_f.weight"], eps) @ sd["lm_head.weight"].T


def chatglm_geometry(cfg: dict[str, Any]) -> tuple[int, int, int]:
    heads = cfg["num_attention_heads"]
    groups = cfg["multi_query_group_num"] if cfg["multi_query_attention"] else heads
    return heads, groups, cfg["kv_channels"]


def chatglm_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensors of ChatGLMForConditionalGeneration (modeling_chatglm.py), by its own definitions."""
    hidden, vocab, ffn = cfg["hidden_size"], cfg["padded_vocab_size"], cfg["ffn_hidden_size"]
    heads, groups, dim = chatglm_geometry(cfg)
    qkv = heads * dim + 2 * groups * dim
    shapes: dict[str, tuple[int, ...]] = {"transformer.embedding.word_embeddings.weight": (vocab, hidden)}
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "self_attention.query_key_value.weight": (qkv, hidden),
            p + "self_attention.query_key_value.bias": (qkv,),
            p + "self_attention.dense.weight": (hidden, heads * dim),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "mlp.dense_h_to_4h.weight": (2 * ffn, hidden),
            p + "mlp.dense_4h_to_h.weight": (hidden, ffn),
        }
    return shapes | {
        "transformer.encoder.final_layernorm.weight": (hidden,),
        "transformer.output_layer.weight": (vocab, hidden),
        "transformer.rotary_pos_emb.inv_freq": (dim // 4,),  # RotaryEmbedding(kv_channels // 2)
    }


def chatglm_forward(
    sd: dict[str, torch.Tensor],
    cfg: dict[str, Any],
    ids: torch.Tensor,
    *,
    rotary: str = "interleaved",
    kv_split: str = "blocks",
) -> torch.Tensor:
    """Logits [T, vocab] the way modeling_chatglm.py computes them (fp32)."""
    heads, groups, dim = chatglm_geometry(cfg)
    eps, t, rot_dim = cfg["layernorm_epsilon"], ids.shape[0], dim // 2
    base = 10000 * cfg.get("rope_ratio", 1)
    theta = 1.0 / (base ** (torch.arange(0, rot_dim, 2).float() / rot_dim))
    angles = torch.outer(torch.arange(t).float(), theta)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]

    def rot(x: torch.Tensor) -> torch.Tensor:  # apply_rotary_pos_emb: pairs (x0, x1) of the first half
        part, rest = x[..., :rot_dim], x[..., rot_dim:]
        if rotary == "half":  # a negative control: Llama's rotate_half instead of pairs
            x0, x1 = part[..., : rot_dim // 2], part[..., rot_dim // 2 :]
            c, s = cos, sin
            return torch.cat((x0 * c - x1 * s, x1 * c + x0 * s, rest), -1)
        pairs = part.reshape(*part.shape[:-1], rot_dim // 2, 2)
        x0, x1 = pairs[..., 0], pairs[..., 1]
        out = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), -1).flatten(-2)
        return torch.cat((out, rest), -1)

    def expand(x: torch.Tensor) -> torch.Tensor:  # group g serves heads g*r .. g*r+r-1
        if kv_split == "tiled":  # a negative control: groups repeated round-robin
            return x.repeat(1, heads // groups, 1)
        return x.unsqueeze(-2).expand(t, groups, heads // groups, dim).reshape(t, heads, dim)

    x = sd["transformer.embedding.word_embeddings.weight"][ids]
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        h = _rms(x, sd[p + "input_layernorm.weight"], eps)
        qkv = (
            h @ sd[p + "self_attention.query_key_value.weight"].T
            + sd[p + "self_attention.query_key_value.bias"]
        )
        q, k, v = qkv.split([heads * dim, groups * dim, groups * dim], -1)
        q, k, v = q.reshape(t, heads, dim), k.reshape(t, groups, dim), v.reshape(t, groups, dim)
        ctx = _causal_attention(rot(q), expand(rot(k)), expand(v))
        x = x + ctx @ sd[p + "self_attention.dense.weight"].T
        h = _rms(x, sd[p + "post_attention_layernorm.weight"], eps)
        gate, up = (h @ sd[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, -1)
        x = x + (F.silu(gate) * up) @ sd[p + "mlp.dense_4h_to_h.weight"].T
    x = _rms(x, sd["transformer.encoder.final_layernorm.weight"], eps)
    return x @ sd["transformer.output_layer.weight"].T


def qwen_cfg(
    hidden: int, heads: int, layers: int, ff: int, vocab: int, base: float = 10000.0
) -> dict[str, Any]:
    return {
        "model_type": "qwen",
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "kv_channels": hidden // heads,
        "num_hidden_layers": layers,
        "intermediate_size": 2 * ff,
        "vocab_size": vocab,
        "no_bias": True,
        "rotary_pct": 1.0,
        "rotary_emb_base": base,
        "layer_norm_epsilon": 1e-6,
        "seq_length": 8192,
    }


def chatglm_cfg(
    hidden: int,
    heads: int,
    dim: int,
    groups: int | None,
    layers: int,
    ffn: int,
    vocab: int,
    rope_ratio: float = 1.0,
) -> dict[str, Any]:
    return {
        "model_type": "chatglm",
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "kv_channels": dim,
        "multi_query_attention": groups is not None,
        "multi_query_group_num": groups or heads,
        "num_layers": layers,
        "ffn_hidden_size": ffn,
        "padded_vocab_size": vocab,
        "add_qkv_bias": True,
        "add_bias_linear": False,
        "rmsnorm": True,
        "post_layer_norm": True,
        "layernorm_epsilon": 1e-5,
        "seq_length": 8192,
        "rope_ratio": rope_ratio,
    }


VARIANTS: dict[
    str, tuple[dict[str, Any], Callable[..., torch.Tensor], Callable[..., dict[str, tuple[int, ...]]]]
] = {
    "qwen-96x6h-3l": (qwen_cfg(96, 6, 3, 80, 300), qwen_v1_forward, qwen_v1_shapes),
    "qwen-128x2h-1l-base5e5": (qwen_cfg(128, 2, 1, 200, 257, 500000.0), qwen_v1_forward, qwen_v1_shapes),
    "chatglm-6h-2groups-3l": (chatglm_cfg(96, 6, 16, 2, 3, 120, 300), chatglm_forward, chatglm_shapes),
    "chatglm-4h-mqa-dim32": (chatglm_cfg(64, 4, 32, 1, 2, 100, 260, 4.0), chatglm_forward, chatglm_shapes),
    "chatglm-4h-no-groups": (chatglm_cfg(80, 4, 24, None, 2, 90, 270), chatglm_forward, chatglm_shapes),
}


def random_checkpoint(shapes: dict[str, tuple[int, ...]], seed: int, std: float) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in shapes.items():
        if name.endswith("inv_freq"):
            sd[name] = torch.zeros(shape)
        elif name.endswith("norm.weight") or ".ln_" in name:
            sd[name] = 1.0 + 0.3 * torch.randn(shape, generator=gen)  # norms far from 1: a swap shows
        else:
            sd[name] = std * torch.randn(shape, generator=gen)
    return sd


def converted_model(cfg: dict[str, Any], sd: dict[str, torch.Tensor]) -> Any:
    """The target model holding ``sd`` after the conversion's mapping (every tensor checked)."""
    import transformers

    conversion = detect_from(cfg)
    tensors = dict(convert_tensors(conversion, cfg, iter(sd.items())))
    check_complete(
        conversion,
        {k: tuple(v.shape) for k, v in tensors.items()},
        expected_shapes(conversion, cfg),
        "variant",
    )
    model = getattr(transformers, conversion.target)(conversion.target_config(cfg)).eval()
    model.load_state_dict(tensors, strict=True)
    return model


def detect_from(cfg: dict[str, Any]) -> Any:
    return {"qwen": QWEN, "chatglm": CHATGLM}[cfg["model_type"]]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_matches_the_original_math(variant: str) -> None:
    cfg, forward, shapes = VARIANTS[variant]
    sd = random_checkpoint(shapes(cfg), seed=sorted(VARIANTS).index(variant), std=0.2)
    model = converted_model(cfg, sd)
    vocab = cfg.get("vocab_size") or cfg["padded_vocab_size"]
    ids = torch.randint(0, vocab, (37,), generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        expected = forward(sd, cfg, ids)
        got = model(ids[None]).logits[0]
        assert expected.std() > 0.5  # large weights: the logits are far from uniform
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        # greedy decoding with the KV cache: positions past the prompt rotate right too
        out = model.generate(
            ids[None, :9],
            attention_mask=torch.ones(1, 9, dtype=torch.long),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0].tolist()
        seq = ids[:9].tolist()
        for _ in range(12):
            seq.append(int(forward(sd, cfg, torch.tensor(seq))[-1].argmax()))
        assert out == seq


@pytest.mark.parametrize(
    ("variant", "wrong"),
    [
        ("qwen-96x6h-3l", {"rotary": "interleaved"}),
        ("chatglm-6h-2groups-3l", {"rotary": "half"}),
        ("chatglm-6h-2groups-3l", {"kv_split": "tiled"}),
    ],
)
def test_a_wrong_layout_would_be_caught(variant: str, wrong: dict[str, str]) -> None:
    """Negative controls: the variants' logits tell the real rotary and head split from wrong ones."""
    cfg, forward, shapes = VARIANTS[variant]
    sd = random_checkpoint(shapes(cfg), seed=sorted(VARIANTS).index(variant), std=0.2)
    ids = torch.randint(0, 300, (37,), generator=torch.Generator().manual_seed(7))
    right, bad = forward(sd, cfg, ids), forward(sd, cfg, ids, **wrong)
    assert (right - bad).abs().max() > 1e-2


def test_swapped_mlp_projections_would_be_caught() -> None:
    cfg, forward, shapes = VARIANTS["qwen-96x6h-3l"]
    sd = random_checkpoint(shapes(cfg), seed=3, std=0.2)
    swapped = dict(sd)
    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.h.{i}.mlp."
        swapped[p + "w1.weight"], swapped[p + "w2.weight"] = sd[p + "w2.weight"], sd[p + "w1.weight"]
    ids = torch.arange(20)
    model = converted_model(cfg, swapped)
    with torch.inference_mode():
        assert (model(ids[None]).logits[0] - forward(sd, cfg, ids)).abs().max() > 1e-2


def test_a_checkpoint_that_does_not_fit_fails_with_one_line() -> None:
    cfg, _forward, shapes = VARIANTS["chatglm-6h-2groups-3l"]
    sd = random_checkpoint(shapes(cfg), seed=0, std=0.02)
    sd["transformer.encoder.layers.0.self_attention.extra.weight"] = torch.zeros(2)
    with pytest.raises(
        ConversionError, match=r"unexpected tensor transformer\.encoder\.layers\.0\.self_attention"
    ):
        converted_model(cfg, sd)
    del sd["transformer.encoder.layers.0.self_attention.extra.weight"]
    del sd["transformer.encoder.layers.2.mlp.dense_4h_to_h.weight"]
    with pytest.raises(ConversionError, match=r"missing model\.layers\.2\.mlp\.down_proj\.weight"):
        converted_model(cfg, sd)
    with pytest.raises(ConversionError, match="add_bias_linear"):
        CHATGLM.target_config({**cfg, "add_bias_linear": True})
    with pytest.raises(ConversionError, match="rotary_pct"):
        QWEN.target_config({**VARIANTS["qwen-96x6h-3l"][0], "rotary_pct": 0.5})


# -- the real sizes, on the meta device ----------------------------------------------------

REAL = {
    # qwen/Qwen-7B-Chat config.json
    "qwen": (qwen_cfg(4096, 32, 32, 11008, 151936), qwen_v1_shapes, 7_721_324_544),
    # ZhipuAI/chatglm3-6b config.json
    "chatglm3": (chatglm_cfg(4096, 32, 128, 2, 28, 13696, 65024), chatglm_shapes, 6_243_584_000),
}


@pytest.mark.parametrize("model", sorted(REAL))
def test_real_size_mapping_on_the_meta_device(model: str) -> None:
    cfg, shapes, params = REAL[model]
    conversion = detect_from(cfg)
    with torch.device("meta"):
        sd = {name: torch.empty(shape, dtype=torch.bfloat16) for name, shape in shapes(cfg).items()}
    tensors = dict(convert_tensors(conversion, cfg, iter(sd.items())))
    assert all(t.is_meta for t in tensors.values())  # nothing was allocated
    check_complete(
        conversion, {k: tuple(v.shape) for k, v in tensors.items()}, expected_shapes(conversion, cfg), model
    )
    assert sum(t.numel() for t in tensors.values()) == params
    if model == "chatglm3":  # 2 key/value groups of 128 dims beside 32 query heads
        assert tuple(tensors["model.layers.27.self_attn.k_proj.weight"].shape) == (256, 4096)
        assert tuple(tensors["model.layers.27.self_attn.q_proj.weight"].shape) == (4096, 4096)
        assert tuple(tensors["model.layers.0.mlp.gate_up_proj.weight"].shape) == (2 * 13696, 4096)
    else:
        assert tuple(tensors["model.layers.31.mlp.gate_proj.weight"].shape) == (11008, 4096)
        assert tuple(tensors["lm_head.weight"].shape) == (151936, 4096)


# -- other remote-code models: one line, not a traceback ------------------------------------


def _remote_folder(tmp_path: Path, code: str, *, auto_map: bool = True) -> Path:
    folder = tmp_path / "remote-model"
    folder.mkdir()
    config: dict[str, Any] = {"model_type": "oldstyle", "transformers_version": "4.30.2", "hidden_size": 8}
    if auto_map:
        config["auto_map"] = {
            "AutoConfig": "modeling_oldstyle.OldConfig",
            "AutoModelForCausalLM": "modeling_oldstyle.OldModel",
        }
        (folder / "modeling_oldstyle.py").write_text(code, encoding="utf-8")
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _load_error(folder: Path, trust: bool) -> str:
    spec = ModelRef(name="oldie", source="local", location=str(folder), trust_remote_code=trust)
    with pytest.raises(ModelLoadError) as info:
        TransformersEngine.load(spec, folder, get_quantizer("none"), threads=1, trust_remote_code=trust)
    line = str(info.value)
    assert "\n" not in line
    return line


def test_remote_code_that_needs_a_missing_package(tmp_path: Path) -> None:
    folder = _remote_folder(tmp_path, "import llmcheck_no_such_package_xyz\n")
    line = _load_error(folder, trust=True)
    assert "needs package(s) not installed here: llmcheck_no_such_package_xyz" in line
    assert "--llm-model=oldie@itrex" in line
    assert "transformers 4.30.2" in line


def test_remote_code_written_for_an_older_transformers(tmp_path: Path) -> None:
    folder = _remote_folder(tmp_path, "from transformers import DisjunctiveConstraint\n")
    line = _load_error(folder, trust=True)
    assert "targets an older transformers" in line
    assert "DisjunctiveConstraint" in line
    assert "--llm-model=oldie@itrex" in line


def test_remote_code_not_allowed_names_the_opt_in_and_itrex(tmp_path: Path) -> None:
    folder = _remote_folder(tmp_path, "raise RuntimeError('must not run')\n")
    line = _load_error(folder, trust=False)
    assert "ships its own modeling code" in line
    assert "--llm-trust-remote-code=oldie" in line
    assert "--llm-model=oldie@itrex" in line


def test_unknown_architecture_without_code(tmp_path: Path) -> None:
    line = _load_error(_remote_folder(tmp_path, "", auto_map=False), trust=False)
    assert "model_type 'oldstyle' is not built into transformers" in line
    assert "chatglm, qwen" in line
    assert "--llm-model=oldie@itrex" in line


# -- the seed command through the stand-in hub -----------------------------------------------

RAISING_CODE = """\
# A stand-in for the repo's own code: pytest-llmcheck must never import it.
from pathlib import Path
with open({marker!r}, "a", encoding="utf-8") as f:
    f.write(__file__ + "\\n")
raise ImportError("the repo's own code was imported: " + __file__)
"""


@pytest.fixture
def seed_hub(seed_dir: Path, hub_env: Path, tmp_path: Path) -> Any:
    """The stand-in hub serving both fixtures under their ModelScope ids, plus raising .py files."""
    marker = tmp_path / "imported.txt"
    server = HubServer()
    for model, name in FIXTURES.items():
        repo = tmp_path / "repos" / name
        shutil.copytree(seed_dir / name, repo)
        for filename in REPO_CODE[model]:
            (repo / filename).write_text(RAISING_CODE.format(marker=str(marker)), encoding="utf-8")
        server.add_repo(HUB_IDS[model], repo)
    with server:
        yield server, marker


def test_seed_command_through_the_stand_in_hub(
    seed_hub: Any, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server, marker = seed_hub
    assert resolve("qwen").location == HUB_IDS["qwen"]
    assert resolve("chatglm3").location == HUB_IDS["chatglm3"]
    monkeypatch.setenv(ENDPOINT_ENV["modelscope"], server.url)
    riddles = pytester.path / "examples" / "riddles"
    riddles.mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "riddles" / "riddles.llm.yaml", riddles)
    pytester.makeini("[pytest]\nfilterwarnings = ignore::pytest.PytestAssertRewriteWarning\n")
    cache = tmp_path / "llm-cache"
    before = set(sys.modules)
    result = pytester.runpytest(
        "examples/riddles",
        "--llm-model=qwen,chatglm3",
        "--llm-report=out",
        "-p",
        "no:cacheprovider",
        f"--llm-cache-dir={cache}",
        "--llm-threads=1",
        "--llm-max-new-tokens=16",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) == 0, result.stdout.str()[-3000:]
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 10
    # no repo .py file was imported: none ran (marker), none is a module, none was copied for import
    assert not marker.exists(), marker.read_text(encoding="utf-8")
    code_modules = {Path(f).stem for files in REPO_CODE.values() for f in files}
    assert not [m for m in set(sys.modules) - before if m.rsplit(".", 1)[-1] in code_modules]
    assert not list(tmp_path.rglob("transformers_modules"))
    # both were downloaded and INT4-quantized into the cache straight from the source checkpoint,
    # read through the conversion's mapping: no full bf16 converted copy on the way (the C++ decode
    # step's library lands there too when this process has not loaded it yet); the fast decode
    # loop's check is kept for the converted Qwen, the one it runs on (GLM answers through generate())
    kinds = sorted(str(e["kind"]) for e in Cache(cache).list() if e["ready"] and e["kind"] != "kernel")
    assert kinds == ["decode-check", "download", "download", "quantized", "quantized"]
    requested = {path for _method, path in server.calls()}
    assert any(HUB_IDS["qwen"] in p for p in requested)
    assert any(HUB_IDS["chatglm3"] in p for p in requested)
    out = result.stdout.str()
    assert "converted qwen -> Qwen2ForCausalLM" in out
    assert "converted chatglm -> GlmForCausalLM" in out
    downloaded = [Path(str(e["path"])) / "model" for e in Cache(cache).list() if e["kind"] == "download"]
    served = sorted(p.name for d in downloaded for p in d.glob("*.py"))
    assert served == sorted(f for files in REPO_CODE.values() for f in files)  # there, and left alone
    report = json.loads((pytester.path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["questions"] == [f"riddle-{i}" for i in range(1, 6)]
    models = {m["name"]: m for m in report["models"]}
    assert sorted(models) == ["chatglm3", "qwen"]
    for model in models.values():
        assert len(model["cases"]) == 5
        assert model["fingerprint"]["conversion"]["converted"] is True
        assert model["fingerprint"]["quantization"]["method"] == "torchao-int4-weight-only"


@pytest.mark.parametrize("model", ["qwen", "chatglm3"])
def test_int4_a8_runs_on_both_seed_models_and_repeats(seed_dir: Path, model: str, tmp_path: Path) -> None:
    """The opt-in int4-a8 recipe on the converted seeds: every INT4 layer through the kernel,
    the norms too; Qwen (a Qwen2 now) on the lean loop, ChatGLM3 (GLM) through generate()
    on the same kernel layers; the same answers in a second session at another thread count."""
    from pytest_llmcheck.engines.transformers import w4a8

    if w4a8.cpu_problem() is not None:
        pytest.skip(f"the kernel cannot run here: {w4a8.cpu_problem()}")
    spec = ModelRef(name=model, source="local", location=str(seed_dir / FIXTURES[model]))
    cache = Cache(tmp_path / "cache")
    prompts = [riddle["prompt"] for riddle in reference(seed_dir, model)["riddles"][:2]]
    answers = []
    for threads in (2, 1):
        engine = TransformersEngine.load(spec, Path(spec.location), get_quantizer("int4-a8"), threads=threads,
                                         cache=cache)
        try:
            details = engine.quant.details
            assert engine.quant.method == "int4-a8"
            assert details["w4a8_layers"] == engine.quant.layers_quantized + int(details["w4a8_lm_head"])
            assert details["w4a8_norms"] == 2 * 2 + 1  # two layers, and the final norm
            assert details["w4a8_lm_head"] is (model == "chatglm3")  # Qwen's 151851 outputs do not fit
            decode = engine.facts.details["decode"]
            expected = "fast" if model == "qwen" else "generate() (architecture"
            assert decode.startswith(expected)
            config = GenerationConfig(max_new_tokens=16, threads=threads)
            answers.append([engine.generate(p, system=None, config=config).text for p in prompts])
        finally:
            engine.close()
    assert answers[0] == answers[1]
    assert all(answers[0])
