"""Tiny random models: a Llama folder (config, safetensors, tokenizer, chat template), and
Llama / Qwen2 models in memory for the decode-loop and kernel tests.

Fast to load and quantize, so the end-to-end tests exercise the real transformers +
torchao path in seconds. Every linear layer's input size is a multiple of 32, so the
INT4 recipe quantizes them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "明明明明明白白白喜欢他，可她就是不说。",
    "hello world, the quick brown fox jumps over the lazy dog 0123456789",
]


def build_tiny_model(folder: Path, *, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = None  # random weights: always run to max_new_tokens
    model.save_pretrained(folder)
    return folder


def tiny_in_memory(arch: str, int4: bool, *, head_dim: int = 16, vocab: int = 300) -> tuple[Any, Any]:
    """A random Llama or Qwen2 (q/k/v with bias) in bf16, INT4 if asked, in memory.

    head_dim 16 gives k/v projections of 32 outputs: INT4 q/k/v then run as three calls
    (a partial kernel block); head_dim 64 gives 64: one fused call, q and k rotated together.
    Returns the model and a short prompt's inputs.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from pytest_llmcheck.engines.transformers.quantize import get_quantizer

    torch.manual_seed(1)
    shape = {
        "vocab_size": vocab, "hidden_size": 2 * head_dim * 2, "intermediate_size": 8 * head_dim,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": head_dim,
        "max_position_embeddings": 256, "rope_theta": 5e5, "tie_word_embeddings": False,
    }
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
        for layer in model.model.layers:  # biases of zero would hide a missed bias
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape))
    model = model.to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = None
    if int4:
        get_quantizer("int4").apply(model)
    return model, {"input_ids": torch.tensor([[5, 17, 42, 99, 7, 3, 250]])}
