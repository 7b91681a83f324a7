// Documents (spattn/varlen.hpp): the kernels that turn each call's lengths into the
// block tables the forward and backward kernels walk, on the GPU and in the call's stream.
//  - varlen_docs (one CTA): checks the lengths, describes every document (batch index,
//    first query row, query rows, first key row, key rows) and gives every query tile of
//    the tables its document and its tile within it;
//  - varlen_tables<Cfg> (one CTA per table and query tile): the tile's key tiles from
//    the generated per-row key ranges (Cfg::row_bounds) on the document's own shape,
//    full tiles first, and the row's length into its work items;
//  - varlen_order (forward; one CTA): the work list longest rows first per head group;
//  - varlen_transpose (backward pass; one CTA per table and key tile): the key tile's
//    column of query tiles from those rows.
// The generated translation unit defines Cfg and includes this file after the forward
// or backward template; its entry points are spattn_varlen_docs, spattn_varlen_tables,
// spattn_varlen_order (forward programs) and spattn_varlen_transpose (backward programs).
#pragma once

#include "spattn/params.cuh"
#include "spattn/tables.cuh"

namespace spattn {
namespace varlen {

constexpr int kDocsThreads = kSpattnVarlenDocsThreads;
constexpr int kTablesThreads = kSpattnVarlenTablesThreads;
constexpr int kEmpty = 0x7fffffff;  // lower end of an empty key range

// The first violation wins; the host reads {code, document, value, limit}.
__device__ __forceinline__ void fail(int32_t* status, int code, int doc, int value, int limit) {
  if (atomicCAS(status, 0, code) == 0) {
    status[1] = doc;
    status[2] = value;
    status[3] = limit;
  }
}

// Document e of the call: {batch index, first query row, query rows, first key row, key rows}.
__device__ __forceinline__ void describe(const SpattnVarlenDocsParams& p, int e, int (&d)[5]) {
  if (p.cu_q) {
    d[0] = 0;
    d[1] = __ldg(p.cu_q + e);
    d[2] = __ldg(p.cu_q + e + 1) - d[1];
    d[3] = __ldg(p.cu_k + e);
    d[4] = __ldg(p.cu_k + e + 1) - d[3];
    return;
  }
  const int b = e < p.docs ? e : e - p.docs;
  const int used_q = p.used_q ? __ldg(p.used_q + b) : p.nq;
  d[0] = b;
  if (e < p.docs) {
    d[1] = 0;
    d[2] = used_q;
    d[3] = 0;
    d[4] = p.used_k ? __ldg(p.used_k + b) : p.nk;
  } else {
    d[1] = used_q;  // the padded query rows: no keys, so O = 0 and LSE = -inf
    d[2] = p.nq - used_q;
    d[3] = 0;
    d[4] = 0;
  }
}

__device__ void varlen_docs(const SpattnVarlenDocsParams& p) {
  __shared__ int warp_counts[kDocsThreads / 32];
  const int tid = threadIdx.x;
  const int entries = p.cu_q ? p.docs : 2 * p.docs;
  // Check every length before anything reads rows through it.
  for (int e = tid; e < p.docs; e += kDocsThreads) {
    if (p.cu_q) {
      const int q0 = __ldg(p.cu_q + e), q1 = __ldg(p.cu_q + e + 1);
      const int k0 = __ldg(p.cu_k + e), k1 = __ldg(p.cu_k + e + 1);
      if (e == 0 && (q0 < 0 || q0 > p.nq)) fail(p.status, kSpattnVarlenQOutside, 0, q0, p.nq);
      if (e == 0 && (k0 < 0 || k0 > p.nk)) fail(p.status, kSpattnVarlenKOutside, 0, k0, p.nk);
      if (q1 < q0) fail(p.status, kSpattnVarlenQDecreasing, e + 1, q1, q0);
      if (k1 < k0) fail(p.status, kSpattnVarlenKDecreasing, e + 1, k1, k0);
      if (q1 > p.nq || q1 < 0) fail(p.status, kSpattnVarlenQOutside, e + 1, q1, p.nq);
      if (k1 > p.nk || k1 < 0) fail(p.status, kSpattnVarlenKOutside, e + 1, k1, p.nk);
      if (q1 >= q0 && q1 - q0 > p.max_q) fail(p.status, kSpattnVarlenQLonger, e, q1 - q0, p.max_q);
      if (k1 >= k0 && k1 - k0 > p.max_k) fail(p.status, kSpattnVarlenKLonger, e, k1 - k0, p.max_k);
    } else {
      const int uq = p.used_q ? __ldg(p.used_q + e) : p.nq;
      const int uk = p.used_k ? __ldg(p.used_k + e) : p.nk;
      if (uq < 0 || uq > p.nq) fail(p.status, kSpattnVarlenUsedQ, e, uq, p.nq);
      if (uk < 0 || uk > p.nk) fail(p.status, kSpattnVarlenUsedK, e, uk, p.nk);
    }
  }
  for (int g = tid; g < p.tile_capacity; g += kDocsThreads) {
    p.vl_tiles[2 * g] = -1;
    p.vl_tiles[2 * g + 1] = 0;
  }
  if (p.vl_ktiles)
    for (int g = tid; g < p.ktile_capacity; g += kDocsThreads) {
      p.vl_ktiles[2 * g] = -1;
      p.vl_ktiles[2 * g + 1] = 0;
    }
  __syncthreads();
  if (*static_cast<volatile int32_t*>(p.status) != 0) return;  // every document empty

  // Tiles of the documents one after another: running prefixes over chunks of documents,
  // of query tiles and (for the backward pass) of key tiles.
  int first_tile = 0, first_ktile = 0;
  for (int e0 = 0; e0 < entries; e0 += kDocsThreads) {
    const int e = e0 + tid;
    int d[5] = {0, 0, 0, 0, 0};
    if (e < entries) describe(p, e, d);
    const int tiles = e < entries ? (d[2] + p.tile_m - 1) / p.tile_m : 0;
    const int ktiles = e < entries && p.vl_ktiles ? (d[4] + p.tile_n - 1) / p.tile_n : 0;
    int chunk_tiles = 0, chunk_ktiles = 0;
    const int first = first_tile + block_exclusive_sum<kDocsThreads>(tiles, warp_counts, chunk_tiles);
    const int kfirst = first_ktile + block_exclusive_sum<kDocsThreads>(ktiles, warp_counts, chunk_ktiles);
    if (e < entries) {
      int32_t* out = p.vl_docs + kSpattnDocInts * e;
#pragma unroll
      for (int x = 0; x < 5; ++x) out[x] = d[x];
      out[5] = first;
      out[6] = kfirst;
      out[7] = 0;
      if (first + tiles > p.tile_capacity) {
        fail(p.status, kSpattnVarlenCapacity, e, first + tiles, p.tile_capacity);
      } else {
        for (int t = 0; t < tiles; ++t) {
          p.vl_tiles[2 * (first + t)] = e;
          p.vl_tiles[2 * (first + t) + 1] = t;
        }
      }
      if (kfirst + ktiles > p.ktile_capacity && ktiles > 0) {
        fail(p.status, kSpattnVarlenCapacity, e, kfirst + ktiles, p.ktile_capacity);
      } else {
        for (int t = 0; t < ktiles; ++t) {
          p.vl_ktiles[2 * (kfirst + t)] = e;
          p.vl_ktiles[2 * (kfirst + t) + 1] = t;
        }
      }
    }
    first_tile += chunk_tiles;
    first_ktile += chunk_ktiles;
  }
  __syncthreads();
  if (*static_cast<volatile int32_t*>(p.status) != 0) {
    for (int g = tid; g < p.tile_capacity; g += kDocsThreads) p.vl_tiles[2 * g] = -1;
    if (p.vl_ktiles)
      for (int g = tid; g < p.ktile_capacity; g += kDocsThreads) p.vl_ktiles[2 * g] = -1;
  }
}

template <class Cfg>
struct VarlenTables {
  static constexpr int BM = Cfg::kBlockM;
  static constexpr int BN = Cfg::kBlockN;
  static constexpr int kThreads = kTablesThreads;

  // 0: no row of the tile reaches the key tile; 1: partial; 2: full (every row allows
  // every key of the tile, and the tile lies inside the document).
  static __device__ __forceinline__ int classify(int c, int rows, int nk, const int* lo0, const int* hi0,
                                                 const int* lo1, const int* hi1) {
    const int cs = c * BN, ce_all = cs + BN - 1;
    const int ce = min(ce_all, nk - 1);
    bool any = false, all = ce == ce_all;
#pragma unroll 1
    for (int r = 0; r < rows && (all || !any); ++r) {
      const bool covers = (lo0[r] <= cs && ce_all <= hi0[r]) || (lo1[r] <= cs && ce_all <= hi1[r]);
      const bool meets = (lo0[r] <= ce && hi0[r] >= cs) || (lo1[r] <= ce && hi1[r] >= cs);
      any |= meets;
      all &= covers;
    }
    return !any ? 0 : all ? 2 : 1;
  }

  static __device__ void run(const SpattnVarlenTablesParams& p) {
    __shared__ int lo0[BM], hi0[BM], lo1[BM], hi1[BM];
    __shared__ int warp_counts[kThreads / 32];
    __shared__ int range[2];
    const int g = blockIdx.x, table = blockIdx.y, tid = threadIdx.x;
    const SpattnTable t = p.tables[table];
    const int head0 = __ldg(p.table_info + 3 * table);
    const int doc = __ldg(p.vl_tiles + 2 * g);
    int count = 0, full = 0;
    if (doc >= 0) {
      const int tile = __ldg(p.vl_tiles + 2 * g + 1);
      const int32_t* d = p.vl_docs + kSpattnDocInts * doc;
      const int nq = __ldg(d + 2), nk = __ldg(d + 4);
      const int r0 = tile * BM;
      const int rows = min(BM, nq - r0);
      if (tid == 0) range[0] = kEmpty, range[1] = -1;
      __syncthreads();
      const typename Cfg::MaskCtx ctx{nq, nk, p.heads, 0, 0};
      for (int r = tid; r < BM; r += kThreads) {
        int a0 = kEmpty, b0 = -1, a1 = kEmpty, b1 = -1;
        if (r < rows && nk > 0) {
          Cfg::row_bounds(t.part, head0, r0 + r, ctx, a0, b0, a1, b1);
          a0 = max(a0, 0), b0 = min(b0, nk - 1), a1 = max(a1, 0), b1 = min(b1, nk - 1);
          if (a0 > b0) a0 = kEmpty, b0 = -1;
          if (a1 > b1) a1 = kEmpty, b1 = -1;
          if (a0 != kEmpty && a1 != kEmpty && a1 <= b0 + 1 && a0 <= b1 + 1) {  // one range
            a0 = min(a0, a1), b0 = max(b0, b1);
            a1 = kEmpty, b1 = -1;
          }
          if (a0 == kEmpty && a1 != kEmpty) a0 = a1, b0 = b1, a1 = kEmpty, b1 = -1;
          if (a0 != kEmpty) {
            atomicMin(&range[0], min(a0, a1));
            atomicMax(&range[1], max(b0, b1));
          }
        }
        lo0[r] = a0, hi0[r] = b0, lo1[r] = a1, hi1[r] = b1;
      }
      __syncthreads();
      if (range[1] >= 0) {
        const int c_first = range[0] / BN, c_last = range[1] / BN;
        int32_t* cols = p.arena + t.cols + (int64_t)g * p.row_capacity;
        // Full tiles first, then partial ones, each ascending.
        for (int want = 2; want >= 1; --want) {
          for (int c0 = c_first; c0 <= c_last; c0 += kThreads) {
            const int c = c0 + tid;
            const bool pick = c <= c_last && classify(c, rows, nk, lo0, hi0, lo1, hi1) == want;
            int chunk = 0;
            const int at = block_prefix<kThreads>(pick, warp_counts, chunk);
            if (pick) cols[count + at] = c;
            count += chunk;
          }
          if (want == 2) full = count;
        }
      }
    }
    if (tid == 0) {
      p.arena[t.full_count + g] = full;
      if (p.row_len) p.row_len[(int64_t)table * p.tile_capacity + g] = count;
    }
    if (!p.work) return;
    const int heads = __ldg(p.table_info + 3 * table + 1), item_base = __ldg(p.table_info + 3 * table + 2);
    for (int x = tid; x < heads; x += kThreads)
      p.work[6 * (item_base + (int64_t)x * p.tile_capacity + (p.tile_capacity - 1 - g)) + 4] = count;
  }
};

// SpattnVarlenOrderParams: a counting sort of the items by (head group, row length
// descending). Items of equal key (equal lengths) may land in any order among themselves:
// each writes rows of its own, so the outputs do not depend on it.
__device__ void varlen_order(const SpattnVarlenOrderParams& p) {
  __shared__ int warp_counts[kDocsThreads / 32];
  const int tid = threadIdx.x;
  const int per_group = p.row_capacity + 1;
  auto bin_of = [&](int item) {
    const int32_t* w = p.work_in + 6 * item;
    const int len = min(max(__ldg(w + 4), 0), p.row_capacity);
    return min(__ldg(w + 2) / p.heads_per_group, p.groups - 1) * per_group + (p.row_capacity - len);
  };
  for (int i = tid; i < p.num_items; i += kDocsThreads) atomicAdd(p.bins + bin_of(i), 1);
  __syncthreads();
  // The bins' counts into their first positions (an exclusive scan, chunk by chunk).
  const int bins = p.groups * per_group;
  int before = 0;
  for (int b0 = 0; b0 < bins; b0 += kDocsThreads) {
    const int b = b0 + tid;
    const int count = b < bins ? __ldcg(p.bins + b) : 0;  // counted by atomics (in L2)
    int chunk = 0;
    const int at = before + block_exclusive_sum<kDocsThreads>(count, warp_counts, chunk);
    if (b < bins) p.bins[b] = at;
    before += chunk;
  }
  __syncthreads();
  for (int i = tid; i < p.num_items; i += kDocsThreads) {
    const int to = atomicAdd(p.bins + bin_of(i), 1);
    const int32_t* w = p.work_in + 6 * i;
#pragma unroll
    for (int x = 0; x < 6; ++x) p.work_out[6 * to + x] = __ldg(w + x);
  }
}

// The backward pass's columns (SpattnVarlenTransposeParams): per key tile of a
// document, its query tiles whose forward rows hold it, in ascending order within the
// full ones and within the partial ones (the forward rows list both ascending).
__device__ void varlen_transpose(const SpattnVarlenTransposeParams& p) {
  __shared__ int warp_counts[kTablesThreads / 32];
  const int k = blockIdx.x, table = blockIdx.y, tid = threadIdx.x;
  const SpattnBwdTable t = p.tables[table];
  const int doc = __ldg(p.vl_ktiles + 2 * k);
  int count = 0, full = 0;
  if (doc >= 0) {
    const int local = __ldg(p.vl_ktiles + 2 * k + 1);
    const int32_t* d = p.vl_docs + kSpattnDocInts * doc;
    const int q_tiles = (__ldg(d + 2) + p.tile_m - 1) / p.tile_m, g0 = __ldg(d + 5);
    transpose_column<kTablesThreads>(p.arena, t, g0, q_tiles, local, p.arena + t.rows + (int64_t)k * p.col_capacity,
                                     warp_counts, count, full, [](int) { return false; });
  }
  if (tid == 0) {
    p.arena[t.full_count + k] = full;
    p.arena[t.col_len + k] = count;
  }
}

}  // namespace varlen
}  // namespace spattn
