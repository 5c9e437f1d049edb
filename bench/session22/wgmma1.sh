#!/usr/bin/env bash
# Session 22, call 1: the wgmma MoE prefill (moe_wgmma.cu). Its conformance test, then pp512/pp2048 with it
# on and off in the same binary (alternating), peak memory from the same lines. If the test fails, it runs
# again with the descriptor's two byte offsets swapped (a debug define), to tell a layout slip from others.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
TEST_TIMEOUT=240 run_test conformance_cuda moe_prefill_wgmma
if ! grep -q "test result: ok" "$OUT/conformance_cuda.log"; then
  cp "$OUT/conformance_cuda.log" "$OUT/wgmma_try1.log"
  log "retry with LBO/SBO swapped"
  GPTOSS_NVRTC_DEFINES="WG_LBO=1024 WG_SBO=128" TEST_TIMEOUT=240 run_test conformance_cuda moe_prefill_wgmma
fi
wait_synth
pp() {
  local label=$1; shift
  echo "$label:" | tee -a "$S"
  env "$@" "$G" bench -m /tmp/m20.gguf --backend cuda -p 512,2048 -n 0 -r 3 -o md 2>>"$OUT/bench.err" | tail -2 | tee -a "$S"
}
pp "wgmma" X=1
pp "mma.sync" GPTOSS_CUDA_MOE_WGMMA=0
pp "wgmma" X=1
pp "mma.sync" GPTOSS_CUDA_MOE_WGMMA=0
log done
