"""Portable numerics in the ``llamacpp`` engine: the x86-64-v3 build, and a native build as the control.

One machine stands in for the others: the portable library (what install.sh installs) must
answer the riddles alike at 1 and 3 threads and record the numerics recipe, not the CPU; a
native library for this CPU (``install.sh --native-llama``), loaded through
``LLAMA_CPP_LIB_PATH`` in a fresh process, must be recorded as native with the reason, even
when portable numerics were asked for. Its answers may differ: that is the point of the control.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.engines import llamacpp
from pytest_llmcheck.engines.llamacpp import (
    PORTABLE_BUILD,
    choose_library,
    cpu_key,
    native_library_dir,
    not_portable,
)

ROOT = Path(__file__).resolve().parents[1]
X86_64 = platform.machine().lower() in ("x86_64", "amd64")
V3 = frozenset({"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2", "LLAMAFILE", "OPENMP", "REPACK"})

# A fresh process: load smollm2@llamacpp with the numerics asked, answer each riddle at each
# thread count, print the fingerprint, the summary and the answers as JSON.
CHILD = """
import json, sys
import yaml
from pytest_llmcheck.engines.base import GenerationConfig
from pytest_llmcheck.engines.llamacpp import load_llamacpp
from pytest_llmcheck.config.registry import resolve
from pytest_llmcheck.config.settings import Settings

numerics, tokens, suite = sys.argv[1], int(sys.argv[3]), sys.argv[4]
threads = [int(t) for t in sys.argv[2].split(",")]
prompts = [q["prompt"] for q in yaml.safe_load(open(suite, encoding="utf-8"))["questions"]]
settings = Settings(numerics=numerics, threads=threads[0], threads_given=True, no_cache=True)
engine = load_llamacpp(resolve("smollm2@llamacpp"), settings)
answers = {}
for t in threads:
    config = GenerationConfig(max_new_tokens=tokens, threads=t)
    answers[str(t)] = [engine.generate(p, system=None, config=config).text for p in prompts]
print(json.dumps({"fingerprint": engine.fingerprint(), "summary": engine.facts.summary, "answers": answers}))
engine.close()
"""


def run_child(numerics: str, threads: str, lib: Path | None = None, tokens: int = 128) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != llamacpp.LIB_PATH_ENV}
    if lib is not None:
        env[llamacpp.LIB_PATH_ENV] = str(lib)
    suite = ROOT / "examples" / "riddles" / "riddles.llm.yaml"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, numerics, threads, str(tokens), str(suite)],
        env=env, capture_output=True, text=True, timeout=1800, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- which library is portable (no llama.cpp)


def test_a_library_with_instructions_only_some_cpus_have_is_native() -> None:
    assert not_portable(V3) is None
    assert not_portable(V3 | {"AVX512", "AVX512_VNNI", "AVX512_BF16", "AVX512_VBMI"}) == (
        "this llama.cpp library was built with AVX512 AVX512_BF16 AVX512_VBMI AVX512_VNNI; "
        "install.sh builds the portable one"
    )
    assert not_portable(V3 | {"AMX_INT8", "AVX_VNNI"}) == (
        "this llama.cpp library was built with AMX_INT8 AVX_VNNI; install.sh builds the portable one"
    )
    assert not_portable(frozenset({"NEON", "ARM_FMA", "OPENMP"})) == (
        "this llama.cpp library was built without AVX AVX2 F16C FMA (not an x86-64-v3 build); "
        "install.sh builds the portable one"
    )


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="no /proc/cpuinfo on this platform")
def test_cpu_key_is_the_one_install_sh_names_the_native_build_by() -> None:
    shell = subprocess.run(
        ["bash", "-c", "grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-12"],
        capture_output=True, text=True, check=True,
    )
    assert cpu_key() == shell.stdout.strip()


def test_native_mode_loads_the_native_library_before_llama_cpp_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib.metadata import version

    monkeypatch.setattr(llamacpp, "cpu_key", lambda: "0123456789ab")
    monkeypatch.setenv(llamacpp.WHEELS_ENV, str(tmp_path))
    monkeypatch.setenv(llamacpp.LIB_PATH_ENV, "unset below")  # so that the value set later is undone
    monkeypatch.delenv(llamacpp.LIB_PATH_ENV)
    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)  # as in a session that has not loaded it yet
    assert native_library_dir() is None
    choose_library("native")
    assert llamacpp.LIB_PATH_ENV not in os.environ  # nothing built: the installed library

    lib = tmp_path / f"llama-cpp-python-{version('llama_cpp_python')}-native-0123456789ab" / "lib"
    lib.mkdir(parents=True)
    (lib / "libllama.so").write_bytes(b"")
    assert native_library_dir() == lib
    choose_library("portable")
    assert llamacpp.LIB_PATH_ENV not in os.environ  # portable keeps the installed v3 build
    choose_library("native")
    assert os.environ[llamacpp.LIB_PATH_ENV] == str(lib)
    monkeypatch.setenv(llamacpp.LIB_PATH_ENV, "/the/users/own")
    choose_library("native")
    assert os.environ[llamacpp.LIB_PATH_ENV] == "/the/users/own"


# -- real llama.cpp, fresh processes


@pytest.mark.slow
@pytest.mark.skipif(not X86_64, reason="the portable llama.cpp build is for x86-64")
def test_portable_build_answers_alike_at_any_thread_count_and_names_no_cpu() -> None:
    import llama_cpp

    reason = not_portable(llamacpp.library_features(llama_cpp))
    assert reason is None, f"the installed llama-cpp-python is not the {PORTABLE_BUILD} build: {reason}"
    result = run_child("portable", "1,3")
    fingerprint = result["fingerprint"]
    assert fingerprint["numerics"].startswith("portable-v")
    assert "numerics_note" not in fingerprint
    assert fingerprint["llama_cpp"]["build"] == PORTABLE_BUILD
    assert "cpu" not in fingerprint
    assert fingerprint["llama_cpp"]["extra_buffers"] is False
    assert "numerics" not in result["summary"]
    one, three = result["answers"]["1"], result["answers"]["3"]
    assert len(one) == 5
    assert all(one)
    assert one == three


@pytest.mark.slow
def test_a_native_library_is_recorded_as_native_even_when_portable_was_asked() -> None:
    lib = native_library_dir()
    if lib is None:
        pytest.skip("no native llama.cpp library for this CPU: bash install.sh --native-llama builds one")
    result = run_child("portable", "1", lib=lib, tokens=32)
    fingerprint = result["fingerprint"]
    if "cpu" not in fingerprint:
        pytest.skip("this CPU has no instructions beyond x86-64-v3: its native build is the portable one")
    assert fingerprint["numerics"] == "native"
    assert fingerprint["numerics_note"].startswith("this llama.cpp library was built with ")
    assert "build" not in fingerprint["llama_cpp"]
    assert f"; native numerics ({fingerprint['numerics_note']})" in result["summary"]
    asked_native = run_child("native", "1", lib=lib, tokens=32)
    assert asked_native["fingerprint"]["numerics"] == "native"
    assert asked_native["fingerprint"]["cpu"] == fingerprint["cpu"]
    assert "numerics_note" not in asked_native["fingerprint"]
    assert "numerics" not in asked_native["summary"]
