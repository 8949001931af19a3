#!/usr/bin/env bash
# The shared libraries of Triton's perf_analyzer (the binary in the tritonclient wheel), for the
# tests that run it (tests/serve/transport/test_triton_perf_analyzer.py): Debian's libb64-0d,
# installed when missing. Its other unusual one, libcudart, comes from the nvidia-cuda-runtime-cu12
# wheel of the dev extra and is put on LD_LIBRARY_PATH by the test. `make test` runs this first.
set -euo pipefail
binary=${1:-.venv/bin/perf_analyzer}
if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
  "$(dirname "$0")/apt-install.sh" "libb64 (for perf_analyzer)" libb64-0d
  ldconfig -p | grep -q 'libb64\.so\.0d' || {
    echo "error: installed libb64-0d but libb64.so.0d is still not known to the loader" >&2
    exit 1
  }
fi
if [ -x "$binary" ]; then
  cudart=$(dirname "$binary")/../lib/python3*/site-packages/nvidia/cuda_runtime/lib
  # shellcheck disable=SC2086
  LD_LIBRARY_PATH=$(echo $cudart) "$binary" --version 2>&1 | sed -n 1p
fi
