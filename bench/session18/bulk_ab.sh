#!/usr/bin/env bash
# Session 18, call 2: the bulk-fed one-token Q8_0 products. Tests first (gpu_run.sh PARTS=tests),
# then tg128 with GPTOSS_CUDA_GEMV_BULK bit sets alternating in one binary (1 = attention output,
# 2 = q/k/v+RoPE, 4 = output matrix), depth 16384 on and off.
set -uo pipefail
D=.device/final
SKIP_WGPU=1 TESTS="${TESTS:-conformance_cuda end_to_end_cuda}" PARTS=tests bash $D/gpu_run.sh $D
G=$D/gptoss; S=$OUT/summary.txt
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
tg() { local label=$1; shift; echo -n "$label: " | tee -a "$S"
  env "$@" "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 $ARGS -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"; }
ARGS="-r 3"
for r in 1 2; do
  for b in 3 0 1 2 7; do tg "bulk=$b r$r" GPTOSS_CUDA_GEMV_BULK=$b; done
done
ARGS="-r 2 -d 16384"
tg "d16384 bulk=3" GPTOSS_CUDA_GEMV_BULK=3
tg "d16384 bulk=0" GPTOSS_CUDA_GEMV_BULK=0
echo "== done [$SECONDS s]" | tee -a "$S"
