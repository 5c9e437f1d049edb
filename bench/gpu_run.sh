#!/usr/bin/env bash
# One call on the GPU machine that checks and times everything there:
#   conformance (CUDA and wgpu against the CPU reference), both tiny GGUFs end to end, the FP4 path's
#   selection on this GPU, the split over 2 GPUs (when the machine has 2), a synthetic gpt-oss-20b
#   (MXFP4_MOE layout, real o200k vocabulary): CUDA vs CPU logits on a 100-token prompt and 64 greedy
#   steps, `gptoss bench` on CUDA (against a baseline binary in the same call when one is staged) and on
#   wgpu (Vulkan), 1 GPU vs 2 GPUs, and the device's copy bandwidth.
# Usage (from the repo root, staged by bench/stage_gpu_run.sh, carry [".device/final", ".gl"]):
#   bench/gpu_run.sh .device/final            (or: bash .device/final/gpu_run.sh .device/final)
# The staged binaries travel as one xz archive (the carry limit is 64 MiB); it is unpacked first.
set -uo pipefail
D=${1:-.device/final}
OUT=${OUT:-/tmp/gpu_run_out}
# At most 8 files come back from a device call: summary.txt goes to $OUT as it grows, every other log
# to $L, packed into $OUT/logs.tgz on exit.
L=/tmp/gpu_logs
mkdir -p "$OUT" "$L"
trap 'tar -czf "$OUT/logs.tgz" -C "$L" . 2>/dev/null' EXIT
if [ -f "$D/staged.tar.xz" ] && [ ! -x "$D/gptoss" ]; then tar -xJf "$D/staged.tar.xz" -C "$D"; fi
G=$D/gptoss
# PARTS (comma-separated; default all): tests, check, bench, wgpu, multi, b120, fp4 -- to split the work
# over two calls on the same warm machine (the 20b model in /tmp is made once and kept).
want() { [[ ",${PARTS:-all}," == *",all,"* || ",${PARTS:-all}," == *",$1,"* ]]; }
log() { echo "== $(date +%T) [$SECONDS s] $*" | tee -a "$OUT/summary.txt"; }

# Vulkan loader for wgpu (the NVIDIA ICD is on the machine; the loader is carried in .gl).
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:$nv/nccl/lib:${LD_LIBRARY_PATH:-}"
# cudarc opens libnccl.so; the pip wheel ships only libnccl.so.2.
n2=$( (find "$nv" -name "libnccl.so.2*"; ls /usr/lib/x86_64-linux-gnu/libnccl.so.2) 2>/dev/null | head -1)
if [ -n "$n2" ]; then mkdir -p /tmp/ncclink; ln -sf "$n2" /tmp/ncclink/libnccl.so; export LD_LIBRARY_PATH="/tmp/ncclink:$LD_LIBRARY_PATH"; fi
export GPTOSS_FIXTURES=$D/fixtures NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee "$L/gpu.txt"
n_gpu=$(nvidia-smi -L | wc -l)
git_rev=$(cat "$D/COMMIT" 2>/dev/null || echo unknown)
log "commit $git_rev, $n_gpu GPU(s)"

# The 20b model is made while the tests run (CPU-bound there, GPU-bound here).
[ -s /tmp/m20.gguf ] || ( /usr/bin/time -f "synth %e s" "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > "$L/synth.log" 2>&1 ) &
synth=$!

tests="conformance_cuda end_to_end_cuda conformance_wgpu wgpu_ops_conformance"
[ "$n_gpu" -ge 2 ] && tests="$tests split_cuda"
[ -n "${SKIP_WGPU:-}" ] && tests=$(echo $tests | sed 's/conformance_wgpu//; s/wgpu_ops_conformance//')
tests=${TESTS:-$tests}  # TESTS="split_cuda" runs only those
want tests || tests=""
for t in $tests; do
  [ -x "$D/$t" ] || { log "test $t: not staged"; continue; }
  log "test $t"
  timeout 240 "$D/$t" --test-threads 1 > "$L/$t.log" 2>&1; echo "exit $?" >> "$L/$t.log"
  grep -E "^test result|^exit|FAILED|panicked" "$L/$t.log" | head -8 | tee -a "$OUT/summary.txt"
done
wait $synth; tail -1 "$L/synth.log" 2>/dev/null | tee -a "$OUT/summary.txt"

# 100 random prompt ids (fixed seed) below the vocabulary size.
ids=$(python3 -c 'import random; r=random.Random(7); print(",".join(str(r.randrange(1000, 199000)) for _ in range(100)))')
cmp_logits() {  # cmp_logits A B LABEL
python3 - "$1" "$2" "$3" <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import sys
from safetensors.numpy import load_file
import numpy as np
a = load_file(sys.argv[1])["logits"].astype(np.float64)
b = load_file(sys.argv[2])["logits"].astype(np.float64)
print(f"{sys.argv[3]} {a.shape}: NMSE {((a-b)**2).sum()/(b**2).sum():.3e}, max|diff| {np.abs(a-b).max():.3e}, "
      f"argmax agree {(a.argmax(1)==b.argmax(1)).mean()*100:.1f}%")
PY
}
cmp_greedy() {  # cmp_greedy A B LABEL
python3 -c '
import json, sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2]))
n=next((i for i,(x,y) in enumerate(zip(a,b)) if x!=y), len(a))
print(f"{sys.argv[3]}: {n} of {len(a)} steps identical before the first difference")' "$1" "$2" "$3" 2>&1 | tee -a "$OUT/summary.txt"
}
if want check; then
log "CUDA vs CPU-reference logits, 100-token prompt; 64 greedy steps"
"$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_cuda.safetensors 2>>"$L/check.err"
"$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cpu-ref --out /tmp/l_cpu.safetensors 2>>"$L/check.err"
cmp_logits /tmp/l_cuda.safetensors /tmp/l_cpu.safetensors "CUDA vs CPU logits"
# The same with no tensor-core path at all (the f32 kernels): how much of the difference the 16-bit
# tensor-core products make.
GPTOSS_CUDA_TC_OFF=linear,moe,attention "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_f32.safetensors 2>>"$L/check.err"
cmp_logits /tmp/l_f32.safetensors /tmp/l_cpu.safetensors "CUDA (no tensor cores) vs CPU logits"
# Split-precision tensor cores (bf16 hi + lo activations; each product ~1e-10 from f32); CHECK_QUICK=1
# leaves these out.
[ -z "${CHECK_QUICK:-}" ] && GPTOSS_CUDA_TC_PRECISION=split "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_split.safetensors 2>>"$L/check.err"
[ -s /tmp/l_split.safetensors ] && cmp_logits /tmp/l_split.safetensors /tmp/l_cpu.safetensors "CUDA (split-precision tensor cores) vs CPU logits"
"$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_cuda.json 2>>"$L/check.err"
"$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cpu-ref > /tmp/g_cpu.json 2>>"$L/check.err"
cmp_greedy /tmp/g_cuda.json /tmp/g_cpu.json "greedy CUDA vs CPU"
if [ -z "${CHECK_QUICK:-}" ]; then
GPTOSS_CUDA_TC_PRECISION=split "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_split.json 2>>"$L/check.err"
cmp_greedy /tmp/g_split.json /tmp/g_cpu.json "greedy CUDA (split precision) vs CPU"
fi
GPTOSS_CUDA_TC_OFF=linear,moe,attention "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_f32.json 2>>"$L/check.err"
cmp_greedy /tmp/g_f32.json /tmp/g_cpu.json "greedy CUDA (no tensor cores) vs CPU"
# The f32 decode MoE instead of the dp4a planes (the default) in the same setting.
GPTOSS_CUDA_DECODE_DP4A=0 GPTOSS_CUDA_TC_OFF=linear,moe,attention "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_dp4a.json 2>>"$L/check.err"
cmp_greedy /tmp/g_dp4a.json /tmp/g_cpu.json "greedy CUDA (no tensor cores, f32 decode MoE) vs CPU"

fi
if want bench; then
log "bench cuda"
"$G" bench -m /tmp/m20.gguf --backend cuda -p 512,2048 -n 128 -r 3 -o md 2>"$L/bench_cuda.err" | tee -a "$OUT/summary.txt"
"$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 -d 4096,16384 -r 2 -o md 2>>"$L/bench_cuda.err" | tee -a "$OUT/summary.txt"
# The decode switches in the same binary: programmatic dependent launch off, the f32 MoE kernels instead
# of the dp4a planes, the fused one-token steps (q/k/v + RoPE, products + residual add + norm) off.
for v in "GPTOSS_CUDA_PDL=0" "GPTOSS_CUDA_DECODE_DP4A=0" ${FUSE_AB:-"GPTOSS_CUDA_DECODE_FUSE=0"}; do
  log "bench cuda decode, $v"
  env $v "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 -r 2 -o md 2>>"$L/bench_cuda.err" | tail -1 | tee -a "$OUT/summary.txt"
done
if [ -x "$D/baseline/gptoss" ]; then
  log "bench cuda, baseline binary ($(cat "$D/baseline/COMMIT" 2>/dev/null))"
  "$D/baseline/gptoss" bench -m /tmp/m20.gguf --backend cuda -p 512,2048 -n 128 -r 2 -o md 2>"$L/bench_base.err" | tee -a "$OUT/summary.txt"
  "$D/baseline/gptoss" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 -d 16384 -r 2 -o md 2>>"$L/bench_base.err" | tail -1 | tee -a "$OUT/summary.txt"
fi
fi
want wgpu && { [ -n "${SKIP_WGPU:-}" ] || { log "bench wgpu"
"$G" bench -m /tmp/m20.gguf --backend wgpu -p 512 -n 128 -r 2 -o md 2>"$L/bench_wgpu.err" | tee -a "$OUT/summary.txt"; } }
log "copy bandwidth"
python3 -c '
import torch
x=torch.empty(2**30, dtype=torch.uint8, device="cuda"); y=torch.empty_like(x)
for _ in range(3): y.copy_(x)
s=torch.cuda.Event(enable_timing=True); e=torch.cuda.Event(enable_timing=True)
s.record(); [y.copy_(x) for _ in range(20)]; e.record(); torch.cuda.synchronize()
print(f"device copy: {2*2**30*20/(s.elapsed_time(e)/1e3)/1e9:.0f} GB/s (read+write)")' | tee -a "$OUT/summary.txt"

if want multi && [ "$n_gpu" -ge 2 ]; then
  log "2 GPUs (NCCL) vs 1 GPU: logits, greedy, bench"
  "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --gpus 0,1 --out /tmp/l_2gpu.safetensors 2>>"$L/split.err"
  cmp_logits /tmp/l_2gpu.safetensors /tmp/l_cuda.safetensors "2 GPUs vs 1 GPU logits"
  GPTOSS_CUDA_TC_OFF=linear,moe,attention "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --gpus 0,1 --out /tmp/l_2gpu_f32.safetensors 2>>"$L/split.err"
  cmp_logits /tmp/l_2gpu_f32.safetensors /tmp/l_f32.safetensors "2 GPUs vs 1 GPU logits, no tensor cores"
  "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda --gpus 0,1 > /tmp/g_2gpu.json 2>>"$L/split.err"
  [ -s /tmp/l_split.safetensors ] && { GPTOSS_CUDA_TC_PRECISION=split "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --gpus 0,1 --out /tmp/l_2gpu_split.safetensors 2>>"$L/split.err"
    cmp_logits /tmp/l_2gpu_split.safetensors /tmp/l_split.safetensors "2 GPUs vs 1 GPU logits, split-precision tensor cores"; }
  GPTOSS_MOE_SPLIT=ffn "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --gpus 0,1 --out /tmp/l_2gpu_ffn.safetensors 2>>"$L/split.err"
  cmp_logits /tmp/l_2gpu_ffn.safetensors /tmp/l_cuda.safetensors "2 GPUs (MoE split by d_ff) vs 1 GPU logits"
  cmp_greedy /tmp/g_2gpu.json /tmp/g_cuda.json "greedy 2 GPUs vs 1 GPU"
  GPTOSS_CUDA_TC_OFF=linear,moe,attention "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda --gpus 0,1 > /tmp/g_2gpu_f32.json 2>>"$L/split.err"
  [ -s /tmp/g_f32.json ] && cmp_greedy /tmp/g_2gpu_f32.json /tmp/g_f32.json "greedy 2 GPUs vs 1 GPU, no tensor cores"
  "$G" bench -m /tmp/m20.gguf --backend cuda --gpus 0,1 -p 512,2048 -n 128 -r 2 -o md 2>"$L/bench_2gpu.err" | tee -a "$OUT/summary.txt"
  grep -i "per-rank" "$L/bench_2gpu.err" | tail -2 | tee -a "$OUT/summary.txt"
  GPTOSS_MOE_SPLIT=ffn "$G" bench -m /tmp/m20.gguf --backend cuda --gpus 0,1 -p 2048 -n 128 -r 2 -o md 2>"$L/bench_2gpu_ffn.err" | tail -2 | tee -a "$OUT/summary.txt"
fi

# Per-kernel times of decode steps (ncu; only when PARTS names `prof`): bench/RESULTS.md's breakdowns,
# analysed with a script like the one there.
if [[ ",${PARTS:-}," == *",prof,"* ]]; then
  log "ncu: one decode step's kernels"
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 200 "$NCU" --clock-control none --csv --print-units base --metrics gpu__time_duration.sum,dram__bytes_read.sum \
    "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 3 -r 1 -q -o md > "$L/ncu_decode.csv" 2> "$L/ncu_decode.err"
  echo "ncu rc $?, $(wc -l < "$L/ncu_decode.csv") lines" | tee -a "$OUT/summary.txt"
fi

# gpt-oss-120b (59 GiB of weights: fits one 80 GB card) on 1 and 2 GPUs, when the disk allows (SKIP_120B=1 skips).
if want b120 && [ "$n_gpu" -ge 2 ] && [ -z "${SKIP_120B:-}" ] && [ "$(df --output=avail -k /tmp | tail -1)" -gt 80000000 ]; then
  log "120b: synth, bench on 1 GPU and on 2 GPUs"
  ( /usr/bin/time -f "synth 120b %e s" "$G" synth --preset 120b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m120.gguf ) > "$L/synth120.log" 2>&1
  tail -1 "$L/synth120.log" | tee -a "$OUT/summary.txt"
  "$G" bench -m /tmp/m120.gguf --backend cuda -p 512 -n 128 -r 2 -o md 2>"$L/bench120_1.err" | tee -a "$OUT/summary.txt"
  "$G" bench -m /tmp/m120.gguf --backend cuda --gpus 0,1 -p 512 -n 128 -r 2 -o md 2>"$L/bench120_2.err" | tee -a "$OUT/summary.txt"
  grep -i "per-rank" "$L/bench120_2.err" | tail -1 | tee -a "$OUT/summary.txt"
  rm -f /tmp/m120.gguf
fi

# FP4 path (issue 8), on a GPU without block-scaled FP4 MMA (Hopper): `auto` must pick the portable MoE,
# `--fp4 on` must be refused naming the compute capability, and the FP4 kernels built with the MMA emulated
# in software must pass their self-check and agree with the portable MoE (kernels-cuda/tests/fp4_device.rs).
if want fp4; then
log "fp4: selection on this GPU, emulated FP4 kernels"
fp4ok=1
"$G" bench -m /tmp/m20.gguf --backend cuda -p 32 -n 0 -r 1 -o md > "$L/fp4_auto.txt" 2>&1 || fp4ok=0
grep -m1 "backend:" "$L/fp4_auto.txt" | tee -a "$OUT/summary.txt"
grep -q "moe: portable" "$L/fp4_auto.txt" || fp4ok=0
if "$G" bench -m /tmp/m20.gguf --backend cuda --fp4 on -p 32 -n 0 -r 1 > "$L/fp4_on.txt" 2>&1; then fp4ok=0; fi
grep -m1 "fp4 on" "$L/fp4_on.txt" | tee -a "$OUT/summary.txt"
grep -q "compute capability" "$L/fp4_on.txt" || fp4ok=0
if [ -x "$D/fp4_device" ]; then
  timeout 120 "$D/fp4_device" --test-threads 1 --nocapture > "$L/fp4_device.log" 2>&1 || fp4ok=0
  grep -E "auto ->|refused|self-check|NMSE|^test result" "$L/fp4_device.log" | tee -a "$OUT/summary.txt"
else
  echo "fp4_device test binary not staged" | tee -a "$OUT/summary.txt"; fp4ok=0
fi
if [ "$fp4ok" = 1 ]; then log "FP4 CHECK: PASS (auto -> portable, --fp4 on refused, emulated FP4 kernels agree)"
else log "FP4 CHECK: FAIL (see fp4_auto.txt, fp4_on.txt, fp4_device.log)"; fi
fi
log done
