#!/usr/bin/env bash
# One GPU call for the split-precision tensor-core prefill (helper "tcprec", issue 5): conformance_cuda
# (its tensor-core tests run both precisions),
# a synthetic gpt-oss-20b: CUDA vs CPU-reference logits of a 100-token prompt (split, bf16, no tensor
# cores) and 64 greedy steps, `gptoss bench -p 512,2048 -n 0 -r 3` for both precisions and a baseline.
# Staged dir D holds staged.tar.xz (gptoss, conformance_cuda, baseline/gptoss), fixtures/, the vocab.
# Usage on the device (repo root): OUT=$OUT bash D/tc_precision_run.sh D
set -uo pipefail
D=${1:-.device/tcprec}
OUT=${OUT:-/tmp/tcprec_out}
L=/tmp/tcprec_logs
mkdir -p "$OUT" "$L"
trap 'tar -czf "$OUT/logs.tgz" -C "$L" . 2>/dev/null' EXIT
tar -xJf "$D/staged.tar.xz" -C "$D"
G=$D/gptoss
log() { echo "== $(date +%T) [$SECONDS s] $*" | tee -a "$OUT/summary.txt"; }
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
export GPTOSS_FIXTURES=$D/fixtures GPTOSS_CACHE_DIR=/tmp/gptoss_cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
log "commit $(cat "$D/COMMIT"), baseline $(cat "$D/baseline/COMMIT")"
( "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > "$L/synth.log" 2>&1 ) &
synth=$!
log "conformance_cuda"
timeout 140 "$D/conformance_cuda" --test-threads 1 --nocapture > "$L/conf_split.log" 2>&1; echo "exit $?" >> "$L/conf_split.log"
grep -E "^test |^test result|^exit|panicked" "$L/conf_split.log" | tee -a "$OUT/summary.txt"
grep -E "prefill linear (Split )?(Q8_0|MXFP4|F16|BF16|F32) t=(300|2048)|moe MXFP4/MXFP4 d=2880.*t=(64|300)|attention h=64/8 hd=64 window=Some\(128\) pos0=0 t=2048|pos0=2049 t=300" "$L/conf_split.log" | tee -a "$OUT/summary.txt"
wait $synth; tail -2 "$L/synth.log" | tee -a "$OUT/summary.txt"

ids=$(python3 -c 'import random; r=random.Random(7); print(",".join(str(r.randrange(1000, 199000)) for _ in range(100)))')
cmp_logits() {
python3 - "$1" "$2" "$3" <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import sys
from safetensors.numpy import load_file
import numpy as np
a = load_file(sys.argv[1])["logits"].astype(np.float64)
b = load_file(sys.argv[2])["logits"].astype(np.float64)
n10 = ((a[:10]-b[:10])**2).sum()/(b[:10]**2).sum()
print(f"{sys.argv[3]} {a.shape}: NMSE {((a-b)**2).sum()/(b**2).sum():.3e} (first 10 rows {n10:.3e}), max|diff| {np.abs(a-b).max():.3e}, "
      f"argmax agree {(a.argmax(1)==b.argmax(1)).mean()*100:.1f}%")
PY
}
cmp_greedy() {
python3 -c '
import json, sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2]))
n=next((i for i,(x,y) in enumerate(zip(a,b)) if x!=y), len(a))
print(f"{sys.argv[3]}: {n} of {len(a)} steps identical before the first difference")' "$1" "$2" "$3" 2>&1 | tee -a "$OUT/summary.txt"
}
log "logits, 100-token prompt; 64 greedy steps (the CPU reference's in the background)"
( "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cpu-ref --out /tmp/l_cpu.safetensors 2>>"$L/cpu.err"
  timeout 120 "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cpu-ref > /tmp/g_cpu.json 2>>"$L/cpu.err" ) &
cpu=$!
GPTOSS_CUDA_TC_PRECISION=split "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_split.safetensors 2>>"$L/check.err"
GPTOSS_CUDA_TC_PRECISION=bf16 "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_bf16.safetensors 2>>"$L/check.err"
GPTOSS_CUDA_TC_OFF=linear,moe,attention "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_f32.safetensors 2>>"$L/check.err"
GPTOSS_CUDA_TC_PRECISION=split "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_split.json 2>>"$L/check.err"
GPTOSS_CUDA_TC_PRECISION=bf16 "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_bf16.json 2>>"$L/check.err"
GPTOSS_CUDA_TC_OFF=linear,moe,attention "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_f32.json 2>>"$L/check.err"
wait $cpu; log "CPU reference done"
cmp_logits /tmp/l_split.safetensors /tmp/l_cpu.safetensors "CUDA split vs CPU"
cmp_logits /tmp/l_bf16.safetensors /tmp/l_cpu.safetensors "CUDA bf16 vs CPU"
cmp_logits /tmp/l_f32.safetensors /tmp/l_cpu.safetensors "CUDA no-TC vs CPU"
cmp_logits /tmp/l_split.safetensors /tmp/l_f32.safetensors "CUDA split vs CUDA no-TC"
cmp_greedy /tmp/g_split.json /tmp/g_cpu.json "greedy CUDA split vs CPU"
cmp_greedy /tmp/g_bf16.json /tmp/g_cpu.json "greedy CUDA bf16 vs CPU"
cmp_greedy /tmp/g_f32.json /tmp/g_cpu.json "greedy CUDA no-TC vs CPU"
log "bench -p 512,2048 -n 0 -r 3"
GPTOSS_CUDA_TC_PRECISION=split "$G" bench -m /tmp/m20.gguf --backend cuda -p 512,2048 -n 0 -r 3 -o md 2>"$L/bench_split.err" | tee -a "$OUT/summary.txt"
GPTOSS_CUDA_TC_PRECISION=bf16 "$G" bench -m /tmp/m20.gguf --backend cuda -p 512,2048 -n 0 -r 3 -o md 2>"$L/bench_bf16.err" | tee -a "$OUT/summary.txt"
"$D/baseline/gptoss" bench -m /tmp/m20.gguf --backend cuda -p 512,2048 -n 0 -r 3 -o md 2>"$L/bench_base.err" | tee -a "$OUT/summary.txt"
log done
