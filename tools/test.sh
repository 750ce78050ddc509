#!/usr/bin/env bash
# The test command: installs what is missing, builds torchkit's tests, examples and benchmarks
# with warnings as errors, compiles every public header on its own (VERIFY_INTERFACE_HEADER_SETS),
# and runs every test (unit tests, examples, benchmark smoke runs, consumer and packaging
# checks, single-header sync).
#
#   bash tools/test.sh [cmake arguments]          everything (the README's test command)
#   bash tools/test.sh --unit [cmake arguments]   only the unit tests (CI's extra compilers)
set -euo pipefail
cd "$(dirname "$0")/.."
scope=all
if [ "${1:-}" = --unit ]; then
  scope=unit
  shift
fi
bash tools/install-deps.sh
build_dir=${TORCHKIT_BUILD_DIR:-build}
if [ "$scope" = unit ]; then
  bash tools/configure.sh -DTORCHKIT_WERROR=ON -DTORCHKIT_BUILD_EXAMPLES=OFF -DTORCHKIT_BUILD_BENCHMARKS=OFF "$@"
  targets=(all)
  ctest_args=(-L unit)
else
  # Explicit, so that a build directory last configured with --unit builds everything again.
  bash tools/configure.sh -DTORCHKIT_WERROR=ON -DTORCHKIT_BUILD_TESTS=ON -DTORCHKIT_BUILD_EXAMPLES=ON \
    -DTORCHKIT_BUILD_BENCHMARKS=ON "$@"
  targets=(all torchkit_verify_interface_header_sets)
  ctest_args=()
fi
cmake --build "$build_dir" --parallel "$(nproc)" --target "${targets[@]}"
ctest --test-dir "$build_dir" --output-on-failure --parallel "$(nproc)" "${ctest_args[@]}"
