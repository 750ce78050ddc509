#!/usr/bin/env bash
# Builds the benchmarks (Release) and runs them. Arguments go to every benchmark binary, e.g.
#   bash tools/bench.sh --benchmark_filter=OneHot
# TORCHKIT_BENCH=clip_bench runs only that program.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/configure.sh >/dev/null
build_dir=${TORCHKIT_BUILD_DIR:-build}
cmake --build "$build_dir" --parallel "$(nproc)"
for program in "$build_dir"/bench/*_bench; do
  name=$(basename "$program")
  if [ -n "${TORCHKIT_BENCH:-}" ] && [ "$name" != "$TORCHKIT_BENCH" ]; then continue; fi
  echo "== $name"
  "$program" "$@"
done
