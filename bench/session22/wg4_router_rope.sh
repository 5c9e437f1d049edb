#!/usr/bin/env bash
# Session 22, call 4: the wgmma MoE with 4 warpgroups a block (M = 256) and with 2, the many-row router
# (moe_router_rows) and rope_qk's cos/sin once per row. Tests (MoE and RoPE cases of conformance_cuda,
# --nocapture; end_to_end_cuda), then pp512/pp2048 for the baseline (session 21's f48e494) and this build
# with GPTOSS_CUDA_MOE_WGMMA=4, 2 and 0, and tg128 for both builds.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
log "test conformance_cuda moe rope (nocapture)"
timeout 420 "$D/conformance_cuda" --test-threads 1 --nocapture moe rope > "$OUT/moe_rope_tests.log" 2>&1; echo "exit $?" >> "$OUT/moe_rope_tests.log"
grep -E "^test |test result|^exit|panicked" "$OUT/moe_rope_tests.log" | head -20 | tee -a "$S"
TEST_TIMEOUT=150 run_test end_to_end_cuda
wait_synth
pp() {
  local label=$1 bin=$2; shift 2
  echo "$label:" | tee -a "$S"
  env "$@" "$bin" bench -m /tmp/m20.gguf --backend cuda -p 512,2048 -n 0 -r 3 -o md 2>>"$OUT/bench.err" | tail -2 | tee -a "$S"
}
pp "baseline" $B X=1
pp "new wg4" $G X=1
pp "new wg2" $G GPTOSS_CUDA_MOE_WGMMA=2
pp "new mma.sync" $G GPTOSS_CUDA_MOE_WGMMA=0
pp "baseline" $B X=1
pp "new wg4" $G X=1
ARGS="-r 2"; tg "tg128 baseline" $B X=1; tg "tg128 new" $G X=1
log done
