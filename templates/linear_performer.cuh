// Performer (FAVOR+) kernels around cuBLAS GEMMs (linear/performer.cpp runs them):
//
//   φ(x) = exp(ω x̂ - |x̂|²/2 - c) / sqrt(m),   x̂ = x D^(-1/4)    (positive random features)
//   non-causal: O = φ(Q) (φ(K)ᵀ V) / (φ(Q) φ(K)ᵀ 1)
//   causal:     O_i = φ(q_i) Σ_{j<=i} φ(k_j) v_jᵀ / φ(q_i) Σ_{j<=i} φ(k_j)
//
// The projections ω x̂ and the products with φ are cuBLAS GEMMs; here are the pieces
// between them. The stabiliser c is exact in both estimators because it cancels between
// numerator and denominator: per query row its own max (a factor of the whole row), for
// keys one max per (batch, head) over every key and feature (a factor of every term), as
// FAVOR+ implementations do. A row whose denominator underflows to 0 gets output 0.
#pragma once

#include "spattn/linear_common.cuh"
#include "spattn/warp.cuh"

namespace spattn::linear {


// Float max through integer atomics (IEEE order: non-negative floats order as ints,
// negative ones reversed as unsigned). *addr starts at -inf.
__device__ __forceinline__ void atomic_max_float(float* addr, float v) {
  if (v >= 0.f) atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));
  else atomicMin(reinterpret_cast<unsigned*>(addr), __float_as_uint(v));
}

// Row (b, h, n) of a [B, H, N, ...] buffer for this warp, one warp per row.
struct FeatureRow {
  bool valid;
  int lane, b, h, n;
  int64_t row;
};
__device__ __forceinline__ FeatureRow feature_row(int batch, int heads, int n) {
  FeatureRow r;
  r.row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  r.valid = r.row < (int64_t)batch * heads * n;
  r.lane = threadIdx.x % 32;
  r.n = r.row % n;
  r.h = (r.row / n) % heads;
  r.b = r.row / ((int64_t)n * heads);
  return r;
}

// |x̂|² / 2 of row (b, n, h) of x.
template <int kDtype>
__device__ __forceinline__ float half_sq_norm(const SpattnFeatureParams& p, const FeatureRow& r) {
  const int64_t base = r.b * p.x_stride_b + (int64_t)r.n * p.x_stride_n + (int64_t)r.h * p.x_stride_h;
  float acc = 0.f;
  for (int d = r.lane; d < p.head_dim; d += 32) {
    const float v = load_elem<kDtype>(p.x, base + d);
    acc += v * v;
  }
  return warp_sum(acc) * p.half_norm_scale;
}

// Queries: φ = exp(e - max_f e) / sqrt(m) per row, e = ω x̂ - |x̂|²/2 (in place).
template <int kDtype>
__device__ void query_features(const SpattnFeatureParams& p) {
  const FeatureRow r = feature_row(p.batch, p.heads, p.n);
  if (!r.valid) return;
  const float norm = half_sq_norm<kDtype>(p, r);
  float* s = p.s + r.row * p.features;
  float mx = -3.0e38f;
  for (int f = r.lane; f < p.features; f += 32) mx = fmaxf(mx, s[f] - norm);
  mx = warp_max(mx);
  for (int f = r.lane; f < p.features; f += 32) s[f] = expf(s[f] - norm - mx) * p.feature_scale;
}

// Keys, first pass: exponents e = ω x̂ - |x̂|²/2 in place, and their max per (b, h).
template <int kDtype>
__device__ void key_exponents(const SpattnFeatureParams& p) {
  const FeatureRow r = feature_row(p.batch, p.heads, p.n);
  if (!r.valid) return;
  const float norm = half_sq_norm<kDtype>(p, r);
  float* s = p.s + r.row * p.features;
  float mx = -3.0e38f;
  for (int f = r.lane; f < p.features; f += 32) {
    const float e = s[f] - norm;
    s[f] = e;
    mx = fmaxf(mx, e);
  }
  mx = warp_max(mx);
  if (r.lane == 0) atomic_max_float(p.key_max + (int64_t)r.b * p.heads + r.h, mx);
}

// Keys, second pass: φ = exp(e - max_{b,h}) / sqrt(m), elementwise.
__device__ void key_features(const SpattnFeatureParams& p) {
  const int64_t total = (int64_t)p.batch * p.heads * p.n * p.features;
  const int64_t per_head = (int64_t)p.n * p.features;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
    p.s[i] = expf(p.s[i] - p.key_max[i / per_head]) * p.feature_scale;
}

// V [B, Nk, Hkv, Dv] (any 16-bit/fp32 dtype) to fp32 [B, Hkv, Nk, Dv + 1] with a ones column.
template <int kDtype>
__device__ void convert_values(const SpattnValueParams& p) {
  const FeatureRow r = feature_row(p.batch, p.heads, p.n);
  if (!r.valid) return;
  const int64_t src = r.b * p.v_stride_b + (int64_t)r.n * p.v_stride_n + (int64_t)r.h * p.v_stride_h;
  float* dst = p.out + r.row * (p.dv + 1);
  for (int d = r.lane; d < p.dv; d += 32) dst[d] = load_elem<kDtype>(p.v, src + d);
  if (r.lane == 0) dst[p.dv] = 1.f;
}

// O = numerator / denominator per row (0 where the denominator is 0).
template <int kDtype>
__device__ void normalize(const SpattnNormalizeParams& p) {
  const FeatureRow r = feature_row(p.batch, p.heads, p.n);
  if (!r.valid) return;
  const float* num = p.num + r.row * (p.dv + 1);
  const float den = num[p.dv];
  const float inv = den > 0.f ? 1.f / den : 0.f;
  const int64_t dst = r.b * p.o_stride_b + (int64_t)r.n * p.o_stride_n + (int64_t)r.h * p.o_stride_h;
  for (int d = r.lane; d < p.dv; d += 32) store_elem<kDtype>(p.o, dst + d, num[d] * inv);
}

// Causal prefix scan. A CTA owns one (batch, query head) and kSlice columns of V and walks
// the sequence in chunks of kChunk tokens with the running state S = Σ φ(k_j) v_jᵀ
// (m x kSlice) and z = Σ φ(k_j) (m) in shared memory, fp32:
//   A = tril(φ(Q_c) φ(K_c)ᵀ)            (within the chunk, j <= i)
//   den_i = φ(q_i)·z + Σ_j A_ij,   num_i = φ(q_i) S + Σ_j A_ij v_j
//   S += φ(K_c)ᵀ V_c,   z += φ(K_c)ᵀ 1
// Memory is O(m x kSlice) per CTA, never O(N m D). Rows of the feature tiles are padded
// to m + 1 floats so that lanes reading different rows hit different banks.
template <class Cfg>
__host__ __device__ constexpr int causal_smem_floats() {
  return 2 * Cfg::kChunk * (Cfg::kFeatures + 1) + Cfg::kChunk * Cfg::kSlice + Cfg::kChunk * (Cfg::kChunk + 1) +
         Cfg::kChunk + Cfg::kFeatures * Cfg::kSlice + Cfg::kFeatures;
}

template <class Cfg>
__device__ void causal_scan(const SpattnCausalParams& p) {
  constexpr int M = Cfg::kFeatures, C = Cfg::kChunk, W = Cfg::kSlice, T = Cfg::kThreads;
  constexpr int kLd = M + 1;
  extern __shared__ float smem[];
  float* q_s = smem;              // [C][kLd]
  float* k_s = q_s + C * kLd;     // [C][kLd]
  float* v_s = k_s + C * kLd;     // [C][W]
  float* a_s = v_s + C * W;       // [C][C + 1]
  float* den_s = a_s + C * (C + 1);  // [C]
  float* state = den_s + C;       // [M][W]
  float* z_s = state + M * W;     // [M]

  const int tid = threadIdx.x;
  const int d0 = blockIdx.x * W;
  const int h = blockIdx.y, b = blockIdx.z;
  const int kh = h / p.kv_group;
  const int N = p.n, Dv = p.dv;
  const float* qf = p.q_features + ((int64_t)b * p.heads + h) * N * M;
  const float* kf = p.k_features + ((int64_t)b * (p.heads / p.kv_group) + kh) * N * M;
  const float* vf = p.values + ((int64_t)b * (p.heads / p.kv_group) + kh) * N * (Dv + 1);

  for (int k = tid; k < M * W; k += T) state[k] = 0.f;
  for (int k = tid; k < M; k += T) z_s[k] = 0.f;

  for (int c0 = 0; c0 < N; c0 += C) {
    __syncthreads();  // the previous chunk's state update is done with the tiles
    for (int k = tid; k < C * M; k += T) {
      const int i = k / M, f = k % M;
      const bool in = c0 + i < N;
      q_s[i * kLd + f] = in ? qf[(int64_t)(c0 + i) * M + f] : 0.f;
      k_s[i * kLd + f] = in ? kf[(int64_t)(c0 + i) * M + f] : 0.f;
    }
    for (int k = tid; k < C * W; k += T) {
      const int i = k / W, d = k % W;
      v_s[k] = c0 + i < N && d0 + d < Dv ? vf[(int64_t)(c0 + i) * (Dv + 1) + d0 + d] : 0.f;
    }
    __syncthreads();
    for (int k = tid; k < C * C; k += T) {
      const int i = k / C, j = k % C;
      float a = 0.f;
      if (j <= i) {
#pragma unroll 8
        for (int f = 0; f < M; ++f) a += q_s[i * kLd + f] * k_s[j * kLd + f];
      }
      a_s[i * (C + 1) + j] = a;
    }
    __syncthreads();
    for (int i = tid; i < C; i += T) {
      float den = 0.f;
      for (int f = 0; f < M; ++f) den += q_s[i * kLd + f] * z_s[f];
      for (int j = 0; j <= i; ++j) den += a_s[i * (C + 1) + j];
      den_s[i] = den;
    }
    __syncthreads();
    for (int k = tid; k < C * W; k += T) {
      const int i = k / W, d = k % W;
      if (c0 + i >= N || d0 + d >= Dv) continue;
      float num = 0.f;
#pragma unroll 8
      for (int f = 0; f < M; ++f) num += q_s[i * kLd + f] * state[f * W + d];
      for (int j = 0; j <= i; ++j) num += a_s[i * (C + 1) + j] * v_s[j * W + d];
      const float den = den_s[i];
      const int64_t dst = (int64_t)b * p.o_stride_b + (int64_t)(c0 + i) * p.o_stride_n + (int64_t)h * p.o_stride_h +
                          d0 + d;
      store_elem<Cfg::kDtype>(p.o, dst, den > 0.f ? __fdividef(num, den) : 0.f);
    }
    __syncthreads();  // outputs have read the state
    for (int k = tid; k < M * W; k += T) {
      const int f = k / W, d = k % W;
      float acc = 0.f;
#pragma unroll 8
      for (int j = 0; j < C; ++j) acc += k_s[j * kLd + f] * v_s[j * W + d];
      state[k] += acc;
    }
    for (int f = tid; f < M; f += T) {
      float acc = 0.f;
      for (int j = 0; j < C; ++j) acc += k_s[j * kLd + f];
      z_s[f] += acc;
    }
  }
}

}  // namespace spattn::linear
