# The shared start of the device scripts in bench/session*/ (from session 19 on), sourced by them:
#   . "$(dirname "$0")/device_prelude.sh"
# bench/stage_gpu_run.sh stages it beside them in .device/final. It unpacks the staged binaries, puts
# CUDA's and the NVRTC wheel's libraries on the library path, points the tests at the staged fixtures,
# writes the GPU and the commits to the summary, and defines:
#   D  the staged folder          G  this build's gptoss      B  the baseline gptoss (BASELINE at staging)
#   S  $OUT/summary.txt           log MSG      (a timestamped line in the summary)
#   extra_binary COMMIT           another gptoss staged by hand as $D/gptoss_COMMIT.xz; prints its path
#   start_synth / wait_synth      the synthetic 20b in /tmp/m20.gguf, made in the background
#   run_test NAME [FILTER...]     a staged test binary, one thread, its result lines in the summary
#   tg LABEL BINARY [VAR=VALUE...]  one `gptoss bench` decode line ($ARGS: repetitions, depth)
#   greedy_ids                    the 100 prompt ids of bench/gpu_run.sh
D=${D:-.device/final}
[ -x "$D/gptoss" ] || tar -xJf "$D/staged.tar.xz" -C "$D"
nv=$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
export GPTOSS_FIXTURES=$D/fixtures
G=$D/gptoss; B=$D/baseline/gptoss; S=$OUT/summary.txt
log() { echo "== $(date +%T) [$SECONDS s] $*" | tee -a "$S"; }
extra_binary() {
  local f=/tmp/gptoss_$1
  [ -x "$f" ] || { xz -dc "$D/gptoss_$1.xz" > "$f"; chmod +x "$f"; }
  echo "$f"
}
start_synth() {
  [ -s /tmp/m20.gguf ] || ( "$G" synth --preset 20b --vocab "$D/o200k_harmony-vocab.gguf" -q /tmp/m20.gguf > "$OUT/synth.log" 2>&1 ) &
  SYNTH_PID=$!
}
wait_synth() { wait "$SYNTH_PID"; log "synth done"; }
run_test() {
  local t=$1; shift
  log "test $t $*"
  timeout "${TEST_TIMEOUT:-240}" "$D/$t" --test-threads 1 "$@" > "$OUT/$t.log" 2>&1; echo "exit $?" >> "$OUT/$t.log"
  grep -E "^test result|^exit|FAILED|panicked" "$OUT/$t.log" | head -8 | tee -a "$S"
}
tg() {
  local label=$1 bin=$2; shift 2
  echo -n "$label: " | tee -a "$S"
  env "$@" "$bin" bench -m /tmp/m20.gguf --backend cuda -p 0 -n 128 $ARGS -o md 2>>"$OUT/bench.err" | tail -1 | tee -a "$S"
}
greedy_ids() {
  python3 -c 'import random; r=random.Random(7); print(",".join(str(r.randrange(1000, 199000)) for _ in range(100)))'
}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$S"
log "commit $(cat "$D/COMMIT"), baseline $(cat "$D/baseline/COMMIT" 2>/dev/null || echo none)"
