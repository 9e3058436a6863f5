"""pytest-llmcheck from Python: the ``llm`` fixture, expectation markers and suites.

    pytest examples/python_api --llm-model=smollm2 --llm-soft

(SmolLM2-135M gets none of the five riddles right: ``--llm-soft`` records those verdicts
without failing the run; the capital questions and the answer snapshots still count.)
"""

from __future__ import annotations

import pytest


@pytest.mark.llm_expect(contains="Paris", max_new_tokens=64)
def test_capital_of_france(llm):
    answer = llm.ask("What is the capital of France? Answer in one word.")
    assert answer.tokens_per_second > 0


@pytest.mark.llm_expect(any_of=["Berlin", "柏林"], not_contains="Paris")
def test_capital_of_germany(llm):
    llm.ask("What is the capital of Germany? Answer in one word.")


@pytest.mark.llm_suite("../riddles/riddles.llm.yaml")
def test_riddle(llm, llm_question):
    # The question's own expectations and its answer snapshot apply; --llm-soft records
    # a wrong answer without failing the test.
    llm.ask(llm_question)
