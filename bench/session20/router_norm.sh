#!/usr/bin/env bash
# Session 20, call 1: the residual add and RMSNorm before the MoE done by the router
# (moe_router_topk_q_add, 10465ac) against 2914061 (session 19's final tree, the baseline) in the same
# call: the new conformance test and the decode MoE tests, end to end (recorded steps bit-equal to plain
# ones), tg128 alternating (baseline / new / new with GPTOSS_CUDA_ROUTER_NORM=0, the same binary without
# the fusion) at depth 0 and 16384, 20b greedy tokens (prefill f32) of new against the baseline.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
TEST_TIMEOUT=200 run_test conformance_cuda add_rms_norm_moe_in_router moe_matches decode_mma embed_rms_norm
TEST_TIMEOUT=100 run_test end_to_end_cuda
wait_synth
log "tg128 alternating"
for r in 1 2; do
  ARGS="-r 3"
  tg "d0 base r$r" $B X=1; tg "d0 new r$r" $G X=1; tg "d0 new ROUTER_NORM=0 r$r" $G GPTOSS_CUDA_ROUTER_NORM=0
done
ARGS="-r 2 -d 16384"
tg "d16384 base" $B X=1; tg "d16384 new" $G X=1
ids=$(greedy_ids)
log "greedy 64 steps, prefill f32 (GPTOSS_CUDA_TC_OFF=linear,moe), decode kernels default"
for b in G B; do
  GPTOSS_CUDA_TC_OFF=linear,moe timeout 100 "${!b}" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/gr_$b.json 2>>$OUT/check.err
done
python3 - <<'PY' | tee -a "$S"
import json
a = json.load(open("/tmp/gr_G.json")); b = json.load(open("/tmp/gr_B.json"))
n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
print(f"greedy new vs baseline: {n} of {len(a)} identical before the first difference")
PY
log done
