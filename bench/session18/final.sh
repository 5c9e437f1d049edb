#!/usr/bin/env bash
# Session 18, call 6 (final): the full check of the landed tree (conformance, end to end, 20b logits
# and greedy steps, bench with the baseline binary ca1e501 = the tree before the router and PDL
# changes), then tg128 alternating against the baseline.
# Staged by `BASELINE=<gptoss built at ca1e501> BASELINE_COMMIT=ca1e501 bash bench/stage_gpu_run.sh`.
set -uo pipefail
D=.device/final
SKIP_WGPU=1 CHECK_QUICK=1 TESTS="conformance_cuda end_to_end_cuda" \
  FUSE_AB="GPTOSS_CUDA_GRAPH=0 GPTOSS_CUDA_PDL_ONLY=gemvf,moe_router,moe_down_planes" \
  PARTS=tests,check,bench bash $D/gpu_run.sh $D
G=$D/gptoss; B=$D/baseline/gptoss; S=$OUT/summary.txt
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
for r in 1 2; do
  for b in "$G" "$B"; do
    echo -n "alternating r$r $b: " | tee -a "$S"
    "$b" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 -r 3 -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"
  done
done
echo "== done [$SECONDS s]" | tee -a "$S"
