"""The seed models' fast tokenizers, built by transformers' own converters, on a varied corpus.

``conversions/qwen.py`` builds Qwen v1's tokenizer with ``TikTokenConverter`` and
``conversions/chatglm.py`` ChatGLM3's with ``SpmConverter.build_tokenizer_from_spm_proto``;
before that both were built by code of their own. Three checks, on the shared seed fixtures'
real tokenizer files (``../shared/seed-models``):

- the token ids (plain and through the chat template) and decoded texts are the ones the
  earlier own-code tokenizers gave, recorded as digests (``PINNED``);
- decoding gives the text back (NFC for Qwen, as QWenTokenizer normalizes);
- where ``tiktoken`` / ``sentencepiece`` are installed (not dependencies: skipped otherwise),
  the ids equal those of the libraries the models' own tokenizer code runs on, text by text.
"""

from __future__ import annotations

import hashlib
import json
import random
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.engines.transformers.conversions import ConversionError
from pytest_llmcheck.engines.transformers.conversions.chatglm import CHATGLM
from pytest_llmcheck.engines.transformers.conversions.chatglm import SPECIAL_TOKENS as GLM_SPECIAL
from pytest_llmcheck.engines.transformers.conversions.qwen import (
    PAT_STR,
    QWEN,
    SPECIAL_START_ID,
    load_ranks,
)
from pytest_llmcheck.engines.transformers.conversions.qwen import SPECIAL_TOKENS as QWEN_SPECIAL
from tests.test_seed_models import FIXTURES, seed_models_dir

HAND = [
    *("", " ", "  ", "\n", "\n\n", "\t", " \t \n ", "    indented", "trailing   ", "a  b   c    d"),
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll've done it; it's John's. 'S 'T 'RE",
    *("你好，世界！", "中文English混合text测试123", "中 文 之 间 有 空 格", "ＡＢＣ１２３"),
    *("日本語のテキスト、カタカナとひらがな。", "한국어 텍스트입니다", "Привет, мир! Ёлка", "مرحبا بالعالم"),
    "emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇨🇳🇺🇸 ❤️ 🤖 a😀b \U0001f9e0",
    "é vs e\u0301 (NFC), Å\u030a ﬁ ㎞ Ⅻ ①②③ ｆｕｌｌ ｗｉｄｔｈ",
    "12345678901234567890 3.14159 -42 +7 1e-10 0x1F 1,000,000 2023-12-31T23:59:59Z",
    "The year 2024年12月31日，价格￥1,299.00元",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|extra_0|><|extra_204|> text<|im_end|>more <|im_start |im_end|> <|extra_205|>",
    "[gMASK]sop<|user|>\n hello<|assistant|>",
    "[MASK][sMASK]eop<|system|><|observation|>",
    "people desktop sop eop stop shop",
    *("sop", " sop ", "<|user|>\n 你好", "<s></s><unk>"),
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "SELECT * FROM t WHERE a = 'b' AND c <> 1;",
    '{"key": [1, 2, {"x": null}]}\n<html><body class="x">hi</body></html>',
    "$ ls -la | grep '^d' && echo done\r\nCRLF\r\n",
    "\u00a0nbsp\u2003emsp\u3000ideographic space zero\u200bwidth\u200djoiner\ufeffbom",
    *("▁already▁escaped ▁", "▁", "▁▁ ▁", "  leading spaces", "\n leading newline"),
    "control\x00\x01\x1f chars \U0010ffff",
    "!!!???...,,,;;;:::---___===+++***&&&%%%$$$###@@@",
    "tab\tseparated\tvalues\n1\t2\t3\n\n\n\nnewlines   \n   \n",
]
POOL = [
    *"abcXYZ019 \t\n\r▁'.,!?-_()<>|[]{}",
    *("  ", "   ", "\n\n", " \n", "\r\n", "\u00a0", "\u3000", "\x00", "\u200b"),
    *("中", "文", "明白", "你好", "ー", "😀", "👍🏽", "e\u0301", "é", "ﬁ", "Ω", "ß", "ı", "İ", "’", "—", "…"),
    *("<|im_start|>", "<|im_end|>", "<|endoftext|>", "[gMASK]", "sop", "eop", "<|user|>", "<|assistant|>"),
    *("the", " the", "ing", "hello", "world", "def", "123", "4567"),
]


def corpus(seed_dir: Path) -> list[str]:
    """Hand-picked texts, the seed riddles and answers (reference.json), and seeded random mixes."""
    riddles = []
    for name in FIXTURES.values():
        ref = json.loads((seed_dir / name / "reference.json").read_text(encoding="utf-8"))
        riddles += [text for r in ref["riddles"] for text in (r["prompt"], r["greedy_text"])]
    rng = random.Random(0)
    mixes = ["".join(rng.choice(POOL) for _ in range(rng.randint(1, 40))) for _ in range(600)]
    return HAND + riddles + mixes


# sha256 of the ids (and decoded texts) the own-code tokenizers (mapping version 1) gave on corpus().
PINNED = {
    "qwen": {
        "ids": "dbf538a3a5cb75d40c44ca3704573625a7d77245c6435afc9f998f3da967e0d8",
        "chat": "b48674e3005b4bda14c5cf447ad582a71d572e26a72d234e74ff3805b7e4e8ae",
        "decoded": "4ddf98a4110035722bbdc62be0fec134673fe58851ebc48bf47ce25a2f50dc2f",
    },
    "chatglm3": {
        "ids": "8b710a0fc70d8fc22875ca45e2a85a5800c64dbc34d83f100335ead202efb19f",
        "chat": "7976ffa84981bc760a4c1e5e1bf15831aa5c7ee3ab3815298ba9e4e3652de0bc",
        "decoded": "5b44e8636b20b2eab95a0d605d565b501c26f83f6d1968669210ea0820d48bf0",
    },
}


def _digest(values: list[Any]) -> str:
    return hashlib.sha256(json.dumps(values, ensure_ascii=False).encode("utf-8")).hexdigest()


def encodings(tokenizer: Any, texts: list[str]) -> dict[str, list[Any]]:
    """What the digests cover: plain ids, chat-template ids, decoded texts."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    chat = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": t}], add_generation_prompt=True, return_dict=True
        )["input_ids"]
        for t in texts
    ]
    return {"ids": ids, "chat": chat, "decoded": [tokenizer.decode(i) for i in ids]}


@pytest.fixture(scope="module")
def seed_dir() -> Path:
    folder = seed_models_dir()
    if not all((folder / name / "reference.json").is_file() for name in FIXTURES.values()):
        pytest.fail(f"seed model fixtures missing in {folder} (see tests/test_seed_models.py)", pytrace=False)
    return folder


@pytest.fixture(scope="module")
def texts(seed_dir: Path) -> list[str]:
    return corpus(seed_dir)


@pytest.fixture(scope="module")
def built(seed_dir: Path) -> dict[str, Any]:
    return {
        "qwen": QWEN.build_tokenizer(seed_dir / FIXTURES["qwen"], {}),
        "chatglm3": CHATGLM.build_tokenizer(seed_dir / FIXTURES["chatglm3"], {}),
    }


@pytest.mark.parametrize("model", sorted(FIXTURES))
def test_same_ids_as_the_own_code_tokenizers(built: dict[str, Any], texts: list[str], model: str) -> None:
    got = {kind: _digest(values) for kind, values in encodings(built[model], texts).items()}
    assert got == PINNED[model], (
        "token ids changed on the corpus; with tiktoken and sentencepiece installed, "
        "test_same_ids_as_the_models_own_libraries names the texts"
    )


@pytest.mark.parametrize("model", sorted(FIXTURES))
def test_decoding_gives_the_text_back(built: dict[str, Any], texts: list[str], model: str) -> None:
    tokenizer = built[model]
    for text in texts:
        decoded = tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"])
        if model == "qwen":
            assert decoded == unicodedata.normalize("NFC", text), text
        elif not any(s in text for s in GLM_SPECIAL):  # after one, each chunk decodes with its dummy " "
            # sentencepiece's "▁" is a space once encoded, so a literal one decodes as a space
            assert decoded == text.replace("▁", " "), text


def test_same_ids_as_the_models_own_libraries_qwen(
    built: dict[str, Any], texts: list[str], seed_dir: Path
) -> None:
    """QWenTokenizer: NFC, then tiktoken with Qwen's pattern and special tokens (allowed_special="all")."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = load_ranks(seed_dir / FIXTURES["qwen"] / "qwen.tiktoken")
    special = {t: SPECIAL_START_ID + i for i, t in enumerate(QWEN_SPECIAL)}
    enc = tiktoken.Encoding("Qwen", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=special)
    ids = built["qwen"](texts, add_special_tokens=False)["input_ids"]
    for text, got in zip(texts, ids, strict=True):
        assert got == enc.encode(unicodedata.normalize("NFC", text), allowed_special="all"), text


def test_same_ids_as_the_models_own_libraries_chatglm3(
    built: dict[str, Any], texts: list[str], seed_dir: Path
) -> None:
    """SPTokenizer: sentencepiece's encode, on texts without ChatGLM3's special names (which it
    adds around the model's pieces) and without ``</s>``/``<unk>``, special in the fast tokenizer."""
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(seed_dir / FIXTURES["chatglm3"] / "tokenizer.model"))
    plain = [t for t in texts if not any(s in t for s in (*GLM_SPECIAL, "</s>", "<unk>"))]
    assert len(plain) > 200
    ids = built["chatglm3"](plain, add_special_tokens=False)["input_ids"]
    for text, got in zip(plain, ids, strict=True):
        assert got == sp.encode(text), text


def test_a_broken_or_unreadable_tokenizer_model_fails_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers.convert_slow_tokenizer as converters

    (tmp_path / "tokenizer.model").write_bytes(b"\xff\xff\xff\xff not a protobuf message")
    with pytest.raises(ConversionError, match="is not a sentencepiece model"):
        CHATGLM.build_tokenizer(tmp_path, {})

    def no_protobuf(error_message: str = "") -> Any:
        raise ImportError("no protobuf")

    monkeypatch.setattr(converters, "import_protobuf", no_protobuf)
    with pytest.raises(ConversionError, match="needs the protobuf package"):
        CHATGLM.build_tokenizer(tmp_path, {})
