#!/usr/bin/env bash
# Session 19, call 2: the decode attention of ce95d81 (the prologue's loads all issued before their
# first use, one modulo per step) against c3d602c (session 18's kernels) and 1cd6c06 (call 1's
# kernel) in the same call: the CUDA tests, greedy tokens of the synthetic 20b with the decode
# attention on tensor cores (prefill f32) against the baseline, tg128 alternating at depth 0, 4096
# and 16384, the split cap (GPTOSS_CUDA_ATTN_BLOCKS) at depth 16384 and 4096, pp512/pp2048.
# Staged by `BASELINE=<c3d602c gptoss> BASELINE_COMMIT=c3d602c bash bench/stage_gpu_run.sh`, plus
# the 1cd6c06 binary as .device/final/gptoss_1cd6c06.xz and this script;
# `OUT=$OUT bash .device/final/attn_final.sh`, carry [".device/final"].
set -uo pipefail
D=.device/final
[ -x "$D/gptoss" ] || tar -xJf "$D/staged.tar.xz" -C "$D"
[ -x /tmp/g1 ] || { xz -dc $D/gptoss_1cd6c06.xz > /tmp/g1; chmod +x /tmp/g1; }
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
export GPTOSS_FIXTURES=$D/fixtures
G=$D/gptoss; B=$D/baseline/gptoss; G1=/tmp/g1; S=$OUT/summary.txt
log() { echo "== $(date +%T) [$SECONDS s] $*" | tee -a "$S"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$S"
log "commit $(cat $D/COMMIT), baseline $(cat $D/baseline/COMMIT), second baseline 1cd6c06"
[ -s /tmp/m20.gguf ] || ( "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > $OUT/synth.log 2>&1 ) &
syn=$!
for t in conformance_cuda end_to_end_cuda; do
  log "test $t"
  timeout 240 $D/$t --test-threads 1 > $OUT/$t.log 2>&1; echo "exit $?" >> $OUT/$t.log
  grep -E "^test result|^exit|FAILED|panicked" $OUT/$t.log | head -8 | tee -a "$S"
done
wait $syn; log "synth done"
ids=$(python3 -c 'import random; r=random.Random(7); print(",".join(str(r.randrange(1000, 199000)) for _ in range(100)))')
log "greedy 64 steps, prefill f32 (GPTOSS_CUDA_TC_OFF=linear,moe), decode attention on tensor cores"
for b in G B; do
  GPTOSS_CUDA_TC_OFF=linear,moe "${!b}" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/gr_$b.json 2>>$OUT/check.err
  "${!b}" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/gd_$b.json 2>>$OUT/check.err
done
python3 - <<'PY' | tee -a "$S"
import json
for tag, what in (("gr", "prefill f32, decode attention tc"), ("gd", "default")):
    a = json.load(open(f"/tmp/{tag}_G.json")); b = json.load(open(f"/tmp/{tag}_B.json"))
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    print(f"greedy ({what}) new vs baseline: {n} of {len(a)} identical before the first difference")
PY
tg() { local label=$1 bin=$2; shift 2; echo -n "$label: " | tee -a "$S"
  env "$@" "$bin" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 $ARGS -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"; }
log "tg128 alternating"
for r in 1 2; do
  ARGS="-r 3"
  tg "d0 base r$r" $B X=1; tg "d0 1cd6c06 r$r" $G1 X=1; tg "d0 new r$r" $G X=1
  ARGS="-r 2 -d 16384"
  tg "d16384 base r$r" $B X=1; tg "d16384 1cd6c06 r$r" $G1 X=1; tg "d16384 new r$r" $G X=1
  tg "d16384 new blocks=136 r$r" $G GPTOSS_CUDA_ATTN_BLOCKS=136; tg "d16384 new blocks=528 r$r" $G GPTOSS_CUDA_ATTN_BLOCKS=528
done
ARGS="-r 2 -d 4096"
tg "d4096 base" $B X=1; tg "d4096 new" $G X=1; tg "d4096 new blocks=528" $G GPTOSS_CUDA_ATTN_BLOCKS=528
log "pp"
"$G" bench -m /tmp/m20.gguf --backend cuda -p 512,2048 -n 0 -r 2 -o md 2>>$OUT/bench.err | tee -a "$S"
for cap in 136 528; do
  log "attention tests, ATTN_BLOCKS=$cap"
  GPTOSS_CUDA_ATTN_BLOCKS=$cap timeout 120 $D/conformance_cuda --test-threads 1 attention > $OUT/attn_$cap.log 2>&1; echo "exit $?" >> $OUT/attn_$cap.log
  grep -E "^test result|^exit|FAILED|panicked" $OUT/attn_$cap.log | head -5 | tee -a "$S"
done
log done
