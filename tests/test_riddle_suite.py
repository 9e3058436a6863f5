"""The riddle suite judges the seed report's recorded answers as the person did.

The answers below are copied from the seed report (Qwen-7B-Chat and ChatGLM3-6B, INT4,
on CPU); the verdicts are the person's. Answers the report only showed as screenshots
are not here. Qwen's answer to riddle 2 is left out: the person called both answers
"consistent with normal thinking", yet Qwen's never names the second reading (others
do not like *me*), which is what the riddle asks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llmcheck.engines.base import Answer
from pytest_llmcheck.suite import load_suite

SUITE = load_suite(Path(__file__).resolve().parent.parent / "examples" / "riddles" / "riddles.llm.yaml")
QUESTIONS = {q.id: q for q in SUITE.questions}

SEED_ANSWERS = [
    (
        "riddle-1",
        "qwen",
        "这两句话的区别在于它们描述的季节不同。第一句话“冬天: 能穿多少穿多少”暗示着在寒冷的冬季, "
        "人们需要尽可能多地穿上衣服来保暖: 而第二句话“夏天: 能穿多少穿多少”则表示在炎热的夏季, "
        "人们也需要尽可能地减少衣物以保持凉爽。"
        "因此,这两句话所表达的意思是相反的。",
        True,
    ),
    (
        "riddle-2",
        "chatglm3",
        "这两句话的语义重复。第一句“单身狗产生的原因有两个,一是谁都看不上,二是谁都看不上”表达的意思是单身的原因有两个,"
        "一个是看不上别人,另一个是别人看不上自己。第二句“单身狗产生的原因有两个,一是谁都看不上”与第一句意思相同,"
        "只是表述方式略有不同。因此,这两句话在语义上存在重复。",
        True,
    ),
    (
        "riddle-3",
        "qwen",
        "这句话的含义是: 这个人知道我知道你知道他不知道。因此, 这个人的状态是知道我们知道他知道他不知道。",
        False,
    ),
    (
        "riddle-3",
        "chatglm3",
        "在这个问题中,“他”是指一个人、根据问题的表述,无法确定“我不知道”是指哪方面的内容。因此,无法确定“他”是否知道这些信息。",
        False,
    ),
    (
        "riddle-4",
        "chatglm3",
        "根据句子中的信息・无法确定明明和白白谁喜欢谁。因为句子中并没有明确说明他们的感情状态。",
        False,
    ),
    (
        "riddle-5",
        "chatglm3",
        "1. “意思”第一层含义是指对某种事物的理解或解释。\n2. “意思”第二层含义是指对某种事物的理解或解释。\n"
        "3. “意思”第二层含义是指对某种事物或行为的实际意义或作用的理解。",
        False,
    ),
    # Answers a person would accept, written for the test:
    ("riddle-3", "reference", "“他”不知道：你知道他不知道，我也知道这一点，而他本人并不知道。", True),
    ("riddle-3", "reference", "不知道的是他。", True),
    ("riddle-4", "reference", "白白喜欢明明。明明是男生，白白是女生，她只是没有说出口。", True),
    ("riddle-5", "reference", "第一个“意思”是意图、用意；“意思意思”是表示一点心意，比如送点小礼物……", True),
]


@pytest.mark.parametrize(
    ("question_id", "who", "text", "person_says_correct"),
    SEED_ANSWERS,
    ids=[f"{q}-{who}-{i}" for i, (q, who, _, _) in enumerate(SEED_ANSWERS)],
)
def test_suite_agrees_with_the_person(
    question_id: str, who: str, text: str, person_says_correct: bool
) -> None:
    question = QUESTIONS[question_id]
    answer = Answer(text=text, prompt=question.prompt, prompt_tokens=10, new_tokens=50, seconds=1.0, ttft=0.1)
    failures = question.expect.check(answer)
    assert (not failures) == person_says_correct, failures


def test_echoing_the_question_is_not_an_answer() -> None:
    for question in SUITE.questions:
        echo = Answer(text=question.prompt, prompt=question.prompt, prompt_tokens=10, new_tokens=10,
                      seconds=1.0, ttft=0.1)
        assert question.expect.check(echo), f"{question.id} passes when the model repeats the question"
