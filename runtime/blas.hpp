// cuBLAS, loaded at run time with dlopen (like libcuda in runtime/driver.hpp): nothing
// in spattn links a CUDA library, so a host without cuBLAS or a GPU still builds and
// runs everything else. The entry points are resolved once into one table; a GEMM on a
// host without cuBLAS throws kUnsupported saying where it was looked for.
//
// GEMMs are written in row-major terms (the layout of spattn's tensors) and mapped onto
// cuBLAS's column-major ones here: 16-bit (fp16, bf16) or fp32 inputs, fp32 (or 16-bit)
// output, fp32 accumulation, strided-batched.
#pragma once

#include <spattn/tensor.hpp>

#include <cstdint>
#include <string>

typedef struct CUstream_st* CUstream;

namespace spattn::runtime::blas {

// Whether a cuBLAS library loads and has every entry point used here (no GPU needed).
bool available();
// Why available() is false ("" when it is true).
std::string unavailable_reason();
// The library that was loaded ("" when none).
std::string library_path();

// One operand: a row-major matrix (or a batch of them, `batch_stride` elements apart),
// `ld` elements between rows, used as is or transposed.
struct Operand {
  const void* data = nullptr;
  DType dtype = DType::kFloat32;
  int64_t ld = 0;
  int64_t batch_stride = 0;
  bool transpose = false;
};

struct Output {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  int64_t ld = 0;
  int64_t batch_stride = 0;
};

enum class Compute {
  kFp32,      // fp32 accumulation (tensor cores for 16-bit inputs; full fp32 for fp32 inputs)
  kFastTf32,  // fp32 inputs through TF32 tensor cores (10-bit mantissa products)
};

// For every i < batch, row-major: C_i (m x n) = alpha op(A_i) (m x k) op(B_i) (k x n) + beta C_i,
// on the device of the current context, asynchronous on `stream`. A and B share a dtype.
// Throws kInvalidArgument for inconsistent sizes, kUnsupported without cuBLAS, kCuda
// (with cuBLAS's status text) when cuBLAS fails.
void gemm(int64_t m, int64_t n, int64_t k, int64_t batch, float alpha, const Operand& a, const Operand& b, float beta,
          const Output& c, CUstream stream, Compute compute = Compute::kFp32);

}  // namespace spattn::runtime::blas
