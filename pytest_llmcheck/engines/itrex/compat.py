"""A model folder written by transformers 5, made readable by the worker's transformers 4.40.

transformers 4.40 reads a newer ``config.json`` without complaint and silently drops
what it does not know. The worst case is RoPE: transformers 5 writes
``rope_parameters: {rope_theta: 100000, rope_type: default}``, 4.40's ``LlamaConfig``
only reads a top-level ``rope_theta`` and falls back to 10000, and the model answers
wrongly with no error at all. The same happens to the chat template (4.40 reads it only
from ``tokenizer_config.json``, transformers 5 writes ``chat_template.jinja``) and to
the tokenizer class (``TokenizersBackend`` does not exist in 4.40) and to BPE merges
(tokenizers >= 0.20 writes pairs, the worker's 0.19 reads only ``"a b"`` strings).

``legacy_view`` therefore builds a folder for the worker: links to every file of the
original except the tokenizer and config JSON files, which are rewritten in the old vocabulary. The
weights are never copied.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REWRITTEN = ("config.json", "tokenizer_config.json", "tokenizer.json")
# Tokenizer classes transformers 5 writes that 4.40 lacks; a tokenizer.json loads as the fast class.
NEW_TOKENIZER_CLASSES = ("TokenizersBackend",)


def legacy_config(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``config.json`` in transformers 4.40's terms; also returns what was changed."""
    out = dict(config)
    notes: list[str] = []
    rope = out.get("rope_parameters")
    if isinstance(rope, dict):
        if rope and all(isinstance(v, dict) for v in rope.values()):  # per layer type: full_attention first
            rope = rope.get("full_attention") or next(iter(rope.values()))
        out.pop("rope_parameters")
        if "rope_theta" in rope and "rope_theta" not in out:
            out["rope_theta"] = rope["rope_theta"]
            notes.append(f"rope_theta={rope['rope_theta']}")
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default" and "rope_scaling" not in out:
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
            scaling["type"] = scaling["rope_type"] = kind
            out["rope_scaling"] = scaling
            notes.append(f"rope_scaling={kind}")
        if "partial_rotary_factor" in rope and "partial_rotary_factor" not in out:
            out["partial_rotary_factor"] = rope["partial_rotary_factor"]
    if "dtype" in out and "torch_dtype" not in out:
        out["torch_dtype"] = out.pop("dtype")
        notes.append("torch_dtype")
    return out, notes


def legacy_tokenizer_config(config: dict[str, Any], folder: Path) -> tuple[dict[str, Any], list[str]]:
    out = dict(config)
    notes: list[str] = []
    template = folder / "chat_template.jinja"
    if "chat_template" not in out and template.is_file():
        out["chat_template"] = template.read_text(encoding="utf-8")
        notes.append("chat_template")
    if out.get("tokenizer_class") in NEW_TOKENIZER_CLASSES and (folder / "tokenizer.json").is_file():
        out["tokenizer_class"] = "PreTrainedTokenizerFast"
        notes.append("tokenizer_class")
    if isinstance(out.get("extra_special_tokens"), list):  # 4.40 knows only additional_special_tokens
        extra = out.pop("extra_special_tokens")
        out.setdefault("additional_special_tokens", extra)
    out.pop("backend", None)
    return out, notes


def legacy_tokenizer(tokenizer: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``tokenizer.json`` for tokenizers 0.19: BPE merges as ``"a b"`` strings."""
    model = tokenizer.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("merges"), list):
        return tokenizer, []
    merges = model["merges"]
    if not merges or not all(isinstance(m, list) and len(m) == 2 for m in merges):
        return tokenizer, []
    if any(" " in part for pair in merges for part in pair):  # not expressible as strings: keep
        return tokenizer, []
    out = dict(tokenizer)
    out["model"] = {**model, "merges": [f"{a} {b}" for a, b in merges]}
    return out, ["bpe merges"]


def legacy_view(source: Path, view: Path) -> list[str]:
    """Fill the empty folder ``view`` with links to ``source`` and the rewritten JSON files.

    Returns the notes of what was rewritten (empty for a folder 4.40 reads as is).
    """
    view.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.name not in REWRITTEN:
            os.symlink(path.resolve(), view / path.name)
    notes: list[str] = []
    config_path = source / "config.json"
    if config_path.is_file():
        config, changed = legacy_config(json.loads(config_path.read_text(encoding="utf-8")))
        (view / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        notes += changed
    tok_path = source / "tokenizer_config.json"
    if tok_path.is_file():
        tok, changed = legacy_tokenizer_config(json.loads(tok_path.read_text(encoding="utf-8")), source)
        (view / "tokenizer_config.json").write_text(json.dumps(tok, indent=2) + "\n", encoding="utf-8")
        notes += changed
    tokenizer_path = source / "tokenizer.json"
    if tokenizer_path.is_file():
        tokenizer, changed = legacy_tokenizer(json.loads(tokenizer_path.read_text(encoding="utf-8")))
        if changed:
            (view / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
        else:
            os.symlink(tokenizer_path.resolve(), view / "tokenizer.json")
        notes += changed
    return notes
