#!/usr/bin/env bash
# Session 18, call 8: which decode kernels launch with PDL inside the recorded step, revisited after the
# router change (GPTOSS_CUDA_PDL_ONLY overrides PDL_IN_GRAPH; gemvf3 = q/k/v, gemvf_q8_0_r1 = attention
# output and output matrix). Staged by hand like floor.sh.
set -uo pipefail
D=.device/s18
[ -x /tmp/gptoss ] || { xz -dc "$D/gptoss.xz" > /tmp/gptoss; chmod +x /tmp/gptoss; }
G=/tmp/gptoss; S=$OUT/summary.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$S"
echo "commit $(cat $D/COMMIT)" | tee -a "$S"
[ -s /tmp/m20.gguf ] || "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > $OUT/synth.log 2>&1
tg() { local label=$1; shift; echo -n "$label: " | tee -a "$S"
  env "$@" "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 $ARGS -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"; }
BASE=moe_router,moe_down_planes,moe_gate_up_planes
ARGS="-r 3"
for r in 1 2; do
  tg "default r$r" X=1
  tg "+attn_dtc r$r" GPTOSS_CUDA_PDL_ONLY=gemvf,$BASE,attn_dtc
  tg "q/k/v only of gemvf, +attn_dtc r$r" GPTOSS_CUDA_PDL_ONLY=gemvf3,$BASE,attn_dtc
  tg "q/k/v only of gemvf r$r" GPTOSS_CUDA_PDL_ONLY=gemvf3,$BASE
  tg "+add_rms_norm r$r" GPTOSS_CUDA_PDL_ONLY=gemvf,$BASE,add_rms_norm
done
echo "== done [$SECONDS s]" | tee -a "$S"
