"""Wrong inputs stop the run with one line, never a traceback and never quietly.

Inner sessions on the fake engine: a question id or a model name too long for a snapshot
file name, and a ``min_passes`` that ``--llm-repeat`` answers can never meet (in a suite
file, through the ``llm_suite`` marker and through a ``Question`` made in Python).
"""

from __future__ import annotations

import json

import pytest

from pytest_llmcheck.checks.suite import ID_MAX, MODEL_NAME_MAX


def suite(fake: pytest.Pytester, body: str) -> None:
    fake.makefile(".llm.yaml", qa=f"questions:\n{body}")
    fake.makefile(".json", fake_answers=json.dumps({}))


def assert_no_traceback(result: pytest.RunResult) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text
    assert "OSError" not in text


# -- question ids ---------------------------------------------------------------------------


def test_a_very_long_id_is_a_collection_error_of_one_line(fake: pytest.Pytester) -> None:
    suite(fake, f"  - id: {'q' * 5000}\n    prompt: hi\n")
    result = fake.runpytest("--llm-model=fake:a", "--snapshot-update")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([
        f"*qa.llm.yaml: questions[[]0]: id '{'q' * 40}...' is 5000 characters long; at most {ID_MAX} "
        "are allowed (the id names the answer's snapshot file)"
    ])
    assert "q" * 41 not in result.stdout.str()  # one line, not the whole id
    assert_no_traceback(result)
    assert not list(fake.path.rglob("__snapshots__/**/*"))


def test_the_longest_id_and_model_name_still_make_snapshot_files(fake: pytest.Pytester) -> None:
    """The limits leave room for every file a snapshot makes: the answer, its pending
    candidate (``.txt.new``) and their temporary files, for a second ask() too."""
    qid, model = "q" * ID_MAX, "m" * MODEL_NAME_MAX
    suite(fake, f"  - id: {qid}\n    prompt: hi\n")
    fake.makepyfile(test_py=f"""
        import pytest

        @pytest.mark.llm_snapshot
        def test_{'t' * (ID_MAX - 5)}(llm):
            llm.ask("one")
            llm.ask("two")
        """)
    result = fake.runpytest(f"--llm-model=fake:{model}")  # no snapshots yet: pending candidates
    result.assert_outcomes(failed=2)
    assert_no_traceback(result)
    assert len(list(fake.path.rglob("*.txt.new"))) == 2
    result = fake.runpytest(f"--llm-model=fake:{model}", "--snapshot-update")
    result.assert_outcomes(passed=2)
    names = sorted(p.name for p in fake.path.rglob("__snapshots__/**/*.txt"))
    assert f"{qid}[{model}].txt" in names
    assert f"test_{'t' * (ID_MAX - 5)}[{model}].1.txt" in names
    fake.runpytest(f"--llm-model=fake:{model}").assert_outcomes(passed=2)


def test_a_too_long_model_name_is_a_usage_error_of_one_line(fake: pytest.Pytester) -> None:
    suite(fake, "  - id: q\n    prompt: hi\n")
    result = fake.runpytest(f"--llm-model=fake:{'m' * 300}", "--snapshot-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        f"ERROR: --llm-model: model name '{'m' * 40}...' is 300 characters long; at most {MODEL_NAME_MAX} "
        "are allowed (test ids and snapshot file names carry it): use a shorter file, folder or model name"
    ])
    assert_no_traceback(result)


# -- min_passes and --llm-repeat ------------------------------------------------------------


def test_min_passes_above_repeat_is_a_collection_error_of_one_line(fake: pytest.Pytester) -> None:
    suite(fake, "  - id: ok\n    prompt: hi\n  - id: never\n    prompt: ho\n    min_passes: 99\n")
    result = fake.runpytest("--llm-model=fake:a", "--llm-repeat=3", "--llm-temperature=0.5")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([
        "*qa.llm.yaml: never: 'min_passes' must be at most the answers per question (--llm-repeat=3), "
        "got 99; lower it, or run with --llm-repeat=99 or more and --llm-temperature > 0"
    ])
    assert_no_traceback(result)


def test_a_greedy_run_of_a_suite_written_for_sampling_needs_its_one_answer(fake: pytest.Pytester) -> None:
    """``min_passes: 4`` (for ``--llm-repeat=5``) does not stop a greedy run: its one answer must pass."""
    suite(fake, "  - id: q\n    prompt: hi\n    min_passes: 4\n")
    result = fake.runpytest("--llm-model=fake:a", "--snapshot-update")
    result.assert_outcomes(passed=1)


def test_min_passes_up_to_repeat_is_fine(fake: pytest.Pytester) -> None:
    suite(fake, "  - id: q\n    prompt: hi\n    min_passes: 3\n")
    result = fake.runpytest("--llm-model=fake:a", "--llm-repeat=3", "--llm-temperature=0.5")
    result.assert_outcomes(passed=1)
    result = fake.runpytest("--llm-model=fake:a", "--llm-repeat=2", "--llm-temperature=0.5")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*qa.llm.yaml: q: 'min_passes' must be at most * (--llm-repeat=2), got 3;*"])


def test_min_passes_above_repeat_through_the_suite_marker(fake: pytest.Pytester) -> None:
    suite(fake, "  - id: q\n    prompt: hi\n    min_passes: 2\n")
    (fake.path / "qa.llm.yaml").rename(fake.path / "questions.yaml")  # not collected on its own
    fake.makepyfile(test_py="""
        import pytest

        @pytest.mark.llm_suite("questions.yaml")
        def test_suite(llm, llm_question):
            llm.ask(llm_question)
        """)
    result = fake.runpytest("--llm-model=fake:a", "--llm-repeat=1", "--snapshot-update")
    result.assert_outcomes(passed=1)  # greedy: the one answer must pass
    (fake.path / "questions.yaml").write_text(
        (fake.path / "questions.yaml").read_text().replace("min_passes: 2", "min_passes: 4"))
    result = fake.runpytest("--llm-model=fake:a", "--llm-repeat=3", "--llm-temperature=0.5")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        ["*questions.yaml: q: 'min_passes' must be at most * (--llm-repeat=3), got 4;*"]
    )
    assert_no_traceback(result)


def test_min_passes_above_repeat_in_a_python_question_fails_its_test(fake: pytest.Pytester) -> None:
    fake.makepyfile(test_py="""
        from pytest_llmcheck.checks.expect import Expectations
        from pytest_llmcheck.checks.suite import Question

        def test_q(llm):
            llm.ask(Question(id="q", prompt="hi", system=None, expect=Expectations(), min_passes=5))
        """)
    result = fake.runpytest("--llm-model=fake:a", "--llm-repeat=2", "--llm-temperature=0.5")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*q: 'min_passes' must be at most the answers per question (--llm-repeat=2), got 5;*"]
    )
    assert_no_traceback(result)


def test_a_too_long_python_snapshot_name_fails_its_test_with_one_line(fake: pytest.Pytester) -> None:
    """A Python test's name and parameter ids are not capped: its snapshot check says so."""
    fake.makepyfile(test_py="""
        import pytest

        @pytest.mark.llm_snapshot
        @pytest.mark.parametrize("prompt", [pytest.param("hi", id="p" * 300), "short"])
        def test_q(llm, prompt):
            llm.ask(prompt)
        """)
    for args in ((), ("--snapshot-update",)):
        result = fake.runpytest("--llm-model=fake:a", *args)
        result.assert_outcomes(failed=1 if args else 2, passed=1 if args else 0)
        result.stdout.fnmatch_lines([
            f"*answer snapshot file name 'test_q[[]a-{'p' * 31}...' is 314 bytes long; at most 239 are "
            "allowed (file names stop at 255, and a pending answer adds '.new'): shorten the test name, "
            "its parameter ids (pytest.param(..., id=...)) or the model name"
        ])
        assert_no_traceback(result)
    assert sorted(p.name for p in fake.path.rglob("__snapshots__/**/*.txt")) == ["test_q[a-short].txt"]
