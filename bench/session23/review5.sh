#!/usr/bin/env bash
# Session 23, call 5: the review's host-side changes (wg_prep_x, matrix_args) and test helpers, no kernel
# change: the prefill tests that go through them and end to end.
set -uo pipefail
. "$(dirname "$0")/device_prelude.sh"
for t in linear_prefill_wgmma moe_prefill_wgmma linear_prefill_tensor_cores attention_prefill_tensor_cores; do
  TEST_TIMEOUT=200 run_test conformance_cuda "$t"
done
TEST_TIMEOUT=100 run_test end_to_end_cuda
log done
