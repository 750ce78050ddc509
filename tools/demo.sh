#!/usr/bin/env bash
# The main job: installs what is missing, builds the demo and runs it (arguments go to the demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/configure.sh >/dev/null
build_dir=${TORCHKIT_BUILD_DIR:-build}
cmake --build "$build_dir" --target demo --parallel "$(nproc)"
"$build_dir/examples/demo" "$@"
