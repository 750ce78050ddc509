#!/usr/bin/env bash
# Runs a command on torchkit's work tree inside a Debian root of another suite, so that the
# project is built and tested against the LibTorch, {fmt}, OpenCV and compilers of that suite:
#
#   trixie       Debian 13: libtorch-dev 2.6, g++ 14, clang 19, fmt 10, OpenCV 4.10
#   sid          Debian unstable: the newest LibTorch, g++ and clang
#   trixie-cuda  Debian 13 with libtorch-cuda-dev 2.6 (contrib; CUDA 12 from non-free); compile and
#                link only (no GPU, and Debian's cuDNN installer cannot fetch its payload)
#
# usage: tools/debian-root.sh SUITE [--cxx g++|clang++] [--fresh] [--] [command ...]
#
# The root is created once with debootstrap (minbase, from Debian's own mirror) and cached
# outside the source tree in ${TORCHKIT_ROOTS:-/var/cache/torchkit-roots}/SUITE; its packages
# are installed by the project's own tools/install-deps.sh run inside it. On every call the
# tracked and untracked (not ignored) files of the work tree are copied to /work/torchkit in
# the root and the command (default: the README's test command, `bash tools/test.sh`) runs
# there as root with CXX set to the chosen compiler of that suite. The build directory
# (/work/build-<compiler>) and ccache's cache stay in the root between calls. /proc, /dev and
# /dev/pts are mounted for the command and unmounted on every exit path. Needs root.
# It prints the exact versions it tested. --fresh deletes the cached root first.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
}

# Everything runs from main(), which bash reads whole before running it: editing this file while
# a command runs in a root cannot change what the running script does.
main() {
[ $# -ge 1 ] || usage
suite=$1
shift
compiler=g++
fresh=0
while [ $# -gt 0 ]; do
  case $1 in
    --cxx) compiler=${2:?--cxx needs g++ or clang++}; shift 2 ;;
    --cxx=*) compiler=${1#--cxx=}; shift ;;
    --fresh) fresh=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) break ;;
  esac
done
command=("$@")
[ ${#command[@]} -gt 0 ] || command=(bash tools/test.sh)

case $suite in
  trixie|sid) debian_suite=$suite; components=main; cuda=0 ;;
  trixie-cuda) debian_suite=trixie; components=main,contrib,non-free; cuda=1 ;;
  *) echo "debian-root: unknown suite '$suite' (trixie, sid or trixie-cuda)" >&2; exit 2 ;;
esac
case $compiler in
  g++|clang++) ;;
  *) echo "debian-root: unknown compiler '$compiler' (g++ or clang++)" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  echo "debian-root: needs root (debootstrap, chroot and mounts)" >&2
  exit 2
fi

source_dir=$(cd "$(dirname "$0")/.." && pwd)
roots=${TORCHKIT_ROOTS:-/var/cache/torchkit-roots}
root=$roots/$suite
mirror=${TORCHKIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { echo "debian-root[$suite]: $*"; }

# --- mounts, undone on every exit path ---------------------------------------------------
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" 2>/dev/null || true
  done
  mounted=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

mount_into_root() {  # mount_into_root TARGET mount-arguments...
  local target=$root$1
  shift
  mkdir -p "$target"
  mount "$@" "$target"
  mounted+=("$target")
}

in_root() {
  chroot "$root" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive "$@"
}

# --- the root, created once --------------------------------------------------------------
if [ "$fresh" = 1 ] && [ -d "$root" ]; then
  log "deleting the cached root $root"
  rm -rf --one-file-system "$root"
fi
if [ ! -e "$root/.torchkit-root-ready" ]; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap
  fi
  rm -rf --one-file-system "$root.partial"
  mkdir -p "$roots"
  log "debootstrap --variant=minbase $debian_suite from $mirror (once; cached in $root)"
  debootstrap --variant=minbase --components="$components" "$debian_suite" "$root.partial" "$mirror"
  # An unstable suite's Release file may be older than its Valid-Until on a mirror snapshot:
  # accept it explicitly, for this root only.
  cat > "$root.partial/etc/apt/apt.conf.d/99torchkit" <<'EOF'
Acquire::Check-Valid-Until "false";
APT::Install-Recommends "false";
EOF
  rm -rf "$root"
  mv "$root.partial" "$root"
  touch "$root/.torchkit-root-ready"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

mount_into_root /proc -t proc proc
mount_into_root /dev --bind /dev
mount_into_root /dev/pts --bind /dev/pts

# --- the work tree -----------------------------------------------------------------------
work=$root/work/torchkit
log "copying the work tree to /work/torchkit"
rm -rf --one-file-system "$work"
mkdir -p "$work"
(cd "$source_dir" && git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - -cf -) | tar -xf - -C "$work"

# --- dependencies, through the project's own script -------------------------------------
extra_packages=()
if [ "$compiler" = clang++ ]; then
  extra_packages+=(clang)
fi
if [ "$cuda" = 1 ]; then
  # LibTorch's CMake package (Caffe2's cuda.cmake) needs the CUDA toolkit: nvcc and the headers.
  extra_packages+=(nvidia-cuda-toolkit)
fi
if [ "$cuda" = 1 ] && ! in_root dpkg-query -W -f='${Status}' nvidia-cudnn 2>/dev/null | grep -q "install ok installed"; then
  # libtorch-cuda-2.6 depends on nvidia-cudnn (contrib), an installer that downloads cuDNN from
  # NVIDIA when it is configured: that cannot work without the internet, and compiling and
  # linking torchkit needs none of cuDNN. A stand-in package satisfies the dependency.
  log "installing a stand-in nvidia-cudnn package (no cuDNN payload)"
  stand_in=$root/tmp/nvidia-cudnn-stand-in
  rm -rf "$stand_in"
  mkdir -p "$stand_in/DEBIAN"
  cat > "$stand_in/DEBIAN/control" <<'EOF'
Package: nvidia-cudnn
Version: 9.99.0~torchkit
Architecture: amd64
Maintainer: torchkit <torchkit@localhost>
Description: stand-in for the cuDNN installer (torchkit's compile-and-link check only)
EOF
  in_root dpkg-deb --build /tmp/nvidia-cudnn-stand-in /tmp/nvidia-cudnn-stand-in.deb >/dev/null
  in_root dpkg -i /tmp/nvidia-cudnn-stand-in.deb
fi
in_root env TORCHKIT_EXTRA_PACKAGES="${extra_packages[*]}" TORCHKIT_LIBTORCH_CUDA="$cuda" \
  bash /work/torchkit/tools/install-deps.sh

# --- versions ----------------------------------------------------------------------------
cxx_path=$(in_root sh -c "command -v $compiler")
libtorch_package=libtorch-dev
[ "$cuda" = 1 ] && libtorch_package=libtorch-cuda-dev
{
  echo "debian-root[$suite]: tested with"
  in_root sh -c '. /etc/os-release; echo "  system:   $PRETTY_NAME ($(cat /etc/debian_version))"'
  in_root dpkg-query -W -f='  LibTorch: ${Package} ${Version}\n' "$libtorch_package"
  echo "  compiler: $(in_root "$compiler" --version | head -n 1)"
  in_root dpkg-query -W -f='  {fmt}:    ${Package} ${Version}\n' libfmt-dev
  in_root dpkg-query -W -f='  OpenCV:   ${Package} ${Version}\n' libopencv-dev
  in_root dpkg-query -W -f='  CMake:    ${Package} ${Version}\n' cmake
}

# --- the command -------------------------------------------------------------------------
c_compiler=gcc
[ "$compiler" = clang++ ] && c_compiler=clang
log "running: ${command[*]} (CXX=$cxx_path)"
status=0
in_root env CXX="$cxx_path" CC="$c_compiler" CI="${CI:-}" \
  CCACHE_DIR=/work/ccache TORCHKIT_BUILD_DIR="/work/build-$compiler" \
  bash -c 'cd /work/torchkit && exec "$@"' debian-root "${command[@]}" || status=$?
log "command exited with $status"
exit "$status"
}

main "$@"
