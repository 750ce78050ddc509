#!/usr/bin/env bash
# Builds the unit tests and examples with AddressSanitizer and UndefinedBehaviorSanitizer (Debug)
# in build-sanitize/ and runs them. LibTorch itself is not instrumented; leak detection is off
# because LibTorch keeps process-lifetime allocations (registries, thread pools) it never frees.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
build_dir=${TORCHKIT_SANITIZE_BUILD_DIR:-build-sanitize}
TORCHKIT_BUILD_DIR=$build_dir bash tools/configure.sh -DCMAKE_BUILD_TYPE=Debug -DTORCHKIT_SANITIZE=ON \
  -DTORCHKIT_BUILD_BENCHMARKS=OFF "$@"
cmake --build "$build_dir" --parallel "$(nproc)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir "$build_dir" --output-on-failure --parallel "$(nproc)" --label-regex 'unit|example'
