#!/usr/bin/env bash
# Session 22, call 2: where pp2048's time goes with the wgmma MoE (ncu: each kernel's duration summed by
# name over one `gptoss bench -p 2048 -n 0 -r 1` run, caches flushed per kernel, no clock control), and the
# MoE tests with their NMSE lines (--nocapture).
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
log "test conformance_cuda moe (nocapture)"
timeout 400 "$D/conformance_cuda" --test-threads 1 --nocapture moe_prefill > "$OUT/moe_tests.log" 2>&1; echo "exit $?" >> "$OUT/moe_tests.log"
grep -E "^test |test result|exit|wgmma d=" "$OUT/moe_tests.log" | head -40 | tee -a "$S"
wait_synth
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for v in 1 0; do
  log "ncu pp2048, GPTOSS_CUDA_MOE_WGMMA=$v"
  GPTOSS_CUDA_MOE_WGMMA=$v timeout 400 "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv \
    --print-summary per-kernel "$G" bench -m /tmp/m20.gguf --backend cuda -p 2048 -n 0 -r 1 -o md \
    > "$OUT/ncu_pp2048_$v.csv" 2> "$OUT/ncu_$v.err"
  log "ncu rc $?"
  python3 - "$OUT/ncu_pp2048_$v.csv" <<'PY' | tee -a "$S"
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
h = rows[0]; rows = rows[1:]
ki = h.index("Kernel Name"); inv = h.index("Invocations") if "Invocations" in h else None
# per-kernel summary: columns include Metric Name / Average / Sum? print name, invocations, sum
mi = [i for i, c in enumerate(h) if c in ("Sum", "Metric Value", "Average")]
tot = {}
for r in rows:
    name = r[ki].split("(")[0]
    try:
        if "Sum" in h: v = float(r[h.index("Sum")].replace(",", ""))
        else: v = float(r[h.index("Average")].replace(",", "")) * float(r[inv])
    except Exception: continue
    tot[name] = tot.get(name, 0) + v
all_ = sum(tot.values())
for n, v in sorted(tot.items(), key=lambda x: -x[1])[:14]:
    print(f"  {n:32s} {v/1e6:8.2f} ms  {100*v/all_:5.1f} %")
print(f"  total {all_/1e6:.2f} ms (units as ncu prints gpu__time_duration: ns assumed)")
PY
done
log done
