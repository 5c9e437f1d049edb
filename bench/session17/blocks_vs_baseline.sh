#!/usr/bin/env bash
# Session 17, call 4: moe_variants micro (rows per warp / occupancy of the whole-block kernels),
# ncu stall detail of the new MoE kernels in a decode step, tg128 vs the 9aa5a76 baseline.
set -uo pipefail
D=.device/final
[ -x "$D/gptoss" ] || tar -xJf "$D/staged.tar.xz" -C "$D"
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
G=$D/gptoss; B=$D/baseline/gptoss; S=$OUT/summary.txt
log() { echo "== $(date +%T) [$SECONDS s] $*" | tee -a "$S"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$S"
log "commit $(cat $D/COMMIT)"
[ -s /tmp/m20.gguf ] || ( "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > $OUT/synth.log 2>&1 ) &
syn=$!
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
( "$NVCC" -O3 -std=c++17 -arch=sm_90a -o /tmp/moev bench/micro/moe_variants.cu > $OUT/moev_build.log 2>&1; echo "build rc $?" >> $OUT/moev_build.log ) &
bld=$!
wait $syn; log "synth done"
for r in 1 2; do
  for b in "$G" "$B"; do
    echo -n "round $r $b: " | tee -a "$S"
    "$b" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 -r 3 -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"
  done
done
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
GPTOSS_CUDA_GRAPH=0 timeout 150 "$NCU" --clock-control none --cache-control none \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
  -k regex:"^(moe_gate_up_planes_r1|moe_down_planes_r2)$" --launch-skip 40 --launch-count 2 \
  "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 3 -r 1 -o md > $OUT/ncu_moe.txt 2> $OUT/ncu.err
log "ncu rc $?"
wait $bld; tail -2 $OUT/moev_build.log | tee -a "$S"
timeout 150 /tmp/moev > $OUT/moev.log 2>&1; echo "rc $?" >> $OUT/moev.log
cat $OUT/moev.log >> "$S"
log done
