#!/usr/bin/env bash
# The test command: installs what is missing, builds torchkit's tests, examples and benchmarks
# with warnings as errors, compiles every public header on its own (VERIFY_INTERFACE_HEADER_SETS),
# and runs every test (unit tests, examples, benchmark smoke runs, consumer and packaging
# checks, single-header sync).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/configure.sh -DTORCHKIT_WERROR=ON "$@"
build_dir=${TORCHKIT_BUILD_DIR:-build}
cmake --build "$build_dir" --parallel "$(nproc)" --target all torchkit_verify_interface_header_sets
ctest --test-dir "$build_dir" --output-on-failure --parallel "$(nproc)"
