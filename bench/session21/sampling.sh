#!/usr/bin/env bash
# Session 21, call 3: temperature sampling on the device (sample_max + sample_draw, one id back)
# against the host sampler on a copy of the logits row (GPTOSS_CUDA_SAMPLE=0), same binary:
# conformance_cuda (all, with sample_softmax_matches_host_sampler), end_to_end_cuda, tg128 greedy
# and sampled, and `gptoss generate --temp` token ids with the device draw and the host draw.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
TEST_TIMEOUT=300 run_test conformance_cuda
grep -E "sample_softmax n" "$OUT/conformance_cuda.log" | tee -a "$S"
TEST_TIMEOUT=150 run_test end_to_end_cuda
wait_synth
for round in 1 2; do
  ARGS="-r 3"; tg "greedy" $G X=1
  ARGS="-r 3 --temp 0.7"; tg "T0.7 device" $G X=1; tg "T0.7 host" $G GPTOSS_CUDA_SAMPLE=0
  [ $round = 1 ] && { ARGS="-r 2 --temp 0.7 --top-p 0.95"; tg "T0.7 p0.95 host (nucleus)" $G X=1; }
done
ARGS="-r 2 -d 16384 --temp 0.7"; tg "d16384 T0.7 device" $G X=1
ARGS="-r 2 -d 16384"; tg "d16384 greedy" $G X=1
ids=$(greedy_ids)
gen() { env "$@" "$G" generate -m /tmp/m20.gguf --backend cuda --tokens "$ids" -n 64 --seed 5 $GEN 2>>"$OUT/gen.err"; }
for GEN in "--temp 0.7" "--temp 1.0 --min-p 0.05 --repeat-penalty 1.1"; do
  a=$(gen X=1); b=$(gen X=1); c=$(gen GPTOSS_CUDA_SAMPLE=0)
  same_ab=$(python3 -c "import sys; a,b=sys.argv[1].split(),sys.argv[2].split(); print(sum(x==y for x,y in zip(a,b)), len(a))" "$a" "$b")
  same_ac=$(python3 -c "import sys; a,b=sys.argv[1].split(),sys.argv[2].split(); print(sum(x==y for x,y in zip(a,b)), len(a))" "$a" "$c")
  log "generate $GEN: device vs device again: $same_ab equal; device vs host: $same_ac equal"
  echo "device: $a" >> "$S"; echo "host:   $c" >> "$S"
done
log done
