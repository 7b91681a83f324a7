#!/usr/bin/env bash
# The one command for the GPU machine: configure and build with Ninja, show the GPU,
# run the GPU test label, run a short benchmark against the peers, print a table last.
# Full logs go to the directory given as $1 (default: $OUT, else /tmp/spattn-gpu-check).
#
#   scripts/gpu-check.sh [LOG_DIR] [--tests-only | --bench-only]
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${1:-${OUT:-/tmp/spattn-gpu-check}}
MODE=${2:-all}
mkdir -p "$LOGS"
export NCCL_NVLS_ENABLE=0            # never use NVLink multicast
export SPATTN_CACHE_DIR=${SPATTN_CACHE_DIR:-$PWD/build-gpu/kernel-cache}
BUILD=build-gpu
step() { echo "== $* ($(date +%T))"; }

step configure
cmake -S . -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release >"$LOGS/configure.log" 2>&1 \
  || { tail -40 "$LOGS/configure.log"; exit 1; }
step build
cmake --build $BUILD -j"$(nproc)" >"$LOGS/build.log" 2>&1 || { grep -E "error|FAILED" "$LOGS/build.log" | head -40; exit 1; }
step info
$BUILD/cli/spattn info | tee "$LOGS/info.txt"

status=0
if [ "$MODE" != "--bench-only" ]; then
  step "GPU tests"
  ctest --test-dir $BUILD -L gpu --output-on-failure -j2 --timeout 900 >"$LOGS/ctest-gpu.log" 2>&1 || status=1
  grep -E "tests passed|tests failed|Failed|\*\*\*" "$LOGS/ctest-gpu.log" | tail -25
  step "compute-sanitizer (memcheck, racecheck) on a representative subset"
  SUBSET='ForwardGpu.CrossAttentionGqaBatchAndTinyLengths:ForwardGpu.NeighborhoodGridsWithDilation'
  for tool in memcheck racecheck; do
    timeout 300 compute-sanitizer --tool $tool --error-exitcode 9 \
      $BUILD/tests/engine/spattn_tests_engine_gpu --gtest_filter="$SUBSET" >"$LOGS/sanitizer-$tool.log" 2>&1
    rc=$?; echo "$tool: exit $rc, $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOGS/sanitizer-$tool.log" | tail -1)"
    [ $rc -eq 0 ] || status=1
  done
fi
if [ "$MODE" != "--tests-only" ]; then
  step demo
  $BUILD/cli/spattn demo 2>&1 | tee "$LOGS/demo.txt" | grep -E "==|check|run:|compile:"
  step "JIT: cache hit to a launchable kernel"
  $BUILD/bench/jit_bench --benchmark_filter='CacheHitLaunchable' 2>&1 | tee "$LOGS/jit_bench.txt" | grep -E "CacheHit"
  step "first output (fresh processes)"
  $BUILD/bench/first_output_bench | tee "$LOGS/first_output.txt"
  $BUILD/bench/first_output_bench | tee -a "$LOGS/first_output.txt"
  step "forward benchmark (16k)"
  $BUILD/bench/forward_bench --benchmark_filter='/16384' 2>&1 | tee "$LOGS/forward_bench.txt" | grep -E "forward/"
  step "peer benchmark"
  SPATTN_LIB=$PWD/$BUILD/libspattn.so PYTHONUNBUFFERED=1 timeout 420 python3 -X faulthandler bench/compare_peers.py --quick \
    --json "$LOGS/peers.json" >"$LOGS/peers.txt" 2>"$LOGS/peers.err" || echo "peer benchmark failed: $(tail -3 "$LOGS/peers.err")"
  sed -n '/^spattn vs peers/,$p' "$LOGS/peers.txt"
fi
exit $status
