#!/usr/bin/env bash
# Session 23, call 1: the Q8_0 prefill products (q/k/v in one launch, attention output) on wgmma
# (gemm_wgmma.cu). Their test with its NMSE lines (--nocapture), pp512 / pp2048 with them on and off
# (GPTOSS_CUDA_LINEAR_WGMMA=0, same binary) and the baseline (7e279d2, session 22's tree), then every
# CUDA conformance test and end to end (the session-22 review's code had not run on a GPU).
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
log "test conformance_cuda linear_prefill_wgmma (nocapture)"
timeout 200 "$D/conformance_cuda" --test-threads 1 --nocapture linear_prefill_wgmma > "$OUT/wg_test.log" 2>&1; echo "exit $?" >> "$OUT/wg_test.log"
grep -E "^test |test result|^exit|panicked|against mma.sync|arch " "$OUT/wg_test.log" | head -40 | tee -a "$S"
wait_synth
pp() {
  local label=$1 bin=$2; shift 2
  echo "$label:" | tee -a "$S"
  env "$@" "$bin" bench -m /tmp/m20.gguf --backend cuda -p 512,2048 -n 0 -r 3 -o md 2>>"$OUT/bench.err" | tail -2 | tee -a "$S"
}
pp "new" $G X=1
pp "new, GPTOSS_CUDA_LINEAR_WGMMA=0" $G GPTOSS_CUDA_LINEAR_WGMMA=0
pp "baseline" $B X=1
pp "new" $G X=1
TEST_TIMEOUT=330 run_test conformance_cuda
TEST_TIMEOUT=100 run_test end_to_end_cuda
log done
