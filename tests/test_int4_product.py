"""The C++ step's own INT4 product against torch's AVX2 kernel, in a process held to AVX2.

The checks are in ``tests/int4_product_checks.py``; they need torch dispatching to its AVX2
kernels, which this session (native numerics) does not on an AVX-512 CPU, and torch picks
its level once per process. So they run in a fresh pytest process with
ATEN_CPU_CAPABILITY=avx2, the C++ step's library built once here and shared through a cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmcheck.engines.transformers import decode_step, kernels
from pytest_llmcheck.storage.cache import Cache

CHECKS = Path(__file__).with_name("int4_product_checks.py")


@pytest.mark.skipif(kernels.compiler_missing() is not None, reason="no C++ compiler for the C++ decode step")
def test_int4_mm_checks_pass_under_torchs_avx2_kernels(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    decode_step.load_library(Cache(cache))  # built here once; the inner process loads it
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "LLMCHECK_TEST_STEP_CACHE": str(cache)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(CHECKS), "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-p", "no:xdist", "-rfEs"],
        cwd=Path(__file__).parent.parent, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    for outcome in ("skipped", "failed", "error"):
        assert outcome not in last, last
    assert " 11 passed" in f" {last}", last
