#!/usr/bin/env bash
# Session 18, call 7: decode attention at depth 16384 with more splits (GPTOSS_CUDA_ATTN_BLOCKS caps
# one launch's blocks: 264 = 33 splits of the 8 kv heads, the default; 528 = 64 splits, one 64-key
# step per warp), alternating in one binary; the attention conformance tests under 528 first.
set -uo pipefail
D=.device/final
[ -x "$D/gptoss" ] || tar -xJf "$D/staged.tar.xz" -C "$D"
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
export GPTOSS_FIXTURES=$D/fixtures
G=$D/gptoss; S=$OUT/summary.txt
[ -s /tmp/m20.gguf ] || ( "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > $OUT/synth.log 2>&1 ) &
syn=$!
for cap in 528 396; do
  echo "attention tests, ATTN_BLOCKS=$cap" | tee -a "$S"
  GPTOSS_CUDA_ATTN_BLOCKS=$cap timeout 200 $D/conformance_cuda --test-threads 1 attention > $OUT/attn_tests_$cap.log 2>&1; echo "exit $?" >> $OUT/attn_tests_$cap.log
  grep -E "^test result|^exit|FAILED|panicked" $OUT/attn_tests_$cap.log | head -5 | tee -a "$S"
done
GPTOSS_CUDA_ATTN_BLOCKS=528 timeout 100 $D/end_to_end_cuda --test-threads 1 > $OUT/e2e_528.log 2>&1; echo "exit $?" >> $OUT/e2e_528.log
grep -E "^test result|^exit" $OUT/e2e_528.log | tee -a "$S"
wait $syn
tg() { local label=$1; shift; echo -n "$label: " | tee -a "$S"
  env "$@" "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 $ARGS -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"; }
ARGS="-r 2 -d 16384"
for r in 1 2; do
  for cap in 264 528 396; do tg "d16384 blocks=$cap r$r" GPTOSS_CUDA_ATTN_BLOCKS=$cap; done
done
ARGS="-r 2 -d 8192"
for cap in 264 528; do tg "d8192 blocks=$cap" GPTOSS_CUDA_ATTN_BLOCKS=$cap; done
echo "== done [$SECONDS s]" | tee -a "$S"
