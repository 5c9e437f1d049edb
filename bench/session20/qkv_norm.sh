#!/usr/bin/env bash
# Session 20, call 4: the attention's RMSNorm applied inside the one-token q/k/v products
# (gemvf3_*_r1_rope_norm, Backend::rms_norm_qkv_rope) and the MoE's output added into the residual by
# the dp4a down kernel (Backend::moe_residual): together the pre-attention add_rms_norm launch is gone.
# Against 2914061 (baseline) and 10465ac (call 1's router fusion, staged as gptoss_10465ac.xz) in the
# same call: the changed kernels' tests, end to end, tg128 alternating at depth 0 (also the new binary
# with GPTOSS_CUDA_QKV_NORM=0: a norm launch before the products again) and at depth 16384.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
F1=$(extra_binary 10465ac)
start_synth
TEST_TIMEOUT=240 run_test conformance_cuda moe_residual_fused fused_qkv_rope moe_matches decode_mma embed_rms_norm
TEST_TIMEOUT=100 run_test end_to_end_cuda
wait_synth
log "tg128 alternating"
for r in 1 2; do
  ARGS="-r 3"
  tg "d0 base r$r" $B X=1; tg "d0 10465ac r$r" $F1 X=1; tg "d0 new r$r" $G X=1
  tg "d0 new QKV_NORM=0 r$r" $G GPTOSS_CUDA_QKV_NORM=0
done
ARGS="-r 2 -d 16384"
tg "d16384 base" $B X=1; tg "d16384 new" $G X=1
log done
