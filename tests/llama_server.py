"""``python -m tests.llama_server ARGS``: llama-cpp-python's own server (``python -m llama_cpp.server``).

Run as is, unless this llama.cpp build carries its AMX kernels: those crashed on every
multi-token prompt of a quantized model where this was developed, so then the server's
models load without llama.cpp's extra weight buffers, as the ``llamacpp`` engine does.
"""

from __future__ import annotations

import runpy

import llama_cpp

from pytest_llmcheck.engines.llamacpp import _no_extra_buffers, amx_compiled

if __name__ == "__main__":
    if amx_compiled(llama_cpp):
        with _no_extra_buffers(llama_cpp):
            runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
    else:
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
