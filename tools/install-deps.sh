#!/usr/bin/env bash
# Installs what torchkit's build, tests, examples and benchmarks need on Debian 12 / 13 / unstable
# or Ubuntu, skipping what is already there. Safe to run again.
#   TORCHKIT_EXTRA_PACKAGES  more packages (tools/debian-root.sh passes clang here)
#   TORCHKIT_LIBTORCH_CUDA=1 LibTorch with CUDA (libtorch-cuda-dev) instead of the CPU build
set -euo pipefail

packages=(
  build-essential cmake ninja-build git python3 ccache
  libtorch-dev libfmt-dev doctest-dev nlohmann-json3-dev libbenchmark-dev
  libopencv-dev
  libgloo-dev   # Gloo's headers: torchkit/distributed.hpp's Gloo process groups (LibTorch links Gloo)
)
if [ "${TORCHKIT_LIBTORCH_CUDA:-0}" = 1 ]; then
  packages=("${packages[@]/#libtorch-dev/libtorch-cuda-dev}")
  packages=("${packages[@]/#libgloo-dev/libgloo-cuda-dev}")   # the CPU Gloo conflicts with it
fi
# shellcheck disable=SC2206  # a space-separated list on purpose
packages+=(${TORCHKIT_EXTRA_PACKAGES:-})
if [ "${TORCHKIT_GOLDEN:-0}" = 1 ]; then
  packages+=(python3-torch)   # only to regenerate the golden files in tests/golden
fi

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: everything is installed"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
echo "install-deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
