#!/usr/bin/env bash
# Session 19, call 4: the decode products with their biases loaded before the product (commit
# ec6e177; b9bbbf0 removes only a host-side measurement knob) against ce95d81 (call 2's attention
# kernel) and c3d602c (session 18's kernels) in the same call: the changed kernels' conformance
# tests, end to end, greedy tokens of the synthetic 20b against ce95d81 (the change moves loads
# only, so the tokens must be the same), tg128 alternating at depth 0 and 16384.
# Staged by `BASELINE=<c3d602c gptoss> BASELINE_COMMIT=c3d602c bash bench/stage_gpu_run.sh`, plus
# the ce95d81 binary as .device/final/gptoss_ce95d81.xz and this script;
# `OUT=$OUT bash .device/final/bias_first.sh`, carry [".device/final"].
set -uo pipefail
D=.device/final
[ -x "$D/gptoss" ] || tar -xJf "$D/staged.tar.xz" -C "$D"
[ -x /tmp/g2 ] || { xz -dc $D/gptoss_ce95d81.xz > /tmp/g2; chmod +x /tmp/g2; }
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
export GPTOSS_FIXTURES=$D/fixtures
G=$D/gptoss; B=$D/baseline/gptoss; G2=/tmp/g2; S=$OUT/summary.txt
log() { echo "== $(date +%T) [$SECONDS s] $*" | tee -a "$S"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$S"
log "commit $(cat $D/COMMIT), baselines ce95d81 and $(cat $D/baseline/COMMIT)"
[ -s /tmp/m20.gguf ] || ( "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > $OUT/synth.log 2>&1 ) &
syn=$!
log "tests"
timeout 200 $D/conformance_cuda --test-threads 1 fused_qkv_rope decode_mma moe_matches linear_every attention_prefill_decode > $OUT/conformance_cuda.log 2>&1; echo "exit $?" >> $OUT/conformance_cuda.log
grep -E "^test |^test result|^exit|FAILED|panicked" $OUT/conformance_cuda.log | head -12 | tee -a "$S"
timeout 100 $D/end_to_end_cuda --test-threads 1 > $OUT/end_to_end_cuda.log 2>&1; echo "exit $?" >> $OUT/end_to_end_cuda.log
grep -E "^test result|^exit|FAILED|panicked" $OUT/end_to_end_cuda.log | tee -a "$S"
wait $syn; log "synth done"
tg() { local label=$1 bin=$2; shift 2; echo -n "$label: " | tee -a "$S"
  env "$@" "$bin" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 $ARGS -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"; }
log "tg128 alternating"
for r in 1 2; do
  ARGS="-r 3"
  tg "d0 c3d602c r$r" $B X=1; tg "d0 ce95d81 r$r" $G2 X=1; tg "d0 new r$r" $G X=1
done
ARGS="-r 2 -d 16384"
tg "d16384 ce95d81" $G2 X=1; tg "d16384 new" $G X=1
ids=$(python3 -c 'import random; r=random.Random(7); print(",".join(str(r.randrange(1000, 199000)) for _ in range(100)))')
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
