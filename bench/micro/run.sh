#!/usr/bin/env bash
# Build and run the decode microbenchmark on the GPU machine (needs nvcc; no Rust):
#   OUT=/some/dir bash bench/micro/run.sh
# Writes micro.log (and the build log) under $OUT.
set -u
OUT=${OUT:-/tmp/micro-out}
mkdir -p "$OUT"
ARCH=${ARCH:-sm_90a}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,driver_version --format=csv | tee "$OUT/micro.log"
git log -1 --format='commit %H' 2>/dev/null | tee -a "$OUT/micro.log"
# PREBUILT=1: /tmp/decode_micro was built already (its log in /tmp/decode_micro.build.log).
if [ -n "${PREBUILT:-}" ] && [ -x /tmp/decode_micro ]; then
    cp /tmp/decode_micro.build.log "$OUT/build.log" 2>/dev/null
elif ! "$NVCC" -O3 -std=c++17 -arch="$ARCH" -Xptxas -v -o /tmp/decode_micro bench/micro/decode_micro.cu >"$OUT/build.log" 2>&1; then
    echo "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1
fi
# registers and spills per kernel entry (ptxas -v prints the entry, its spills, then its registers)
awk '/Compiling entry function/ {match($0, /function .[A-Za-z0-9_]+/); n=substr($0, RSTART+10, RLENGTH-10)}
     /spill stores/ {match($0, /[0-9]+ bytes spill stores/); sp=substr($0, RSTART, RLENGTH)}
     /Used [0-9]+ registers/ {match($0, /Used [0-9]+ registers/); print n, substr($0, RSTART, RLENGTH) ",", sp}' \
    "$OUT/build.log" | grep "wide\|_r1\b\|mxfp4_r\|bulk\|pers" >> "$OUT/micro.log"
/tmp/decode_micro 2>&1 | tee -a "$OUT/micro.log"
# NCU=1: also profile one launch of each named kernel (full section set) into $OUT/ncu.txt.
if [ -n "${NCU:-}" ]; then
  ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
  # The 25th launch of each kernel named (warm caches and clocks).
  timeout 240 "$ncu_bin" --set full \
    --kernel-id "::regex:^(${NCU_KERNELS:-moe_gate_up_mxfp4_r1|moe_down_mxfp4_r2|gemvf3_q8_0_r1})\$:25" \
    /tmp/decode_micro > "$OUT/ncu.txt" 2>&1
  echo "ncu rc $?" >> "$OUT/ncu.txt"
fi
