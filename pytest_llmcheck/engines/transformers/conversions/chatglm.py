"""ChatGLM2/3 (``ChatGLMForConditionalGeneration``, model_type ``chatglm``) -> ``GlmForCausalLM``.

The math, from the repo's ``modeling_chatglm.py``: RMSNorm (``rmsnorm: true``); the
fused ``query_key_value`` (bias when ``add_qkv_bias``) splits as [q: heads x kv_channels |
k: groups x kv_channels | v: groups x kv_channels], key/value group ``g`` serving query
heads ``g*r .. g*r+r-1`` (transformers' ``repeat_kv``); rotary on the first half of each
head's dims with interleaved pairs (x0, x1), base 10000 x ``rope_ratio``; ``dense``
without bias; ``dense_h_to_4h`` is [gate | up] of a SwiGLU, ``dense_4h_to_h`` the down
projection; a final ``post_layer_norm``; an untied ``output_layer``. That is transformers'
GLM with ``partial_rotary_factor`` 0.5 and ``head_dim`` = ``kv_channels``.

The tokenizer is the sentencepiece ``tokenizer.model`` (a BPE model with byte fallback),
parsed with protobuf and built by transformers' own sentencepiece converter, plus the nine
special tokens ChatGLM3's tokenizer appends after the pieces (``[MASK]`` .. ``<|observation|>``).
Its leading-space rule: sentencepiece adds a dummy "▁" before each separately encoded
text, and ``build_chat_input`` encodes the role's "\\n" and the message separately, so the
chat template writes ``<|user|>\\n {message}`` and every text chunk between special tokens
gets its "▁".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmcheck.engines.transformers.conversions.base import Conversion, ConversionError

if TYPE_CHECKING:
    import torch

VOCAB_FILE = "tokenizer.model"
SPECIAL_TOKENS = (
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
)
SINGLE_WORD = ("sop", "eop")  # plain words too: never cut them out of "people" or "desktop"
STOP_TOKENS = ("<|user|>", "<|observation|>")  # with </s>: what ChatGLM3's chat() stops on

# build_chat_input: [gMASK] sop, then per message <|role|> + encode("\n") + encode(content),
# then <|assistant|>.
CHAT_TEMPLATE = (
    "{{ '[gMASK]sop' }}"
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n ' + m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

_LAYER = re.compile(r"transformer\.encoder\.layers\.(\d+)\.(.+)")
_RENAME = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",  # swiglu: chunk 0 is the gate, as in GlmMLP
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_TOP = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}


def _layers(config: dict[str, Any]) -> int:
    return int(config.get("num_layers", config.get("num_hidden_layers", 0)))


def _geometry(config: dict[str, Any]) -> tuple[int, int, int]:
    """(query heads, key/value groups, head dim)."""
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("kv_channels") or int(config["hidden_size"]) // heads)
    groups = int(config.get("multi_query_group_num", heads)) if config.get("multi_query_attention") else heads
    return heads, groups, head_dim


def _check(config: dict[str, Any]) -> None:
    heads, groups, _ = _geometry(config)
    problems = []
    if not config.get("rmsnorm", True):
        problems.append("rmsnorm false (LayerNorm)")
    if config.get("add_bias_linear"):
        problems.append("add_bias_linear true (GLM has no bias on dense and the MLP)")
    if config.get("apply_residual_connection_post_layernorm"):
        problems.append("apply_residual_connection_post_layernorm true")
    if not config.get("post_layer_norm", True):
        problems.append("post_layer_norm false")
    if heads % groups:
        problems.append(f"{heads} heads do not divide into {groups} key/value groups")
    if config.get("pre_seq_len"):
        problems.append("a p-tuning prefix (pre_seq_len)")
    if problems:
        raise ConversionError("this ChatGLM checkpoint does not map to GLM: " + "; ".join(problems))


def target_config(config: dict[str, Any]) -> Any:
    """The GlmConfig equivalent of a ChatGLM2/3 config.json."""
    from transformers import GlmConfig

    _check(config)
    heads, groups, head_dim = _geometry(config)
    return GlmConfig(
        vocab_size=int(config["padded_vocab_size"]),
        hidden_size=int(config["hidden_size"]),
        intermediate_size=int(config["ffn_hidden_size"]),
        num_hidden_layers=_layers(config),
        num_attention_heads=heads,
        num_key_value_heads=groups,
        head_dim=head_dim,
        hidden_act="silu",
        attention_dropout=0.0,
        max_position_embeddings=int(config.get("seq_length", 8192)),
        rms_norm_eps=float(config.get("layernorm_epsilon", 1e-5)),
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0 * float(config.get("rope_ratio", 1.0)),
            "partial_rotary_factor": 0.5,  # RotaryEmbedding(kv_channels // 2): half of each head
        },
        tie_word_embeddings=False,
        attention_bias=bool(config.get("add_qkv_bias", False)),
        pad_token_id=int(config.get("pad_token_id", 0)),
        eos_token_id=int(config.get("eos_token_id", 2)),
        bos_token_id=None,
    )


def map_tensor(config: dict[str, Any], name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """One source tensor -> its target tensor(s); ``query_key_value`` splits by heads and groups."""
    if name in _TOP:
        return [(_TOP[name], tensor)]
    m = _LAYER.fullmatch(name)
    if m is None:
        raise ConversionError(f"unexpected tensor {name} in a ChatGLM checkpoint")
    prefix, rest = f"model.layers.{m.group(1)}.", m.group(2)
    if rest in _RENAME:
        return [(prefix + _RENAME[rest], tensor)]
    if rest in ("self_attention.query_key_value.weight", "self_attention.query_key_value.bias"):
        heads, groups, head_dim = _geometry(config)
        sizes = [heads * head_dim, groups * head_dim, groups * head_dim]
        if tensor.shape[0] != sum(sizes):
            raise ConversionError(f"{name} has {tensor.shape[0]} rows, expected {sizes} = {sum(sizes)}")
        kind = rest.rsplit(".", 1)[1]
        import torch

        q, k, v = torch.split(tensor, sizes, dim=0)
        return [(f"{prefix}self_attn.{p}_proj.{kind}", t) for p, t in (("q", q), ("k", k), ("v", v))]
    raise ConversionError(f"unexpected tensor {name} in a ChatGLM checkpoint")


def read_spm(path: Path) -> Any:
    """The sentencepiece ``ModelProto`` of ``tokenizer.model``, parsed as transformers parses it."""
    from transformers.convert_slow_tokenizer import import_protobuf

    importer: Any = import_protobuf  # untyped in transformers 5
    try:
        model_pb2 = importer()
    except ImportError:
        raise ConversionError(f"reading {path} needs the protobuf package: pip install protobuf") from None
    from google.protobuf.message import DecodeError

    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError as exc:
        raise ConversionError(f"{path} is not a sentencepiece model: {exc}") from None
    return proto


def build_tokenizer(folder: Path, config: dict[str, Any]) -> Any:
    """A fast tokenizer that encodes chat text like ChatGLM3's SPTokenizer and build_chat_input.

    transformers' ``SpmConverter.build_tokenizer_from_spm_proto`` follows the model's own
    settings (BPE merges ranked by piece score, byte fallback, "▁" for spaces); ``legacy``
    gives every chunk between special tokens its dummy "▁", as build_chat_input's separate
    encode() calls do. Then ChatGLM3's nine special tokens, which are not in the model file.
    """
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    path = folder / VOCAB_FILE
    if not path.is_file():
        raise ConversionError(f"{folder} has no {VOCAB_FILE} (the ChatGLM sentencepiece model)")
    proto = read_spm(path)
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    unsupported = [
        what
        for what, bad in (
            (f"model type {trainer.model_type} (only BPE, 2)", trainer.model_type != 2),
            (f"normalizer {norm.name!r} (only identity)", norm.name != "identity"),
            ("remove_extra_whitespaces", norm.remove_extra_whitespaces),
            ("no escape_whitespaces", not norm.escape_whitespaces),
            ("no add_dummy_prefix", not norm.add_dummy_prefix),
        )
        if bad
    ]
    if unsupported:
        raise ConversionError(f"{path}: unsupported sentencepiece settings: {', '.join(unsupported)}")
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    spm_converter: Any = SpmConverter  # untyped in transformers 5
    tok = spm_converter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False, single_word=t in SINGLE_WORD) for t in SPECIAL_TOKENS]
    )
    for offset, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != len(proto.pieces) + offset:
            raise ConversionError(
                f"{path}: special token {token} did not land on id {len(proto.pieces) + offset}"
            )
    fast: Any = PreTrainedTokenizerFast  # untyped in transformers 5
    return fast(
        tokenizer_object=tok,
        eos_token="</s>",
        pad_token=trainer.unk_piece,
        unk_token=trainer.unk_piece,
        chat_template=CHAT_TEMPLATE,
        model_max_length=int(config.get("seq_length", 8192)),
        clean_up_tokenization_spaces=False,
    )


def generation(config: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """Stop at ``</s>``, ``<|user|>`` and ``<|observation|>``, as ChatGLM3's chat() does."""
    stops = [int(config.get("eos_token_id", 2)), *tokenizer.convert_tokens_to_ids(list(STOP_TOKENS))]
    return {"eos_token_id": stops, "pad_token_id": int(config.get("pad_token_id", 0))}


CHATGLM = Conversion(
    model_type="chatglm",
    source="ChatGLM2/3 (ChatGLMForConditionalGeneration)",
    target="GlmForCausalLM",
    version=2,  # 2: transformers' SpmConverter (tokenizer.json lost the word-split pre-tokenizer)
    target_config=target_config,
    map_tensor=map_tensor,
    ignored=re.compile(r"transformer\.rotary_pos_emb\.inv_freq"),  # recomputed from the config
    build_tokenizer=build_tokenizer,
    generation=generation,
)
