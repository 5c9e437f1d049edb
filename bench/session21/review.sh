#!/usr/bin/env bash
# Session 21, call 8: the review's change (sample_gather writes (id, logit) pairs, one copy back;
# sample_draw finds its target once). conformance_cuda's sampling tests, end_to_end_cuda, tg128
# greedy and top-k 40 + top-p 0.95 GPU / host, and `gptoss generate` ids both ways.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
TEST_TIMEOUT=200 run_test conformance_cuda sample softmax
TEST_TIMEOUT=150 run_test end_to_end_cuda
wait_synth
ARGS="-r 3"; tg "greedy" $G X=1
ARGS="-r 3 --temp 0.7"; tg "T0.7 device" $G X=1
ARGS="-r 3 --temp 0.8 --top-k 40 --top-p 0.95"; tg "T0.8 k40 p0.95 device" $G X=1; tg "T0.8 k40 p0.95 host" $G GPTOSS_CUDA_SAMPLE=0
ids=$(greedy_ids)
GEN="--temp 0.8 --top-k 40 --top-p 0.95"
gen() { env "$@" "$G" generate -m /tmp/m20.gguf --backend cuda --tokens "$ids" -n 64 --seed 5 $GEN 2>>"$OUT/gen.err"; }
a=$(gen X=1); c=$(gen GPTOSS_CUDA_SAMPLE=0)
log "generate $GEN: device vs host: $(python3 -c "import sys; a,b=sys.argv[1].split(),sys.argv[2].split(); print(sum(x==y for x,y in zip(a,b)), len(a))" "$a" "$c") equal"
log done
