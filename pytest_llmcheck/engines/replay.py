"""The replay engine: answers from recorded answers instead of a model.

``pytest examples/riddles --llm-model=qwen --llm-replay=out/report.json`` re-checks
new or edited expectations against what qwen answered in that run, in seconds and
without loading anything. The recording is a report (``report.json`` or its folder),
a recorded-answers file (``reporting/recordings.py``) or a folder of answer snapshots. A model
is looked up by its name (``replay:NAME`` replays any recorded name), a question by its
prompt (and system prompt, when both sides know it). A prompt that was not recorded
fails its test with one line. Latency checks see the recorded seconds.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from pytest_llmcheck.config.registry import ModelRef
from pytest_llmcheck.config.settings import Settings
from pytest_llmcheck.engines.base import Answer, GenerationConfig, LoadFacts
from pytest_llmcheck.errors import LlmcheckError
from pytest_llmcheck.reporting.recordings import Recorded, Recording, load_recordings


class ReplayError(LlmcheckError):
    """No recording, or none for this model or prompt."""


class ReplayEngine:
    name = "replay"

    def __init__(self, model: str, recorded: Recorded) -> None:
        self.model = model
        self.recorded = recorded
        mine = [r for r in recorded.recordings if r.is_model(model)]
        if not mine:
            raise ReplayError(
                f"replay: {recorded.source} has no answers of model {model!r}; recorded models: "
                f"{', '.join(recorded.models) or 'none'}"
            )
        self.by_prompt: dict[tuple[str, str | None], list[Recording]] = defaultdict(list)
        self.by_text: dict[str, list[Recording]] = defaultdict(list)
        for rec in mine:
            if rec.prompt is not None:
                self.by_prompt[(rec.prompt, rec.system)].append(rec)
                self.by_text[rec.prompt].append(rec)
        self.calls: dict[str, int] = defaultdict(int)
        summary = f"replay of {len(mine)} recorded answers from {recorded.source}"
        # computes nothing: an answer's CPU time is the recorded one, never a lookup's
        self.facts = LoadFacts(seconds=0.0, summary=summary, in_process=False, uses_threads=False)

    def generate(self, prompt: str, *, system: str | None, config: GenerationConfig) -> Answer:
        found = self.by_prompt.get((prompt, system)) or self.by_text.get(prompt)
        if not found:
            short = prompt if len(prompt) <= 40 else prompt[:39] + "…"
            raise ReplayError(f"replay: {self.recorded.source} has no answer of model {self.model!r} "
                              f"to the prompt {short!r}")
        rec = found[self.calls[prompt] % len(found)]  # repeats walk through the recorded answers
        self.calls[prompt] += 1
        seconds = rec.seconds or 0.0
        tokens = rec.new_tokens if rec.new_tokens is not None else len(rec.answer)
        return Answer(text=rec.answer, prompt=prompt, system=system, prompt_tokens=len(prompt),
                      new_tokens=tokens, seconds=seconds, ttft=0.0, cpu_seconds=rec.cpu_seconds)

    def fingerprint(self) -> dict[str, Any]:
        return {"engine": self.name, "recording": str(self.recorded.source),
                "recorded": self.recorded.fingerprints.get(self.model, {})}

    def close(self) -> None:
        pass


def load_replay(ref: ModelRef, settings: Settings) -> ReplayEngine:
    source = settings.engine_options.get("replay")
    if not source:
        raise ReplayError("the replay engine needs recorded answers: --llm-replay=PATH "
                          "(a report.json or its folder, a recorded-answers file or a snapshots folder)")
    name = ref.name.removesuffix("@replay")
    if ref.source == "plugin":  # replay:NAME
        name = ref.location.split(":", 1)[1]
    return ReplayEngine(name, load_recordings(Path(source).expanduser()))
