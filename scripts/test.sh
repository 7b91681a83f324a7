#!/usr/bin/env bash
# Test command of README.md: makes sure the build is there and current (same steps as
# scripts/setup.sh, without the demo), then runs the whole suite under ctest, which
# prints the pass/fail counts. Exits non-zero if anything fails. GPU tests skip
# themselves on a host without a GPU.
#
#   scripts/test.sh [extra ctest arguments, e.g. -L cpu or -R Cache]
#
# Environment: as scripts/setup.sh (SPATTN_BUILD_DIR, SPATTN_JOBS, ...), plus
#   SPATTN_TEST_JOBS   tests run in parallel (default: number of CPUs)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${SPATTN_BUILD_DIR:-build}
JOBS=${SPATTN_TEST_JOBS:-$(nproc 2>/dev/null || echo 2)}

scripts/setup.sh --no-demo

# Tests get their own kernel cache, so they neither read nor fill the user's.
export SPATTN_CACHE_DIR=${SPATTN_TEST_CACHE_DIR:-$PWD/$BUILD_DIR/test-kernel-cache}
echo "== test: ctest (-j$JOBS)"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" "$@"
