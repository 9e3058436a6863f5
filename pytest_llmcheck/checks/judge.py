"""``judge:`` expectations, graded by a local model through its next-token probabilities.

For each rubric the judge model is asked one fixed question (the question asked, the
answer, the rubric, "reply Yes or No") and the plugin reads the probability its
next-token distribution gives to the yes tokens and to the no tokens. The verdict is
``P(yes) / (P(yes) + P(no)) >= 0.5``. Nothing the judge writes is parsed, so a verdict
can never fail to parse (free-text judges break on small local models), and the same
judge, answer and rubric always give the same number. A rubric with Chinese in it is
asked in Chinese (是 / 否), any other in English (Yes / No).

Engines opt in with one method beside ``generate``::

    def next_token_probs(self, prompt: str, *, system: str | None,
                         candidates: Sequence[str]) -> dict[str, float]

(the probability that the reply's first token is each candidate's first token). An
engine without it cannot judge: one line says so.

Verdicts are kept per machine in ``<cache>/judge/verdicts.json``, keyed by the
question, answer, rubric, prompt version and the judge's fingerprint, so re-running a
suite or rescoring recorded answers asks the judge only about what is new, and a run
whose verdicts are all cached does not load the judge at all (the fingerprint of the
judge's last load is remembered by its reference and settings).
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pytest_llmcheck.engines.base import Engine
from pytest_llmcheck.errors import LlmcheckError
from pytest_llmcheck.text.redact import redact_data

PROMPT_VERSION = 1
THRESHOLD = 0.5

_EN = (
    "Grade an answer against one criterion.\n\n"
    "Question: {question}\n\nAnswer: {answer}\n\nCriterion: {rubric}\n\n"
    "Does the answer meet the criterion? Reply with only Yes or No."
)
_ZH = (
    "请根据一条标准评判一个回答。\n\n"
    "问题：{question}\n\n回答：{answer}\n\n标准：{rubric}\n\n"
    "这个回答符合标准吗？只回答“是”或“否”。"
)
_YES = {"en": ("Yes", "yes", "YES"), "zh": ("是", "符合", "对")}
_NO = {"en": ("No", "no", "NO"), "zh": ("否", "不")}


class JudgeError(LlmcheckError):
    """The judge cannot grade (not configured, fails to load, or its engine cannot)."""


@runtime_checkable
class ProbabilityEngine(Protocol):
    """An engine that can also say how likely each candidate first token is."""

    def next_token_probs(
        self, prompt: str, *, system: str | None, candidates: Sequence[str]
    ) -> dict[str, float]: ...


@dataclass(frozen=True)
class Judgement:
    """One rubric's grade of one answer."""

    rubric: str
    probability: float  # P(yes) / (P(yes) + P(no))
    judge: str  # the judge model's name
    cached: bool = False

    @property
    def passed(self) -> bool:
        return self.probability >= THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        return {"rubric": self.rubric, "probability": round(self.probability, 4), "passed": self.passed,
                "judge": self.judge, "cached": self.cached}

    def failure(self) -> str:
        return (f"judge {self.rubric!r}: P(yes)={self.probability:.2f} < {THRESHOLD} "
                f"(judge {self.judge})")


def language(rubric: str) -> str:
    """"zh" when the rubric has CJK ideographs in it, else "en"."""
    return "zh" if any(unicodedata.name(ch, "").startswith("CJK UNIFIED") for ch in rubric) else "en"


def judge_prompt(question: str, answer: str, rubric: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(prompt, yes candidates, no candidates) for one rubric."""
    lang = language(rubric)
    template = _ZH if lang == "zh" else _EN
    return template.format(question=question, answer=answer, rubric=rubric), _YES[lang], _NO[lang]


def yes_probability(engine: ProbabilityEngine, question: str, answer: str, rubric: str) -> float:
    prompt, yes, no = judge_prompt(question, answer, rubric)
    probs = engine.next_token_probs(prompt, system=None, candidates=(*yes, *no))
    p_yes = sum(probs.get(c, 0.0) for c in yes)
    p_no = sum(probs.get(c, 0.0) for c in no)
    return p_yes / (p_yes + p_no) if p_yes + p_no > 0 else 0.0


class VerdictStore:
    """A small JSON file of verdicts and judge fingerprints, shared by the machine's sessions."""

    def __init__(self, root: Path) -> None:
        self.path = root / "judge" / "verdicts.json"
        self._data: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            try:
                self._data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._data = {}
            self._data.setdefault("verdicts", {})
            self._data.setdefault("fingerprints", {})
        return self._data

    def get(self, table: str, key: str) -> Any:
        return self._load()[table].get(key)

    def put(self, table: str, key: str, value: Any) -> None:
        """Merge into the file under a lock (other sessions may have added entries); a lock
        held too long (``LLMCHECK_LOCK_TIMEOUT``) raises a one-line LockBusy naming its holder."""
        from pytest_llmcheck.storage.cache import hold_lock

        self._load()[table][key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        with hold_lock(lock, f"the judge's verdict store {self.path}", doing="saving verdicts"):
            try:
                disk = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                disk = {}
            for name in ("verdicts", "fingerprints"):
                disk.setdefault(name, {}).update(self._load()[name])
            tmp = self.path.with_name(f"verdicts.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(disk, ensure_ascii=False, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
            self._data = disk


def _digest(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Judge:
    """A judge model: loaded on the first verdict the cache does not have, then kept.

    ``identity`` says what the judge is before it loads (its reference and the settings
    that shape it); ``load`` loads it; ``borrow`` returns the engine under test when it
    is the same model, so a model judging its own answers is not loaded twice.
    """

    name: str
    identity: dict[str, Any]
    load: Callable[[], Engine]
    store: VerdictStore
    borrow: Callable[[], Engine | None] = lambda: None
    _engine: Engine | None = None
    _error: str | None = None
    _fingerprint: dict[str, Any] | None = None
    loads: int = 0
    asked: int = 0  # verdicts computed (not from the cache)
    memo: dict[str, float] = field(default_factory=dict)

    def engine(self) -> ProbabilityEngine:
        engine = self.borrow() or self._own()
        if not isinstance(engine, ProbabilityEngine):
            raise JudgeError(
                f"judge model {self.name!r}: its engine {getattr(engine, 'name', type(engine).__name__)!r} "
                "cannot grade (it has no next_token_probs); choose a judge on an engine that has, "
                "e.g. transformers"
            )
        # kept in the machine's verdict file: credentials masked, as everywhere else
        fingerprint: dict[str, Any] = redact_data(engine.fingerprint()) if isinstance(engine, Engine) else {}
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            self.store.put("fingerprints", _digest(self.identity), fingerprint)
        return engine

    def _own(self) -> Engine:
        if self._error is not None:
            raise JudgeError(self._error)
        if self._engine is None:
            try:
                self._engine = self.load()
            except Exception as exc:
                lines = str(exc).strip().splitlines()
                self._error = (f"judge model {self.name!r} failed to load: {type(exc).__name__}: "
                               f"{lines[0] if lines else ''}").rstrip(": ")
                raise JudgeError(self._error) from exc
            self.loads += 1
        return self._engine

    def fingerprint(self) -> dict[str, Any] | None:
        """The judge's fingerprint: this session's load, else the one remembered from the last."""
        if self._fingerprint is not None:
            return self._fingerprint
        known = self.store.get("fingerprints", _digest(self.identity))
        return known if isinstance(known, dict) else None

    def grade(self, question: str, answer: str, rubric: str) -> Judgement:
        fingerprint = self.fingerprint()
        if fingerprint is not None:
            key = self._key(question, answer, rubric, fingerprint)
            hit = self.memo.get(key, self.store.get("verdicts", key))
            if isinstance(hit, (int, float)):
                return Judgement(rubric, float(hit), self.name, cached=True)
        engine = self.engine()  # loads the judge (and learns its fingerprint)
        probability = yes_probability(engine, question, answer, rubric)
        self.asked += 1
        key = self._key(question, answer, rubric, self._fingerprint or {})
        self.memo[key] = probability
        self.store.put("verdicts", key, probability)
        return Judgement(rubric, probability, self.name)

    def _key(self, question: str, answer: str, rubric: str, fingerprint: dict[str, Any]) -> str:
        return _digest({"v": PROMPT_VERSION, "question": question, "answer": answer, "rubric": rubric,
                        "judge": fingerprint})

    def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.close()


def judge_identity(ref: Any, settings: Any) -> dict[str, Any]:
    """What a judge is before it loads: its reference, the settings that shape its weights and
    the content digest of its weight files when they are on disk (the ``weights.sha256`` of its
    fingerprint). The fingerprint remembered from the judge's last load, and with it every
    cached verdict, holds only while those files are unchanged: a local folder fine-tuned in
    place, or a download pulled again, loads the judge again."""
    return {"spec": ref.spec, "engine": ref.engine, "revision": getattr(ref, "revision", None),
            "quant": settings.quant, "engine_options": dict(settings.engine_options),
            "weights": weights_on_disk(ref, getattr(settings, "cache_dir", None))}


def weights_on_disk(ref: Any, cache_dir: Path | None) -> str | None:
    """The content digest of a model's weight files as the engines compute it (memoized per
    machine in ``cache_dir``: a stat per file once hashed), without loading the model; None
    when the files are not on disk yet (a hub model not downloaded) or are no files (a server)."""
    from pytest_llmcheck.config.registry import ModelRef

    if not isinstance(ref, ModelRef):
        return None
    folder: Path | None = None
    if ref.source in ("modelscope", "hf") and cache_dir is not None:
        from pytest_llmcheck.storage.cache import Cache
        from pytest_llmcheck.storage.hub import MODEL_DIR, cache_entry

        entry = cache_entry(ref, Cache(cache_dir))
        folder = entry.path / MODEL_DIR if entry.ready else None
    elif ref.source in ("local", "gguf", "embedded"):
        folder = Path(ref.location)
    if folder is None or not (folder / (ref.gguf_file or "")).exists():
        return None
    from pytest_llmcheck.engines.transformers.weights import source_identity

    return str(source_identity(ref, folder, Path(cache_dir) if cache_dir is not None else None)["content"])
