#!/usr/bin/env bash
# Kernel configuration sweep on the GPU machine: builds (its own build-sweep tree, no tests), then runs
# bench/forward_bench for every config given, at the sequence lengths given. With ROUNDS=n the whole
# sweep repeats n times, configs interleaved in each round (one process per run), so that an A/B of
# two configs is not skewed by clocks drifting over the run; each row names its round.
#   scripts/gpu-sweep.sh "128x64w4s1 128x64w8s2" "16384" [filter-regex]
#   ROUNDS=2 scripts/gpu-sweep.sh "sm90:128x128s2:longest sm90:128x128s2:longest:turns" "16384 65536"
set -uo pipefail
cd "$(dirname "$0")/.."
CONFIGS=${1:-"128x64w4s1 128x64w4s2 128x64w8s2 64x64w4s2 128x128w8s2"}
SEQS=${2:-16384}
FILTER=${3:-.}
export SPATTN_CACHE_DIR=${SPATTN_CACHE_DIR:-$PWD/build-gpu/kernel-cache}
cmake -S . -B build-sweep -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPATTN_BUILD_TESTS=OFF >/dev/null 2>&1 || { echo "configure failed"; exit 1; }
cmake --build build-sweep -j"$(nproc)" --target forward_bench >/dev/null 2>&1 || { echo "build failed"; exit 1; }
for round in $(seq "${ROUNDS:-1}"); do
  for n in $SEQS; do
    for c in $CONFIGS; do
      build-sweep/bench/forward_bench --config="$c" --benchmark_filter="$FILTER.*/$n/" 2>/dev/null \
        | awk -v c="$c" -v r="$round" '/^forward\// { for (i = 1; i <= NF; ++i) if ($i ~ /^TFLOPs=/) t = $i; printf "r%s %-34s %-55s %8s ms %s\n", r, c, $1, $2, t }'
    done
  done
done
