#!/usr/bin/env bash
# Session 18, call 3: bulk-fed products with one barrier per row; how many rows of eight are copied
# before the wait (GPTOSS_CUDA_BULK_PRE=o,qkv) for the attention output (bit 1) and q/k/v (bit 2).
set -uo pipefail
D=.device/final
SKIP_WGPU=1 TESTS="conformance_cuda end_to_end_cuda" PARTS=tests bash $D/gpu_run.sh $D
G=$D/gptoss; S=$OUT/summary.txt
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
tg() { local label=$1; shift; echo -n "$label: " | tee -a "$S"
  env "$@" "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 $ARGS -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"; }
ARGS="-r 3"
for r in 1 2; do
  tg "bulk=0 r$r" GPTOSS_CUDA_GEMV_BULK=0
  for pre in 8 4 0; do tg "bulk=1 pre=$pre r$r" GPTOSS_CUDA_GEMV_BULK=1 GPTOSS_CUDA_BULK_PRE=$pre,0; done
  for pre in 0 2 8; do tg "bulk=2 pre=$pre r$r" GPTOSS_CUDA_GEMV_BULK=2 GPTOSS_CUDA_BULK_PRE=0,$pre; done
  tg "bulk=3 pre=8,0 r$r" GPTOSS_CUDA_GEMV_BULK=3 GPTOSS_CUDA_BULK_PRE=8,0
  tg "bulk=3 pre=0,0 r$r" GPTOSS_CUDA_GEMV_BULK=3 GPTOSS_CUDA_BULK_PRE=0,0
  tg "bulk=7 pre=8,0 r$r" GPTOSS_CUDA_GEMV_BULK=7 GPTOSS_CUDA_BULK_PRE=8,0
done
ARGS="-r 2 -d 16384"
tg "d16384 bulk=0" GPTOSS_CUDA_GEMV_BULK=0
tg "d16384 bulk=1 pre=8" GPTOSS_CUDA_GEMV_BULK=1 GPTOSS_CUDA_BULK_PRE=8,0
tg "d16384 bulk=3 pre=8,0" GPTOSS_CUDA_GEMV_BULK=3 GPTOSS_CUDA_BULK_PRE=8,0
echo "== done [$SECONDS s]" | tee -a "$S"
