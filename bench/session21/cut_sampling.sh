#!/usr/bin/env bash
# Session 21, call 4: top-k / top-p draws from the device's candidates (sample_max + sample_gather:
# the tokens within 2^-20 of the most likely one's weight and the rest's sum come back; the host
# sampler finishes the cut when they decide it) against the host sampler on a copy of the row
# (GPTOSS_CUDA_SAMPLE=0), same binary: conformance_cuda's sampling tests, end_to_end_cuda, tg128
# with llama.cpp's / Ollama's sampler settings, and `gptoss generate` token ids both ways.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
TEST_TIMEOUT=200 run_test conformance_cuda sample softmax
TEST_TIMEOUT=150 run_test end_to_end_cuda
wait_synth
for round in 1 2; do
  ARGS="-r 3"; tg "greedy" $G X=1
  ARGS="-r 3 --temp 0.7"; tg "T0.7 device" $G X=1
  ARGS="-r 3 --temp 0.8 --top-k 40 --top-p 0.95"; tg "T0.8 k40 p0.95 device" $G X=1; tg "T0.8 k40 p0.95 host" $G GPTOSS_CUDA_SAMPLE=0
  ARGS="-r 2 --temp 0.8 --top-p 0.9"; tg "T0.8 p0.9 device" $G X=1; tg "T0.8 p0.9 host" $G GPTOSS_CUDA_SAMPLE=0
done
ids=$(greedy_ids)
gen() { env "$@" "$G" generate -m /tmp/m20.gguf --backend cuda --tokens "$ids" -n 64 --seed 5 $GEN 2>>"$OUT/gen.err"; }
same() { python3 -c "import sys; a,b=sys.argv[1].split(),sys.argv[2].split(); print(sum(x==y for x,y in zip(a,b)), len(a))" "$1" "$2"; }
for GEN in "--temp 0.8 --top-k 40 --top-p 0.95" "--temp 0.8 --top-p 0.9 --min-p 0.05" "--temp 1.0 --top-k 5 --repeat-penalty 1.1"; do
  a=$(gen X=1); b=$(gen X=1); c=$(gen GPTOSS_CUDA_SAMPLE=0)
  log "generate $GEN: device vs device again: $(same "$a" "$b") equal; device vs host: $(same "$a" "$c") equal"
  echo "device: $a" >> "$S"; echo "host:   $c" >> "$S"
done
log done
