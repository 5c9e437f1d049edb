#!/usr/bin/env bash
# Session 19, call 3 (call 2's warm machine, /tmp/m20.gguf kept): the rest of call 2's tg128, at
# depth 16384 and 4096 with the split cap (GPTOSS_CUDA_ATTN_BLOCKS, a knob of ce95d81 only), and
# pp512/pp2048. Staged as attn_final.sh.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
wait_synth
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
