#!/usr/bin/env bash
# Session 17, call 6: one-token Q8_0 products with 8 steps per round (GPTOSS_CUDA_GEMV_STEPS=8):
# conformance (linear, fused q/k/v + RoPE) and end to end with it, logits identical to 4 steps,
# alternating tg128.
set -uo pipefail
D=.device/final
[ -x "$D/gptoss" ] || tar -xJf "$D/staged.tar.xz" -C "$D"
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
export GPTOSS_FIXTURES=$D/fixtures
G=$D/gptoss; S=$OUT/summary.txt
log() { echo "== $(date +%T) [$SECONDS s] $*" | tee -a "$S"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$S"
log "commit $(cat $D/COMMIT) + uncommitted 8-step gemv"
[ -s /tmp/m20.gguf ] || ( "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > $OUT/synth.log 2>&1 ) &
syn=$!
export GPTOSS_CUDA_GEMV_STEPS=8
for t in linear_every_type_and_shape linear_many_matches_linear fused_qkv_rope; do
  timeout 120 $D/conformance_cuda $t --test-threads 1 > $OUT/conf_$t.log 2>&1
  grep -E "^test result|panicked" $OUT/conf_$t.log | tee -a "$S"
done
timeout 120 $D/end_to_end_cuda --test-threads 1 > $OUT/e2e.log 2>&1; grep -E "^test result|panicked" $OUT/e2e.log | tee -a "$S"
unset GPTOSS_CUDA_GEMV_STEPS
wait $syn; log "synth done"
ids=$(python3 -c 'import random; r=random.Random(7); print(",".join(str(r.randrange(1000, 199000)) for _ in range(100)))')
"$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l4.safetensors 2>>$OUT/err.log
GPTOSS_CUDA_GEMV_STEPS=8 "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l8.safetensors 2>>$OUT/err.log
"$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 32 --json --backend cuda > /tmp/g4.json 2>>$OUT/err.log
GPTOSS_CUDA_GEMV_STEPS=8 "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 32 --json --backend cuda > /tmp/g8.json 2>>$OUT/err.log
python3 - <<'PY' 2>&1 | tee -a "$S"
import json, numpy as np
from safetensors.numpy import load_file
a = load_file("/tmp/l4.safetensors")["logits"]; b = load_file("/tmp/l8.safetensors")["logits"]
print("logits 8 vs 4 steps: bitwise equal", bool((a == b).all()), "max|diff|", float(np.abs(a.astype(np.float64) - b).max()))
print("greedy 32 steps equal", json.load(open("/tmp/g4.json")) == json.load(open("/tmp/g8.json")))
PY
for r in 1 2 3; do
  for v in "X=1" "GPTOSS_CUDA_GEMV_STEPS=8"; do
    echo -n "round $r $v: " | tee -a "$S"
    env $v "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 -r 3 -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"
  done
done
for v in "X=1" "GPTOSS_CUDA_GEMV_STEPS=8"; do
  echo -n "d16384 $v: " | tee -a "$S"
  env $v "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 -d 16384 -r 2 -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"
done
log done
