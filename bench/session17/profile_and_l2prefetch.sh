#!/usr/bin/env bash
# Session 17, call 1: the L2-prefetch microbenchmark, an ncu per-kernel profile of decode steps
# (no graph, caches not flushed), and tg128 of this build.
set -uo pipefail
D=.device/final
[ -x "$D/gptoss" ] || tar -xJf "$D/staged.tar.xz" -C "$D"
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
G=$D/gptoss; S=$OUT/summary.txt
log() { echo "== $(date +%T) [$SECONDS s] $*" | tee -a "$S"; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$S"
log "commit $(cat $D/COMMIT)"
[ -s /tmp/m20.gguf ] || ( "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > $OUT/synth.log 2>&1 ) &
syn=$!
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
( "$NVCC" -O3 -std=c++17 -arch=sm_90a -o /tmp/l2pf bench/micro/l2_prefetch.cu > $OUT/l2pf_build.log 2>&1; echo "build rc $?" >> $OUT/l2pf_build.log ) &
bld=$!
wait $bld; tail -3 $OUT/l2pf_build.log | tee -a "$S"
log "micro"
timeout 180 /tmp/l2pf > $OUT/l2pf.log 2>&1; echo "rc $?" >> $OUT/l2pf.log
cat $OUT/l2pf.log >> "$S"
wait $syn; log "synth done"
echo -n "tg128: " | tee -a "$S"; "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 -r 3 -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"
echo -n "tg128 no graph: " | tee -a "$S"; GPTOSS_CUDA_GRAPH=0 "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 -r 3 -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"
log "ncu"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
GPTOSS_CUDA_GRAPH=0 timeout 240 "$NCU" --clock-control none --cache-control none --csv --print-units base \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__registers_per_thread \
  "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 3 -r 1 -o md > /tmp/ncu.csv 2> $OUT/ncu.err
echo "ncu rc $?" | tee -a "$S"
xz -9 -c /tmp/ncu.csv > $OUT/ncu.csv.xz
log done
