#!/usr/bin/env bash
# Session 19, call 5: add_rms_norm with its weight loaded before the wait, launched with PDL inside
# the recorded step (GPTOSS_CUDA_PDL_ONLY = the default list + add_rms_norm) or not (the default),
# against a284901 (call 4's binary) in the same call; the norm tests and end to end with the list.
# Staged as bias_first.sh, with the a284901 binary as .device/final/gptoss_a284901.xz;
# `OUT=$OUT bash .device/final/norm_pdl.sh`, carry [".device/final"].
set -uo pipefail
D=.device/final
[ -x "$D/gptoss" ] || tar -xJf "$D/staged.tar.xz" -C "$D"
[ -x /tmp/g3 ] || { xz -dc $D/gptoss_a284901.xz > /tmp/g3; chmod +x /tmp/g3; }
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
export GPTOSS_FIXTURES=$D/fixtures
G=$D/gptoss; G3=/tmp/g3; S=$OUT/summary.txt
PDL=GPTOSS_CUDA_PDL_ONLY=gemvf,moe_router,moe_down_planes,moe_gate_up_planes,add_rms_norm
log() { echo "== $(date +%T) [$SECONDS s] $*" | tee -a "$S"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$S"
log "commit $(cat $D/COMMIT), baseline a284901"
[ -s /tmp/m20.gguf ] || ( "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > $OUT/synth.log 2>&1 ) &
syn=$!
timeout 100 $D/conformance_cuda --test-threads 1 embed_rms_norm_add add_rms_norm_and_rope > $OUT/conformance_cuda.log 2>&1; echo "exit $?" >> $OUT/conformance_cuda.log
grep -E "^test result|^exit|FAILED|panicked" $OUT/conformance_cuda.log | tee -a "$S"
env $PDL timeout 100 $D/end_to_end_cuda --test-threads 1 > $OUT/end_to_end_cuda.log 2>&1; echo "exit $?" >> $OUT/end_to_end_cuda.log
grep -E "^test result|^exit|FAILED|panicked" $OUT/end_to_end_cuda.log | tee -a "$S"
wait $syn; log "synth done"
tg() { local label=$1 bin=$2; shift 2; echo -n "$label: " | tee -a "$S"
  env "$@" "$bin" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 -r 2 -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"; }
for r in 1 2; do
  tg "d0 a284901 r$r" $G3 X=1; tg "d0 new r$r" $G X=1; tg "d0 new +norm pdl r$r" $G $PDL
done
log done
