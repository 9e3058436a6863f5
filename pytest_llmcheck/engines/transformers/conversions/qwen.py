"""Qwen v1 (Qwen-7B-Chat, ``QWenLMHeadModel``) -> transformers' ``Qwen2ForCausalLM``.

The math, from the repo's ``modeling_qwen.py``: RMSNorm; ``c_attn`` is one linear with
bias whose output splits as [q | k | v] (each ``hidden_size`` wide, heads contiguous);
full-dim rotary with ``rotate_half`` (base ``rotary_emb_base``); ``c_proj`` without bias;
MLP ``c_proj(w1(x) * silu(w2(x)))``, so ``w2`` is the gate and ``w1`` the up projection.
That is Qwen2 exactly, up to ``seq_length`` (8192) tokens: past it Qwen v1 switches on
dynamic NTK and log-n attention scaling, which are not carried over.

The tokenizer is ``qwen.tiktoken`` (base64 byte strings and their BPE ranks) with Qwen's
own split pattern (single digits), NFC normalization, and the special tokens
``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, ``<|extra_0..204|>`` from id 151643.
The chat format is ChatML with the default system prompt of ``model.chat``.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmcheck.engines.transformers.conversions.base import Conversion, ConversionError

if TYPE_CHECKING:
    import torch

PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
    r"""\s+(?!\S)|\s+"""
)
ENDOFTEXT, IMSTART, IMEND = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_START_ID = 151643
SPECIAL_TOKENS = (ENDOFTEXT, IMSTART, IMEND, *(f"<|extra_{i}|>" for i in range(205)))
VOCAB_FILE = "qwen.tiktoken"
DEFAULT_SYSTEM = "You are a helpful assistant."

# ChatML as make_context(chat_format="chatml") builds it, system prompt included by default.
CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set rest = messages[1:] %}"
    "{% else %}{% set system = '" + DEFAULT_SYSTEM + "' %}{% set rest = messages %}{% endif %}"
    "{{ '<|im_start|>system\\n' + system + '<|im_end|>' }}"
    "{% for m in rest %}{{ '\\n<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n<|im_start|>assistant\\n' }}{% endif %}"
)

_LAYER = re.compile(r"transformer\.h\.(\d+)\.(.+)")
_RENAME = {
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.w1.weight": "mlp.up_proj.weight",  # a1 = w1(x): multiplied, not activated
    "mlp.w2.weight": "mlp.gate_proj.weight",  # silu(w2(x))
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}
_TOP = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


def _check(config: dict[str, Any]) -> None:
    heads, hidden = int(config["num_attention_heads"]), int(config["hidden_size"])
    kv = int(config.get("kv_channels", hidden // heads))
    problems = []
    if hidden % heads or kv != hidden // heads:
        problems.append(f"kv_channels {kv} != hidden_size/num_attention_heads {hidden}/{heads}")
    if float(config.get("rotary_pct", 1.0)) != 1.0:
        problems.append(f"rotary_pct {config.get('rotary_pct')} (only 1.0 maps to Qwen2)")
    if not config.get("no_bias", True):
        problems.append("no_bias false (Qwen2 has no bias on o_proj and the MLP)")
    if problems:
        raise ConversionError("this Qwen v1 checkpoint does not map to Qwen2: " + "; ".join(problems))


def target_config(config: dict[str, Any]) -> Any:
    """The Qwen2Config equivalent of a Qwen v1 config.json."""
    from transformers import Qwen2Config

    _check(config)
    heads = int(config["num_attention_heads"])
    vocab = int(config["vocab_size"])
    special = SPECIAL_START_ID if vocab > SPECIAL_START_ID else None  # <|endoftext|>, in any real Qwen v1
    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=int(config["hidden_size"]),
        intermediate_size=int(config["intermediate_size"]) // 2,  # Qwen v1 counts w1 and w2 together
        num_hidden_layers=int(config["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        hidden_act="silu",
        max_position_embeddings=int(config.get("seq_length", 8192)),  # exact up to here (see module doc)
        rms_norm_eps=float(config.get("layer_norm_epsilon", 1e-6)),
        rope_parameters={"rope_type": "default", "rope_theta": float(config.get("rotary_emb_base", 10000))},
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        use_sliding_window=False,
        attention_dropout=0.0,
        bos_token_id=None,
        eos_token_id=special,
        pad_token_id=special,
    )


def map_tensor(config: dict[str, Any], name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """One source tensor -> its target tensor(s); ``c_attn`` splits into q, k, v."""
    if name in _TOP:
        return [(_TOP[name], tensor)]
    m = _LAYER.fullmatch(name)
    if m is None:
        raise ConversionError(f"unexpected tensor {name} in a Qwen v1 checkpoint")
    prefix, rest = f"model.layers.{m.group(1)}.", m.group(2)
    if rest in _RENAME:
        return [(prefix + _RENAME[rest], tensor)]
    if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
        hidden = int(config["hidden_size"])
        if tensor.shape[0] != 3 * hidden:
            raise ConversionError(
                f"{name} has {tensor.shape[0]} rows, expected 3 x hidden_size = {3 * hidden}"
            )
        kind = rest.rsplit(".", 1)[1]
        import torch

        q, k, v = torch.split(tensor, hidden, dim=0)
        return [(f"{prefix}self_attn.{p}_proj.{kind}", t) for p, t in (("q", q), ("k", k), ("v", v))]
    raise ConversionError(f"unexpected tensor {name} in a Qwen v1 checkpoint")


def load_ranks(path: Path) -> dict[bytes, int]:
    """``qwen.tiktoken``: one ``base64(token) rank`` per line, as tiktoken's ``load_tiktoken_bpe`` reads it.

    Read here rather than by ``TikTokenConverter.load_tiktoken_bpe``, which needs the ``tiktoken``
    package (not a dependency) and, for a local path, keeps a copy in ``$TMPDIR/data-gym-cache``
    keyed by the path alone and reused without a content check: a changed file at the same path
    (a re-download into the same cache folder) would be read stale.
    """
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def build_tokenizer(folder: Path, config: dict[str, Any]) -> Any:
    """A fast tokenizer that encodes like QWenTokenizer (tiktoken): transformers' ``TikTokenConverter``
    with Qwen's split pattern and special tokens, plus the NFC normalization QWenTokenizer applies first."""
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = folder / VOCAB_FILE
    if not path.is_file():
        raise ConversionError(f"{folder} has no {VOCAB_FILE} (the Qwen v1 vocabulary)")
    ranks = load_ranks(path)
    if sorted(ranks.values()) != list(range(len(ranks))) or len(ranks) != SPECIAL_START_ID:
        raise ConversionError(f"{path}: expected ranks 0..{SPECIAL_START_ID - 1}, found {len(ranks)} tokens")

    converter_cls: Any = TikTokenConverter  # untyped in transformers 5
    converter = converter_cls(vocab_file=str(path), pattern=PAT_STR, extra_special_tokens=SPECIAL_TOKENS)
    converter.load_tiktoken_bpe = lambda _path: ranks  # read above, not by tiktoken (see load_ranks)
    tok = converter.converted()
    tok.normalizer = normalizers.NFC()  # QWenTokenizer.tokenize normalizes to NFC first
    for offset, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != SPECIAL_START_ID + offset:
            raise ConversionError(
                f"{path}: special token {token} did not land on id {SPECIAL_START_ID + offset}"
            )
    fast: Any = PreTrainedTokenizerFast  # untyped in transformers 5
    return fast(
        tokenizer_object=tok,
        eos_token=IMEND,
        pad_token=ENDOFTEXT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=int(config.get("seq_length", 8192)),
        clean_up_tokenization_spaces=False,
    )


def generation(config: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """Stop at ``<|im_end|>`` and ``<|endoftext|>``, as ``get_stop_words_ids("chatml")`` does."""
    im_end, eod = tokenizer.convert_tokens_to_ids([IMEND, ENDOFTEXT])
    return {"eos_token_id": [im_end, eod], "pad_token_id": eod}


QWEN = Conversion(
    model_type="qwen",
    source="Qwen v1 (QWenLMHeadModel)",
    target="Qwen2ForCausalLM",
    version=2,  # 2: transformers' TikTokenConverter (tokenizer.json gained its ByteLevel post-processor)
    target_config=target_config,
    map_tensor=map_tensor,
    ignored=re.compile(r"transformer\.h\.\d+\.attn\.(masked_bias|bias|rotary_emb\.inv_freq)"),
    build_tokenizer=build_tokenizer,
    generation=generation,
)
