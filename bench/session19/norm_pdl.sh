#!/usr/bin/env bash
# Session 19, call 5: add_rms_norm with its weight loaded before the wait (3195543, reverted in
# 6a8cf11), launched with PDL inside the recorded step (GPTOSS_CUDA_PDL_ONLY = the default list +
# add_rms_norm) or not (the default), against a284901 (call 4's binary, staged as gptoss_a284901.xz)
# in the same call; the norm tests, and end to end with that list. See README.md for the staging.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
G3=$(extra_binary a284901)
PDL=GPTOSS_CUDA_PDL_ONLY=gemvf,moe_router,moe_down_planes,moe_gate_up_planes,add_rms_norm
start_synth
TEST_TIMEOUT=100 run_test conformance_cuda embed_rms_norm_add add_rms_norm_and_rope
export $PDL
TEST_TIMEOUT=100 run_test end_to_end_cuda
unset GPTOSS_CUDA_PDL_ONLY
wait_synth
ARGS="-r 2"
for r in 1 2; do
  tg "d0 a284901 r$r" $G3 X=1; tg "d0 new r$r" $G X=1; tg "d0 new +norm pdl r$r" $G $PDL
done
log done
