#!/usr/bin/env bash
# Ring attention over NCCL on two GPUs, one process per GPU (tests/dist/ring_nccl_main.cpp):
# outputs and LSE of every rank against the whole problem's reference for dense causal
# (zigzag), window 1024, LongNet and global_local; with --bench also the timings of dense
# causal and window 1024 at 128k and 256k tokens against one GPU. Exits 77 (skipped) on a
# machine with fewer than two GPUs.
#
#   scripts/ring-2gpu.sh [BUILD_DIR] [--bench]
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
MODE=${2:-check}
BIN=$BUILD/tests/dist/spattn_ring_nccl
export NCCL_NVLS_ENABLE=0  # never NVLink multicast
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$gpus" -lt 2 ]; then echo "ring-2gpu: needs two GPUs (found $gpus)"; exit 77; fi
[ -x "$BIN" ] || { echo "ring-2gpu: $BIN is not built"; exit 1; }

run() {  # both ranks of one case; fails when either does
  local id; id=$(mktemp -u /tmp/spattn-ring-id.XXXXXX)
  "$BIN" --rank 0 --world 2 --id-file "$id" "$@" & local p0=$!
  "$BIN" --rank 1 --world 2 --id-file "$id" "$@"; local s1=$?
  wait $p0; local s0=$?
  rm -f "$id"
  [ $s0 = 0 ] && [ $s1 = 0 ]
}

status=0
for spec in '{"type":"dense","causal":true}|--zigzag' '{"type":"local_window","window":1024}|' \
            '{"type":"longnet","segments":[2048,4096,8192],"rates":[1,2,4]}|' \
            '{"type":"global_local","global":128,"window":512}|'; do
  echo "== check ${spec%%|*} ${spec##*|}"
  run --pattern "${spec%%|*}" --seq 16384 --heads 4 --check ${spec##*|} || status=1
done
if [ "$MODE" = --bench ]; then
  for seq in 131072 262144; do
    echo "== bench dense causal zigzag $seq"; run --pattern '{"type":"dense","causal":true}' --seq $seq --zigzag --reps 5 || status=1
    echo "== bench window 1024 $seq"; run --pattern '{"type":"local_window","window":1024}' --seq $seq --reps 5 || status=1
  done
fi
exit $status
