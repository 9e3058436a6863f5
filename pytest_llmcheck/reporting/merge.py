"""``llmcheck report merge``: one report from the report folders of ``--llm-shard`` jobs.

Each shard's ``report.json`` is read back into ``SessionResults`` (the same merge an
xdist controller does with its workers' results), then written with the report writers
as report.json, report.md and report.html. A question of a model that two reports hold
with different results is a conflict (two jobs ran the same part, or reports of
different runs were mixed): merging stops with one line naming both files. The same
question with the same result in two reports (a folder given twice) is taken once.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from pytest_llmcheck.errors import LlmcheckError
from pytest_llmcheck.reporting.results import SessionResults

REPORT_FILE = "report.json"


class MergeError(LlmcheckError):
    """Reports that cannot be merged; the message is one line."""


def read_report(path: Path) -> tuple[Path, dict[str, Any]]:
    """The ``report.json`` in folder ``path`` (or the file ``path``) and its data."""
    from pytest_llmcheck.reporting.report import SCHEMA_VERSION

    file = path / REPORT_FILE if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MergeError(f"no {REPORT_FILE} in {path} (give the folders of --llm-report)") from None
    except (OSError, ValueError) as exc:
        raise MergeError(f"cannot read {file}: {exc}") from None
    if not isinstance(data, dict) or data.get("tool") != "pytest-llmcheck" or not isinstance(
        data.get("models"), list
    ):
        raise MergeError(f"{file} is not a pytest-llmcheck report")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise MergeError(
            f"{file} has report schema {data.get('schema_version')!r}; this llmcheck reads {SCHEMA_VERSION}"
        )
    return file, data


def merge_reports(paths: list[Path]) -> SessionResults:
    """All reports' models and questions in one ``SessionResults`` (first-seen order)."""
    merged = SessionResults()
    origin: dict[tuple[str, str], Path] = {}  # (model, question) -> the report it came from
    for path in paths:
        file, data = read_report(path)
        part = SessionResults()
        part.absorb(data)
        for name, model in part.models.items():
            prev = merged.models.get(name)
            if prev is None or (not prev.loads and model.loads):  # load facts from a job that loaded it
                merged.models[name] = replace(
                    model, cases=prev.cases if prev else {}, loads=prev.loads if prev else 0
                )
            into = merged.models[name]
            into.loads += model.loads
            for case_id, case in model.cases.items():
                other = into.cases.get(case_id)
                if other is not None and other.to_dict() != case.to_dict():
                    raise MergeError(
                        f"model {name!r} question {case_id!r} has different results in "
                        f"{origin[(name, case_id)]} and {file}; each question must come from one shard"
                    )
                if other is None:
                    into.cases[case_id] = case
                    origin[(name, case_id)] = file
    return merged
