#!/usr/bin/env bash
# Session 19, call 3 (the warm machine of call 2, which ran out of time in its tg128 part): tg128
# alternating at depth 16384 and 4096 with the split cap, pp512/pp2048. Same staging as attn_final.sh.
set -uo pipefail
D=.device/final
[ -x "$D/gptoss" ] || tar -xJf "$D/staged.tar.xz" -C "$D"
[ -x /tmp/g1 ] || { xz -dc $D/gptoss_1cd6c06.xz > /tmp/g1; chmod +x /tmp/g1; }
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
G=$D/gptoss; B=$D/baseline/gptoss; G1=/tmp/g1; S=$OUT/summary.txt
log() { echo "== $(date +%T) [$SECONDS s] $*" | tee -a "$S"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$S"
[ -s /tmp/m20.gguf ] || "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > $OUT/synth.log 2>&1
tg() { local label=$1 bin=$2; shift 2; echo -n "$label: " | tee -a "$S"
  env "$@" "$bin" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 $ARGS -o md 2>>$OUT/bench.err | tail -1 | tee -a "$S"; }
for r in 1 2; do
  ARGS="-r 2 -d 16384"
  tg "d16384 base r$r" $B X=1; tg "d16384 new r$r" $G X=1
  tg "d16384 new blocks=136 r$r" $G GPTOSS_CUDA_ATTN_BLOCKS=136; tg "d16384 new blocks=528 r$r" $G GPTOSS_CUDA_ATTN_BLOCKS=528
done
ARGS="-r 2 -d 4096"
tg "d4096 base" $B X=1; tg "d4096 new" $G X=1; tg "d4096 new blocks=528" $G GPTOSS_CUDA_ATTN_BLOCKS=528
log "pp"
"$G" bench -m /tmp/m20.gguf --backend cuda -p 512,2048 -n 0 -r 2 -o md 2>>$OUT/bench.err | tee -a "$S"
log done
