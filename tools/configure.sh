#!/usr/bin/env bash
# Configures torchkit's build in build/ (Release, Ninja, ccache when present). Extra arguments go
# to CMake. Used by tools/test.sh, tools/demo.sh and tools/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${TORCHKIT_BUILD_DIR:-build}
args=(-S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release)
if command -v ccache >/dev/null 2>&1; then
  args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
cmake "${args[@]}" "$@"
