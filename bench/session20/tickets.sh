#!/usr/bin/env bash
# Session 20, call 8 (the last of the budget): tickets taken by thread 0 with acq_rel after a barrier instead
# of a __threadfence in every thread (ticket_acq_rel: the decode attention's split merge and the down
# kernel's tail norm of e235c31, now on again). Against 10465ac (router fusion only, staged as
# gptoss_10465ac.xz): the attention and MoE sub-block tests and end to end (two test processes at once, beside
# the synth), then tg128 at depth 0 (also with GPTOSS_CUDA_DOWN_NORM=0: the attention change only) and 16384.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
F1=$(extra_binary 10465ac)
start_synth
TEST_TIMEOUT=200 run_test conformance_cuda attention_prefill_decode_window_sinks &
T1=$!
( timeout 200 "$D/conformance_cuda" --test-threads 1 moe_sublayer_fused > "$OUT/moe_sublayer.log" 2>&1; echo "exit $?" >> "$OUT/moe_sublayer.log" ) &
T2=$!
TEST_TIMEOUT=60 run_test end_to_end_cuda
wait $T1 $T2
grep -E "^test result|^exit|FAILED|panicked" "$OUT/moe_sublayer.log" | head -5 | tee -a "$S"
wait_synth
ARGS="-r 2"
tg "d0 10465ac" $F1 X=1; tg "d0 new" $G X=1
ARGS="-r 2 -d 16384"
tg "d16384 10465ac" $F1 X=1; tg "d16384 new" $G X=1
ARGS="-r 2"
tg "d0 new DOWN_NORM=0" $G GPTOSS_CUDA_DOWN_NORM=0
log done
