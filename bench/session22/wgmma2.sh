#!/usr/bin/env bash
# Session 22, call 3: the B copies remapped (whole sectors per warp). The wgmma test (--nocapture), pp512 /
# pp2048 with the wgmma MoE on and off (same binary, alternating), and ncu sections of one gate/up and
# one down launch of pp2048 (caches flushed, no clock control).
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
log "test conformance_cuda moe_prefill_wgmma (nocapture)"
timeout 300 "$D/conformance_cuda" --test-threads 1 --nocapture moe_prefill_wgmma > "$OUT/moe_tests.log" 2>&1; echo "exit $?" >> "$OUT/moe_tests.log"
grep -E "test result|^exit|FAILED|panicked" "$OUT/moe_tests.log" | head -5 | tee -a "$S"
wait_synth
pp() {
  local label=$1; shift
  echo "$label:" | tee -a "$S"
  env "$@" "$G" bench -m /tmp/m20.gguf --backend cuda -p 512,2048 -n 0 -r 3 -o md 2>>"$OUT/bench.err" | tail -2 | tee -a "$S"
}
pp "wgmma" X=1
pp "mma.sync" GPTOSS_CUDA_MOE_WGMMA=0
pp "wgmma" X=1
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for k in moe_wg_gate_up moe_wg_down; do
  log "ncu sections $k"
  timeout 200 "$NCU" --clock-control none --cache-control all --kernel-name $k --launch-skip 30 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    --section SchedulerStats --section Occupancy --section LaunchStats \
    "$G" bench -m /tmp/m20.gguf --backend cuda -p 2048 -n 0 -r 1 -o md > "$OUT/ncu_$k.txt" 2> "$OUT/ncu_$k.err"
  grep -E "Duration|Throughput|Pipe|Stall|Issued|Eligible|Registers|Occupancy|L2 Hit|L1/TEX Hit|Mem Busy|Max Bandwidth|SM Busy" "$OUT/ncu_$k.txt" | head -40 | tee -a "$S"
done
log done
