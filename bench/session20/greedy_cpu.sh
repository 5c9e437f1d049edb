#!/usr/bin/env bash
# Session 20, call 6: the issue's 64 greedy steps against the CPU reference with the f32 kernels
# (GPTOSS_CUDA_TC_OFF=linear,moe,attention, as sessions 10-18 ran it: call 5 left attention's bf16 prefill
# on and so kept only 2 of 64), for the final tree and the baseline, and the CPU reference's tokens.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
wait_synth
ids=$(greedy_ids)
( "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cpu-ref > /tmp/g_cpu.json 2>>$OUT/check.err ) &
CPU_PID=$!
for b in G B; do
  GPTOSS_CUDA_TC_OFF=linear,moe,attention "${!b}" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_$b.json 2>>$OUT/check.err
done
wait $CPU_PID
log "CPU reference done"
python3 - <<'PY' | tee -a "$S"
import json
c = json.load(open("/tmp/g_cpu.json"))
for f, name in [("/tmp/g_G.json", "final tree"), ("/tmp/g_B.json", "baseline 2914061")]:
    a = json.load(open(f))
    n = next((i for i, (x, y) in enumerate(zip(a, c)) if x != y), len(a))
    print(f"greedy {name} (f32 kernels: GPTOSS_CUDA_TC_OFF=linear,moe,attention) vs CPU: {n} of {len(a)} steps identical before the first difference")
PY
log done
