"""``python -m pytest_llmcheck.cli.llama_server ARGS``: llama-cpp-python's server, safe on AMX builds.

Takes the arguments of ``python -m llama_cpp.server`` and runs it as is, unless this
llama.cpp build carries its AMX kernels: those crashed (SIGSEGV) on every multi-token
prompt of a quantized model on the machines this was developed on, so then the server's
models load without llama.cpp's extra weight buffers, as the ``llamacpp`` engine does.
Nor does it use them on the portable x86-64-v3 build (what install.sh installs): repacked
weights are other kernels, other sums, so the served answers are the portable recipe's,
the same on every x86-64-v3 CPU and at any thread count, like the engine's in portable mode.
"""

from __future__ import annotations

import contextlib
import runpy


def main() -> None:
    """Run ``llama_cpp.server`` with this process's arguments."""
    import llama_cpp

    from pytest_llmcheck.engines.llamacpp import (
        amx_compiled,
        library_features,
        no_extra_buffers,
        not_portable,
    )

    plain = amx_compiled(llama_cpp) or not_portable(library_features(llama_cpp)) is None
    guard = no_extra_buffers(llama_cpp) if plain else contextlib.nullcontext()
    with guard:
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
