// Naive fp32 reference attention (see SpattnReferenceParams): deliberately simple, no
// tiling and no shared code with the forward template, so that it checks it.
#pragma once

#include "spattn/params.cuh"

namespace spattn {

__device__ __forceinline__ float load_half(const void* base, int64_t idx, bool bf16) {
  const unsigned short bits = static_cast<const unsigned short*>(base)[idx];
  float f;
  if (bf16) {
    f = __int_as_float(static_cast<int>(bits) << 16);
  } else {
    asm("{ .reg .f16 h; mov.b16 h, %1; cvt.f32.f16 %0, h; }\n" : "=f"(f) : "h"(bits));
  }
  return f;
}

constexpr int kRefMaxDimPerLane = 8;  // head dims up to 256

__device__ void reference_attention(const SpattnReferenceParams& p) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= (int64_t)p.batch * p.heads * p.nq) return;
  const int i = row % p.nq;
  const int h = (row / p.nq) % p.heads;
  const int b = row / ((int64_t)p.nq * p.heads);
  const int kvh = h / p.kv_group;
  const float neg_inf = __int_as_float(0xff800000);

  float q[kRefMaxDimPerLane];
  for (int t = 0; t < kRefMaxDimPerLane; ++t) {
    const int d = lane + 32 * t;
    q[t] = d < p.head_dim ? load_half(p.q, b * p.q_stride_b + i * p.q_stride_n + h * p.q_stride_h + d, p.bf16) : 0.f;
  }

  float out[kRefMaxDimPerLane] = {};
  float total_lse = neg_inf;
  for (int br = 0; br < p.branches; ++br) {
    const uint32_t* mask = p.masks + (((int64_t)br * p.heads + h) * p.nq + i) * p.words;
    float m = neg_inf, l = 0.f;
    float acc[kRefMaxDimPerLane] = {};
    for (int j = 0; j < p.nk; ++j) {
      if (!((mask[j / 32] >> (j % 32)) & 1u)) continue;
      float s = 0.f;
      for (int t = 0; t < kRefMaxDimPerLane; ++t) {
        const int d = lane + 32 * t;
        if (d < p.head_dim) s += q[t] * load_half(p.k, b * p.k_stride_b + j * p.k_stride_n + kvh * p.k_stride_h + d, p.bf16);
      }
      for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
      s *= p.scale;
      const float m_new = fmaxf(m, s);
      const float alpha = expf(m - m_new);
      const float w = expf(s - m_new);
      l = l * alpha + w;
      for (int t = 0; t < kRefMaxDimPerLane; ++t) {
        const int d = lane + 32 * t;
        const float vv = d < p.head_dim ? load_half(p.v, b * p.v_stride_b + j * p.v_stride_n + kvh * p.v_stride_h + d, p.bf16) : 0.f;
        acc[t] = acc[t] * alpha + w * vv;
      }
      m = m_new;
    }
    if (l == 0.f) continue;  // this row takes no part in the branch
    const float lse_b = m + logf(l);
    // Fold the branch into the running LSE-weighted merge.
    const float new_total = fmaxf(total_lse, lse_b) + log1pf(expf(-fabsf(total_lse - lse_b)));
    const float keep = total_lse == neg_inf ? 0.f : expf(total_lse - new_total);
    const float add = expf(lse_b - new_total);
    for (int t = 0; t < kRefMaxDimPerLane; ++t) out[t] = out[t] * keep + add * (acc[t] / l);
    total_lse = new_total;
  }
  for (int t = 0; t < kRefMaxDimPerLane; ++t) {
    const int d = lane + 32 * t;
    if (d < p.head_dim) p.o[(((int64_t)b * p.nq + i) * p.heads + h) * p.head_dim + d] = out[t];
  }
  if (lane == 0) p.lse[((int64_t)b * p.heads + h) * p.nq + i] = total_lse;
}

}  // namespace spattn

extern "C" __global__ void spattn_reference(const SpattnReferenceParams p) { spattn::reference_attention(p); }
