#!/usr/bin/env bash
# Build here (no GPU needed) and stage what bench/gpu_run.sh needs into .device/final (git-ignored),
# then run on the GPU machine with carry [".device/final", ".gl"]:
#   bash .device/final/gpu_run.sh .device/final
# The .gl folder holds Debian's Vulkan loader .debs (see the device notes in bench/RESULTS.md).
# Binaries travel as one xz archive (a device call carries at most 64 MiB). An optional baseline
# binary for same-call speed ratios: BASELINE=/path/to/gptoss (built from an earlier commit; its
# commit id in BASELINE_COMMIT). DEST=/path/.device/final stages elsewhere (a device call sends the
# checkout the session started in, e.g. when staging from another git worktree).
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
S=$(mktemp -d)
cp "$T/release/gptoss" "$S/"
while read -r name crate exe; do
  case "$crate/$name" in
    tests/conformance_cuda|tests/end_to_end_cuda|tests/conformance_wgpu|tests/split_cuda) cp "$exe" "$S/$name" ;;
    kernels-wgpu/conformance) cp "$exe" "$S/wgpu_ops_conformance" ;;
    kernels-cuda/fp4_device) cp "$exe" "$S/fp4_device" ;;
  esac
done <<< "$exes"
if [ -n "${BASELINE:-}" ]; then
  mkdir -p "$S/baseline"; cp "$BASELINE" "$S/baseline/gptoss"; echo "${BASELINE_COMMIT:-unknown}" > "$S/baseline/COMMIT"
fi
find "$S" -type f -perm -u+x -exec strip {} +
F=${DEST:-.device/final}
rm -rf "$F"; mkdir -p "$F/fixtures/gpt-oss-tiny"
tar -cJf "$F/staged.tar.xz" -C "$S" .
rm -rf "$S"
git rev-parse --short HEAD > "$F/COMMIT"
cp bench/gpu_run.sh bench/device_prelude.sh "$F/"
cp ../shared/fixtures/gpt-oss-tiny/{*.gguf,reference*} "$F/fixtures/gpt-oss-tiny/"
cp ../shared/fixtures/o200k/o200k_harmony-vocab.gguf "$F/"
du -sh "$F"
