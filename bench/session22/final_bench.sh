#!/usr/bin/env bash
# Session 22, call 6 (same warm machine as call 5): the f32 kernels' 64 greedy steps against the CPU
# reference again (the many-row router now only on the bf16 prefill), then pp512 / pp2048 of the baseline
# (f48e494, session 21's tree) and the final build alternating, the final build with the mma.sync MoE
# (GPTOSS_CUDA_MOE_WGMMA=0) and with 2 warpgroups, and tg128 of both builds.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
start_synth; wait_synth
ids=$(greedy_ids)
[ -s /tmp/g_cpu.json ] || "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cpu-ref > /tmp/g_cpu.json 2>>$OUT/check.err
GPTOSS_CUDA_TC_OFF=linear,moe,attention "$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_f32.json 2>>$OUT/check.err
"$G" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_bf16.json 2>>$OUT/check.err
"$B" generate -m /tmp/m20.gguf --tokens "$ids" -n 64 --json --backend cuda > /tmp/g_bf16_base.json 2>>$OUT/check.err
python3 - <<'PY' | tee -a "$S"
import json
b = json.load(open("/tmp/g_cpu.json"))
for f, name in [("/tmp/g_f32.json", "f32 kernels vs CPU"), ("/tmp/g_bf16.json", "default vs CPU"), ("/tmp/g_bf16_base.json", "baseline default vs CPU")]:
    a = json.load(open(f))
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    print(f"greedy {name}: {n} of {len(a)} steps identical before the first difference")
PY
pp() {
  local label=$1 bin=$2; shift 2
  echo "$label:" | tee -a "$S"
  env "$@" "$bin" bench -m /tmp/m20.gguf --backend cuda -p 512,2048 -n 0 -r 3 -o md 2>>"$OUT/bench.err" | tail -2 | tee -a "$S"
}
pp "baseline" $B X=1
pp "final" $G X=1
pp "final, mma.sync MoE" $G GPTOSS_CUDA_MOE_WGMMA=0
pp "final, 2 warpgroups" $G GPTOSS_CUDA_MOE_WGMMA=2
pp "baseline" $B X=1
pp "final" $G X=1
ARGS="-r 3"; tg "tg128 baseline" $B X=1; tg "tg128 final" $G X=1
log done
