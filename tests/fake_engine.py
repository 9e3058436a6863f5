"""A fast fake engine for the plugin's mechanics tests.

Inner pytest sessions load it with ``-p tests.fake_engine`` and use models named
``fake:<name>``. Answers come from ``fake_answers.json`` in the inner rootdir:
``{"<model name>": {"<prompt>": "answer" | {"text": ..., "seconds": ..., "sleep": ..., "choices": [...]}}}``;
without an entry the answer echoes the prompt. ``seconds`` is the latency the answer reports
(``cpu_seconds`` its CPU time; without it the plugin measures pytest's);
``sleep`` really waits that long (for wall-clock timers such as pytest-benchmark). A model
named ``broken`` fails to load; one named ``plain...`` has no ``next_token_probs`` (cannot judge);
one named ``remote...`` computes "elsewhere" (no CPU time of its own, threads do not apply).
As a judge, a fake model reads ``"__judge__": {"<text in the judge prompt>": P(yes)}``.
``"__fingerprint__": {...}`` adds keys to its fingerprint (e.g. ``numerics`` and ``cpu``).
``GENERATES`` lists every generation as "<model>: <prompt>".
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_llmcheck.config.registry import ModelRef
from pytest_llmcheck.config.settings import Settings
from pytest_llmcheck.engines.base import Answer, GenerationConfig, LoadFacts
from pytest_llmcheck.engines.registry import EngineSpec
from pytest_llmcheck.errors import LlmcheckError

LOADS: list[str] = []  # model names in load order, for the load-count tests
EVENTS: list[str] = []  # "load a", "close a", ...: shows one model in memory at a time
GENERATES: list[str] = []  # "<model>: <prompt>" per generate() call, for the generate-once tests
JUDGED: list[str] = []  # "<model>: <judge prompt>" per next_token_probs() call


class CorruptWeights(LlmcheckError):
    """What a user can fix (re-download the weights): one line, no traceback."""


class PlainFakeEngine:
    """A fake engine without ``next_token_probs`` (it cannot judge)."""

    name = "fake"

    def __init__(self, model: str, answers: dict[str, Any]) -> None:
        self.model = model
        self.answers = answers
        summary = "fake-int4: 4/4 linear layers, weights 0.0 MiB -> 0.0 MiB, 0.02s"
        # a model named ``remote...`` computes elsewhere, as a server or a worker process does
        remote = model.startswith("remote")
        self.facts = LoadFacts(seconds=0.01, summary=summary, quant="int4", prepare_seconds=0.02,
                               in_process=not remote, uses_threads=not remote)
        self.closed = False

    def generate(self, prompt: str, *, system: str | None, config: GenerationConfig) -> Answer:
        assert not self.closed, "generate() on a released model"
        GENERATES.append(f"{self.model}: {prompt}")
        spec = self.answers.get(prompt, f"echo: {prompt}")
        seconds = cpu = None
        if isinstance(spec, dict):
            seconds, cpu = spec.get("seconds"), spec.get("cpu_seconds")
            time.sleep(float(spec.get("sleep", 0)))
            if "choices" in spec and not config.greedy:
                rng = random.Random(config.seed)  # like a real engine: the seed decides the sample
                text = rng.choice(spec["choices"])
            else:
                text = spec.get("text", "")
        else:
            text = spec
        words = text.split()[: config.max_new_tokens]
        elapsed = 0.001 if seconds is None else float(seconds)
        return Answer(text=" ".join(words) if len(words) < len(text.split()) else text, prompt=prompt,
                      system=system, prompt_tokens=len(prompt.split()), new_tokens=len(words),
                      seconds=elapsed, ttft=elapsed / 4, cpu_seconds=None if cpu is None else float(cpu))

    def fingerprint(self) -> dict[str, Any]:
        return {"engine": "fake", "model": self.model, "answers_version": self.answers.get("__version__", 1),
                **self.answers.get("__fingerprint__", {})}

    def close(self) -> None:
        self.closed = True
        EVENTS.append(f"close {self.model}")


class FakeEngine(PlainFakeEngine):
    def next_token_probs(
        self, prompt: str, *, system: str | None, candidates: Sequence[str]
    ) -> dict[str, float]:
        """P(yes) is the value of the first ``__judge__`` entry whose text occurs in the
        judge's prompt (0.1 when none does); P(no) is the rest."""
        assert not self.closed, "next_token_probs() on a released model"
        JUDGED.append(f"{self.model}: {prompt}")
        table: dict[str, float] = self.answers.get("__judge__", {})
        p_yes = next((float(p) for text, p in table.items() if text in prompt), 0.1)
        yes, no = {"Yes", "是"}, {"No", "否"}
        return {c: p_yes if c in yes else (1 - p_yes if c in no else 0.0) for c in candidates}


def pytest_llmcheck_engines() -> list[EngineSpec]:
    return [EngineSpec("fake", "answers from fake_answers.json", load_fake, schemes=("fake",))]


def load_fake(ref: ModelRef, settings: Settings) -> PlainFakeEngine:
    name = ref.location.split(":", 1)[1]
    if name == "broken":
        raise CorruptWeights("fake weights are corrupt")
    if name == "buggy":  # a bug in an engine, not the user's doing
        raise ZeroDivisionError("division by zero in the fake loader")
    LOADS.append(name)
    EVENTS.append(f"load {name}")
    path = Path("fake_answers.json")
    table = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    kind = PlainFakeEngine if name.startswith("plain") else FakeEngine
    return kind(name, table.get(name, {}))
