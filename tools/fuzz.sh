#!/usr/bin/env bash
# Builds torchkit's libFuzzer targets (fuzz/, clang) and runs each from its committed corpus
# (fuzz/corpus/<target>) and past findings (fuzz/regressions/<target>). Any crash, sanitizer
# report, leak, timeout or non-torchkit exception fails the run and leaves the input in
# <build>/findings/; once fixed, copy it into fuzz/regressions/<target>/ with a telling name.
#
#   bash tools/fuzz.sh                  CI mode: a fixed seed and a fixed number of runs per target
#                                       (about 35 s each here, never more than 60 s), from a fresh
#                                       working corpus: every run tries nearly the same inputs
#                                       (libFuzzer is not bit-for-bit repeatable, but close), so CI
#                                       does not wander into new territory; --explore does that
#   bash tools/fuzz.sh --explore [S]    looking for new findings: a random seed, S seconds a
#                                       target (default 300), keeping the working corpus
#   TORCHKIT_FUZZ_TARGETS="fuzz_lr_archive fuzz_one_hot" bash tools/fuzz.sh   (only these)
# In CI it runs in the Debian 13 root with clang 19 (LibTorch 1.13's headers do not compile as
# C++20 under Debian 12's clang 14):
#   bash tools/debian-root.sh trixie --cxx clang++ -- bash tools/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
explore=0
seconds=300
if [ "${1:-}" = --explore ]; then
  explore=1
  seconds=${2:-300}
fi
# CI mode: runs per target (about 35 s each on the 2-core development machine).
declare -A runs=(
  [fuzz_device_list]=1400000
  [fuzz_image_options]=800000
  [fuzz_lr_archive]=16000
  [fuzz_name_pattern]=300000
  [fuzz_one_hot]=550000
)
# clang with its runtime libraries (libFuzzer, the sanitizers, FuzzedDataProvider.h) and
# llvm-symbolizer for readable reports.
TORCHKIT_EXTRA_PACKAGES="${TORCHKIT_EXTRA_PACKAGES:-} clang libclang-rt-dev llvm" bash tools/install-deps.sh
build_dir=${TORCHKIT_FUZZ_BUILD_DIR:-${TORCHKIT_BUILD_DIR:-build}-fuzz}
CXX=${CXX:-clang++} TORCHKIT_BUILD_DIR=$build_dir bash tools/configure.sh -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DTORCHKIT_BUILD_FUZZERS=ON -DTORCHKIT_BUILD_TESTS=OFF -DTORCHKIT_BUILD_EXAMPLES=OFF \
  -DTORCHKIT_BUILD_BENCHMARKS=OFF -DTORCHKIT_INSTALL=OFF -DTORCHKIT_WERROR=ON
cmake --build "$build_dir" --parallel "$(nproc)"

suppressions=$(pwd)/tools/sanitizers
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export LSAN_OPTIONS=suppressions=$suppressions/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=suppressions=$suppressions/ubsan.supp:print_stacktrace=1:halt_on_error=1
mkdir -p "$build_dir/findings"
status=0
for target in fuzz/fuzz_*.cpp; do
  name=$(basename "$target" .cpp)
  if [ -n "${TORCHKIT_FUZZ_TARGETS:-}" ] && [[ " $TORCHKIT_FUZZ_TARGETS " != *" $name "* ]]; then
    continue
  fi
  work=$build_dir/corpus/$name
  if [ "$explore" = 1 ]; then
    mode=(-max_total_time="$seconds")
    echo "fuzz: $name for ${seconds} s"
  else
    rm -rf "$work"
    mode=(-seed=1 -runs="${runs[$name]:-100000}" -max_total_time=60)
    echo "fuzz: $name, ${runs[$name]:-100000} runs from seed 1"
  fi
  mkdir -p "$work" "fuzz/corpus/$name" "fuzz/regressions/$name"
  if ! "$build_dir/fuzz/$name" "${mode[@]}" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
      -artifact_prefix="$build_dir/findings/$name-" "$work" "fuzz/corpus/$name" "fuzz/regressions/$name" \
    > "$build_dir/findings/$name.log" 2>&1; then
    echo "fuzz: $name FOUND a problem:"
    tail -n 60 "$build_dir/findings/$name.log"
    status=1
  else
    grep -E "^stat::(number_of_executed_units|new_units_added)" "$build_dir/findings/$name.log" | tr '\n' ' '
    echo
  fi
done
exit "$status"
