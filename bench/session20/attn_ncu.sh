#!/usr/bin/env bash
# Session 20, call 2: where the decode attention's time goes at depth 16384 (ncu sections on attn_dtc,
# caches flushed, no graph; full layers have grid 264, window layers 8), what it costs inside the
# recorded step (tg128 at depth 16384 with GPTOSS_CUDA_SKIP=attn_dtc: outputs wrong, time is what is
# left), and the fixed add_rms_norm_moe test.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
TEST_TIMEOUT=150 run_test conformance_cuda add_rms_norm_moe_in_router
wait_synth
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
log "ncu sections, attn_dtc at depth 16384 (2nd decode step)"
GPTOSS_CUDA_GRAPH=0 timeout 300 "$NCU" --clock-control none --cache-control all \
  --kernel-name regex:attn_dtc --launch-skip 24 --launch-count 4 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
  --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
  --section SourceCounters --section ComputeWorkloadAnalysis \
  "$G" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 3 -d 16384 -r 1 -o md > $OUT/ncu_attn.txt 2> $OUT/ncu_attn.err
log "ncu rc $?"
grep -E "Duration|DRAM Throughput|Memory Throughput|Registers Per|Achieved Occupancy|Grid Size|Issued Ipc|No Eligible|One or More" $OUT/ncu_attn.txt | head -60 | tee -a "$S"
log "tg128 @ d16384 with and without the attention"
ARGS="-r 2 -d 16384"
tg "d16384 new" $G X=1; tg "d16384 new SKIP=attn_dtc" $G GPTOSS_CUDA_SKIP=attn_dtc
ARGS="-r 2"
tg "d0 new" $G X=1; tg "d0 new SKIP=attn_dtc" $G GPTOSS_CUDA_SKIP=attn_dtc
log done
