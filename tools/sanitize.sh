#!/usr/bin/env bash
# Builds the unit tests and examples with AddressSanitizer, LeakSanitizer and
# UndefinedBehaviorSanitizer (Debug) in build-sanitize/ and runs them; any report fails the run.
# LibTorch itself is not instrumented. The only suppressions are for reports inside LibTorch
# (and the libraries it loads), each with its reason: tools/sanitizers/*.supp.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
build_dir=${TORCHKIT_SANITIZE_BUILD_DIR:-build-sanitize}
TORCHKIT_BUILD_DIR=$build_dir bash tools/configure.sh -DCMAKE_BUILD_TYPE=Debug -DTORCHKIT_SANITIZE=ON \
  -DTORCHKIT_BUILD_BENCHMARKS=OFF "$@"
cmake --build "$build_dir" --parallel "$(nproc)"
suppressions=$(pwd)/tools/sanitizers
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_init_order=1:check_initialization_order=1
export LSAN_OPTIONS=suppressions=$suppressions/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$suppressions/ubsan.supp
ctest --test-dir "$build_dir" --output-on-failure --parallel "$(nproc)" --label-regex "${TORCHKIT_SANITIZE_LABELS:-unit|example}"
