// Small companion kernels of the forward pass.
//  - merge: combines the per-part outputs of a multi-part layout (LongNet branches,
//    unions of differently ordered members) with LSE weights: O = sum_p w_p O_p with
//    w_p = exp(lse_p - lse), lse = log sum_p exp(lse_p). Parts a row does not take
//    part in have lse_p = -inf and weight 0; a row with no part gets O = 0, LSE = -inf.
//  - fill: O = 0 and LSE = -inf for every row, before a single-part layout that leaves
//    some rows without any table.
//  - merge_splits: combines the pieces of long rows split over several work items.
//  - fill_random: uniform random fp16/bf16 values (tests, benchmarks, the demo).
//  - gather_rows: copies of permuted tables' token rows in slot order (sm90 ":copy").
//  - backward_prep: D = rowsum(dO * O) per row, the backward pass's first kernel;
//    backward_convert: an fp32 gradient accumulator into the 16-bit output tensor.
#pragma once

#include "spattn/params.cuh"

namespace spattn {

template <bool kBf16>
__device__ __forceinline__ unsigned short to_half_bits(float x) {
  unsigned short r;
  if constexpr (kBf16) {
    asm("cvt.rn.bf16.f32 %0, %1;\n" : "=h"(r) : "f"(x));
  } else {
    asm("cvt.rn.f16.f32 %0, %1;\n" : "=h"(r) : "f"(x));
  }
  return r;
}

template <bool kBf16>
__device__ __forceinline__ float from_half_bits(unsigned short x) {
  float r;
  if constexpr (kBf16) {
    r = __uint_as_float(static_cast<unsigned>(x) << 16);
  } else {
    asm("cvt.f32.f16 %0, %1;\n" : "=f"(r) : "h"(x));
  }
  return r;
}

// The (batch, head, query row) of this warp when one warp handles one row.
struct WarpRow {
  bool valid;
  int lane, b, h, i;
};
__device__ __forceinline__ WarpRow warp_row(int batch, int heads, int nq) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  WarpRow w;
  w.valid = row < (int64_t)batch * heads * nq;
  w.lane = threadIdx.x % 32;
  w.i = row % nq;
  w.h = (row / nq) % heads;
  w.b = row / ((int64_t)nq * heads);
  return w;
}

// One warp per (batch, head, query row); lanes stride over the head dimension.
template <bool kBf16>
__device__ void merge_parts(const SpattnMergeParams& p) {
  const WarpRow w = warp_row(p.batch, p.heads, p.nq);
  if (!w.valid) return;
  const int lane = w.lane, i = w.i, h = w.h, b = w.b;
  const float neg_inf = __int_as_float(0xff800000);

  float mx = neg_inf;
  for (int part = 0; part < p.parts; ++part)
    mx = fmaxf(mx, p.part_lse[(((int64_t)part * p.batch + b) * p.heads + h) * p.nq + i]);
  float total = 0.f;
  if (mx != neg_inf) {
    for (int part = 0; part < p.parts; ++part) {
      const float l = p.part_lse[(((int64_t)part * p.batch + b) * p.heads + h) * p.nq + i];
      if (l != neg_inf) total += __expf(l - mx);
    }
  }
  const float lse = mx == neg_inf ? neg_inf : mx + __logf(total);
  unsigned short* out = static_cast<unsigned short*>(p.o) + b * p.o_stride_b + i * p.o_stride_n + h * p.o_stride_h;
  for (int d = lane; d < p.head_dim; d += 32) {
    float acc = 0.f;
    if (mx != neg_inf) {
      for (int part = 0; part < p.parts; ++part) {
        const float l = p.part_lse[(((int64_t)part * p.batch + b) * p.heads + h) * p.nq + i];
        if (l == neg_inf) continue;  // never read a part this row did not take part in
        const float w = __expf(l - lse);
        const int64_t at = ((((int64_t)part * p.batch + b) * p.nq + i) * p.heads + h) * p.head_dim + d;
        acc += w * (p.part_o16 ? from_half_bits<kBf16>(p.part_o16[at]) : p.part_o[at]);
      }
    }
    out[d] = to_half_bits<kBf16>(acc);
  }
  if (p.lse && lane == 0) p.lse[b * p.lse_stride_b + h * p.lse_stride_h + i] = lse;
}

// One CTA per (split group, batch); warps over the tile's rows, lanes over the head dim.
template <bool kBf16>
__device__ void merge_splits(const SpattnSplitMergeParams& p) {
  const int g = blockIdx.x;
  const int b = blockIdx.y;
  const int32_t* grp = p.groups + 5 * g;
  const int first = grp[0], pieces = grp[1], q_tile = grp[3], h = grp[4];
  const SpattnTable t = p.tables[grp[2]];
  const int32_t* qslots = t.q_slots >= 0 ? p.arena + t.q_slots : nullptr;
  const float neg_inf = __int_as_float(0xff800000);
  const int warps = blockDim.x / 32, lane = threadIdx.x % 32;
  for (int r = threadIdx.x / 32; r < p.tile_m; r += warps) {
    const int slot = q_tile * p.tile_m + r;
    const int i = qslots ? qslots[slot] : (slot < p.nq ? slot : -1);
    if (i < 0 || i >= p.nq) continue;
    const int64_t base = ((int64_t)b * p.num_split_slots + first) * p.tile_m + r;
    float mx = neg_inf;
    for (int k = 0; k < pieces; ++k) mx = fmaxf(mx, p.split_lse[base + (int64_t)k * p.tile_m]);
    float total = 0.f;
    if (mx != neg_inf)
      for (int k = 0; k < pieces; ++k) {
        const float l = p.split_lse[base + (int64_t)k * p.tile_m];
        if (l != neg_inf) total += __expf(l - mx);
      }
    const float lse = mx == neg_inf ? neg_inf : mx + __logf(total);
    for (int d = lane; d < p.head_dim; d += 32) {
      float acc = 0.f;
      if (mx != neg_inf)
        for (int k = 0; k < pieces; ++k) {
          const float l = p.split_lse[base + (int64_t)k * p.tile_m];
          if (l != neg_inf) acc += __expf(l - lse) * p.split_o[(base + (int64_t)k * p.tile_m) * p.head_dim + d];
        }
      if (p.write_parts) {
        p.part_o[((((int64_t)t.part * p.batch + b) * p.nq + i) * p.heads + h) * p.head_dim + d] = acc;
      } else {
        unsigned short* out =
            static_cast<unsigned short*>(p.o) + b * p.o_stride_b + i * p.o_stride_n + h * p.o_stride_h;
        out[d] = to_half_bits<kBf16>(acc);
      }
    }
    if (lane == 0) {
      if (p.write_parts) p.part_lse[(((int64_t)t.part * p.batch + b) * p.heads + h) * p.nq + i] = lse;
      else if (p.lse) p.lse[b * p.lse_stride_b + h * p.lse_stride_h + i] = lse;
    }
  }
}

__device__ void fill_empty(const SpattnFillParams& p) {
  const WarpRow w = warp_row(p.batch, p.heads, p.nq);
  if (!w.valid) return;
  const int lane = w.lane, i = w.i, h = w.h, b = w.b;
  unsigned short* out = static_cast<unsigned short*>(p.o) + b * p.o_stride_b + i * p.o_stride_n + h * p.o_stride_h;
  for (int d = lane; d < p.head_dim; d += 32) out[d] = 0;  // +0.0 in fp16 and bf16
  if (p.lse && lane == 0) p.lse[b * p.lse_stride_b + h * p.lse_stride_h + i] = __int_as_float(0xff800000);
}

__device__ void fill_random(const SpattnRandomParams& p) {
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < p.n; idx += (int64_t)gridDim.x * blockDim.x) {
    // splitmix64 of (seed, index)
    uint64_t z = p.seed * 0x9E3779B97F4A7C15ull + (uint64_t)idx + 1;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = (float)(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    const float x = (2.f * u - 1.f) * p.scale;
    static_cast<unsigned short*>(p.data)[idx] = p.bf16 ? to_half_bits<true>(x) : to_half_bits<false>(x);
  }
}

// Blocks of kGatherRows destination rows of one segment (grid.x), segments (grid.y,
// strided), batch rows (grid.z); a thread moves 16-byte chunks, four loads in flight
// before their stores.
constexpr int kGatherRows = 64;
__device__ void gather_rows(const SpattnGatherParams& p) {
  const int chunks = p.head_dim / 8;
  const int total = kGatherRows * chunks;
  const int b = blockIdx.z;
  for (int s = blockIdx.y; s < p.num_segments; s += gridDim.y) {
    const int32_t* seg = p.segments + 4 * s;
    const int64_t dst_row = seg[0];
    const int32_t* slots = p.arena + seg[1];
    const int rows = seg[2], head = seg[3];
    const int r0 = blockIdx.x * kGatherRows;
    if (r0 >= rows) continue;
    for (int t = 0; t < p.tensors; ++t) {
      const unsigned short* src = static_cast<const unsigned short*>(p.src[t]) + b * p.src_stride_b[t] +
                                  (int64_t)head * p.src_stride_h[t];
      unsigned short* dst = static_cast<unsigned short*>(p.dst[t]) + ((int64_t)b * p.rows_per_batch + dst_row) * p.head_dim;
      for (int x0 = threadIdx.x; x0 < total; x0 += 4 * blockDim.x) {
        uint4 v[4];
        int64_t at[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int x = x0 + u * blockDim.x;
          const int r = r0 + x / chunks, c = x % chunks;
          at[u] = -1;
          v[u] = make_uint4(0u, 0u, 0u, 0u);
          if (x >= total || r >= rows) continue;
          at[u] = (int64_t)r * p.head_dim + c * 8;
          const int token = __ldg(slots + r);
          if (token >= 0 && token < p.limit)
            v[u] = __ldg(reinterpret_cast<const uint4*>(src + (int64_t)token * p.src_stride_n[t] + c * 8));
        }
#pragma unroll
        for (int u = 0; u < 4; ++u)
          if (at[u] >= 0) *reinterpret_cast<uint4*>(dst + at[u]) = v[u];
      }
    }
  }
}

template <bool kBf16>
__device__ __forceinline__ float half_bits_to_float(unsigned short x) {
  if constexpr (kBf16) return __uint_as_float(static_cast<unsigned>(x) << 16);
  float f;
  asm("cvt.f32.f16 %0, %1;\n" : "=f"(f) : "h"(x));
  return f;
}

// One warp per (batch, head, query row).
template <bool kBf16>
__device__ void backward_prep(const SpattnBwdPrepParams& p) {
  const WarpRow w = warp_row(p.batch, p.heads, p.nq);
  if (!w.valid) return;
  const unsigned short* o =
      static_cast<const unsigned short*>(p.o) + w.b * p.o_stride_b + w.i * p.o_stride_n + w.h * p.o_stride_h;
  const unsigned short* d_o =
      static_cast<const unsigned short*>(p.d_o) + w.b * p.do_stride_b + w.i * p.do_stride_n + w.h * p.do_stride_h;
  float sum = 0.f;
  for (int d = w.lane; d < p.head_dim; d += 32) sum += half_bits_to_float<kBf16>(o[d]) * half_bits_to_float<kBf16>(d_o[d]);
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (w.lane == 0) p.dsum[((int64_t)w.b * p.heads + w.h) * p.nq + w.i] = sum;
}

// One warp per (batch, row, head).
template <bool kBf16>
__device__ void backward_convert(const SpattnBwdConvertParams& p) {
  const WarpRow w = warp_row(p.batch, p.heads, p.n);
  if (!w.valid) return;
  const float* acc = p.acc + (((int64_t)w.b * p.n + w.i) * p.heads + w.h) * p.head_dim;
  unsigned short* out =
      static_cast<unsigned short*>(p.out) + w.b * p.out_stride_b + w.i * p.out_stride_n + w.h * p.out_stride_h;
  for (int d = w.lane; d < p.head_dim; d += 32) out[d] = to_half_bits<kBf16>(acc[d]);
}

}  // namespace spattn

extern "C" __global__ void spattn_fill_random(const SpattnRandomParams p) { spattn::fill_random(p); }
extern "C" __global__ void spattn_merge_bf16(const SpattnMergeParams p) { spattn::merge_parts<true>(p); }
extern "C" __global__ void spattn_merge_fp16(const SpattnMergeParams p) { spattn::merge_parts<false>(p); }
extern "C" __global__ void spattn_merge_splits_bf16(const SpattnSplitMergeParams p) { spattn::merge_splits<true>(p); }
extern "C" __global__ void spattn_merge_splits_fp16(const SpattnSplitMergeParams p) { spattn::merge_splits<false>(p); }
extern "C" __global__ void spattn_fill_empty(const SpattnFillParams p) { spattn::fill_empty(p); }
extern "C" __global__ void spattn_gather_rows(const SpattnGatherParams p) { spattn::gather_rows(p); }
extern "C" __global__ void spattn_backward_prep_bf16(const SpattnBwdPrepParams p) { spattn::backward_prep<true>(p); }
extern "C" __global__ void spattn_backward_prep_fp16(const SpattnBwdPrepParams p) { spattn::backward_prep<false>(p); }
extern "C" __global__ void spattn_backward_convert_bf16(const SpattnBwdConvertParams p) { spattn::backward_convert<true>(p); }
extern "C" __global__ void spattn_backward_convert_fp16(const SpattnBwdConvertParams p) { spattn::backward_convert<false>(p); }
