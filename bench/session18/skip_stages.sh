#!/usr/bin/env bash
# Session 18, call 1: what each decode stage costs inside the recorded step, measured by leaving it
# out (GPTOSS_CUDA_SKIP: the kernels are not launched, outputs are wrong, timing is what is left).
# Staged by hand: .device/s18/{gptoss.xz, o200k_harmony-vocab.gguf, COMMIT, this script}.
set -uo pipefail
D=.device/s18
[ -x /tmp/gptoss ] || { xz -dc "$D/gptoss.xz" > /tmp/gptoss; chmod +x /tmp/gptoss; }
G=/tmp/gptoss; S=$OUT/summary.txt
log() { echo "== $(date +%T) [$SECONDS s] $*" | tee -a "$S"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$S"
log "commit $(cat $D/COMMIT)"
[ -s /tmp/m20.gguf ] || "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > $OUT/synth.log 2>&1
log "synth done"
tg() { # label, env..., then bench args via $ARGS
  local label=$1; shift
  echo -n "$label: " | tee -a "$S"
  env "$@" "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 $ARGS -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"
}
ARGS="-r 2"
for r in 1 2; do
  tg "base r$r" X=1
  tg "skip norms r$r" GPTOSS_CUDA_SKIP=add_rms_norm
  tg "skip qkv r$r" GPTOSS_CUDA_SKIP=gemvf3
  tg "skip attn r$r" GPTOSS_CUDA_SKIP=attn_dtc
  tg "skip o r$r" GPTOSS_CUDA_SKIP=gemvf_q8_0_r1/360
  tg "skip output r$r" GPTOSS_CUDA_SKIP=gemvf_q8_0_r1/25136
  tg "skip gate_up r$r" GPTOSS_CUDA_SKIP=moe_gate_up
  tg "skip down r$r" GPTOSS_CUDA_SKIP=moe_down
done
tg "skip gate_up+down" GPTOSS_CUDA_SKIP=moe_gate_up,moe_down
tg "skip qkv+o" GPTOSS_CUDA_SKIP=gemvf3,gemvf_q8_0_r1/360
tg "skip all but router/embed/argmax" GPTOSS_CUDA_SKIP=add_rms_norm,gemvf,attn_dtc,moe_gate_up,moe_down,rms_norm
tg "graph off" GPTOSS_CUDA_GRAPH=0
ARGS="-r 2 -d 16384"
tg "d16384 base" X=1
tg "d16384 skip attn" GPTOSS_CUDA_SKIP=attn_dtc
log done
