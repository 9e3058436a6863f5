"""Every committed example answer snapshot, checked on whatever machine runs the tests.

The examples are a user's project (``examples/pytest.ini``): their riddles run as the README
says, in fresh pytest processes, on a copy (so nothing is written into the checkout). The
portable ones (``[smollm2]``, ``[smollm2-int4a8]``) must pass on every x86-64-v3 CPU; the native
ones (``[smollm2@itrex]``) pass on the CPU kind that recorded them and are skipped elsewhere as
"not comparable", one line each, never passed silently.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_portable import user_env

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
RIDDLES = [f"riddle-{i}" for i in range(1, 6)]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("project") / "examples"
    leave_out = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.txt.new")
    shutil.copytree(EXAMPLES, copy, ignore=leave_out)
    return copy


def run(examples: Path, *args: str, where: str = "riddles",
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", where, "-p", "no:cacheprovider", "-rs", "--llm-soft", *args],
        cwd=examples, env={**user_env(), **(env or {})}, capture_output=True, text=True, timeout=1200,
    )


def assert_checked(result: subprocess.CompletedProcess[str], model: str) -> None:
    """Every riddle passed against its snapshot, or was skipped as not comparable on this CPU."""
    out = result.stdout
    assert result.returncode == 0, out[-4000:]
    passed = set(re.findall(rf"(riddle-\d)\[{re.escape(model)}\] PASSED", out))
    apart = set(re.findall(rf"riddle-\d\[{re.escape(model)}\]\.txt was recorded with native numerics on CPU "
                           r"'[^']*'; this CPU is '[^']*': not comparable", out))
    skipped = {name.split("[")[0] for name in apart}
    assert passed | skipped == set(RIDDLES), out[-4000:]
    assert not passed & skipped
    assert "snapshot changed" not in out


def test_smollm2_portable_snapshots_pass_here(examples: Path) -> None:
    result = run(examples, "--llm-model=smollm2", "-v")
    assert_checked(result, "smollm2")
    assert "not comparable" not in result.stdout  # portable: they hold on every x86-64-v3 CPU
    assert "5 snapshots passed" in result.stdout


def test_smollm2_llamacpp_portable_snapshots_pass_here(examples: Path) -> None:
    """Recorded with the x86-64-v3 llama.cpp build install.sh installs: they hold on every such CPU."""
    import platform

    pytest.importorskip("llama_cpp", reason="the llamacpp engine's extra is not installed")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the portable llama.cpp build is for x86-64")
    result = run(examples, "--llm-model=smollm2@llamacpp", "-v")
    assert_checked(result, "smollm2@llamacpp")
    assert "not comparable" not in result.stdout
    assert "native numerics" not in result.stdout  # the installed library is the portable build
    assert "5 snapshots passed" in result.stdout


def test_python_api_portable_snapshots_pass_here(examples: Path) -> None:
    """The command in examples/python_api's docstring."""
    result = run(examples, "--llm-model=smollm2", where="python_api")
    assert result.returncode == 0, result.stdout[-4000:]
    assert "7 passed" in result.stdout
    assert "5 snapshots passed" in result.stdout


def test_smollm2_int4_a8_portable_snapshots_pass_on_either_kernel_body(examples: Path) -> None:
    """Recorded on an AVX512-VNNI machine; an AVX2-only runner (its body forced here, one
    thread) answers the same."""
    from pytest_llmcheck.engines.transformers import w4a8

    if (problem := w4a8.cpu_problem()) is not None:
        pytest.skip(f"--llm-quant=int4-a8 cannot run here: {problem}")
    for env, threads in (({}, "2"), ({"LLMCHECK_W4A8_BODY": "avx2"}, "1")):
        result = run(examples, "--llm-model=smollm2", "--llm-quant=int4-a8", f"--llm-threads={threads}", "-v",
                     env=env)
        assert_checked(result, "smollm2-int4a8")
        assert "not comparable" not in result.stdout
        body = env.get("LLMCHECK_W4A8_BODY", "avx512-vnni" if w4a8.cpu_has_vnni() else "avx2")
        assert f"{body} body)" in result.stdout


def test_smollm2_itrex_native_snapshots_pass_or_are_not_comparable(examples: Path) -> None:
    from pytest_llmcheck.engines.itrex import env
    from pytest_llmcheck.storage.cache import default_cache_dir

    try:
        env.locate(default_cache_dir())
    except env.ItrexEnvError as exc:
        pytest.skip(f"no ITREX environment on this machine: {exc}")
    result = run(examples, "--llm-model=smollm2@itrex", "-v")
    assert_checked(result, "smollm2@itrex")
    assert "native numerics (ITREX's kernels pick by CPU)" in result.stdout  # portable was asked
