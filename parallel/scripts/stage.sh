#!/usr/bin/env bash
# Build here (no GPU needed) and stage what parallel/scripts/gpu_run.sh needs into DIR
# (default /work/main/.device/dist, git-ignored); then run on a 2-GPU machine with
# carry [".device/dist"]:  bash .device/dist/gpu_run.sh .device/dist
set -euo pipefail
cd "$(dirname "$0")/../.."
T=${CARGO_TARGET_DIR:-target}
DIR=${1:-/work/main/.device/dist}
cargo build --release -p gptoss-cli
exe=$(cargo test --release --no-run -p gptoss-tests --test split_cuda --message-format=json 2>/dev/null |
  python3 -c 'import sys, json
for l in sys.stdin:
    j = json.loads(l)
    if j.get("reason") == "compiler-artifact" and j.get("executable") and j["profile"]["test"]:
        print(j["executable"])')
rm -rf "$DIR"; mkdir -p "$DIR/fixtures/gpt-oss-tiny"
cp "$T/release/gptoss" "$DIR/"
cp "$exe" "$DIR/split_cuda"
strip "$DIR/gptoss" "$DIR/split_cuda"
cp ../shared/fixtures/gpt-oss-tiny/{*.gguf,reference*} "$DIR/fixtures/gpt-oss-tiny/"
cp ../shared/fixtures/o200k/o200k_harmony-vocab.gguf "$DIR/"
cp parallel/scripts/gpu_run.sh "$DIR/"
du -sh "$DIR"
