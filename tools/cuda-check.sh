#!/usr/bin/env bash
# The CUDA compile-and-link check, for a machine without a GPU: in a Debian 13 root with
# libtorch-cuda-dev 2.6 (CUDA 12, contrib/non-free; tools/debian-root.sh trixie-cuda), every public
# header is compiled on its own and tests/test_memory.cpp is built, with TORCHKIT_WITH_CUDA=1
# (set by torchkit's CMake package from the CUDA Torch) and -Werror. Debian's cuDNN package only
# installs a downloader, so the link allows undefined symbols of shared libraries
# (-Wl,--allow-shlib-undefined): every symbol torchkit itself references must still resolve.
# Nothing is run: there is no GPU here.
#
# usage: bash tools/cuda-check.sh            (on the host: creates/uses the root, runs the check)
#        bash tools/cuda-check.sh --inside   (what the root runs)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" != --inside ]; then
  exec bash tools/debian-root.sh trixie-cuda -- bash tools/cuda-check.sh --inside
fi

build_dir=${TORCHKIT_BUILD_DIR:-build-cuda}
args=(-S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
  -DTORCHKIT_WERROR=ON -DTORCHKIT_BUILD_EXAMPLES=OFF -DTORCHKIT_BUILD_BENCHMARKS=OFF
  -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined
  -DCMAKE_SHARED_LINKER_FLAGS=-Wl,--allow-shlib-undefined)
if command -v ccache >/dev/null 2>&1; then
  args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
cmake "${args[@]}"
grep -q 'TORCHKIT_WITH_CUDA=1' "$build_dir/build.ninja" ||
  { echo "cuda-check: TORCHKIT_WITH_CUDA=1 is not on the compile lines: CMake did not find a CUDA Torch" >&2; exit 1; }
cmake --build "$build_dir" --parallel "$(nproc)" --target torchkit_verify_interface_header_sets test_memory
echo "cuda-check: every header and test_memory compiled with TORCHKIT_WITH_CUDA=1 and linked"
