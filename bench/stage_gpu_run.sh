#!/usr/bin/env bash
# Build here (no GPU needed) and stage what bench/gpu_run.sh needs into .device/final (git-ignored),
# then run on the GPU machine with carry [".device", ".gl"]. The .gl folder holds Debian's Vulkan
# loader .debs (see the device notes in bench/RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}
cargo build --release -p gptoss-cli
exes=$(cargo test --release --no-run -p gptoss-tests -p gptoss-kernels-wgpu -p gptoss-kernels-cuda --message-format=json 2>/dev/null |
  python3 -c 'import sys, json
for l in sys.stdin:
    j = json.loads(l)
    if j.get("reason") == "compiler-artifact" and j.get("executable") and j["profile"]["test"]:
        print(j["target"]["name"], j["manifest_path"].split("/")[-2], j["executable"])')
rm -rf .device/final; mkdir -p .device/final/fixtures/gpt-oss-tiny
cp "$T/release/gptoss" .device/final/
while read -r name crate exe; do
  case "$crate/$name" in
    tests/conformance_cuda|tests/end_to_end_cuda|tests/conformance_wgpu) cp "$exe" ".device/final/$name" ;;
    kernels-wgpu/conformance) cp "$exe" .device/final/wgpu_ops_conformance ;;
    kernels-cuda/fp4_device) cp "$exe" .device/final/fp4_device ;;
  esac
done <<< "$exes"
find .device/final -maxdepth 1 -type f -exec strip {} +
cp ../shared/fixtures/gpt-oss-tiny/{*.gguf,reference*} .device/final/fixtures/gpt-oss-tiny/
cp ../shared/fixtures/o200k/o200k_harmony-vocab.gguf .device/final/
du -sh .device/final
