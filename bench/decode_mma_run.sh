#!/usr/bin/env bash
# helper dmoe: one device call: conformance + e2e of the int8 tensor-core decode kernels, bench of
# this build vs the baseline binary, bench_decode, ncu per-kernel times of a decode step.
# Staged as in bench/stage_gpu_run.sh into .device/dmoe (binaries: gptoss, conformance_cuda, end_to_end_cuda,
# bench_decode, baseline/gptoss in staged.tar.xz; fixtures/gpt-oss-tiny, o200k_harmony-vocab.gguf, ana.py from
# /work/targets/ana.py), then on the device: bash .device/dmoe/run.sh (carry .device/dmoe). Used 2026-11-26.
set -uo pipefail
D=.device/dmoe
L=/tmp/dlogs; mkdir -p "$L" "$OUT"
trap 'tar -czf "$OUT/logs.tgz" -C "$L" . 2>/dev/null' EXIT
S=$OUT/summary.txt
log() { echo "== $(date +%T) [$SECONDS s] $*" | tee -a "$S"; }
tar -xJf "$D/staged.tar.xz" -C "$D"
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
export GPTOSS_FIXTURES=$D/fixtures
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$S"
( "$D/gptoss" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > "$L/synth.log" 2>&1 ) &
synth=$!
# NVRTC compiles each binary's kernels once (cached on disk): both warm up at once on a tiny model.
T=$D/fixtures/gpt-oss-tiny/tiny-gptoss-mxfp4-q8_0.gguf
( "$D/gptoss" bench -m "$T" --backend cuda -p 0 -n 4 -r 1 > "$L/warm_new.log" 2>&1 ) & w1=$!
( "$D/baseline/gptoss" bench -m "$T" --backend cuda -p 0 -n 4 -r 1 > "$L/warm_base.log" 2>&1 ) & w2=$!
wait $w1; log "warm (new) done: $(tail -1 "$L/warm_new.log")"
log "conformance_cuda (new tests first)"
timeout 80 "$D/conformance_cuda" --test-threads 1 --nocapture decode_mma moe_matches linear_many linear_every moe_rows > "$L/conf1.log" 2>&1; echo "exit $?" >> "$L/conf1.log"
grep -E "^test |^test result|^exit|panicked|mma=true|decode mma" "$L/conf1.log" | head -40 | tee -a "$S"
grep -E "moe MXFP4.*t=(1|8):" "$L/conf1.log" | head -12 | tee -a "$S"
log "conformance_cuda (the rest)"
timeout 45 "$D/conformance_cuda" --test-threads 1 --skip decode_mma --skip moe_matches --skip linear_many --skip linear_every --skip moe_rows > "$L/conf2.log" 2>&1; echo "exit $?" >> "$L/conf2.log"
grep -E "^test |^test result|^exit|panicked" "$L/conf2.log" | head -30 | tee -a "$S"
log "end_to_end_cuda"
timeout 40 "$D/end_to_end_cuda" --test-threads 1 > "$L/e2e.log" 2>&1; echo "exit $?" >> "$L/e2e.log"
grep -E "^test |^test result|^exit|panicked" "$L/e2e.log" | head -10 | tee -a "$S"
wait $w2; wait $synth; tail -2 "$L/synth.log" | tee -a "$S"
log "bench: this build, then baseline, then this build with GPTOSS_CUDA_DECODE_MMA=0"
"$D/gptoss" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 -r 3 -o md 2>"$L/b_new.err" | tee -a "$S"
"$D/baseline/gptoss" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 -r 3 -o md 2>"$L/b_base.err" | tee -a "$S"
GPTOSS_CUDA_DECODE_MMA=0 "$D/gptoss" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 -r 2 -o md 2>"$L/b_off.err" | tee -a "$S"
log "bench_decode"
timeout 40 "$D/bench_decode" --ignored --nocapture > "$L/bench_decode.log" 2>&1
grep -E "copy bandwidth|\[mma\]|\[f32\]|moe 20b|linear|q\+k\+v|layer pair|est\." "$L/bench_decode.log" | head -40 | tee -a "$S"
log "ncu decode step"
if command -v ncu >/dev/null; then
  timeout $((290 - SECONDS)) ncu --clock-control none --csv --print-units base --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__registers_per_thread "$D/gptoss" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 3 -r 1 > "$L/ncu.csv" 2>"$L/ncu.err"
  python3 "$D/ana.py" "$L/ncu.csv" 2>&1 | head -30 | tee -a "$S"
fi
log done
