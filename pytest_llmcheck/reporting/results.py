"""What a session learned: per model, per question. Plain data, filled by the plugin,
read by the terminal summary, the report writers and the gates."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class CaseResult:
    """One (question, model) outcome. With --llm-repeat=N it holds N answers."""

    case_id: str  # question id, e.g. "riddle-4" or a test name
    model: str  # model name as shown in test ids
    nodeid: str
    prompt: str
    answers: list[str] = field(default_factory=list)
    verdict: str = "pending"  # "pass", "fail", "error", "skipped", "pending"
    failed_expectation: str | None = None  # human text of the first unmet expectation
    seconds: list[float] = field(default_factory=list)
    tokens_per_second: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # per answer, when the engine's CPU time is known
    prompt_tokens: int = 0
    new_tokens: list[int] = field(default_factory=list)
    passes: int = 0  # answers that met all expectations (repeats)
    required_passes: int = 1
    # "new" (recorded now), "missing" (none recorded yet: the test fails, the verdict is the
    # answer's), "unchanged", "changed", "drifted" (within tolerance), "not-comparable" (recorded
    # with native numerics on another CPU: the test is skipped, the verdict is the answer's), "none"
    snapshot: str = "none"
    snapshot_diff: str | None = None
    snapshot_similarity: float | None = None  # of old and new answer, when they differ
    pending: dict[str, Any] | None = None  # the candidate kept for `llmcheck review` (pending.py)
    judgements: list[dict[str, Any]] = field(default_factory=list)  # judge: rubric, probability, passed
    reference: str | None = None  # a person's reference answer, from the suite
    checks: list[str] = field(default_factory=list)  # the expectations, one human line each
    soft: bool = False  # failure recorded without failing the test

    @property
    def answer(self) -> str:
        return self.answers[-1] if self.answers else ""

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds) if self.seconds else 0.0

    @property
    def median_tokens_per_second(self) -> float:
        return statistics.median(self.tokens_per_second) if self.tokens_per_second else 0.0

    @property
    def median_cpu_seconds(self) -> float | None:
        return statistics.median(self.cpu_seconds) if self.cpu_seconds else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["answer"] = self.answer
        return data


@dataclass
class ModelResult:
    """One model's load facts and its cases."""

    name: str
    source: str = ""
    engine: str = ""
    fingerprint: dict[str, Any] = field(default_factory=dict)
    load_seconds: float = 0.0
    quantize_seconds: float = 0.0
    quant_summary: str = ""
    loads: int = 0
    from_cache: bool = False  # weights came from the per-machine cache
    cases: dict[str, CaseResult] = field(default_factory=dict)

    @property
    def decided(self) -> list[CaseResult]:
        """The cases the pass rate counts: pass, fail and error (an error gave no passing
        answer, so a model that failed to load has a 0% pass rate, not 100%)."""
        return [c for c in self.cases.values() if c.verdict in ("pass", "fail", "error")]

    @property
    def passed(self) -> int:
        return sum(c.verdict == "pass" for c in self.decided)

    @property
    def pass_rate(self) -> float:
        decided = self.decided
        return self.passed / len(decided) if decided else 1.0

    @property
    def median_seconds(self) -> float:
        secs = [s for c in self.cases.values() for s in c.seconds]
        return statistics.median(secs) if secs else 0.0

    @property
    def total_seconds(self) -> float:
        return sum(s for c in self.cases.values() for s in c.seconds)

    @property
    def median_tokens_per_second(self) -> float:
        tps = [t for c in self.cases.values() for t in c.tokens_per_second]
        return statistics.median(tps) if tps else 0.0

    @property
    def median_cpu_seconds(self) -> float | None:
        cpu = [s for c in self.cases.values() for s in c.cpu_seconds]
        return statistics.median(cpu) if cpu else None

    @property
    def tokens_per_cpu_second(self) -> float | None:
        """New tokens per CPU-second over every answer whose CPU time is known."""
        pairs = [
            (n, s) for c in self.cases.values() if len(c.cpu_seconds) == len(c.new_tokens)
            for n, s in zip(c.new_tokens, c.cpu_seconds, strict=True)
        ]
        cpu = sum(s for _, s in pairs)
        return sum(n for n, _ in pairs) / cpu if pairs and cpu > 0 else None

    def to_dict(self, *, with_cases: bool = True) -> dict[str, Any]:
        data = {
            "name": self.name,
            "source": self.source,
            "engine": self.engine,
            "fingerprint": self.fingerprint,
            "load_seconds": self.load_seconds,
            "quantize_seconds": self.quantize_seconds,
            "quant_summary": self.quant_summary,
            "pass_rate": self.pass_rate,
            "median_seconds": self.median_seconds,
            "total_seconds": self.total_seconds,
            "median_tokens_per_second": self.median_tokens_per_second,
            "median_cpu_seconds": self.median_cpu_seconds,
            "tokens_per_cpu_second": self.tokens_per_cpu_second,
            "from_cache": self.from_cache,
            "loads": self.loads,
        }
        if with_cases:
            data["cases"] = [c.to_dict() for c in self.cases.values()]
        return data


@dataclass
class SessionResults:
    """All models of a session, in the order they ran."""

    models: dict[str, ModelResult] = field(default_factory=dict)

    def model(self, name: str) -> ModelResult:
        if name not in self.models:
            self.models[name] = ModelResult(name=name)
        return self.models[name]

    def case(self, model: str, case_id: str, *, nodeid: str, prompt: str) -> CaseResult:
        cases = self.model(model).cases
        if case_id not in cases:
            cases[case_id] = CaseResult(case_id=case_id, model=model, nodeid=nodeid, prompt=prompt)
        return cases[case_id]

    @property
    def case_ids(self) -> list[str]:
        """Questions in first-seen order across models (the report's rows)."""
        seen: dict[str, None] = {}
        for m in self.models.values():
            for cid in m.cases:
                seen.setdefault(cid, None)
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        return {"models": [m.to_dict() for m in self.models.values()], "questions": self.case_ids}

    def absorb(self, data: dict[str, Any]) -> None:
        """Merge an xdist worker's results (``to_dict()`` output) into this session's."""
        fields = {f.name for f in dataclasses.fields(CaseResult)}
        for info in data["models"]:
            model = self.model(info["name"])
            if info["loads"]:
                model.source, model.fingerprint = info["source"], info["fingerprint"]
                model.engine = info.get("engine", "")
                model.load_seconds, model.quantize_seconds = info["load_seconds"], info["quantize_seconds"]
                model.quant_summary, model.from_cache = info["quant_summary"], info["from_cache"]
            model.loads += info["loads"]  # one load per worker that ran the model
            model.source = model.source or info["source"]
            for raw in info["cases"]:
                case = CaseResult(**{k: v for k, v in raw.items() if k in fields})
                model.cases[case.case_id] = case
