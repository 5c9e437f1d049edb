#!/usr/bin/env bash
# Session 20, call 7: the residual add and RMSNorm after the MoE done by the dp4a down kernel's last block
# per row (moe_down_planes_r2_norm, Backend::moe_sublayer), on top of the router fusion: the decode step
# then has no norm launch inside the layers. Against 2914061 (baseline) and 10465ac (router fusion only,
# staged as gptoss_10465ac.xz) in the same call: the changed kernels' tests, end to end, tg128 alternating
# at depth 0 and 16384, 64 greedy steps against the CPU reference with the f32 kernels.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
F1=$(extra_binary 10465ac)
start_synth
TEST_TIMEOUT=240 run_test conformance_cuda moe_sublayer_fused moe_matches decode_mma embed_rms_norm
TEST_TIMEOUT=100 run_test end_to_end_cuda
wait_synth
ids=$(greedy_ids)
( "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cpu-ref > /tmp/g_cpu.json 2>>$OUT/check.err ) &
CPU_PID=$!
GPTOSS_CUDA_TC_OFF=linear,moe,attention "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_G.json 2>>$OUT/check.err
wait $CPU_PID
python3 - <<'PY' | tee -a "$S"
import json
c = json.load(open("/tmp/g_cpu.json")); a = json.load(open("/tmp/g_G.json"))
n = next((i for i, (x, y) in enumerate(zip(a, c)) if x != y), len(a))
print(f"greedy new (f32 kernels: GPTOSS_CUDA_TC_OFF=linear,moe,attention) vs CPU: {n} of {len(a)} steps identical before the first difference")
PY
log "tg128 alternating"
for r in 1 2; do
  ARGS="-r 3"
  tg "d0 base r$r" $B X=1; tg "d0 10465ac r$r" $F1 X=1; tg "d0 new r$r" $G X=1
done
ARGS="-r 2 -d 16384"
tg "d16384 10465ac" $F1 X=1; tg "d16384 new" $G X=1
log done
