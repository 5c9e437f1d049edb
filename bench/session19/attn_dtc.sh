#!/usr/bin/env bash
# Session 19, call 1: the decode attention kernel with its first cache loads issued before q (and, in
# a recorded step, before the wait for the previous kernel), the new key's score, the sink and the new
# value row loaded at the start, the ring append at the start, and the last block's merge with all its
# loads in flight. Against the baseline binary in the same call: the CUDA tests, ncu durations of
# attn_dtc (caches flushed, no graph) at depth 16384, 4096 and 0, and alternating tg128 at depth 0 and
# 16384 (also with attn_dtc launched with PDL inside the graph). See README.md for the staging.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth
run_test conformance_cuda
run_test end_to_end_cuda
wait_synth
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
prof() {  # prof LABEL BINARY DEPTH
  GPTOSS_CUDA_GRAPH=0 timeout 200 "$NCU" --clock-control none --cache-control all --csv --print-units base \
    --kernel-name regex:attn_dtc --launch-count 48 \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size,launch__registers_per_thread \
    "$2" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 3 -d $3 -r 1 -o md > /tmp/ncu_$1.csv 2> $OUT/ncu_$1.err
  echo "ncu $1 rc $?" | tee -a "$S"
  python3 - /tmp/ncu_$1.csv "$1" <<'PY' | tee -a "$S"
import csv, sys, statistics, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; ix = {n: i for i, n in enumerate(hdr)}
by = collections.defaultdict(lambda: collections.defaultdict(list))
for r in rows[1:]:
    try: by[r[ix["ID"]]][r[ix["Metric Name"]]] = float(r[ix["Metric Value"]].replace(",", ""))
    except (ValueError, KeyError): pass
grp = collections.defaultdict(list)
for k, m in by.items():
    grp[int(m.get("launch__grid_size", 0))].append((m.get("gpu__time_duration.sum", 0) / 1e3, m.get("dram__bytes_read.sum", 0) / 1e6, m.get("launch__registers_per_thread", 0)))
for g, v in sorted(grp.items()):
    us = statistics.median(x[0] for x in v); mb = statistics.median(x[1] for x in v)
    print(f"{sys.argv[2]}: grid {g}: {len(v)} launches, median {us:.2f} us, {mb:.2f} MB read, {mb/us:.3f} TB/s, {v[0][2]:.0f} regs")
PY
}
log "ncu"
for d in 16384 4096 0; do prof base_d$d $B $d; prof new_d$d $G $d; done
PDL=GPTOSS_CUDA_PDL_ONLY=gemvf,moe_router,moe_down_planes,moe_gate_up_planes,attn_dtc
log "tg128 alternating"
for r in 1 2; do
  ARGS="-r 3"
  tg "d0 base r$r" $B X=1; tg "d0 new r$r" $G X=1; tg "d0 new+attn pdl r$r" $G $PDL
  ARGS="-r 2 -d 16384"
  tg "d16384 base r$r" $B X=1; tg "d16384 new r$r" $G X=1; tg "d16384 new+attn pdl r$r" $G $PDL
done
ARGS="-r 2 -d 4096"
tg "d4096 base" $B X=1; tg "d4096 new" $G X=1; tg "d4096 new+attn pdl" $G $PDL
log done
