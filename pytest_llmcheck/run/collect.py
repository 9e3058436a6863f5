"""Zero-code suites: pytest collects ``*.llm.yaml`` files into (question x model) items.

Each item is a real ``pytest.Function`` (so ``llm``, ``benchmark`` and ``snapshot``
fixtures work as in any test) whose body asks the question.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.checks.suite import Question, SuiteError, check_repeat, load_suite
from pytest_llmcheck.config.items import MODEL_KEY
from pytest_llmcheck.run.session import CASE_ID_KEY, SESSION_KEY

QUESTION_KEY = pytest.StashKey[Question]()


def ask_suite_question(llm: Any, llm_question: Question) -> None:
    """The body of every suite item: ask, then the LLM checks expectations and snapshot."""
    llm.ask(llm_question)


class SuiteFile(pytest.File):
    """A ``*.llm.yaml`` file."""

    def collect(self) -> Iterator[pytest.Item]:
        session = self.config.stash[SESSION_KEY]
        try:
            suite = load_suite(self.path)
            check_repeat(suite, session.settings.repeat)
        except SuiteError as exc:
            raise self.CollectError(str(exc)) from None
        for question in suite.questions:
            for ref in session.resolve_models():
                item = SuiteItem.from_parent(
                    self, name=f"{question.id}[{ref.name}]", callobj=ask_suite_question
                )
                item.stash[MODEL_KEY] = ref.name
                item.stash[CASE_ID_KEY] = question.id
                item.stash[QUESTION_KEY] = question
                # -k matches names, extra keyword matches and marker names, not item.keywords;
                # tags are not markers (that would trip --strict-markers)
                item.extra_keyword_matches.update(question.tags)
                yield item


class SuiteItem(pytest.Function):
    """One question on one model; reported at its suite file, not at this module."""

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, self.name
