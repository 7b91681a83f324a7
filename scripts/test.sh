#!/usr/bin/env bash
# Test command of README.md: makes sure the build is there and current (same steps as
# scripts/setup.sh, without the demo), then runs the whole suite under ctest, which
# prints the pass/fail counts. Exits non-zero if anything fails. GPU tests skip
# themselves on a host without a GPU.
#
#   scripts/test.sh [--sanitize] [extra ctest arguments, e.g. -L cpu or -R Cache]
#
# --sanitize builds with AddressSanitizer and UBSan (SPATTN_SANITIZE) into its own build
# directory (default build-sanitize; benchmarks and the libFuzzer build left out) and
# runs the CPU tests there (-L cpu; the timed fuzz runs and the installed-package tests
# left out).
#
# Environment: as scripts/setup.sh (SPATTN_BUILD_DIR, SPATTN_JOBS, ...), plus
#   SPATTN_TEST_JOBS   tests run in parallel (default: number of CPUs; 2 on a GPU host)
#   SPATTN_TEST_CACHE_DIR  kernel cache of the tests (default: <build dir>/test-kernel-cache)
set -euo pipefail
cd "$(dirname "$0")/.."
sanitize=0
if [ "${1:-}" = --sanitize ]; then
  sanitize=1
  shift
fi
if [ "$sanitize" = 1 ]; then
  BUILD_DIR=${SPATTN_BUILD_DIR:-build-sanitize}
else
  BUILD_DIR=${SPATTN_BUILD_DIR:-build}
fi
# With a GPU, at most two tests at a time: GPU tests share the one device (and time it).
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  JOBS=${SPATTN_TEST_JOBS:-2}
else
  JOBS=${SPATTN_TEST_JOBS:-$(nproc 2>/dev/null || echo 2)}
fi

if [ "$sanitize" = 1 ]; then
  # The same configure as setup.sh (which it runs for the dependencies), plus the
  # sanitizers; a debug build keeps the reports readable.
  scripts/setup.sh --deps-only
  args=(-S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSPATTN_SANITIZE=ON -DSPATTN_BUILD_BENCH=OFF
        -DSPATTN_FUZZ=OFF)
  if ! command -v nvcc >/dev/null; then
    cuda=${CUDA_HOME:-${CUDA_PATH:-/usr/local/cuda}}
    [ -d "$cuda" ] && args+=(-DCUDAToolkit_ROOT="$cuda")
  fi
  if command -v ccache >/dev/null; then
    args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
  fi
  echo "== test: configure and build with ASan and UBSan ($BUILD_DIR)"
  cmake "${args[@]}"
  cmake --build "$BUILD_DIR" -j "${SPATTN_JOBS:-$(nproc 2>/dev/null || echo 2)}"
  # handle_segv=0: the autotuner's tests crash worker processes on purpose and check the
  # signal (a real crash still fails its test). UBSan findings fail the test that
  # triggers them. The installed-package tests are left out: a sanitized library
  # cannot be loaded by a consumer built without the sanitizers.
  export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:handle_segv=0:strict_string_checks=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  set -- -L cpu -E '^(Fuzz\.run_|install\.)' "$@"
else
  scripts/setup.sh --no-demo
fi

# Tests get their own kernel cache, so they neither read nor fill the user's.
case "$BUILD_DIR" in /*) build_path=$BUILD_DIR ;; *) build_path=$PWD/$BUILD_DIR ;; esac
export SPATTN_CACHE_DIR=${SPATTN_TEST_CACHE_DIR:-$build_path/test-kernel-cache}
echo "== test: ctest (-j$JOBS)"
ctest --test-dir "$BUILD_DIR" --output-on-failure --no-tests=error -j "$JOBS" "$@"
