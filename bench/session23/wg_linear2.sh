#!/usr/bin/env bash
# Session 23, call 2 (call 1's warm machine): where pp2048's time goes now (ncu, each kernel's duration
# summed by name over `gptoss bench -p 2048 -n 0 -r 1`, caches flushed per kernel), the 20b criterion
# against the CPU reference with the default (bf16) prefill and the f32 kernels (logits of the 100-token
# prompt, 64 greedy steps), and tg128 of both builds (decode does not use the new kernels).
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth; wait_synth
ids=$(greedy_ids)
log "CPU reference (background): logits, 64 greedy steps"
( "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cpu-ref --out /tmp/l_cpu.safetensors 2>>$OUT/check.err
  "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cpu-ref > /tmp/g_cpu.json 2>>$OUT/check.err ) &
CPU_PID=$!
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
log "ncu pp2048"
timeout 240 "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv \
  --print-summary per-kernel "$G" bench -m /tmp/m20.gguf --backend cuda -p 2048 -n 0 -r 1 -o md \
  > "$OUT/ncu_pp2048.csv" 2> "$OUT/ncu.err"
log "ncu rc $?"
python3 - "$OUT/ncu_pp2048.csv" <<'PY' | tee -a "$S"
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
h = rows[0]; rows = rows[1:]
ki = h.index("Kernel Name"); inv = h.index("Invocations") if "Invocations" in h else None
tot = {}
for r in rows:
    name = r[ki].split("(")[0]
    try:
        if "Sum" in h: v = float(r[h.index("Sum")].replace(",", ""))
        else: v = float(r[h.index("Average")].replace(",", "")) * float(r[inv])
    except Exception: continue
    tot[name] = tot.get(name, 0) + v
all_ = sum(tot.values())
for n, v in sorted(tot.items(), key=lambda x: -x[1])[:16]:
    print(f"  {n:32s} {v/1e6:8.2f} ms  {100*v/all_:5.1f} %")
print(f"  total {all_/1e6:.2f} ms (gpu__time_duration in ns)")
PY
"$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_cuda.safetensors 2>>$OUT/check.err
"$B" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_base.safetensors 2>>$OUT/check.err
GPTOSS_CUDA_TC_OFF=linear,moe,attention "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_f32.safetensors 2>>$OUT/check.err
"$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_bf16.json 2>>$OUT/check.err
GPTOSS_CUDA_TC_OFF=linear,moe,attention "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_f32.json 2>>$OUT/check.err
ARGS="-r 3"; tg "tg128 baseline" $B X=1; tg "tg128 new" $G X=1
timeout 200 tail --pid=$CPU_PID -f /dev/null
log "CPU reference done"
python3 - <<'PY' | tee -a "$S"
import json
import numpy as np
from safetensors.numpy import load_file
c = load_file("/tmp/l_cpu.safetensors")["logits"].astype(np.float64)
for f, name in [("/tmp/l_cuda.safetensors", "default (bf16 prefill)"), ("/tmp/l_base.safetensors", "baseline default"), ("/tmp/l_f32.safetensors", "f32 kernels")]:
    a = load_file(f)["logits"].astype(np.float64)
    print(f"logits {name} vs CPU {a.shape}: NMSE {((a-c)**2).sum()/(c**2).sum():.3e}, max|diff| {np.abs(a-c).max():.3e}, argmax agree {(a.argmax(1)==c.argmax(1)).mean()*100:.1f}%")
b = json.load(open("/tmp/g_cpu.json"))
for f, name in [("/tmp/g_f32.json", "f32 kernels"), ("/tmp/g_bf16.json", "default")]:
    a = json.load(open(f))
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    print(f"greedy {name} vs CPU: {n} of {len(a)} steps identical before the first difference")
PY
log done
