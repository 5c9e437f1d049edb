#!/usr/bin/env bash
# One call on the GPU machine that checks and times everything there:
#   conformance (CUDA and wgpu against the CPU reference), both tiny GGUFs end to end,
#   a synthetic gpt-oss-20b (MXFP4_MOE layout, real o200k vocabulary): CUDA vs CPU logits on a
#   100-token prompt and 64 greedy steps, then `gptoss bench` on CUDA and on wgpu (Vulkan).
# Usage (from the repo root, binaries staged by bench/stage_gpu_run.sh):  bench/gpu_run.sh .device/final
set -uo pipefail
D=${1:-.device/final}
OUT=${OUT:-/tmp/gpu_run_out}
mkdir -p "$OUT"
G=$D/gptoss
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

# Vulkan loader for wgpu (the NVIDIA ICD is on the machine; the loader is carried in .gl).
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
nv=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${nv}:${LD_LIBRARY_PATH:-}"
export GPTOSS_FIXTURES=$D/fixtures
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

for t in conformance_cuda end_to_end_cuda conformance_wgpu wgpu_ops_conformance; do
  log "test $t"
  "$D/$t" --test-threads 1 > "$OUT/$t.log" 2>&1; echo "exit $?" >> "$OUT/$t.log"
  grep -E "^test result|^exit" "$OUT/$t.log" | tee -a "$OUT/summary.txt"
done

log "synth 20b"
/usr/bin/time -f "%e s" "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf 2>&1 | tee -a "$OUT/summary.txt"

# 100 random prompt ids (fixed seed) below the vocabulary size.
ids=$(python3 -c 'import random; r=random.Random(7); print(",".join(str(r.randrange(1000, 199000)) for _ in range(100)))')
log "CUDA vs CPU logits, 100-token prompt"
"$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_cuda.safetensors
"$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cpu-ref --out /tmp/l_cpu.safetensors
python3 - <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
from safetensors.numpy import load_file
import numpy as np
a = load_file("/tmp/l_cuda.safetensors")["logits"].astype(np.float64)
b = load_file("/tmp/l_cpu.safetensors")["logits"].astype(np.float64)
print(f"logits {a.shape}: NMSE {((a-b)**2).sum()/(b**2).sum():.3e}, max|diff| {np.abs(a-b).max():.3e}, "
      f"argmax agree {(a.argmax(1)==b.argmax(1)).mean()*100:.1f}%")
PY
log "64 greedy steps, CUDA vs CPU"
"$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_cuda.json
"$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cpu-ref > /tmp/g_cpu.json
python3 -c '
import json; a=json.load(open("/tmp/g_cuda.json")); b=json.load(open("/tmp/g_cpu.json"))
n=next((i for i,(x,y) in enumerate(zip(a,b)) if x!=y), len(a))
print(f"greedy: {n} of {len(a)} steps identical before the first difference")' | tee -a "$OUT/summary.txt"

log "bench cuda"
"$G" bench -m /tmp/m20.gguf --backend cuda -p 512,2048 -n 128 -r 3 -o md 2>"$OUT/bench_cuda.err" | tee -a "$OUT/summary.txt"
"$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 -d 4096,16384 -r 2 -o md 2>>"$OUT/bench_cuda.err" | tee -a "$OUT/summary.txt"
log "bench wgpu"
"$G" bench -m /tmp/m20.gguf --backend wgpu -p 512 -n 128 -r 2 -o md 2>"$OUT/bench_wgpu.err" | tee -a "$OUT/summary.txt"
log "copy bandwidth"
python3 -c '
import torch
x=torch.empty(2**30, dtype=torch.uint8, device="cuda"); y=torch.empty_like(x)
for _ in range(3): y.copy_(x)
s=torch.cuda.Event(enable_timing=True); e=torch.cuda.Event(enable_timing=True)
s.record(); [y.copy_(x) for _ in range(20)]; e.record(); torch.cuda.synchronize()
print(f"device copy: {2*2**30*20/(s.elapsed_time(e)/1e3)/1e9:.0f} GB/s (read+write)")' | tee -a "$OUT/summary.txt"

# FP4 path (issue 8), on a GPU without block-scaled FP4 MMA (Hopper): `auto` must pick the portable MoE,
# `--fp4 on` must be refused naming the compute capability, and the FP4 kernels built with the MMA emulated
# in software must pass their self-check and agree with the portable MoE (kernels-cuda/tests/fp4_device.rs).
log "fp4: selection on this GPU, emulated FP4 kernels"
fp4ok=1
"$G" bench -m /tmp/m20.gguf --backend cuda -p 32 -n 0 -r 1 -o md > "$OUT/fp4_auto.txt" 2>&1 || fp4ok=0
grep -m1 "backend:" "$OUT/fp4_auto.txt" | tee -a "$OUT/summary.txt"
grep -q "moe: portable" "$OUT/fp4_auto.txt" || fp4ok=0
if "$G" bench -m /tmp/m20.gguf --backend cuda --fp4 on -p 32 -n 0 -r 1 > "$OUT/fp4_on.txt" 2>&1; then fp4ok=0; fi
grep -m1 "fp4 on" "$OUT/fp4_on.txt" | tee -a "$OUT/summary.txt"
grep -q "compute capability" "$OUT/fp4_on.txt" || fp4ok=0
if [ -x "$D/fp4_device" ]; then
  "$D/fp4_device" --test-threads 1 --nocapture > "$OUT/fp4_device.log" 2>&1 || fp4ok=0
  grep -E "auto ->|refused|self-check|NMSE|^test result" "$OUT/fp4_device.log" | tee -a "$OUT/summary.txt"
else
  echo "fp4_device test binary not staged" | tee -a "$OUT/summary.txt"; fp4ok=0
fi
if [ "$fp4ok" = 1 ]; then log "FP4 CHECK: PASS (auto -> portable, --fp4 on refused, emulated FP4 kernels agree)"
else log "FP4 CHECK: FAIL (see fp4_auto.txt, fp4_on.txt, fp4_device.log)"; fi
