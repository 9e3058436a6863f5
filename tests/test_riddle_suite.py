"""The riddle suite judges the seed report's recorded answers as the person did.

The answers and the person's verdicts live in ``examples/riddles/seed_answers.yaml``
(Qwen-7B-Chat and ChatGLM3-6B, INT4 on CPU, from the seed report; plus answers a person
would accept). One known disagreement: Qwen's riddle-2 answer, which the person called
"consistent with normal thinking", never names the second reading (others do not like
*me*) that the ``any_of`` asks for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llmcheck.cli.rescore import confusion, questions_of, rescore
from pytest_llmcheck.engines.base import Answer
from pytest_llmcheck.reporting.recordings import load_recordings

RIDDLES = Path(__file__).resolve().parent.parent / "examples" / "riddles"
RECORDED = load_recordings(RIDDLES / "seed_answers.yaml")
QUESTIONS = questions_of([RIDDLES / "riddles.llm.yaml"])
KNOWN_DISAGREEMENTS = {("riddle-2", "qwen")}


@pytest.mark.parametrize(
    "recording", RECORDED.recordings,
    ids=[f"{r.question}-{r.model}-{i}" for i, r in enumerate(RECORDED.recordings)],
)
def test_suite_agrees_with_the_person(recording: object) -> None:
    from pytest_llmcheck.reporting.recordings import Recording

    assert isinstance(recording, Recording)
    assert recording.question is not None
    question = QUESTIONS[recording.question]
    answer = Answer(text=recording.answer, prompt=question.prompt, prompt_tokens=10, new_tokens=50,
                    seconds=1.0, ttft=0.1)
    failures = question.expect.check(answer)
    agrees = (not failures) == (recording.person == "pass")
    assert agrees != ((recording.question, recording.model) in KNOWN_DISAGREEMENTS), failures


def test_the_data_file_holds_the_seed_answers() -> None:
    seed = [r for r in RECORDED.recordings if r.model != "reference"]
    assert len(seed) == 7
    assert {r.model for r in seed} == {"qwen", "chatglm3"}
    assert all(r.prompt == QUESTIONS[r.question or ""].prompt for r in RECORDED.recordings)
    tables = confusion(rescore(RECORDED, QUESTIONS, judge=None))
    assert (tables["all"].agree, tables["all"].total) == (10, 11)


def test_echoing_the_question_is_not_an_answer() -> None:
    for question in QUESTIONS.values():
        echo = Answer(text=question.prompt, prompt=question.prompt, prompt_tokens=10, new_tokens=10,
                      seconds=1.0, ttft=0.1)
        assert question.expect.check(echo), f"{question.id} passes when the model repeats the question"
