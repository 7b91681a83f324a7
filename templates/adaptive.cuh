// Adaptive patterns: the kernels that choose each call's key blocks on the GPU
// (spattn/adaptive.hpp has the definition they implement).
//  - adaptive_pool: block means of Q or K, fp32 (the block scores are then one GEMM per
//    head, by cuBLAS, on the host's side of the call);
//  - adaptive_select: per (batch, head, query block) the diagonal block and the k - 1
//    best others by score (ties to the lower index, NaN as -inf), ascending,
//    then the key tiles of every query tile of the block, full before partial, into this
//    batch's copy of the table arena. No host round trip: the forward kernel runs next
//    on the same stream.
//  - adaptive_columns, adaptive_transpose (backward pass, after the selection at the
//    backward tiles): the forward rows' columns (SpattnAdaptiveColumnsParams);
//  - adaptive_gate_grads (after the backward kernels, with gates): dL/dg of the chosen
//    blocks from the kernels' per-tile-pair sums of dS (SpattnAdaptiveGateGradParams).
#pragma once

#include "spattn/params.cuh"
#include "spattn/tables.cuh"

namespace spattn {

// One warp per (batch, head, block); lanes over pairs of head-dim elements.
template <bool kBf16>
__device__ void adaptive_pool(const SpattnAdaptivePoolParams& p) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= (int64_t)p.batch * p.heads * p.blocks) return;
  const int lane = threadIdx.x % 32;
  const int blk = row % p.blocks;
  const int h = (row / p.blocks) % p.heads;
  const int b = row / ((int64_t)p.blocks * p.heads);
  const int t0 = blk * p.block;
  const int t1 = min(t0 + p.block, p.n);
  const unsigned short* base =
      static_cast<const unsigned short*>(p.src) + b * p.stride_b + h * p.stride_h + (int64_t)t0 * p.stride_n;
  constexpr int kPairs = 4;  // head dims up to 256: 128 pairs over 32 lanes
  float acc[kPairs][2];
#pragma unroll
  for (int c = 0; c < kPairs; ++c) acc[c][0] = acc[c][1] = 0.f;
  const int pairs = p.head_dim / 2;
#pragma unroll 4
  for (int t = t0; t < t1; ++t, base += p.stride_n) {
#pragma unroll
    for (int c = 0; c < kPairs; ++c) {
      const int d2 = lane + 32 * c;
      if (d2 < pairs) {
        const unsigned int v = __ldg(reinterpret_cast<const unsigned int*>(base) + d2);
        if constexpr (kBf16) {
          acc[c][0] += __uint_as_float(v << 16);
          acc[c][1] += __uint_as_float(v & 0xffff0000u);
        } else {
          float lo, hi;
          asm("cvt.f32.f16 %0, %1;\n" : "=f"(lo) : "h"((unsigned short)(v & 0xffffu)));
          asm("cvt.f32.f16 %0, %1;\n" : "=f"(hi) : "h"((unsigned short)(v >> 16)));
          acc[c][0] += lo;
          acc[c][1] += hi;
        }
      }
    }
  }
  const float inv = 1.f / (float)(t1 - t0);
  float* out = p.out + row * p.head_dim;
#pragma unroll
  for (int c = 0; c < kPairs; ++c) {
    const int d2 = lane + 32 * c;
    if (d2 < pairs) {
      out[2 * d2] = acc[c][0] * inv;
      out[2 * d2 + 1] = acc[c][1] * inv;
    }
  }
}

// (score, block) pairs in selection order: a ranks before b when its score is higher,
// or equal with a lower block index. NaN counts as -inf.
__device__ __forceinline__ float rank_score(float s) { return s != s ? __int_as_float(0xff800000) : s; }
__device__ __forceinline__ bool ranks_before(float sa, int ja, float sb, int jb) {
  return sa > sb || (sa == sb && ja < jb);
}

// One warp per (batch, head, query block).
__device__ void adaptive_select(const SpattnAdaptiveSelectParams& p) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= (int64_t)p.batch * p.heads * p.nq_blocks) return;
  const int lane = threadIdx.x % 32;
  const int I = row % p.nq_blocks;
  const int h = (row / p.nq_blocks) % p.heads;
  const int b = row / ((int64_t)p.nq_blocks * p.heads);
  const float* s = p.scores + b * p.s_stride_b + h * p.s_stride_h + I * p.s_stride_row;
  int32_t* out_row = p.chosen + b * p.c_stride_b + h * p.c_stride_h + I * p.c_stride_row;
  const int k = __ldg(p.k + I);
  const int diag = __ldg(p.diagonal + I);
  const int allowed = __ldg(p.allowed + I);

  // The row once into shared memory (the rounds below read it k - 1 times).
  // Staged: each warp's scores and picks live in shared memory (nk_blocks floats, then
  // max_k ints); the picks are copied out once sorted.
  extern __shared__ float staged_rows[];
  float* srow = staged_rows + (threadIdx.x / 32) * (p.nk_blocks + p.max_k);
  int32_t* chosen = p.stage_row ? reinterpret_cast<int32_t*>(srow + p.nk_blocks) : out_row;
  if (p.stage_row) {
    for (int j = lane; j < allowed; j += 32) srow[j] = rank_score(__ldg(s + j));
    __syncwarp();
  }
  auto score = [&](int j) { return p.stage_row ? srow[j] : rank_score(__ldg(s + j)); };

  // 1. The diagonal block, then k - 1 rounds of "the best remaining block". Each lane
  //    keeps the best two of its own blocks (j = lane + 32 m) that it has not given up
  //    yet; a round takes the warp's best head, and only a lane whose two are used up
  //    rescans its blocks (for those ranking after its last pick: the lane's picks come
  //    in its own ranking order). One pass over the row, then about k reductions.
  if (lane == 0 && k > 0) chosen[0] = diag;
  float s1 = 0.f, s2 = 0.f;
  int j1 = -1, j2 = -1;
  auto refill = [&](float bound_s, int bound_j) {
    j1 = j2 = -1;
    for (int j = lane; j < allowed; j += 32) {
      if (j == diag) continue;
      const float sj = score(j);
      if (bound_j >= 0 && !ranks_before(bound_s, bound_j, sj, j)) continue;  // given up already
      if (j1 < 0 || ranks_before(sj, j, s1, j1)) {
        s2 = s1;
        j2 = j1;
        s1 = sj;
        j1 = j;
      } else if (j2 < 0 || ranks_before(sj, j, s2, j2)) {
        s2 = sj;
        j2 = j;
      }
    }
  };
  if (k > 1) refill(0.f, -1);
  for (int r = 1; r < k; ++r) {
    float best_s = s1;
    int best_j = j1;
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      const float os = __shfl_xor_sync(0xffffffffu, best_s, off);
      const int oj = __shfl_xor_sync(0xffffffffu, best_j, off);
      if (oj >= 0 && (best_j < 0 || ranks_before(os, oj, best_s, best_j))) {
        best_s = os;
        best_j = oj;
      }
    }
    if (lane == 0) chosen[r] = best_j;
    if (j1 == best_j) {  // this lane's head was taken
      const float taken_s = s1;
      const int taken_j = j1;
      s1 = s2;
      j1 = j2;
      j2 = -1;
      if (j1 < 0) refill(taken_s, taken_j);
    }
  }
  for (int r = max(k, 0) + lane; r < p.max_k; r += 32) chosen[r] = -1;
  __syncwarp();

  // 2. Ascending order: every pick's rank among the (distinct) picks; rows of more than
  //    256 picks (rare: hundreds of blocks per query block) sort serially in lane 0.
  constexpr int kPerLane = 8;
  if (k <= 32 * kPerLane) {
    int vals[kPerLane], ranks[kPerLane];
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      const int at = lane + 32 * e;
      vals[e] = at < k ? chosen[at] : 0x7fffffff;
      ranks[e] = 0;
    }
    for (int x = 0; x < k; ++x) {
      const int other = chosen[x];
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) ranks[e] += other < vals[e];
    }
    __syncwarp();
#pragma unroll
    for (int e = 0; e < kPerLane; ++e)
      if (lane + 32 * e < k) chosen[ranks[e]] = vals[e];
  } else if (lane == 0) {
    for (int a = 1; a < k; ++a) {
      const int v = chosen[a];
      int c = a - 1;
      for (; c >= 0 && chosen[c] > v; --c) chosen[c + 1] = chosen[c];
      chosen[c + 1] = v;
    }
  }
  __syncwarp();

  if (p.stage_row) {
    for (int x = lane; x < p.max_k; x += 32) out_row[x] = chosen[x];
  }

  // 3. The key tiles of every query tile of the block: block J's tiles J * kpb ..
  //    (J + 1) * kpb - 1 in ascending order. A tile is full when every query of the
  //    query tile sees all of its keys (inside Nk; with causal below the first query's
  //    limit); both conditions hold for a prefix of the ascending list.
  int32_t* arena = p.arena + (int64_t)b * p.arena_stride_b;
  const SpattnTable t = p.tables[h];
  const int kpb = p.k_tiles_per_block;
  const int shift = p.nk - p.nq;
  for (int qq = 0; qq < p.q_tiles_per_block; ++qq) {
    const int qt = I * p.q_tiles_per_block + qq;
    if (qt >= p.num_q_tiles) break;
    const int begin = __ldg(p.arena + t.row_ptr + qt);  // the same in every batch copy
    const int n = k * kpb;
    const int i0 = qt * p.tile_m;
    int full = 0;
    for (int x = lane; x < ((n + 31) & ~31); x += 32) {
      bool is_full = false;
      if (x < n) {
        const int col = chosen[x / kpb] * kpb + x % kpb;
        arena[t.cols + begin + x] = col;
        const int j_last = (col + 1) * p.tile_n - 1;
        is_full = j_last < p.nk && (!p.causal || j_last <= i0 + shift);
      }
      full += __popc(__ballot_sync(0xffffffffu, is_full));
    }
    if (lane == 0) arena[t.full_count + qt] = full;
  }
}

// One CTA per (batch, head): the key blocks' counts of choosing query blocks, then the
// key tiles' column offsets (room for every query tile of every such block).
__device__ void adaptive_columns(const SpattnAdaptiveColumnsParams& p) {
  constexpr int kThreads = kSpattnAdaptiveColumnsThreads;
  __shared__ int warp_counts[kThreads / 32];
  const int bh = blockIdx.x, b = bh / p.heads, h = bh % p.heads, tid = threadIdx.x;
  int32_t* counts = p.counts + (int64_t)bh * p.nk_blocks;
  for (int j = tid; j < p.nk_blocks; j += kThreads) counts[j] = 0;
  __syncthreads();
  const int32_t* chosen = p.chosen + (int64_t)bh * p.nq_blocks * p.max_k;
  for (int64_t x = tid; x < (int64_t)p.nq_blocks * p.max_k; x += kThreads) {
    const int J = __ldg(chosen + x);
    if (J >= 0) atomicAdd(counts + J, 1);
  }
  __syncthreads();  // the counts (in L2) are visible to the block after the barrier
  int32_t* arena = p.arena + (int64_t)b * p.arena_stride_b;
  const SpattnBwdTable t = p.tables[h];
  int before = 0;
  for (int k0 = 0; k0 < t.num_k_tiles; k0 += kThreads) {
    const int kt = k0 + tid;
    const int room = kt < t.num_k_tiles ? __ldcg(counts + kt / p.k_tiles_per_block) * p.q_tiles_per_block : 0;
    int chunk = 0;
    const int at = before + block_exclusive_sum<kThreads>(room, warp_counts, chunk);
    if (kt < t.num_k_tiles) arena[t.col_ptr + kt] = at;
    before += chunk;
  }
  if (tid == 0) arena[t.col_ptr + t.num_k_tiles] = before;
}

// One CTA per (key tile, batch x head): the key tile's column from this batch's forward
// rows. Partial pairs above the causal diagonal (the chosen diagonal block's tiles past
// the query tile) allow nothing and are left out.
__device__ void adaptive_transpose(const SpattnAdaptiveColumnsParams& p) {
  constexpr int kThreads = kSpattnAdaptiveColumnsThreads;
  __shared__ int warp_counts[kThreads / 32];
  const int kt = blockIdx.x, bh = blockIdx.y, b = bh / p.heads, h = bh % p.heads;
  int32_t* arena = p.arena + (int64_t)b * p.arena_stride_b;
  const SpattnBwdTable t = p.tables[h];
  int count = 0, full = 0;
  if (__ldcg(p.counts + (int64_t)bh * p.nk_blocks + kt / p.k_tiles_per_block) > 0) {
    const int shift = p.nk - p.nq, j0 = kt * p.tile_n;
    auto drop = [&](int qt) { return p.causal && j0 > min((qt + 1) * p.tile_m, p.nq) - 1 + shift; };
    transpose_column<kThreads>(arena, t, 0, p.num_q_tiles, kt, arena + t.rows + __ldg(arena + t.col_ptr + kt),
                               warp_counts, count, full, drop);
  }
  if (threadIdx.x == 0) {
    arena[t.full_count + kt] = full;
    arena[t.col_len + kt] = count;
  }
}

// One thread per (batch, head, query block, slot) of the chosen blocks: the gate's
// gradient from its tile pairs' sums of dS, d(log g) = sum dS, so dL/dg = sum dS / g.
__device__ void adaptive_gate_grads(const SpattnAdaptiveGateGradParams& p) {
  const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= p.entries) return;
  const SpattnGates& g = p.gates;
  const int J = __ldg(g.chosen + e);
  if (J < 0) return;
  const int pairs = g.q_tiles * g.k_tiles;
  float sum = 0.f;
  for (int x = 0; x < pairs; ++x) sum += __ldcg(g.partials + e * pairs + x);
  const int64_t at = (e / g.max_k) * g.cols + J;  // (b, h, I) row of the gates
  const float gate = __ldg(g.gates + at);
  p.grad[at] = gate > 0.f ? sum / gate : 0.f;
}

}  // namespace spattn

extern "C" __global__ void spattn_adaptive_pool_bf16(const SpattnAdaptivePoolParams p) { spattn::adaptive_pool<true>(p); }
extern "C" __global__ void spattn_adaptive_pool_fp16(const SpattnAdaptivePoolParams p) { spattn::adaptive_pool<false>(p); }
extern "C" __global__ void spattn_adaptive_select(const SpattnAdaptiveSelectParams p) { spattn::adaptive_select(p); }
extern "C" __global__ void spattn_adaptive_columns(const SpattnAdaptiveColumnsParams p) { spattn::adaptive_columns(p); }
extern "C" __global__ void spattn_adaptive_transpose(const SpattnAdaptiveColumnsParams p) {
  spattn::adaptive_transpose(p);
}
extern "C" __global__ void spattn_adaptive_gate_grads(const SpattnAdaptiveGateGradParams p) {
  spattn::adaptive_gate_grads(p);
}
