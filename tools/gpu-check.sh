#!/usr/bin/env bash
# gpu-check: one command for a machine with an NVIDIA GPU and no network. Configures torchkit
# against the LibTorch bundled with the pip `torch` package (2.x, CUDA), builds the tests,
# examples and benchmarks, runs them (benchmarks briefly), and prints a short report. It is also
# the check that torchkit compiles against LibTorch 2.x with TORCHKIT_WITH_CUDA=1. Finishes
# within TORCHKIT_GPU_CHECK_BUDGET seconds (default 480): the build gets what is left after a
# reserve for running, and whatever was built is run.
#
#   bash tools/gpu-check.sh                          # on the GPU machine
#   bash tools/gpu-check.sh --stage-deps DIR         # here: copy the header-only dependencies
#                                                    # (doctest, nlohmann/json, fmt) to DIR
#
# Dependencies without network: LibTorch comes from pip torch (its prefix is
# `python3 -c 'import torch; print(torch.utils.cmake_prefix_path)'`). fmt is used header-only
# (FMT_HEADER_ONLY), preferably the copy pip torch ships in torch/include, which the compiler
# finds first anyway; a compiled libfmt could differ in version and in C++ ABI (pip torch may
# use _GLIBCXX_USE_CXX11_ABI=0). doctest and nlohmann/json are header-only: they are taken from
# the system, or from TORCHKIT_DEPS_DIR (default: build-gpu-deps/ in the repository, made with
# --stage-deps; it is git-ignored, so carry it to the GPU machine). Without them the unit tests
# are skipped and the examples still run. Google Benchmark is compiled; without an installed
# one the benchmarks are skipped. Nothing is downloaded. OpenCV is disabled when pip torch uses
# the pre-C++11 ABI (its std::string API would not link).
#
# Environment:
#   TORCHKIT_PYTHON            the Python with torch (default: the first of python3,
#                              /usr/bin/python3, python that imports torch)
#   TORCHKIT_TORCH_PREFIX      use this CMake prefix for Torch instead of asking Python (e.g. /usr
#                              for Debian's libtorch-dev, to try the flow on a machine without GPU)
#   TORCHKIT_GPU_BUILD_DIR     build directory (default build-gpu)
#   TORCHKIT_DEPS_DIR          header-only dependencies (default build-gpu-deps)
#   TORCHKIT_GPU_CHECK_BUDGET  seconds for everything (default 480)
#   TORCHKIT_GPU_CHECK_TARGETS build only these targets (space-separated), for a quick try
#   TORCHKIT_JOBS              parallel build jobs (default: number of CPUs)
# Exit status: 0 when everything that was built and run passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$(pwd)

# --- --stage-deps: run where the dependencies are installed --------------------------------
if [ "${1:-}" = "--stage-deps" ]; then
  target=${2:-build-gpu-deps}
  mkdir -p "$target" || exit 1
  staged=()
  for header_dir in doctest nlohmann fmt; do
    for include in /usr/local/include /usr/include; do
      if [ -d "$include/$header_dir" ]; then
        rm -rf "${target:?}/$header_dir"
        cp -r "$include/$header_dir" "$target/" && staged+=("$header_dir ($include)")
        break
      fi
    done
  done
  echo "gpu-check: staged into $target: ${staged[*]:-nothing}"
  echo "gpu-check: carry '$target' to the GPU machine (it is git-ignored); TORCHKIT_DEPS_DIR=$target"
  exit 0
fi

started=$SECONDS
budget=${TORCHKIT_GPU_CHECK_BUDGET:-480}
build_dir=${TORCHKIT_GPU_BUILD_DIR:-build-gpu}
deps_dir=${TORCHKIT_DEPS_DIR:-build-gpu-deps}
jobs=${TORCHKIT_JOBS:-$(nproc 2>/dev/null || echo 4)}
case "$deps_dir" in /*) ;; *) deps_dir="$root/$deps_dir" ;; esac
mkdir -p "$build_dir" || exit 1
log_dir="$root/$build_dir/gpu-check-logs"
mkdir -p "$log_dir"

remaining() { echo $((budget - (SECONDS - started))); }
say() { echo "gpu-check: $*"; }

report=()     # lines of the final report
failures=0
note() { report+=("$1"); }
fail() { report+=("FAIL  $1"); failures=$((failures + 1)); }

# --- tools -----------------------------------------------------------------------------------
if ! command -v nvcc >/dev/null 2>&1; then
  for cuda_bin in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    if [ -x "$cuda_bin/nvcc" ]; then
      export PATH="$cuda_bin:$PATH"
      break
    fi
  done
fi
generator=(-G Ninja)
command -v ninja >/dev/null 2>&1 || generator=()
launcher=()
command -v ccache >/dev/null 2>&1 && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
if ! command -v cmake >/dev/null 2>&1; then
  say "cmake not found"; exit 1
fi
note "cmake       $(cmake --version | head -1 | awk '{print $3}'), $( [ ${#generator[@]} -gt 0 ] && echo ninja || echo make), ${jobs} jobs"
note "compiler    $(${CXX:-c++} --version 2>/dev/null | head -1)"
if command -v nvcc >/dev/null 2>&1; then
  note "nvcc        $(nvcc --version | grep -o 'release [0-9.]*' | head -1)"
else
  note "nvcc        not found (find_package(Torch) needs the CUDA toolkit for a CUDA LibTorch)"
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  while IFS= read -r gpu; do note "gpu         $gpu"; done < <(nvidia-smi -L 2>/dev/null | head -8)
else
  note "gpu         nvidia-smi not found"
fi

# --- LibTorch --------------------------------------------------------------------------------
torch_prefix=${TORCHKIT_TORCH_PREFIX:-}
torch_include=""
cxx11_abi=""
if [ -z "$torch_prefix" ]; then
  python=""
  for candidate in ${TORCHKIT_PYTHON:-} python3 /usr/bin/python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import torch' >/dev/null 2>&1; then
      python=$candidate
      break
    fi
  done
  if [ -z "$python" ]; then
    say "no Python with torch found (set TORCHKIT_PYTHON, or TORCHKIT_TORCH_PREFIX for a LibTorch)"
    exit 1
  fi
  torch_info=$("$python" - <<'EOF'
import os, torch
print(torch.utils.cmake_prefix_path)
print(os.path.join(os.path.dirname(torch.__file__), "include"))
print(torch.__version__)
print(torch.version.cuda or "none")
print(int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)))
print(torch.cuda.is_available(), torch.cuda.device_count())
EOF
  ) || { say "asking $python about torch failed"; exit 1; }
  torch_prefix=$(sed -n 1p <<<"$torch_info")
  torch_include=$(sed -n 2p <<<"$torch_info")
  cxx11_abi=$(sed -n 5p <<<"$torch_info")
  note "torch       $(sed -n 3p <<<"$torch_info") (CUDA $(sed -n 4p <<<"$torch_info"), C++11 ABI $cxx11_abi) from $python"
  note "python sees CUDA available / devices: $(sed -n 6p <<<"$torch_info")"
else
  torch_include="$torch_prefix/include"
  note "torch       prefix $torch_prefix (TORCHKIT_TORCH_PREFIX)"
fi
torch_config=$(find "$torch_prefix" -maxdepth 5 -name TorchConfig.cmake 2>/dev/null | head -1)
if [ -z "$torch_config" ]; then
  say "no TorchConfig.cmake under $torch_prefix"
  exit 1
fi

# --- header-only dependencies, as CMake packages of our own (no network, no ABI issue) -------
packages_dir="$root/$build_dir/gpu-check-packages"
rm -rf "$packages_dir"
mkdir -p "$packages_dir"
find_header() {  # find_header <relative path> <dirs...>: the first dir that has it
  local relative=$1
  shift
  local dir
  for dir in "$@"; do
    if [ -n "$dir" ] && [ -f "$dir/$relative" ]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}
write_package() {  # write_package <package> <target> <include dir> <version> [compile definition]
  local package=$1 target=$2 include=$3 version=$4 definition=${5:-}
  mkdir -p "$packages_dir/$package"
  {
    echo "# Written by tools/gpu-check.sh: $package as a header-only INTERFACE target."
    echo "if(NOT TARGET $target)"
    echo "  add_library($target INTERFACE IMPORTED)"
    echo "  set_target_properties($target PROPERTIES INTERFACE_INCLUDE_DIRECTORIES \"$include\")"
    if [ -n "$definition" ]; then
      echo "  set_property(TARGET $target PROPERTY INTERFACE_COMPILE_DEFINITIONS $definition)"
    fi
    echo "endif()"
    echo "set(${package}_FOUND TRUE)"
  } >"$packages_dir/$package/${package}Config.cmake"
  cat >"$packages_dir/$package/${package}ConfigVersion.cmake" <<EOF
set(PACKAGE_VERSION "$version")
if(PACKAGE_FIND_VERSION AND PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
endif()
EOF
  echo "-D${package}_DIR=$packages_dir/$package"
}
header_dirs=("$deps_dir" /usr/local/include /usr/include)
cmake_args=()

if fmt_include=$(find_header fmt/format.h "$torch_include" "${header_dirs[@]}"); then
  fmt_version=$(grep -m1 -o 'define FMT_VERSION [0-9]*' "$fmt_include/fmt/"{base,core}.h 2>/dev/null | grep -o '[0-9]*$' | head -1)
  cmake_args+=("$(write_package fmt fmt::fmt "$fmt_include" "${fmt_version:-0}" FMT_HEADER_ONLY=1)")
  note "fmt         header-only from $fmt_include (FMT_VERSION ${fmt_version:-?})"
else
  say "fmt headers not found (looked in $torch_include ${header_dirs[*]}); torchkit needs them"
  say "stage them here with: bash tools/gpu-check.sh --stage-deps build-gpu-deps"
  exit 1
fi

build_tests=ON
if doctest_include=$(find_header doctest/doctest.h "${header_dirs[@]}"); then
  cmake_args+=("$(write_package doctest doctest::doctest "$doctest_include" 2.4.99)")
  note "doctest     $doctest_include"
else
  build_tests=OFF
  note "doctest     NOT FOUND: unit tests skipped (stage it: --stage-deps)"
fi
if json_include=$(find_header nlohmann/json.hpp "${header_dirs[@]}"); then
  json_major=$(grep -m1 -o 'define NLOHMANN_JSON_VERSION_MAJOR [0-9]*' "$json_include/nlohmann/json.hpp" | grep -o '[0-9]*$')
  json_minor=$(grep -m1 -o 'define NLOHMANN_JSON_VERSION_MINOR [0-9]*' "$json_include/nlohmann/json.hpp" | grep -o '[0-9]*$')
  cmake_args+=("$(write_package nlohmann_json nlohmann_json::nlohmann_json "$json_include" "${json_major:-3}.${json_minor:-0}")")
  note "nlohmann    $json_include"
else
  build_tests=OFF
  note "nlohmann    NOT FOUND: unit tests skipped (stage it: --stage-deps)"
fi

build_benchmarks=OFF
benchmark_config=$(find /usr/local/lib* /usr/lib* /usr/share /opt -maxdepth 4 -name benchmarkConfig.cmake 2>/dev/null | head -1)
if [ -n "$benchmark_config" ]; then
  build_benchmarks=ON
  cmake_args+=("-Dbenchmark_DIR=$(dirname "$benchmark_config")")
  note "benchmark   $(dirname "$benchmark_config")$( [ "$cxx11_abi" = 0 ] && echo ' (torch uses the pre-C++11 ABI: may not link)')"
else
  note "benchmark   NOT FOUND: benchmarks skipped (Google Benchmark is compiled; nothing is downloaded)"
fi
if [ "$cxx11_abi" = 0 ]; then
  cmake_args+=(-DCMAKE_DISABLE_FIND_PACKAGE_OpenCV=ON)
  note "opencv      disabled: torch uses _GLIBCXX_USE_CXX11_ABI=0, the system OpenCV the C++11 ABI"
fi

# --- configure ---------------------------------------------------------------------------------
say "configuring $build_dir against $torch_prefix"
# --no-as-needed: keep libtorch_cuda linked although no symbol of it is named, so that LibTorch's
# CUDA hooks register (otherwise torch::cuda::is_available() is false in C++).
if ! cmake -S . -B "$build_dir" "${generator[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=Release \
    "-DCMAKE_PREFIX_PATH=$torch_prefix" -DCMAKE_EXE_LINKER_FLAGS=-Wl,--no-as-needed \
    -DTORCHKIT_BUILD_TESTS=$build_tests -DTORCHKIT_BUILD_EXAMPLES=ON \
    -DTORCHKIT_BUILD_BENCHMARKS=$build_benchmarks -DTORCHKIT_WERROR=OFF \
    "${cmake_args[@]}" >"$log_dir/configure.log" 2>&1; then
  tail -30 "$log_dir/configure.log"
  say "configure failed (log: $log_dir/configure.log)"
  exit 1
fi
# Programs the configuration left out on purpose (e.g. OpenCV not found) are not "not built".
not_configured=" $(grep -o '[A-Za-z0-9_]* is not built' "$log_dir/configure.log" | awk '{print $1}' | tr '\n' ' ') "
if grep -rqs "TORCHKIT_WITH_CUDA=1" "$build_dir/build.ninja" "$build_dir"/CMakeFiles/*.dir/flags.make \
    "$build_dir"/*/CMakeFiles/*.dir/flags.make 2>/dev/null; then
  note "cuda        TORCHKIT_WITH_CUDA=1 (Torch was built with CUDA)"
else
  note "cuda        TORCHKIT_WITH_CUDA is 0: this Torch has no CUDA, the CUDA code paths are not compiled"
fi

# --- build (keeps going past failures; leaves time to run) --------------------------------------
reserve=$((budget / 4))
build_limit=$(( $(remaining) - reserve ))
[ "$build_limit" -lt 60 ] && build_limit=60
targets=()
if [ -n "${TORCHKIT_GPU_CHECK_TARGETS:-}" ]; then
  read -r -a selected <<<"$TORCHKIT_GPU_CHECK_TARGETS"
  targets=(--target "${selected[@]}")
fi
keep_going=(-k 0)
[ ${#generator[@]} -eq 0 ] && keep_going=(-k)
say "building (up to ${build_limit}s, $jobs jobs)"
timeout "$build_limit" cmake --build "$build_dir" --parallel "$jobs" "${targets[@]}" -- "${keep_going[@]}" \
  >"$log_dir/build.log" 2>&1
build_status=$?
failed_objects=$(grep -c '^FAILED:' "$log_dir/build.log")
own_warnings=$(grep -E 'include/torchkit/.*warning:' "$log_dir/build.log" | sort -u | wc -l)
if [ "$build_status" -eq 124 ]; then
  fail "build       stopped after ${build_limit}s (the budget); running what was built"
elif [ "$build_status" -ne 0 ]; then
  fail "build       $failed_objects step(s) failed (log: $log_dir/build.log):"
  while IFS= read -r line; do report+=("              $line"); done < <(grep '^FAILED:' "$log_dir/build.log" | cut -c1-150 | head -12)
  while IFS= read -r line; do report+=("              $line"); done < <(grep -E 'error' "$log_dir/build.log" | grep -v '^FAILED' | cut -c1-200 | head -12)
else
  note "build       ok"
fi
note "warnings    $own_warnings distinct warning(s) in include/torchkit"

# --- run ---------------------------------------------------------------------------------------
run_limit() {  # seconds one program may take: at most $1, at least 10, within the budget
  local left
  left=$(( $(remaining) - 5 ))
  [ "$left" -gt "$1" ] && left=$1
  [ "$left" -lt 10 ] && left=10
  echo "$left"
}
summarise_runs() {  # summarise_runs <kind> <ok> <failed names> <not built>
  local kind=$1 ok=$2 failed=$3 missing=$4
  if [ -n "$failed" ]; then
    fail "$(printf '%-11s' "$kind") $ok ok; failed:$failed"
  else
    note "$(printf '%-11s' "$kind") $ok ok"
  fi
  [ -n "$missing" ] && fail "$(printf '%-11s' "$kind") not built:$missing"
  return 0
}

# Unit tests: each test binary directly (ctest would also run consumer and packaging checks,
# which configure projects of their own and do not fit the budget).
if [ "$build_tests" = ON ]; then
  ok=0; failed=""; missing=""
  for source in tests/test_*.cpp; do
    name=$(basename "$source" .cpp)
    [ "$name" = test_main ] && continue
    program="$build_dir/tests/$name"
    if [ ! -x "$program" ]; then
      if [ -z "${TORCHKIT_GPU_CHECK_TARGETS:-}" ] || [[ " ${TORCHKIT_GPU_CHECK_TARGETS} " == *" $name "* ]]; then
        [[ "$not_configured" == *" $name "* ]] && continue
        missing+=" $name"
      fi
      continue
    fi
    if (cd "$build_dir/tests" && timeout "$(run_limit 120)" "./$name" >"$log_dir/$name.log" 2>&1); then
      ok=$((ok + 1))
    else
      failed+=" $name"
      while IFS= read -r line; do report+=("              $name: $line"); done < <(grep -E 'ERROR|FATAL|error' "$log_dir/$name.log" | cut -c1-200 | head -6)
    fi
  done
  summarise_runs tests "$ok" "$failed" "$missing"
  if [ -f "$log_dir/test_memory.log" ]; then
    while IFS= read -r line; do note "memory      $line"; done < <(grep -o 'reserved: .*' "$log_dir/test_memory.log" | head -2)
  fi
else
  note "tests       skipped (doctest or nlohmann/json missing)"
fi

# Examples, each directly (also when the tests are off).
ok=0; failed=""; missing=""
for source in examples/[0-9][0-9]_*.cpp examples/demo.cpp; do
  [ -f "$source" ] || continue
  name=$(basename "$source" .cpp)
  program="$build_dir/examples/$name"
  if [ ! -x "$program" ]; then
    if [ -z "${TORCHKIT_GPU_CHECK_TARGETS:-}" ] || [[ " ${TORCHKIT_GPU_CHECK_TARGETS} " == *" $name "* ]]; then
      [[ "$not_configured" == *" $name "* ]] && continue
      missing+=" $name"
    fi
    continue
  fi
  arguments=()
  [ "$name" = demo ] && arguments=(--quick)
  if (cd "$build_dir/examples" && timeout "$(run_limit 90)" "./$name" "${arguments[@]}" >"$log_dir/$name.log" 2>&1); then
    ok=$((ok + 1))
  else
    failed+=" $name"
    while IFS= read -r line; do report+=("              $name: $line"); done < <(tail -3 "$log_dir/$name.log" | cut -c1-200)
  fi
done
summarise_runs examples "$ok" "$failed" "$missing"
if [ -f "$log_dir/06_no_grad_eval.log" ]; then
  while IFS= read -r line; do note "example 06  $line"; done < <(grep -E '^device:|CUDA memory' "$log_dir/06_no_grad_eval.log")
fi
if [ -f "$log_dir/01_visible_devices.log" ]; then
  while IFS= read -r line; do note "example 01  ${line:0:160}"; done < <(grep -E '^best device|after best_device' "$log_dir/01_visible_devices.log")
fi

# Benchmarks: briefly (plain-number min_time works with Google Benchmark 1.7 and 1.8+).
if [ "$build_benchmarks" = ON ]; then
  ok=0; failed=""; missing=""
  for source in bench/*_bench.cpp; do
    [ -f "$source" ] || continue
    name=$(basename "$source" .cpp)
    program="$build_dir/bench/$name"
    if [ ! -x "$program" ]; then
      if [ -z "${TORCHKIT_GPU_CHECK_TARGETS:-}" ] || [[ " ${TORCHKIT_GPU_CHECK_TARGETS} " == *" $name "* ]]; then
        missing+=" $name"
      fi
      continue
    fi
    if [ "$(remaining)" -lt 15 ]; then
      failed+=" $name(no time left)"
      continue
    fi
    if timeout "$(run_limit 45)" "$program" --benchmark_min_time=0.02 >"$log_dir/$name.log" 2>&1; then
      ok=$((ok + 1))
    else
      failed+=" $name"
    fi
  done
  summarise_runs benchmarks "$ok" "$failed" "$missing"
else
  note "benchmarks  skipped (Google Benchmark not installed)"
fi

# --- report ------------------------------------------------------------------------------------
echo
echo "================ torchkit gpu-check report ================"
for line in "${report[@]}"; do echo "$line"; done
echo "time        $((SECONDS - started))s of ${budget}s; logs in $log_dir"
if [ "$failures" -eq 0 ]; then
  echo "result      PASS"
  exit 0
fi
echo "result      FAIL ($failures)"
exit 1
