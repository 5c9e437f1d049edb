#!/usr/bin/env bash
# Session 23, call 3: the landed form of gemm_wg_q8_0 (words at bytes 4q and 16 + 4q of each block, so
# every k16 slice holds gemm_tc_q8_0's k: expected bit-equal to it). Its test with the NMSE lines, the
# whole conformance_cuda and end to end; pp512 / pp2048 against the baseline (7e279d2) alternating and
# with GPTOSS_CUDA_LINEAR_WGMMA=0; the 20b logits and 64 greedy steps of the default prefill against the
# baseline's (equal if the outputs are bit-equal) and the CPU reference; ncu sections of one launch of
# each of the three biggest prefill kernels (what limits them).
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
log "test conformance_cuda linear_prefill_wgmma (nocapture)"
timeout 200 "$D/conformance_cuda" --test-threads 1 --nocapture linear_prefill_wgmma > "$OUT/wg_test.log" 2>&1; echo "exit $?" >> "$OUT/wg_test.log"
grep -E "test result|^exit|panicked|against mma.sync" "$OUT/wg_test.log" | head -40 | tee -a "$S"
wait_synth
ids=$(greedy_ids)
( "$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cpu-ref --out /tmp/l_cpu.safetensors 2>>$OUT/check.err ) &
CPU_PID=$!
pp() {
  local label=$1 bin=$2; shift 2
  echo "$label:" | tee -a "$S"
  env "$@" "$bin" bench -m /tmp/m20.gguf --backend cuda -p 512,2048 -n 0 -r 3 -o md 2>>"$OUT/bench.err" | tail -2 | tee -a "$S"
}
pp "baseline" $B X=1
pp "new" $G X=1
pp "new, GPTOSS_CUDA_LINEAR_WGMMA=0" $G GPTOSS_CUDA_LINEAR_WGMMA=0
pp "baseline" $B X=1
pp "new" $G X=1
"$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_cuda.safetensors 2>>$OUT/check.err
"$B" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_base.safetensors 2>>$OUT/check.err
"$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_new.json 2>>$OUT/check.err
"$B" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_base.json 2>>$OUT/check.err
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for k in gemm_wg_q8_0 moe_wg4_gate_up moe_wg4_down flash_attn_tc_d64; do
  log "ncu sections $k"
  timeout 120 "$NCU" --clock-control none --cache-control all --kernel-name "$k" --launch-skip 4 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats \
    --section LaunchStats "$G" bench -m /tmp/m20.gguf --backend cuda -p 2048 -n 0 -r 1 -o md > "$OUT/ncu_$k.txt" 2>&1
  grep -E "Duration|Throughput|Busy|Achieved Occupancy|Registers Per|Grid Size|Block Size|Warp Cycles Per Issued|Stall|L2 Hit|Mem Pipes|Max Bandwidth" "$OUT/ncu_$k.txt" | head -24 | tee -a "$S"
done
timeout 240 tail --pid=$CPU_PID -f /dev/null
python3 - <<'PY' | tee -a "$S"
import json
import numpy as np
from safetensors.numpy import load_file
c = load_file("/tmp/l_cpu.safetensors")["logits"].astype(np.float64)
a = load_file("/tmp/l_cuda.safetensors")["logits"].astype(np.float64)
b = load_file("/tmp/l_base.safetensors")["logits"].astype(np.float64)
for x, name in [(a, "new"), (b, "baseline")]:
    print(f"logits {name} (default bf16 prefill) vs CPU: NMSE {((x-c)**2).sum()/(c**2).sum():.3e}, argmax agree {(x.argmax(1)==c.argmax(1)).mean()*100:.1f}%")
print(f"logits new vs baseline: bit-equal {np.array_equal(a, b)}, NMSE {((a-b)**2).sum()/(b**2).sum():.3e}")
g, h = json.load(open("/tmp/g_new.json")), json.load(open("/tmp/g_base.json"))
print(f"64 greedy steps, new vs baseline: identical {g == h}")
PY
TEST_TIMEOUT=200 run_test conformance_cuda
TEST_TIMEOUT=100 run_test end_to_end_cuda
log done
