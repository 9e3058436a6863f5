"""The ITREX environment: a pinned virtual environment in the per-machine cache.

ITREX 1.4.2 runs only on torch 2.3 / transformers 4.40, so it gets a Python of its own:
``llmcheck env create itrex`` builds ``<cache>/envs/itrex-<hash>`` with ``pip`` from the
requirements below and the constraints file shipped in this package (every package of
an environment that was checked to work, pinned). The hash covers the constraints,
the requirements and the Python version, so a new recipe is a new folder.

The build goes through ``CacheEntry.build``: the environment is made in a temporary
folder and renamed into place only after an import check passed, so a half-built
environment (pip killed, disk full) is never found. A venv survives the rename because
only its ``bin/python`` is ever run (``python -m pip``, never the ``pip`` script whose
first line names the temporary folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pytest_llmcheck.errors import LlmcheckError
from pytest_llmcheck.storage.cache import Cache, CacheEntry

ENGINE = "itrex"
KIND = "envs"
PYTHON_VERSION = "3.11"  # the version the recipe was checked on
CONSTRAINTS = Path(__file__).with_name("constraints.txt")
# What the worker imports: the ITREX stack, and the seed models' own code's needs
# (Qwen-7B-Chat: tiktoken, einops, transformers_stream_generator; ChatGLM3: sentencepiece).
REQUIREMENTS = (
    "torch==2.3.1",
    "transformers==4.40.2",
    "intel-extension-for-transformers==1.4.2",
    "neural-compressor==2.5.1",
    "accelerate<0.30",
    "numpy==1.26.4",
    "six",
    "datasets<2.20",
    "pyarrow<20",
    "peft<0.12",
    "tiktoken",
    "einops",
    "transformers_stream_generator",
    "sentencepiece",
    "protobuf",
)
# Imported after the install: an environment that fails this is never kept.
CHECK = (
    "import json, torch, transformers, intel_extension_for_transformers as itrex, neural_compressor;"
    "from intel_extension_for_transformers.transformers import AutoModelForCausalLM, RtnConfig;"
    "print(json.dumps({'python': '.'.join(map(str, __import__('sys').version_info[:3])),"
    "'torch': torch.__version__, 'transformers': transformers.__version__,"
    "'intel-extension-for-transformers': itrex.__version__,"
    "'neural-compressor': neural_compressor.__version__}))"
)
VERSIONS_FILE = "versions.json"
PYTHON_ENV = "LLMCHECK_ITREX_PYTHON"  # a ready interpreter, instead of the cache's environment


class ItrexEnvError(LlmcheckError):
    """No usable ITREX environment; the message says how to get one."""


def create_hint(cache_dir: Path | None = None) -> str:
    where = f" --cache-dir {cache_dir}" if cache_dir is not None else ""
    return f"llmcheck env create itrex{where}"


def env_key() -> dict[str, str]:
    """What decides the environment's content: recipe, pinned versions, Python version."""
    digest = hashlib.sha256()
    digest.update("\n".join(REQUIREMENTS).encode())
    digest.update(CONSTRAINTS.read_bytes())
    return {"name": ENGINE, "recipe": digest.hexdigest()[:16], "python": PYTHON_VERSION}


def env_entry(cache: Cache) -> CacheEntry:
    return cache.entry(KIND, env_key())


def env_python(folder: Path) -> Path:
    return folder / "venv" / "bin" / "python"


@dataclass(frozen=True)
class ItrexPython:
    """The interpreter the worker runs in, and where it came from (for messages and fingerprints)."""

    path: Path
    origin: str  # "cache", "--llm-itrex-python" or "$LLMCHECK_ITREX_PYTHON"
    versions: dict[str, str]


def locate(cache_dir: Path, python: str | None = None) -> ItrexPython:
    """The ITREX interpreter: the one the user named, else the cache's environment.

    Raises ``ItrexEnvError`` (one line, with the command that creates it) when none is there.
    """
    if python:
        return _user_python(Path(python).expanduser(), "--llm-itrex-python")
    if os.environ.get(PYTHON_ENV, "").strip():
        return _user_python(Path(os.environ[PYTHON_ENV].strip()).expanduser(), f"${PYTHON_ENV}")
    entry = env_entry(Cache(cache_dir))
    if not entry.ready:
        raise ItrexEnvError(
            "the itrex engine needs its own Python environment (torch 2.3.1, transformers 4.40.2, "
            f"ITREX 1.4.2; ~6 GB, a few minutes); create it with: {create_hint(_shown_cache(cache_dir))}"
        )
    versions = json.loads((entry.path / VERSIONS_FILE).read_text(encoding="utf-8"))
    return ItrexPython(env_python(entry.path), "cache", versions)


def _shown_cache(cache_dir: Path) -> Path | None:
    """The cache dir to name in a hint: only when it is not the default one."""
    from pytest_llmcheck.storage.cache import default_cache_dir

    return None if Path(cache_dir).expanduser() == default_cache_dir() else cache_dir


def _user_python(path: Path, origin: str) -> ItrexPython:
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ItrexEnvError(f"{origin}: {path} is not an executable Python interpreter")
    try:
        out = subprocess.run(
            [str(path), "-I", "-c", CHECK], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ItrexEnvError(f"{origin}: {path} could not be run: {exc}") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise ItrexEnvError(
            f"{origin}: {path} cannot import the ITREX stack ({last}); use an environment made by "
            f"{create_hint()}, or install: {' '.join(REQUIREMENTS)}"
        )
    versions: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return ItrexPython(path, origin, versions)


def base_interpreter() -> str:
    """The installed interpreter under this one, not a venv's link to it: ``bin/pythonX.Y``
    under ``sys.base_prefix``, which is the installation itself even for a venv made from
    another venv (venv writes the installation's folder as ``home``). A venv built from a
    venv's python would depend on that venv staying where it is. ``sys.executable`` where
    the installation has no such file (a relocated or embedded Python)."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    base = Path(sys.base_prefix)
    candidate = base / "python.exe" if os.name == "nt" else base / "bin" / f"python{version}"
    return str(candidate) if candidate.is_file() else sys.executable


def find_base_python(python: str | None = None) -> str:
    """A Python ``PYTHON_VERSION`` interpreter to build the venv from."""
    if python:
        found = shutil.which(python) or (python if Path(python).is_file() else None)
        if found is None:
            raise ItrexEnvError(f"--python: {python} not found")
        return found
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == PYTHON_VERSION:
        return base_interpreter()
    found = shutil.which(f"python{PYTHON_VERSION}")
    if found is None:
        raise ItrexEnvError(
            f"the ITREX recipe needs Python {PYTHON_VERSION} (python{PYTHON_VERSION} is not on PATH); "
            f"pass one with --python"
        )
    return found


def create(
    cache: Cache,
    *,
    python: str | None = None,
    extra_index_url: str | None = None,
    say: Callable[[str], None] = print,
    pip_output: int | None = None,
) -> tuple[CacheEntry, bool]:
    """Build the environment unless it is there; return (entry, built now).

    ``say`` gets one line per step; pip's own progress goes to ``pip_output`` (a file
    descriptor; None: this process's stdout).
    """
    entry = env_entry(cache)
    if entry.ready:
        return entry, False
    base = find_base_python(python)
    built = False
    with entry.build() as tmp:
        if tmp is None:  # another process finished it while we waited for the lock
            return entry, False
        start = time.perf_counter()
        venv = tmp / "venv"
        say(f"[1/3] creating a Python {PYTHON_VERSION} venv with {base}")
        _run("creating the venv", [base, "-m", "venv", str(venv)], pip_output)
        vpython = str(env_python(tmp))
        pip = [vpython, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
        if extra_index_url:
            pip += ["--extra-index-url", extra_index_url]
        say(f"[2/3] installing {len(REQUIREMENTS)} requirements pinned by {CONSTRAINTS.name} "
            "(torch 2.3.1 from PyPI brings its CUDA libraries: ~6 GB, a few minutes)")
        _run("pip install", [*pip, "-c", str(CONSTRAINTS), *REQUIREMENTS], pip_output)
        say("[3/3] checking that the ITREX stack imports")
        out = subprocess.run([vpython, "-I", "-c", CHECK], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise ItrexEnvError(f"the new ITREX environment does not import: {last}")
        versions = json.loads(out.stdout.strip().splitlines()[-1])
        (tmp / VERSIONS_FILE).write_text(json.dumps(versions, indent=2) + "\n", encoding="utf-8")
        (tmp / "build.json").write_text(
            json.dumps({"base_python": base, "extra_index_url": extra_index_url,
                        "seconds": round(time.perf_counter() - start, 1)}, indent=2) + "\n",
            encoding="utf-8",
        )
        built = True
    return entry, built


def _run(what: str, cmd: list[str], output: int | None) -> None:
    code = subprocess.run(cmd, stdout=output, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise ItrexEnvError(
            f"{what} ({cmd[0]}) failed with exit status {code}; nothing of the environment was kept"
        )


def remove(cache: Cache) -> int:
    """Delete the ITREX environment(s) of every recipe, and dead half-builds; return the bytes freed.

    An environment being built right now (its lock is held) is left alone, its temp folder too.
    """
    return cache.clear(KIND, prefix=f"{ENGINE}-")
