#!/usr/bin/env bash
# Session 19, call 2: the decode attention of ce95d81 (the prologue's loads all issued before their
# first use, one modulo per step) against c3d602c (the baseline: session 18's kernels) and 1cd6c06
# (call 1's kernel, staged as gptoss_1cd6c06.xz) in the same call: the CUDA tests, greedy tokens of
# the synthetic 20b against the baseline (decode attention on tensor cores, prefill f32; and all
# default), tg128 alternating at depth 0, 4096 and 16384, the split cap (GPTOSS_CUDA_ATTN_BLOCKS, a
# knob of ce95d81 only) at depth 16384 and 4096, pp512/pp2048. It ran past its 10 minutes in the
# tg128 part; attn_depth.sh ran the rest. See README.md for the staging.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
G1=$(extra_binary 1cd6c06)
start_synth
run_test conformance_cuda
run_test end_to_end_cuda
wait_synth
ids=$(greedy_ids)
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
  GPTOSS_CUDA_ATTN_BLOCKS=$cap TEST_TIMEOUT=120 run_test conformance_cuda attention
done
log done
