#!/usr/bin/env bash
# Session 23, call 4: the flash prefill attention with K and V staged as [key][d] rows and the mma's B
# fragments loaded by ldmatrix (plain for K, transposed for V) instead of V stored transposed by 16-bit
# stores and two 32-bit loads per fragment; the same mma's on the same values, so the same outputs.
# Every CUDA conformance test and end to end; the 20b's logits and 64 greedy steps against the baseline's
# (7e279d2: expected bit-equal); pp512 / pp2048 against the baseline alternating, pp8192 once each; ncu
# sections of one flash launch (call 3 measured the old one).
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
TEST_TIMEOUT=300 run_test conformance_cuda
TEST_TIMEOUT=100 run_test end_to_end_cuda
grep -E "attention|flash" "$OUT/conformance_cuda.log" | grep -iE "nmse" | head -12 >> "$S"
wait_synth
ids=$(greedy_ids)
pp() {
  local label=$1 bin=$2 p=$3; shift 3
  echo "$label:" | tee -a "$S"
  env "$@" "$bin" bench -m /tmp/m20.gguf --backend cuda -p "$p" -n 0 -r 3 -o md 2>>"$OUT/bench.err" | grep "| pp" | tee -a "$S"
}
pp "baseline" $B 512,2048 X=1
pp "new" $G 512,2048 X=1
pp "baseline" $B 512,2048 X=1
pp "new" $G 512,2048 X=1
pp "baseline" $B 8192 X=1
pp "new" $G 8192 X=1
"$G" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_cuda.safetensors 2>>$OUT/check.err
"$B" logits -m /tmp/m20.gguf --tokens "$ids" --backend cuda --out /tmp/l_base.safetensors 2>>$OUT/check.err
"$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_new.json 2>>$OUT/check.err
"$B" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_base.json 2>>$OUT/check.err
python3 - <<'PY' | tee -a "$S"
import json
import numpy as np
from safetensors.numpy import load_file
a = load_file("/tmp/l_cuda.safetensors")["logits"]; b = load_file("/tmp/l_base.safetensors")["logits"]
print(f"logits new vs baseline (default prefill): bit-equal {np.array_equal(a, b)}")
print(f"64 greedy steps, new vs baseline: identical {json.load(open('/tmp/g_new.json')) == json.load(open('/tmp/g_base.json'))}")
PY
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
log "ncu sections flash_attn_tc_d64"
timeout 120 "$NCU" --clock-control none --cache-control all --kernel-name flash_attn_tc_d64 --launch-skip 4 --launch-count 1 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats \
  --section LaunchStats "$G" bench -m /tmp/m20.gguf --backend cuda -p 2048 -n 0 -r 1 -o md > "$OUT/ncu_flash.txt" 2>&1
grep -E "Duration|Throughput|Achieved Occupancy|Registers Per|Grid Size|Warp Cycles Per Issued" "$OUT/ncu_flash.txt" | head -14 | tee -a "$S"
log done
