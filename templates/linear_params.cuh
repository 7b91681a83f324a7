// Kernel parameter structs of the linear-time kernels (templates/linear_*.cuh), shared
// verbatim by host code (C++20) and NVRTC: plain fixed-width fields only.
#pragma once

#ifdef __CUDACC_RTC__
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
#else
#include <cstdint>
#endif

// Mamba selective scan (S6). Sequence tensors are [B, L, channels] (x, delta, z, y) or
// [B, L, state] (b, c) with the last dimension contiguous; strides in elements.
struct SpattnScanParams {
  const void* x;             // u
  const void* delta;         // Δ_raw
  const void* z;             // gate, or null (no gate)
  const void* b;             // B_t
  const void* c;             // C_t
  void* y;
  const float* a_log;        // [channels, state]: A = -exp(A_log)
  const float* d_skip;       // [channels] or null (D = 0)
  const float* delta_bias;   // [channels] or null
  float* final_state;        // [B, channels, state] fp32, or null
  int64_t x_stride_b, x_stride_l;
  int64_t delta_stride_b, delta_stride_l;
  int64_t z_stride_b, z_stride_l;
  int64_t y_stride_b, y_stride_l;
  int64_t b_stride_b, b_stride_l;
  int64_t c_stride_b, c_stride_l;
  int32_t batch, length, channels;
  int32_t delta_softplus;    // 1: Δ = softplus(Δ_raw + bias); 0: Δ = Δ_raw + bias
  // Sequence splits (gridDim.y): split s covers steps [s * split_length, (s + 1) *
  // split_length), split_length a multiple of the chunk. With splits > 1 the scan runs
  // twice: with summarise = 1 each split writes its end state from h = 0 and its ΣΔ
  // (split_h [B, splits, channels, state], split_dsum [B, splits, channels]); then with
  // summarise = 0 each split starts from the composition of the splits before it.
  int32_t splits, split_length, summarise;
  float* split_h;
  float* split_dsum;
};

// Performer (FAVOR+) helper kernels. Feature buffers are fp32 [B, H, N, m] (one row of m
// features per head and token); values [B, Hkv, Nk, Dv + 1] fp32 with a last column of
// ones, so that one GEMM gives φ(K)ᵀV and φ(K)ᵀ1 together.
struct SpattnFeatureParams {
  const void* x;            // Q or K rows [B, N, H, D], head dim contiguous
  int64_t x_stride_b, x_stride_n, x_stride_h;
  float* s;                 // [B, H, N, m]: ω·x̂ in, exponents (keys) or features (queries) out
  float* key_max;           // [B, H]: max exponent of the keys (keys only)
  int32_t batch, n, heads, head_dim, features;
  float half_norm_scale;    // 1 / (2 sqrt(D)): |x|^2 times this is |x̂|^2 / 2 for x̂ = x D^(-1/4)
  float feature_scale;      // 1 / sqrt(m)
};

struct SpattnValueParams {
  const void* v;            // [B, Nk, Hkv, Dv], head dim contiguous
  int64_t v_stride_b, v_stride_n, v_stride_h;
  float* out;               // [B, Hkv, Nk, Dv + 1]
  int32_t batch, n, heads, dv;
};

struct SpattnNormalizeParams {
  const float* num;         // [B, H, Nq, Dv + 1]: numerators, the denominator last
  void* o;                  // [B, Nq, H, Dv]
  int64_t o_stride_b, o_stride_n, o_stride_h;
  int32_t batch, n, heads, dv;
};

// Causal Performer: prefix sums of φ(K)ᵀ[V | 1] in chunks.
struct SpattnCausalParams {
  const float* q_features;  // [B, H, N, m]
  const float* k_features;  // [B, Hkv, N, m]
  const float* values;      // [B, Hkv, N, Dv + 1]
  void* o;                  // [B, N, H, Dv]
  int64_t o_stride_b, o_stride_n, o_stride_h;
  int32_t batch, n, heads, kv_group, dv;
};
