"""Small C++ libraries of torch ops, compiled once per machine into the cache.

Two use this: the ``int4-a8`` recipe's kernel (``w4a8.cpp``) and the decode loop's C++ step
(``decode_step.cpp``). Each is built into a cache entry's temporary folder, loaded from it
before the entry is committed (so an entry that does not load is never taken as good), and
built again when a ready entry fails to load.

What to build with is torch's, through public names: the compiler ``cpp_extension`` uses
(``$CXX``, else ``c++``), its ``include_paths()`` and ``library_paths()``, and the C++ ABI
torch was built with (``torch.compiled_with_cxx11_abi()``; cpp_extension passes the same
define on the torch builds that need one). The one compiler command is this
module's, not ``cpp_extension.load``: ``load`` runs ninja, which is no dependency of the
plugin (and the ``ninja`` wheel's binary is not on PATH when a venv's python is run without
activating it, as CI runs pytest), it loads the library as a side effect of building it,
under a name it versions per process (``w4a8_v1.so`` after a second build under one name),
and leaves its ninja files and objects in the folder that becomes the cache entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pytest_llmcheck.storage.cache import Cache

CACHE_KIND = "kernel"


def compiler() -> str:
    """The C++ compiler to build with: ``$CXX``, else ``c++``, as
    ``torch.utils.cpp_extension.get_cxx_compiler`` picks it on Linux and macOS (read here
    without importing cpp_extension, which imports setuptools)."""
    return os.environ.get("CXX", "c++")


def compiler_missing() -> str | None:
    """The compiler's name when it is not on PATH, else None."""
    name = compiler()
    return name if shutil.which(name) is None else None


def compile_library(source: Path, out: Path, flags: Sequence[str]) -> str | None:
    """Build ``source`` into the shared library ``out`` against this torch; None when it
    worked, else the compiler's last lines."""
    import torch
    import torch.utils.cpp_extension as ext

    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"  # as torch was built
    command = [compiler(), *flags, abi, *(f"-I{p}" for p in ext.include_paths()), str(source),
               *(f"-L{p}" for p in ext.library_paths()), "-lc10", "-ltorch_cpu", "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return " | ".join(done.stderr.strip().splitlines()[-3:]) or f"exit code {done.returncode}"
    return None


def load_library(path: Path) -> str | None:
    """Load a built library into this process; None when it loaded, else the loader's first
    line (a damaged file, or one built against another torch)."""
    import torch

    try:
        torch.ops.load_library(str(path))  # type: ignore[no-untyped-call]
    except OSError as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def source_digest(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()[:16]


def library_key(name: str, source: Path, flags: Sequence[str]) -> dict[str, Any]:
    """What a compiled library depends on: its source, flags, torch and the compiler."""
    import torch

    which = compiler()
    with contextlib.suppress(OSError):
        version = subprocess.run([which, "--version"], capture_output=True, text=True, check=False)
        which = f"{which}: {version.stdout.splitlines()[0] if version.stdout else '?'}"
    return {
        "kernel": name,
        "source": source_digest(source),
        "flags": list(flags),
        "torch": torch.__version__,
        "torch_build": torch.version.git_version,  # two builds may share a version string
        "cxx11_abi": torch.compiled_with_cxx11_abi(),
        "compiler": which,
        "python": sys.version.split()[0],
    }


def build_and_load(
    cache: Cache | None,
    key: dict[str, Any],
    library: str,
    build: Callable[[Path], Path],
    load: Callable[[Path], None],
    load_errors: tuple[type[Exception], ...],
) -> str:
    """Make a library's ops available in this process; says how (``built in 5.61s`` or
    ``cached``). ``build(folder)`` compiles into ``folder`` and returns the file; ``load``
    loads one, raising one of ``load_errors`` when it cannot. Without a cache, built in a
    temporary folder for this process."""
    start = time.perf_counter()
    if cache is None:
        with tempfile.TemporaryDirectory(prefix="llmcheck-kernel-") as tmp:
            load(build(Path(tmp)))  # mapped into the process: the file may go
        return f"built in {time.perf_counter() - start:.2f}s"
    entry = cache.entry(CACHE_KIND, key)
    if entry.ready:
        try:
            load(entry.path / library)
            return "cached"
        except load_errors:
            entry.discard()  # damaged or built elsewhere: build it again
    with entry.build() as tmp:
        if tmp is not None:
            load(build(tmp))
            return f"built in {time.perf_counter() - start:.2f}s"
    load(entry.path / library)  # another process built it while this one waited
    return "cached"
