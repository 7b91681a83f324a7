#!/usr/bin/env bash
# Runs the libFuzzer harnesses of tests/fuzz, each for SECONDS (default 60), starting
# from its seed corpus; prints the executions of each and exits non-zero on a finding.
#
#   scripts/fuzz.sh [SECONDS] [HARNESS...]        harnesses: pattern manifest entry archive
#
# The harnesses are built with clang (ASan, UBSan) into <build dir>/fuzz-clang by the
# main build (SPATTN_FUZZ, on when clang and libFuzzer are found). New inputs go to
# <build dir>/fuzz-corpus/<harness>, findings to <build dir>/fuzz-findings/<harness>.
#
# Environment: SPATTN_BUILD_DIR (default build), SPATTN_FUZZ_RUNS=N (stop each harness
# after N executions instead of at the time limit), SPATTN_FUZZ_NO_BUILD=1 (do not
# build first: the ctest tests Fuzz.run_* set it).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then seconds=$1; shift; fi
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(pattern manifest entry archive)
BUILD_DIR=${SPATTN_BUILD_DIR:-build}
case "$BUILD_DIR" in /*) build=$BUILD_DIR ;; *) build=$PWD/$BUILD_DIR ;; esac
bin=$build/fuzz-clang

if [ "${SPATTN_FUZZ_NO_BUILD:-0}" != 1 ]; then
  [ -f "$build/CMakeCache.txt" ] || scripts/setup.sh --no-demo
  cmake --build "$build" --target spattn_fuzzers
fi

declare -A max_len=([pattern]=4096 [manifest]=16384 [entry]=65536 [archive]=65536)
status=0
for h in "${harnesses[@]}"; do
  exe=$bin/fuzz_$h
  if [ ! -x "$exe" ]; then
    echo "fuzz.sh: $exe is missing (is clang with libFuzzer installed? see tests/fuzz/README.md)" >&2
    exit 2
  fi
  corpus=$build/fuzz-corpus/$h findings=$build/fuzz-findings/$h
  mkdir -p "$corpus" "$findings"
  args=(-max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len="${max_len[$h]:-65536}"
        -print_final_stats=1 -artifact_prefix="$findings/")
  [ -z "${SPATTN_FUZZ_RUNS:-}" ] || args+=(-runs="$SPATTN_FUZZ_RUNS")
  log=$findings/last-run.log
  rc=0
  "$exe" "${args[@]}" "$corpus" "tests/fuzz/corpus/$h" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  if [ "$rc" -eq 0 ]; then
    echo "== fuzz: $h: ${execs:-?} executions (${secs:-?}/s), no findings"
  else
    echo "== fuzz: $h: FINDING after ${execs:-?} executions (exit $rc); log $log, inputs in $findings" >&2
    grep -E "ERROR|SUMMARY|fuzz check failed|runtime error|terminate" "$log" | head -20 >&2 || true
    status=1
  fi
done
exit $status
