"""Portable numerics: the same greedy answer on every x86-64 CPU from x86-64-v3 (AVX2 + FMA) up.

Why: a regression gate is only as good as its false alarms. Libraries pick kernels by the
CPU they land on (torch's ATen dispatch: AVX2 / AVX-512 / AMX; oneDNN and MKL likewise;
llama.cpp compiled for the build machine), and kernels of different widths sum in
different orders, so a greedy answer recorded on one CI runner differs on the next. In
portable mode every engine that can runs the same instructions in the same order on
every such CPU; one that cannot says so in its fingerprint (``numerics: native``, with
the CPU), and its snapshots are compared only where the CPU matches.

This module is the one place that says what portable means for the process: the
environment torch's dispatchers read when torch is first imported (set by the plugin
before anything imports torch), and what the plugin set, so that worker processes which
run CPU-specific code of their own (the itrex engine) get the user's environment back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping

PORTABLE = "portable"
NATIVE = "native"
PORTABLE_VERSION = 1  # a change to what portable means (other kernels, other order) bumps it
# What torch's dispatchers read when torch is first imported: ATen's own kernels
# (torchao's INT4 matmul and its weight packing among them) held to AVX2 + FMA; oneDNN and
# MKL held to their AVX2 code paths for whatever still reaches them.
PORTABLE_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2",
}
CHOICE_ENV = "LLMCHECK_NUMERICS"  # portable | native: between the command line and the ini value
BEFORE_ENV = "LLMCHECK_ENV_BEFORE_PORTABLE"  # JSON: the values PORTABLE_ENV replaced (None: unset)


def recipe() -> str:
    """The numerics recipe a portable fingerprint names instead of the CPU."""
    return f"portable-v{PORTABLE_VERSION}"


def apply_portable_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str | None]:
    """Set ``PORTABLE_ENV`` (before torch is imported); return the values it replaced.

    The replaced values travel in ``BEFORE_ENV`` so that child processes (xdist workers,
    which inherit the portable environment) still know the user's own.
    """
    env = os.environ if environ is None else environ
    before = portable_env_before(env)
    if BEFORE_ENV not in env:
        before = {name: env.get(name) for name in PORTABLE_ENV}
        env[BEFORE_ENV] = json.dumps(before, sort_keys=True)
    env.update(PORTABLE_ENV)
    return before


def portable_env_before(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The user's values of the variables portable mode set (empty when it set none)."""
    env = os.environ if environ is None else environ
    try:
        data = json.loads(env.get(BEFORE_ENV, "{}"))
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): (v if isinstance(v, str) else None) for k, v in data.items() if k in PORTABLE_ENV}


def native_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` as the user had it: portable mode's settings undone (for processes that
    run their own CPU-specific kernels and record their answers as native)."""
    env = dict(os.environ if environ is None else environ)
    before = portable_env_before(env)
    for name, value in before.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    env.pop(BEFORE_ENV, None)
    return env


def early_choice(args: list[str], ini_value: object) -> str | None:
    """``--llm-numerics``/``--llmcheck-numerics`` from the raw command line, else
    ``$LLMCHECK_NUMERICS``, else the ini value.

    Read before pytest parses options (the ``--llm-*`` aliases are added later), because the
    environment must be set before any conftest imports torch. An invalid value yields None:
    the settings reject it with one line a moment later.
    """
    value: str | None = None
    names = ("--llm-numerics", "--llmcheck-numerics")
    for index, arg in enumerate(args):
        if arg == "--":
            break
        name, eq, rest = arg.partition("=")
        if name in names:
            value = rest if eq else (args[index + 1] if index + 1 < len(args) else None)
    if value is None:
        value = os.environ.get(CHOICE_ENV, "").strip() or None
    if value is None:
        value = str(ini_value).strip() if ini_value not in (None, "") else PORTABLE
    value = value.strip()
    return value if value in (PORTABLE, NATIVE) else None
