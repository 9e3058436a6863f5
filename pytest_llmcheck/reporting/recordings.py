"""Recorded answers: what the replay engine answers from and ``llmcheck rescore`` grades.

Three sources are read:

- a session report: ``report.json`` or the folder holding it (every case's answers);
- a folder of answer snapshots (every ``__snapshots__/**/*.txt`` below it);
- a recorded-answers file (YAML or JSON) with, optionally, a person's verdicts::

      # examples/riddles/seed_answers.yaml
      suite: riddles.llm.yaml        # optional: the suite (or a list of suites) its questions come from,
                                     # relative to this file; a list merges each id's expectations
      answers:
        - question: riddle-4         # the question id in the suite
          model: chatglm3            # any name; --llm-model=replay:chatglm3 replays it
          answer: "根据句子中的信息……"
          person: fail               # optional: the person's verdict, pass or fail
          note: "..."                # optional
          prompt: "..."              # optional: defaults to the suite question's prompt
          seconds: 52                # optional: the recorded latency

Every problem is one line naming the file and the entry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmcheck.errors import LlmcheckError

VERDICTS = ("pass", "fail")
_ENTRY_KEYS = ("answer", "model", "note", "person", "prompt", "question", "seconds", "system")
_SNAPSHOT_NAME = re.compile(r"(?P<test>.*)\[(?P<params>[^\[\]]*)\](?:\.\d+)?\.txt")


class RecordingError(LlmcheckError):
    """Recorded answers that cannot be read; one line naming the file and the entry."""


@dataclass(frozen=True)
class Recording:
    """One recorded answer of one model to one question."""

    model: str
    answer: str
    question: str | None = None  # the question id, when known
    prompt: str | None = None
    system: str | None = None
    seconds: float | None = None
    new_tokens: int | None = None
    cpu_seconds: float | None = None  # the CPU time the answer took, when its report recorded it
    person: str | None = None  # the person's verdict: "pass" | "fail"
    note: str | None = None
    from_snapshot: bool = False  # ``model`` is a snapshot file's parameter part

    def is_model(self, name: str) -> bool:
        """Whether this was answered by ``name`` (a snapshot's ``riddle-1-qwen`` is qwen's)."""
        return self.model == name or (self.from_snapshot and self.model.endswith("-" + name))


@dataclass
class Recorded:
    source: Path
    recordings: list[Recording]
    suites: list[Path] = field(default_factory=list)  # the suites a recorded-answers file names
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model (reports)

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.recordings))


def load_recordings(path: Path) -> Recorded:
    """Read any of the three sources (see the module doc)."""
    path = Path(path)
    if path.is_dir():
        if (path / "report.json").is_file():
            return _from_report(path / "report.json")
        return _from_snapshots(path)
    if not path.is_file():
        raise RecordingError(f"{path}: no such file or folder (expected a report.json, its folder, "
                             "a recorded-answers .yaml/.json file or a folder of answer snapshots)")
    data = _read(path)
    if isinstance(data, Mapping) and data.get("tool") == "pytest-llmcheck":
        return _from_report(path, data)
    return _from_answers_file(path, data)


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except ValueError as exc:  # json.JSONDecodeError and yaml.YAMLError's subclasses
        raise RecordingError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: "
                             f"{' '.join(str(exc).split())}") from None
    except Exception as exc:
        raise RecordingError(f"{path}: cannot read: {' '.join(str(exc).split())}") from None


def _from_report(path: Path, data: Any = None) -> Recorded:
    data = data if data is not None else _read(path)
    recordings: list[Recording] = []
    fingerprints: dict[str, dict[str, Any]] = {}
    for model in data.get("models", []):
        name = str(model.get("name", ""))
        fingerprints[name] = model.get("fingerprint") or {}
        for case in model.get("cases", []):
            answers = case.get("answers") or ([case["answer"]] if case.get("answer") else [])
            seconds = case.get("seconds") or []
            tokens = case.get("new_tokens") or []
            # kept only for answers that all had it: the list holds the known values alone
            cpu = case.get("cpu_seconds") or []
            cpu = cpu if len(cpu) == len(answers) else []
            for i, text in enumerate(answers):
                recordings.append(Recording(
                    model=name, answer=str(text), question=case.get("case_id"),
                    prompt=case.get("prompt") or None,
                    seconds=seconds[i] if i < len(seconds) else None,
                    new_tokens=tokens[i] if i < len(tokens) else None,
                    cpu_seconds=float(cpu[i]) if i < len(cpu) else None,
                ))
    return Recorded(path, recordings, fingerprints=fingerprints)


def _from_snapshots(root: Path) -> Recorded:
    from pytest_llmcheck.snapshots.textfile import StoredAnswer

    recordings = []
    for file in sorted(root.rglob("__snapshots__/**/*.txt")):
        match = _SNAPSHOT_NAME.fullmatch(file.name)
        if match is None:
            continue
        stored = StoredAnswer.parse(file.read_text(encoding="utf-8"))
        params = match.group("params")
        question = match.group("test") if file.parent.name.endswith(".llm") else None
        recordings.append(Recording(model=params, answer=stored.answer, question=question,
                                    prompt=stored.prompt,
                                    system=stored.system, from_snapshot=True))
    if not recordings:
        raise RecordingError(f"{root}: no report.json and no answer snapshots (__snapshots__/**/*.txt) in it")
    return Recorded(root, recordings)


def _from_answers_file(path: Path, data: Any) -> Recorded:
    if not isinstance(data, Mapping) or not isinstance(data.get("answers"), list):
        raise RecordingError(
            f"{path}: expected a mapping with an 'answers' list (or a pytest-llmcheck report)"
        )
    named = data.get("suite")
    suites = [(path.parent / str(s)).resolve() for s in ([] if named is None else
                                                         named if isinstance(named, list) else [named])]
    prompts: dict[str, tuple[str, str | None]] = {}
    from pytest_llmcheck.checks.suite import SuiteError, load_suite

    for suite_path in suites:
        try:
            suite = load_suite(suite_path)
        except SuiteError as exc:
            raise RecordingError(f"{path}: suite: {exc}") from None
        for q in suite.questions:
            prompts.setdefault(q.id, (q.prompt, q.system))
    recordings = []
    for index, raw in enumerate(data["answers"]):
        where = f"{path}: answers[{index}]"
        if not isinstance(raw, Mapping):
            raise RecordingError(f"{where}: expected a mapping with question, model and answer")
        unknown = [k for k in raw if k not in _ENTRY_KEYS]
        if unknown:
            raise RecordingError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(_ENTRY_KEYS)}")
        for key in ("model", "answer"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise RecordingError(f"{where}: {key!r} must be a non-empty string")
        question = raw.get("question")
        if question is not None and not isinstance(question, str):
            raise RecordingError(f"{where}: 'question' must be a question id (a string), got {question!r}")
        if question is not None and prompts and question not in prompts:
            raise RecordingError(f"{where}: question {question!r} is not in {', '.join(map(str, suites))}; "
                                 f"its questions: {', '.join(prompts)}")
        person = raw.get("person")
        if person is not None and person not in VERDICTS:
            raise RecordingError(f"{where}: person must be pass or fail, got {person!r}")
        prompt, system = prompts.get(question or "", (None, None))
        seconds = raw.get("seconds")
        if seconds is not None and (not isinstance(seconds, (int, float)) or isinstance(seconds, bool)
                                    or seconds < 0):
            raise RecordingError(f"{where}: seconds must be a number >= 0, got {seconds!r}")
        recordings.append(Recording(
            model=raw["model"], answer=raw["answer"], question=question,
            prompt=raw.get("prompt") or prompt, system=raw.get("system", system),
            seconds=float(seconds) if seconds is not None else None, person=person, note=raw.get("note"),
        ))
    return Recorded(path, recordings, suites=suites)
