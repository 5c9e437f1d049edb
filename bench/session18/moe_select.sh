#!/usr/bin/env bash
# Session 18, call 4: the MoE kernels selecting their experts from the router's logits
# (GPTOSS_CUDA_MOE_SELECT=1, default) against the router's own selection (=0), alternating in one
# binary; tests first.
set -uo pipefail
D=.device/final
SKIP_WGPU=1 TESTS="conformance_cuda end_to_end_cuda" PARTS=tests bash $D/gpu_run.sh $D
G=$D/gptoss; S=$OUT/summary.txt
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
tg() { local label=$1; shift; echo -n "$label: " | tee -a "$S"
  env "$@" "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 $ARGS -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"; }
ARGS="-r 3"
for r in 1 2 3; do
  tg "select=1 r$r" GPTOSS_CUDA_MOE_SELECT=1
  tg "select=0 r$r" GPTOSS_CUDA_MOE_SELECT=0
done
tg "select=1 graph off" GPTOSS_CUDA_GRAPH=0
tg "select=0 graph off" GPTOSS_CUDA_MOE_SELECT=0 GPTOSS_CUDA_GRAPH=0
ARGS="-r 2 -d 16384"
tg "d16384 select=1" GPTOSS_CUDA_MOE_SELECT=1
tg "d16384 select=0" GPTOSS_CUDA_MOE_SELECT=0
echo "== done [$SECONDS s]" | tee -a "$S"
