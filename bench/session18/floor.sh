#!/usr/bin/env bash
# Session 18, call 5: the per-token floor (every layer kernel left out: what remains is the host's
# per-token work, the graph launch, the embedding, rope table, logits copy and argmax), the router's
# share, and the MoE gate+up kernel launched with PDL inside the graph.
set -uo pipefail
D=.device/s18
[ -x /tmp/gptoss ] || { xz -dc "$D/gptoss.xz" > /tmp/gptoss; chmod +x /tmp/gptoss; }
G=/tmp/gptoss; S=$OUT/summary.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$S"
echo "commit $(cat $D/COMMIT)" | tee -a "$S"
[ -s /tmp/m20.gguf ] || "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > $OUT/synth.log 2>&1
tg() { local label=$1; shift; echo -n "$label: " | tee -a "$S"
  env "$@" "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 $ARGS -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"; }
ALL=add_rms_norm,rms_norm,gemvf3,gemvf_q8_0_r1/360,attn_dtc,moe_gate_up,moe_down
ARGS="-r 3"
for r in 1 2; do
  tg "base r$r" X=1
  tg "pdl +gate_up r$r" GPTOSS_CUDA_PDL_ONLY=gemvf,moe_router,moe_down_planes,moe_gate_up
  tg "skip all layer kernels but the router r$r" GPTOSS_CUDA_SKIP=$ALL
  tg "skip all layer kernels r$r" GPTOSS_CUDA_SKIP=$ALL,moe_router
done
tg "graph off, skip all layer kernels" GPTOSS_CUDA_GRAPH=0 GPTOSS_CUDA_SKIP=$ALL,moe_router
tg "skip all layer kernels and output" GPTOSS_CUDA_SKIP=$ALL,moe_router,gemvf
ARGS="-r 2 -n 512"
tg "tg512 skip all layer kernels" GPTOSS_CUDA_SKIP=$ALL,moe_router
echo "== done [$SECONDS s]" | tee -a "$S"
