// Small companion kernels of the forward pass.
//  - merge: combines the per-part outputs of a multi-part layout (LongNet branches,
//    unions of differently ordered members) with LSE weights: O = sum_p w_p O_p with
//    w_p = exp(lse_p - lse), lse = log sum_p exp(lse_p). Parts a row does not take
//    part in have lse_p = -inf and weight 0; a row with no part gets O = 0, LSE = -inf.
//  - fill: O = 0 and LSE = -inf for every row, before a single-part layout that leaves
//    some rows without any table.
//  - fill_random: uniform random fp16/bf16 values (tests, benchmarks, the demo).
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

// One warp per (batch, head, query row); lanes stride over the head dimension.
template <bool kBf16>
__device__ void merge_parts(const SpattnMergeParams& p) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t rows = (int64_t)p.batch * p.heads * p.nq;
  if (row >= rows) return;
  const int i = row % p.nq;
  const int h = (row / p.nq) % p.heads;
  const int b = row / ((int64_t)p.nq * p.heads);
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
        acc += w * p.part_o[((((int64_t)part * p.batch + b) * p.nq + i) * p.heads + h) * p.head_dim + d];
      }
    }
    out[d] = to_half_bits<kBf16>(acc);
  }
  if (p.lse && lane == 0) p.lse[b * p.lse_stride_b + h * p.lse_stride_h + i] = lse;
}

__device__ void fill_empty(const SpattnFillParams& p) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t rows = (int64_t)p.batch * p.heads * p.nq;
  if (row >= rows) return;
  const int i = row % p.nq;
  const int h = (row / p.nq) % p.heads;
  const int b = row / ((int64_t)p.nq * p.heads);
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

}  // namespace spattn

extern "C" __global__ void spattn_fill_random(const SpattnRandomParams p) { spattn::fill_random(p); }
extern "C" __global__ void spattn_merge_bf16(const SpattnMergeParams p) { spattn::merge_parts<true>(p); }
extern "C" __global__ void spattn_merge_fp16(const SpattnMergeParams p) { spattn::merge_parts<false>(p); }
extern "C" __global__ void spattn_fill_empty(const SpattnFillParams p) { spattn::fill_empty(p); }
