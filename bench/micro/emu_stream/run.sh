#!/usr/bin/env bash
# CPU emulation check of kernels-cuda/src/kernels/moe_stream.cu (g++ >= 12, no GPU, ~15 s).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d)
python3 "$HERE/gen.py" "$T"
cp "$HERE/main.cpp" "$T/"
g++ -std=c++20 -O1 -pthread -w -o "$T/emu" "$T/main.cpp"
"$T/emu"
