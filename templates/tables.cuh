// Block-wide building blocks of the kernels that write block tables on the GPU per call
// (documents: templates/varlen.cuh; adaptive patterns: templates/adaptive.cuh): prefix
// counts and sums over a CTA, membership in an ascending list, and the transposition of
// forward rows into one key tile's column.
#pragma once

#include "spattn/params.cuh"

namespace spattn {

// Exclusive prefix of `pred` over the block (blockDim.x = kThreads, a multiple of 32);
// `total` gets the block's count. Every thread must call it.
template <int kThreads>
__device__ __forceinline__ int block_prefix(bool pred, int* warp_counts, int& total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned ballot = __ballot_sync(0xffffffffu, pred);
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();
  int before = 0;
  total = 0;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) {
    before += w < warp ? warp_counts[w] : 0;
    total += warp_counts[w];
  }
  __syncthreads();
  return before + __popc(ballot & ((1u << lane) - 1u));
}

// Exclusive prefix sum of `value` over the block (blockDim.x = kThreads); `total` gets
// the block's sum. Every thread must call it.
template <int kThreads>
__device__ __forceinline__ int block_exclusive_sum(int value, int* warp_counts, int& total) {
  int incl = value;
#pragma unroll
  for (int s = 1; s < 32; s <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, s);
    if (threadIdx.x % 32 >= s) incl += v;
  }
  if (threadIdx.x % 32 == 31) warp_counts[threadIdx.x / 32] = incl;
  __syncthreads();
  int before = 0;
  total = 0;
  for (int w = 0; w < kThreads / 32; ++w) {
    before += w < static_cast<int>(threadIdx.x) / 32 ? warp_counts[w] : 0;
    total += warp_counts[w];
  }
  __syncthreads();
  return before + incl - value;
}

// Whether the ascending list [first, first + n) holds `value`. The list must not be
// written by the running kernel (read through the non-coherent cache).
__device__ __forceinline__ bool holds(const int32_t* first, int n, int value) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (__ldg(first + mid) < value) lo = mid + 1;
    else hi = mid;
  }
  return lo < n && __ldg(first + lo) == value;
}

// One key tile's column of the backward tables (blockDim.x = kThreads; every thread
// calls it): the query tiles i < q_tiles whose forward rows g0 + i of table t (in
// `rows_arena`: row_ptr, row_full, cols and, where t.row_len >= 0, row lengths) list key
// tile `key`, the full ones first, each group ascending, written to `out`. `drop(i)`
// leaves out a partial pair (one whose mask allows nothing). Thread 0's `count` and
// `full` get the column's length and its full tiles.
template <int kThreads, class Drop>
__device__ __forceinline__ void transpose_column(const int32_t* rows_arena, const SpattnBwdTable& t, int g0,
                                                 int q_tiles, int key, int32_t* out, int* warp_counts, int& count,
                                                 int& full, Drop drop) {
  count = full = 0;
  for (int want_full = 1; want_full >= 0; --want_full) {
    for (int i0 = 0; i0 < q_tiles; i0 += kThreads) {
      const int i = i0 + static_cast<int>(threadIdx.x);
      bool pick = false;
      if (i < q_tiles) {
        const int g = g0 + i;
        const int begin = __ldg(rows_arena + t.row_ptr + g), n_full = __ldg(rows_arena + t.row_full + g);
        const int len = t.row_len >= 0 ? __ldg(rows_arena + t.row_len + g) : __ldg(rows_arena + t.row_ptr + g + 1) - begin;
        pick = want_full ? holds(rows_arena + t.cols + begin, n_full, key)
                         : holds(rows_arena + t.cols + begin + n_full, len - n_full, key) && !drop(i);
      }
      int chunk = 0;
      const int at = block_prefix<kThreads>(pick, warp_counts, chunk);
      if (pick) out[count + at] = i;
      count += chunk;
    }
    if (want_full) full = count;
  }
}

}  // namespace spattn
