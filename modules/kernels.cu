// Element-wise kernels of the attention modules (see kernels.hpp). They are bandwidth-bound
// and small next to the projections and the attention, so they favour plainness: fp32
// arithmetic on 16-bit data, two elements per access where the layout allows.
#include "modules/kernels.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>

namespace spattn::modules {
namespace {

__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

template <typename T> struct Pair;
template <> struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ float2 to(type v) { return __bfloat1622float2(v); }
  static __device__ __forceinline__ type from(float2 v) { return __float22bfloat162_rn(v); }
};
template <> struct Pair<__half> {
  using type = __half2;
  static __device__ __forceinline__ float2 to(type v) { return __half22float2(v); }
  static __device__ __forceinline__ type from(float2 v) { return __float22half2_rn(v); }
};

constexpr int kThreads = 256;

// One thread per (row, pair i): the angle depends on the position and i only, so each
// thread computes one sincos and turns that pair in every head of the row.
template <typename T, bool kInterleaved>
__global__ void rotary_kernel(T* x, int64_t rows, int64_t tokens, int64_t row_stride, int heads, int head_dim,
                              int64_t position_offset, float log2_base) {
  const int half_dim = head_dim / 2;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * half_dim) return;
  const int i = static_cast<int>(index % half_dim);
  const int64_t row = index / half_dim;
  const float position = static_cast<float>(row % tokens + position_offset);
  // inv_freq = base^(-2i/D), then angle = position * inv_freq, both fp32 (torch's rotary).
  const float inv_freq = exp2f(-(2.0f * static_cast<float>(i) / static_cast<float>(head_dim)) * log2_base);
  float s, c;
  sincosf(position * inv_freq, &s, &c);
  T* base = x + row * row_stride;
  for (int h = 0; h < heads; ++h) {
    T* head = base + static_cast<int64_t>(h) * head_dim;
    if constexpr (kInterleaved) {
      using P = Pair<T>;
      auto* pair = reinterpret_cast<typename P::type*>(head) + i;
      const float2 v = P::to(*pair);
      *pair = P::from(make_float2(v.x * c - v.y * s, v.y * c + v.x * s));
    } else {
      const float a = to_float(head[i]), b = to_float(head[i + half_dim]);
      head[i] = from_float<T>(a * c - b * s);
      head[i + half_dim] = from_float<T>(b * c + a * s);
    }
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// One warp per row, three passes over the row (mean, variance, normalise): the row is
// E * 2 bytes, so the second and third passes come from L1/L2.
template <typename T>
__global__ void layernorm_kernel(T* x, const T* gamma, const T* beta, int64_t rows, int cols, float eps) {
  using P = Pair<T>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  auto* r = reinterpret_cast<typename P::type*>(x + row * cols);
  const auto* g = reinterpret_cast<const typename P::type*>(gamma);
  const auto* b = reinterpret_cast<const typename P::type*>(beta);
  const int pairs = cols / 2;
  float sum = 0;
  for (int c = lane; c < pairs; c += 32) {
    const float2 v = P::to(r[c]);
    sum += v.x + v.y;
  }
  const float mean = warp_sum(sum) / static_cast<float>(cols);
  float squares = 0;
  for (int c = lane; c < pairs; c += 32) {
    const float2 v = P::to(r[c]);
    squares += (v.x - mean) * (v.x - mean) + (v.y - mean) * (v.y - mean);
  }
  const float rstd = 1.0f / sqrtf(warp_sum(squares) / static_cast<float>(cols) + eps);
  for (int c = lane; c < pairs; c += 32) {
    const float2 v = P::to(r[c]), gv = P::to(g[c]), bv = P::to(b[c]);
    r[c] = P::from(make_float2((v.x - mean) * rstd * gv.x + bv.x, (v.y - mean) * rstd * gv.y + bv.y));
  }
}

template <typename T>
__global__ void scale_kernel(const T* in, T* out, int64_t n, float factor) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = from_float<T>(factor * to_float(in[i]));
}

unsigned blocks_for(int64_t work, int per_block) { return static_cast<unsigned>((work + per_block - 1) / per_block); }

// Launch failures surface as std::runtime_error here (this file is compiled by nvcc
// without the C++20 public headers); the host side turns them into spattn::Error.
void check_launch(const char* kernel) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess)
    throw std::runtime_error(std::string(kernel) + " launch failed: " + cudaGetErrorString(status));
}

}  // namespace

void launch_rotary(void* x, bool bf16, int64_t rows, int64_t tokens, int64_t row_stride, int heads, int head_dim,
                   int64_t position_offset, float base, bool interleaved, cudaStream_t stream) {
  if (rows <= 0 || heads <= 0) return;
  const unsigned grid = blocks_for(rows * (head_dim / 2), kThreads);
  const float log2_base = log2f(base);
#define SPATTN_ROTARY(T, I) \
  rotary_kernel<T, I><<<grid, kThreads, 0, stream>>>(static_cast<T*>(x), rows, tokens, row_stride, heads, head_dim, \
                                                     position_offset, log2_base)
  if (bf16) {
    if (interleaved) SPATTN_ROTARY(__nv_bfloat16, true); else SPATTN_ROTARY(__nv_bfloat16, false);
  } else {
    if (interleaved) SPATTN_ROTARY(__half, true); else SPATTN_ROTARY(__half, false);
  }
#undef SPATTN_ROTARY
  check_launch("rotary embedding");
}

void launch_layernorm(void* x, const void* gamma, const void* beta, bool bf16, int64_t rows, int cols, float eps,
                      cudaStream_t stream) {
  if (rows <= 0) return;
  constexpr int kRowsPerBlock = kThreads / 32;
  const unsigned grid = blocks_for(rows, kRowsPerBlock);
  if (bf16)
    layernorm_kernel<<<grid, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(x),
                                                    static_cast<const __nv_bfloat16*>(gamma),
                                                    static_cast<const __nv_bfloat16*>(beta), rows, cols, eps);
  else
    layernorm_kernel<<<grid, kThreads, 0, stream>>>(static_cast<__half*>(x), static_cast<const __half*>(gamma),
                                                    static_cast<const __half*>(beta), rows, cols, eps);
  check_launch("sub-LayerNorm");
}

void launch_scale(const void* in, void* out, bool bf16, int64_t n, float factor, cudaStream_t stream) {
  if (n <= 0) return;
  const unsigned grid = blocks_for(n, kThreads);
  if (bf16)
    scale_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(in), static_cast<__nv_bfloat16*>(out),
                                                n, factor);
  else
    scale_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const __half*>(in), static_cast<__half*>(out), n, factor);
  check_launch("bias scale");
}

}  // namespace spattn::modules
