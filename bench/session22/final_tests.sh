#!/usr/bin/env bash
# Session 22, call 5: every CUDA conformance test and end to end on the final kernels (wgmma MoE with 4
# warpgroups, moe_router_rows, rope_qk), then the 20b criterion against the CPU reference: logits of the
# 100-token prompt (default bf16 prefill, and the f32 kernels) and 64 greedy steps with the f32 kernels.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
TEST_TIMEOUT=360 run_test conformance_cuda
TEST_TIMEOUT=100 run_test end_to_end_cuda
wait_synth
ids=$(greedy_ids)
log "CPU reference (background): logits, 64 greedy steps"
( "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cpu-ref --out /tmp/l_cpu.safetensors 2>>$OUT/check.err
  "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cpu-ref > /tmp/g_cpu.json 2>>$OUT/check.err ) &
CPU_PID=$!
"$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_cuda.safetensors 2>>$OUT/check.err
GPTOSS_CUDA_TC_OFF=linear,moe,attention "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_f32.safetensors 2>>$OUT/check.err
GPTOSS_CUDA_TC_OFF=linear,moe,attention "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_f32.json 2>>$OUT/check.err
timeout 200 tail --pid=$CPU_PID -f /dev/null
log "CPU reference done"
python3 - <<'PY' | tee -a "$S"
import json
import numpy as np
from safetensors.numpy import load_file
c = load_file("/tmp/l_cpu.safetensors")["logits"].astype(np.float64)
for f, name in [("/tmp/l_cuda.safetensors", "default (bf16 prefill)"), ("/tmp/l_f32.safetensors", "f32 kernels")]:
    a = load_file(f)["logits"].astype(np.float64)
    print(f"logits {name} vs CPU {a.shape}: NMSE {((a-c)**2).sum()/(c**2).sum():.3e}, max|diff| {np.abs(a-c).max():.3e}, argmax agree {(a.argmax(1)==c.argmax(1)).mean()*100:.1f}%")
a = json.load(open("/tmp/g_f32.json")); b = json.load(open("/tmp/g_cpu.json"))
n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
print(f"greedy (f32 kernels) vs CPU: {n} of {len(a)} steps identical before the first difference")
PY
log done
