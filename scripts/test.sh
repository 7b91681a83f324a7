#!/usr/bin/env bash
# Test command of README.md: makes sure the build is there and current (same steps as
# scripts/setup.sh, without the demo), then runs the whole suite under ctest, which
# prints the pass/fail counts. Exits non-zero if anything fails. GPU tests skip
# themselves on a host without a GPU.
#
#   scripts/test.sh [extra ctest arguments, e.g. -L cpu or -R Cache]
#
# Environment: as scripts/setup.sh (SPATTN_BUILD_DIR, SPATTN_JOBS, ...), plus
#   SPATTN_TEST_JOBS   tests run in parallel (default: number of CPUs; 2 on a GPU host)
#   SPATTN_TEST_CACHE_DIR  kernel cache of the tests (default: <build dir>/test-kernel-cache)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${SPATTN_BUILD_DIR:-build}
# With a GPU, at most two tests at a time: GPU tests share the one device (and time it).
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  JOBS=${SPATTN_TEST_JOBS:-2}
else
  JOBS=${SPATTN_TEST_JOBS:-$(nproc 2>/dev/null || echo 2)}
fi

scripts/setup.sh --no-demo

# Tests get their own kernel cache, so they neither read nor fill the user's.
case "$BUILD_DIR" in /*) build_path=$BUILD_DIR ;; *) build_path=$PWD/$BUILD_DIR ;; esac
export SPATTN_CACHE_DIR=${SPATTN_TEST_CACHE_DIR:-$build_path/test-kernel-cache}
echo "== test: ctest (-j$JOBS)"
ctest --test-dir "$BUILD_DIR" --output-on-failure --no-tests=error -j "$JOBS" "$@"
