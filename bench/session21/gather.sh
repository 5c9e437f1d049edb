#!/usr/bin/env bash
# Session 21, call 6: sample_gather with one atomic per warp and an early stop past the cap (call 5:
# top-p without top-k on this model's flat rows made 201k single-address atomics before falling
# back to the host). conformance_cuda's sampling tests, end_to_end_cuda, and tg128 greedy, T0.7,
# top-k 40 + top-p 0.95 and top-p 0.9, GPU draw against host draw (GPTOSS_CUDA_SAMPLE=0), same binary.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
TEST_TIMEOUT=200 run_test conformance_cuda sample softmax
TEST_TIMEOUT=150 run_test end_to_end_cuda
wait_synth
for round in 1 2; do
  ARGS="-r 3"; tg "greedy" $G X=1
  ARGS="-r 3 --temp 0.7"; tg "T0.7 device" $G X=1
  ARGS="-r 3 --temp 0.8 --top-k 40 --top-p 0.95"; tg "T0.8 k40 p0.95 device" $G X=1
  ARGS="-r 2 --temp 0.8 --top-p 0.9"; tg "T0.8 p0.9 device" $G X=1; tg "T0.8 p0.9 host" $G GPTOSS_CUDA_SAMPLE=0
done
log done
