#!/usr/bin/env bash
# One call on a 2-GPU machine (staged by parallel/scripts/stage.sh): the split CUDA tests on the
# tiny fixtures, then a synthetic gpt-oss-20b on 1 GPU vs 2 GPUs (NCCL): logits of a 100-token
# prompt, 32 greedy steps, and `gptoss bench` pp512/tg128 on each.
set -uo pipefail
D=${1:-.device/dist}
OUT=${OUT:-/tmp/dist_out}
mkdir -p "$OUT"
G=$D/gptoss
log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:$nv/nccl/lib:${LD_LIBRARY_PATH:-}"
export GPTOSS_FIXTURES=$D/fixtures NCCL_DEBUG=WARN
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1
find "$nv" /usr/lib/x86_64-linux-gnu -name "libnccl*" > "$OUT/nccl_libs.txt" 2>&1
# cudarc opens libnccl.so (not .so.2, all the pip wheel ships): link it.
n2=$( (find "$nv" -name "libnccl.so.2*"; ls /usr/lib/x86_64-linux-gnu/libnccl.so.2) 2>/dev/null | head -1)
if [ -n "$n2" ]; then mkdir -p /tmp/ncclink; ln -sf "$n2" /tmp/ncclink/libnccl.so; export LD_LIBRARY_PATH="/tmp/ncclink:$LD_LIBRARY_PATH"; fi
echo "nccl: ${n2:-none found}" | tee -a "$OUT/summary.txt"

log "synth 20b (background)"
( /usr/bin/time -f "synth %e s" "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > "$OUT/synth.log" 2>&1 ) &
synth=$!
log "split_cuda tests"
timeout 60 "$D/split_cuda" --test-threads 1 --nocapture > "$OUT/split_cuda.log" 2>&1; echo "exit $?" >> "$OUT/split_cuda.log"
grep -E "^test |^test result|^exit|split vs|panicked" "$OUT/split_cuda.log" | tee -a "$OUT/summary.txt"
wait $synth; tail -2 "$OUT/synth.log" | tee -a "$OUT/summary.txt"

ids=$(python3 -c 'import random; r=random.Random(7); print(",".join(str(r.randrange(1000, 199000)) for _ in range(100)))')
log "logits 1 GPU vs 2 GPUs, 100-token prompt"
timeout 40 "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l1.safetensors 2>&1 | tail -2 | tee -a "$OUT/summary.txt"
timeout 40 "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --gpus 0,1 --out /tmp/l2.safetensors 2>&1 | tail -3 | tee -a "$OUT/summary.txt"
python3 - <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
from safetensors.numpy import load_file
import numpy as np
a = load_file("/tmp/l2.safetensors")["logits"].astype(np.float64)
b = load_file("/tmp/l1.safetensors")["logits"].astype(np.float64)
print(f"2 GPUs vs 1 GPU logits {a.shape}: NMSE {((a-b)**2).sum()/(b**2).sum():.3e}, "
      f"max|diff| {np.abs(a-b).max():.3e}, argmax agree {(a.argmax(1)==b.argmax(1)).mean()*100:.1f}%")
PY
log "bench 1 GPU"
timeout 45 "$G" bench -m /tmp/m20.gguf --backend cuda -p 512 -n 128 -r 2 -o md 2>"$OUT/bench1.err" | tee -a "$OUT/summary.txt"
log "bench 2 GPUs"
timeout 45 "$G" bench -m /tmp/m20.gguf --backend cuda --gpus 0,1 -p 512 -n 128 -r 2 -o md 2>"$OUT/bench2.err" | tee -a "$OUT/summary.txt"
grep "per-rank" "$OUT/bench2.err" | tee -a "$OUT/summary.txt"
if [ "$SECONDS" -lt 130 ]; then
log "16 greedy steps, 1 vs 2 GPUs"
timeout 20 "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 16 --json --backend cuda > /tmp/g1.json 2>>"$OUT/gen.err"
timeout 20 "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 16 --json --backend cuda --gpus 0,1 > /tmp/g2.json 2>>"$OUT/gen.err"
python3 -c '
import json; a=json.load(open("/tmp/g1.json")); b=json.load(open("/tmp/g2.json"))
n=next((i for i,(x,y) in enumerate(zip(a,b)) if x!=y), len(a))
print(f"greedy: {n} of {len(a)} steps identical before the first difference")' 2>&1 | tee -a "$OUT/summary.txt"

fi
log done
