// The modules' element-wise kernels (kernels.cu, built by nvcc): rotary embedding on Q and
// K, the sub-LayerNorm, and a scaled copy of a bias. Everything else the modules run is a
// cuBLASLt GEMM or spattn::Attention. Launches are asynchronous on `stream`; a failed
// launch throws spattn::Error (kCuda). `bf16` selects bf16, else fp16.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace spattn::modules {

// Rotates `heads` consecutive heads of head_dim elements in each of rows = batch * tokens
// rows of x (row r starts at x + r * row_stride elements), in place. Token t of a row
// (t = r % tokens) has position t + position_offset; pair i turns by position * base^(-2i/D)
// (fp32, as PyTorch computes it). interleaved: pairs (2i, 2i+1), else (i, i + D/2).
void launch_rotary(void* x, bool bf16, int64_t rows, int64_t tokens, int64_t row_stride, int heads, int head_dim,
                   int64_t position_offset, float base, bool interleaved, cudaStream_t stream);

// In place over rows x cols contiguous (cols even): x = (x - mean) / sqrt(var + eps) * gamma + beta,
// statistics of each row in fp32 (biased variance, as torch.nn.LayerNorm).
void launch_layernorm(void* x, const void* gamma, const void* beta, bool bf16, int64_t rows, int cols, float eps,
                      cudaStream_t stream);

// out[i] = factor * in[i] for n elements (fp32 arithmetic, rounded to the dtype).
void launch_scale(const void* in, void* out, bool bf16, int64_t n, float factor, cudaStream_t stream);

}  // namespace spattn::modules
