#!/usr/bin/env bash
# Session 17, call 3: whole-block-per-lane dp4a MoE kernels: conformance (dp4a cases) with each
# candidate, alternating tg128 against the current kernels, and the moe_variants micro.
# GPTOSS_CUDA_MOE_DP4A was an override in that uncommitted build only (45000c5 makes these kernels the default).
set -uo pipefail
D=.device/final
[ -x "$D/gptoss" ] || tar -xJf "$D/staged.tar.xz" -C "$D"
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
export GPTOSS_FIXTURES=$D/fixtures
G=$D/gptoss; S=$OUT/summary.txt
log() { echo "== $(date +%T) [$SECONDS s] $*" | tee -a "$S"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$S"
log "commit $(cat $D/COMMIT) + uncommitted blocks kernels"
[ -s /tmp/m20.gguf ] || ( "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > $OUT/synth.log 2>&1 ) &
syn=$!
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
( "$NVCC" -O3 -std=c++17 -arch=sm_90a -o /tmp/moev bench/micro/moe_variants.cu > $OUT/moev_build.log 2>&1; echo "build rc $?" >> $OUT/moev_build.log ) &
bld=$!
A="moe_gate_up_blocks_f1:moe_down_blocks_r1_f2:1"
B="moe_gate_up_blocks_f1:moe_down_blocks_r2_f1:2"
for v in "$A" "$B"; do
  log "conformance dp4a, GPTOSS_CUDA_MOE_DP4A=$v"
  GPTOSS_CUDA_MOE_DP4A=$v timeout 200 $D/conformance_cuda decode_mma_and_f32_kernels --test-threads 1 --nocapture > $OUT/conf_$(echo $v | md5sum | cut -c1-6).log 2>&1
  grep -E "^test result|panicked|nmse|FAIL" $OUT/conf_$(echo $v | md5sum | cut -c1-6).log | grep -v "^ok" | tail -4 | tee -a "$S"
done
wait $syn; log "synth done"
for r in 1 2; do
  for v in "X=1" "GPTOSS_CUDA_MOE_DP4A=$A" "GPTOSS_CUDA_MOE_DP4A=$B"; do
    echo -n "round $r $v: " | tee -a "$S"
    env $v "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 -r 3 -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"
  done
done
wait $bld; tail -2 $OUT/moev_build.log | tee -a "$S"
log "moe variants"
timeout 150 /tmp/moev > $OUT/moev.log 2>&1; echo "rc $?" >> $OUT/moev.log
cat $OUT/moev.log >> "$S"
log done
