#!/usr/bin/env bash
# The one command for the GPU machine: configure and build with Ninja, show the GPU,
# run the GPU test label, run short benchmarks against the peers (forward, then the
# backward pass), print the tables last.
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

# Peers (FlashAttention-4, FlexAttention's FLASH backend): the wheels of ../shared/peers,
# copied into an ignored .peers/ of the checkout; the device tool carries .peers/a in one
# call and .peers/b in the next (they exceed one call together), so parts accumulate in
# /tmp/peers and are installed into /tmp/site once both are there.
mkdir -p /tmp/peers
for part in .peers/a .peers/b; do [ -d "$part" ] && cp -n "$part"/* /tmp/peers/ 2>/dev/null; done
if [ -f /tmp/peers/cu13.part.aa ] && [ -f /tmp/peers/cu13.part.ab ] && [ ! -d /tmp/site/flash_attn ]; then
  step "installing peer wheels into /tmp/site"
  whl=/tmp/nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
  cat /tmp/peers/cu13.part.aa /tmp/peers/cu13.part.ab > $whl
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/peers/*.whl $whl \
    > "$LOGS/peers-install.log" 2>&1 || tail -3 "$LOGS/peers-install.log"
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:${PYTHONPATH:-}

status=0
if [ "$MODE" != "--bench-only" ]; then
  step "GPU tests"
  ctest --test-dir $BUILD -L gpu --output-on-failure -j2 --timeout 900 >"$LOGS/ctest-gpu.log" 2>&1 || status=1
  grep -E "tests passed|tests failed|Failed|\*\*\*" "$LOGS/ctest-gpu.log" | tail -25
  step "compute-sanitizer (memcheck, racecheck, synccheck) on a representative subset of both families, forward and the sm90 backward (inline and copied rows)"
  SUBSET='*CrossAttentionGqaBatchAndTinyLengths/*:*NeighborhoodGridsWithDilation/*:*BackwardGpu.GqaMqa*/sm90:*BackwardGpu.GqaMqa*/sm90_copy'
  for tool in memcheck racecheck synccheck; do
    timeout 300 compute-sanitizer --tool $tool --error-exitcode 9 \
      $BUILD/tests/engine/spattn_tests_engine_gpu --gtest_filter="$SUBSET" >"$LOGS/sanitizer-$tool.log" 2>&1
    rc=$?; echo "$tool: exit $rc, $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOGS/sanitizer-$tool.log" | tail -1)"
    [ $rc -eq 0 ] || status=1
  done
  # Ring attention's loopback ranks (sub-rectangle plans, transfers, the 16-bit part merge).
  for tool in memcheck racecheck; do
    timeout 300 compute-sanitizer --tool $tool --error-exitcode 9 $BUILD/tests/dist/spattn_tests_dist_gpu \
      --gtest_filter='RingLoopbackGpu.SparsePatternsSkipShards:RingLoopbackGpu.RepeatedForwardOnOneRing' \
      >"$LOGS/sanitizer-ring-$tool.log" 2>&1
    rc=$?; echo "ring $tool: exit $rc, $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOGS/sanitizer-ring-$tool.log" | tail -1)"
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
  step "peer benchmark"
  # The issue's cases, most important first; rows are kept as they come, so a run cut
  # short by the timeout still prints what it measured.
  RUNS=dense@16384,causal@16384,window@65536,causal_window@65536,global_local@65536,longnet@65536,strided@65536,dense@65536,causal@65536,window@16384
  rm -f "$LOGS/peers.jsonl"
  SPATTN_LIB=$PWD/$BUILD/libspattn.so PYTHONUNBUFFERED=1 timeout ${SPATTN_PEERS_TIMEOUT:-420} python3 -X faulthandler \
    bench/compare_peers.py --runs "${SPATTN_PEER_RUNS:-$RUNS}" --reps 10 --rows "$LOGS/peers.jsonl" \
    >"$LOGS/peers.txt" 2>"$LOGS/peers.err" || echo "peer benchmark stopped: $(tail -2 "$LOGS/peers.err")"
  step "backward benchmark"
  rm -f "$LOGS/backward.jsonl"
  SPATTN_LIB=$PWD/$BUILD/libspattn.so PYTHONUNBUFFERED=1 timeout ${SPATTN_BACKWARD_TIMEOUT:-120} python3 \
    bench/compare_backward.py --reps 5 --rows "$LOGS/backward.jsonl" >"$LOGS/backward.txt" 2>"$LOGS/backward.err" \
    || echo "backward benchmark stopped: $(tail -2 "$LOGS/backward.err")"
  [ -f "$LOGS/backward.jsonl" ] && SPATTN_LIB=$PWD/$BUILD/libspattn.so python3 bench/compare_backward.py --table "$LOGS/backward.jsonl"
  [ -f "$LOGS/peers.jsonl" ] && SPATTN_LIB=$PWD/$BUILD/libspattn.so python3 bench/compare_peers.py --table "$LOGS/peers.jsonl"
fi
exit $status
