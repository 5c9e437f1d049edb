#!/usr/bin/env bash
# Session 19, call 4: the decode products with their biases loaded before the product (a284901, the
# kernels of ec6e177) against ce95d81 (call 2's attention, staged as gptoss_ce95d81.xz) and c3d602c
# (the baseline) in the same call: the changed kernels' conformance tests, end to end, tg128
# alternating at depth 0 and 16384, greedy tokens of the synthetic 20b against ce95d81 (the change
# moves loads only, so the tokens must be the same). See README.md for the staging.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
G2=$(extra_binary ce95d81)
start_synth
TEST_TIMEOUT=200 run_test conformance_cuda fused_qkv_rope decode_mma moe_matches linear_every attention_prefill_decode
TEST_TIMEOUT=100 run_test end_to_end_cuda
wait_synth
log "tg128 alternating"
for r in 1 2; do
  ARGS="-r 3"
  tg "d0 c3d602c r$r" $B X=1; tg "d0 ce95d81 r$r" $G2 X=1; tg "d0 new r$r" $G X=1
done
ARGS="-r 2 -d 16384"
tg "d16384 ce95d81" $G2 X=1; tg "d16384 new" $G X=1
ids=$(greedy_ids)
log "greedy 64 steps, prefill f32 (GPTOSS_CUDA_TC_OFF=linear,moe), decode kernels default"
for b in G G2; do
  GPTOSS_CUDA_TC_OFF=linear,moe timeout 120 "${!b}" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/gr_$b.json 2>>$OUT/check.err
done
python3 - <<'PY' | tee -a "$S"
import json
a = json.load(open("/tmp/gr_G.json")); b = json.load(open("/tmp/gr_G2.json"))
n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
print(f"greedy new vs ce95d81: {n} of {len(a)} identical before the first difference")
PY
log done
