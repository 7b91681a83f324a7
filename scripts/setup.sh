#!/usr/bin/env bash
# Set-up command of README.md: installs the Debian/Ubuntu packages spattn builds
# against (only those that are missing, and only where apt-get can run), configures
# and builds with Ninja, then runs the main job, `spattn demo`.
#
#   scripts/setup.sh [--no-demo] [--deps-only]
#
# Environment:
#   SPATTN_BUILD_DIR   build directory (default: build)
#   SPATTN_BUILD_TYPE  CMake build type (default: Release)
#   SPATTN_JOBS        parallel compile jobs (default: number of CPUs)
#   CUDA_HOME          CUDA toolkit, when nvcc is not on PATH (default: /usr/local/cuda)
#   SPATTN_NO_APT=1    never call apt-get (report missing packages and go on)
#
# On the GPU machine every package is already there: no apt-get call is made.
set -euo pipefail
cd "$(dirname "$0")/.."

demo=1
build=1
for arg in "$@"; do
  case "$arg" in
    --no-demo) demo=0 ;;
    --deps-only) build=0; demo=0 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

BUILD_DIR=${SPATTN_BUILD_DIR:-build}
BUILD_TYPE=${SPATTN_BUILD_TYPE:-Release}
JOBS=${SPATTN_JOBS:-$(nproc 2>/dev/null || echo 2)}
say() { echo "== setup: $*"; }

# --- 1. dependencies -------------------------------------------------------------------
# Each package with a probe that finds it however it was installed (a distribution
# package, pip's cmake, a toolchain from elsewhere): apt-get runs only for real gaps.
have_header() {
  local h
  for h in "$@"; do
    [ -e "/usr/include/$h" ] || [ -e "/usr/local/include/$h" ] && return 0
  done
  return 1
}
probe() {
  case "$1" in
    cmake) command -v cmake >/dev/null ;;
    g++) command -v g++ >/dev/null || command -v c++ >/dev/null ;;
    ninja-build) command -v ninja >/dev/null ;;
    ccache) command -v ccache >/dev/null ;;
    libfmt-dev) have_header fmt/format.h ;;
    libspdlog-dev) have_header spdlog/spdlog.h ;;
    libcli11-dev) have_header CLI/CLI.hpp ;;
    libgtest-dev) have_header gtest/gtest.h ;;
    libbenchmark-dev) have_header benchmark/benchmark.h ;;
    nlohmann-json3-dev) have_header nlohmann/json.hpp ;;
    libssl-dev) have_header openssl/sha.h openssl/evp.h ;;
    *) return 1 ;;
  esac
}
REQUIRED="cmake g++ ninja-build libfmt-dev libspdlog-dev libcli11-dev libgtest-dev libbenchmark-dev nlohmann-json3-dev libssl-dev"
OPTIONAL="ccache"   # installed alongside when apt-get runs anyway; never a reason to run it

missing=()
for p in $REQUIRED; do probe "$p" || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then
  say "dependencies present"
else
  want=("${missing[@]}")
  for p in $OPTIONAL; do probe "$p" || want+=("$p"); done
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=$(command -v sudo || true)
  if [ "${SPATTN_NO_APT:-0}" = 1 ]; then
    echo "setup: missing packages: ${missing[*]} (SPATTN_NO_APT=1: not installing them)" >&2
  elif ! command -v apt-get >/dev/null; then
    echo "setup: missing packages: ${missing[*]} (no apt-get here; install them another way)" >&2
  elif [ "$(id -u)" -ne 0 ] && [ -z "$sudo" ]; then
    echo "setup: missing packages: ${missing[*]} (not root and no sudo: ask an administrator" \
         "to run 'apt-get install ${want[*]}')" >&2
  else
    say "installing ${want[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -o Acquire::Retries=1 -o Acquire::http::Timeout=20 \
      || echo "setup: apt-get update failed; trying the install with the current package lists" >&2
    $sudo apt-get install -y --no-install-recommends "${want[@]}" \
      || echo "setup: apt-get install failed; the configure step below says what is still missing" >&2
  fi
fi
[ "$build" = 1 ] || exit 0

# --- 2. configure and build --------------------------------------------------------------
cmake_args=(-S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="$BUILD_TYPE")
if ! command -v nvcc >/dev/null; then
  cuda=${CUDA_HOME:-${CUDA_PATH:-/usr/local/cuda}}
  [ -d "$cuda" ] && cmake_args+=(-DCUDAToolkit_ROOT="$cuda")
fi
if command -v ccache >/dev/null; then
  cmake_args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  # Paths below the checkout are hashed relative to it: clones elsewhere share the cache.
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
fi
# A build directory made by another generator cannot be reused with Ninja.
if [ -f "$BUILD_DIR/CMakeCache.txt" ] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$BUILD_DIR/CMakeCache.txt"; then
  echo "setup: $BUILD_DIR was configured with another generator; use another SPATTN_BUILD_DIR or remove it" >&2
  exit 1
fi
say "configure ($BUILD_DIR, $BUILD_TYPE)"
cmake "${cmake_args[@]}"
say "build (-j$JOBS)"
cmake --build "$BUILD_DIR" -j "$JOBS"

# SASS tools for the test that reads the Hopper kernel's instructions: the toolkit's
# cuobjdump, else NVIDIA's cuobjdump/nvdisasm wheels from PyPI into the build tree.
cuda_bin=$(dirname "$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")")
if [ ! -x "$cuda_bin/cuobjdump" ] && ! find "$BUILD_DIR/tools" -name cuobjdump 2>/dev/null | grep -q . \
   && command -v python3 >/dev/null; then
  say "fetching cuobjdump and nvdisasm into $BUILD_DIR/tools (the toolkit has none)"
  python3 -m pip install -q --disable-pip-version-check --target "$BUILD_DIR/tools" \
    nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm \
    || echo "setup: could not fetch cuobjdump; the SASS test will skip" >&2
fi

# --- 3. the main job -------------------------------------------------------------------
if [ "$demo" = 1 ]; then
  say "spattn demo"
  "$BUILD_DIR/cli/spattn" demo
fi
