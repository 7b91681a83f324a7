// Linear layers through cuBLASLt: Y = alpha * X W^T + beta * C + bias over row-major
// 16-bit matrices, fp32 accumulation, the bias fused in the epilogue.
//
// cuBLASLt is column-major; a row-major [rows, cols] matrix with row stride ld is the
// column-major [cols, rows] matrix with leading dimension ld. So with W [m, k] (weights,
// torch's [out_features, in_features]), X [n, k] (n tokens) and Y [n, m]:
//   Y^T (m x n) = op(W^T) (m x k, transa = T) * X^T (k x n, transb = N)
// which is one GEMM with m = out features, n = tokens, k = in features, and the bias
// (length m = rows of cuBLASLt's D) broadcast over the tokens by CUBLASLT_EPILOGUE_BIAS.
// The epilogue computes alpha * W X + beta * C + bias: the bias is not scaled by alpha.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "modules/cuda_check.hpp"

namespace spattn::modules {

struct GemmArgs {
  int64_t m = 0, n = 0, k = 0;
  const void* w = nullptr;  // [m, k], row stride ldw
  int64_t ldw = 0;
  const void* x = nullptr;  // [n, k], row stride ldx
  int64_t ldx = 0;
  void* y = nullptr;        // [n, m], row stride ldy
  int64_t ldy = 0;
  const void* bias = nullptr;  // [m] or null
  const void* c = nullptr;     // [n, m], row stride ldc; only read when beta != 0 (may be y, with ldc == ldy)
  int64_t ldc = 0;
  float alpha = 1.0f;
  float beta = 0.0f;
};

class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Runs on the current device (the handle and the workspace are made there on first use).
  // bf16: all of w, x, y, c, bias are bf16, else fp16. Throws kUnsupported where cuBLASLt
  // has no algorithm for the shape and alignment.
  void run(const GemmArgs& args, bool bf16, cudaStream_t stream);
  size_t workspace_bytes() const { return workspace_.bytes(); }
  // "m x n x k" of the last GEMMs, for explain().
  const std::string& last_shapes() const { return last_shapes_; }
  void clear_shapes() { last_shapes_.clear(); }

 private:
  struct Plan;
  // (m, n, k, ldw, ldx, ldy, ldc, bias?, beta?, bf16, alignments of w, x, y, c)
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, bool, uint32_t,
                         uint32_t, uint32_t, uint32_t>;
  Plan& plan_for(const Key& key);

  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer workspace_;
  std::map<Key, std::unique_ptr<Plan>> plans_;
  std::string last_shapes_;
};

}  // namespace spattn::modules
