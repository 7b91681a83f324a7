#include "modules/gemm.hpp"

#include <algorithm>

namespace spattn::modules {
namespace {

// cuBLAS's recommended workspace on Hopper (smaller GPUs take what they need of it).
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

// The largest power of two (up to cuBLASLt's default 256) dividing the address: the
// alignment the heuristic may assume.
uint32_t alignment_of(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && address % a != 0) a /= 2;
  return a;
}

}  // namespace

struct Gemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t w = nullptr, x = nullptr, y = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    for (cublasLtMatrixLayout_t layout : {w, x, y, c})
      if (layout) cublasLtMatrixLayoutDestroy(layout);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

Gemm::Gemm() = default;

Gemm::~Gemm() {
  plans_.clear();
  if (handle_) cublasLtDestroy(handle_);
}

Gemm::Plan& Gemm::plan_for(const Key& key) {
  auto& slot = plans_[key];
  if (slot) return *slot;
  const auto [m, n, k, ldw, ldx, ldy, ldc, has_bias, has_c, bf16, align_w, align_x, align_y, align_c] = key;
  const cudaDataType_t type = bf16 ? CUDA_R_16BF : CUDA_R_16F;
  auto plan = std::make_unique<Plan>();
  SPATTN_MODULES_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;
  SPATTN_MODULES_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof(transa)));
  SPATTN_MODULES_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof(transb)));
  const cublasLtEpilogue_t epilogue = has_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  SPATTN_MODULES_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
  if (has_bias) {
    const int32_t bias_type = type;  // the weights' dtype, as torch stores biases
    SPATTN_MODULES_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
  }
  // Column-major views of the row-major matrices (see gemm.hpp): W^T is k x m, X^T k x n, Y^T and C^T m x n.
  SPATTN_MODULES_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->w, type, k, m, ldw));
  SPATTN_MODULES_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->x, type, k, n, ldx));
  SPATTN_MODULES_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->y, type, m, n, ldy));
  SPATTN_MODULES_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->c, type, m, n, has_c ? ldc : ldy));

  cublasLtMatmulPreference_t preference = nullptr;
  SPATTN_MODULES_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  struct PreferenceGuard {
    cublasLtMatmulPreference_t p;
    ~PreferenceGuard() { cublasLtMatmulPreferenceDestroy(p); }
  } guard{preference};
  const uint64_t workspace = kWorkspaceBytes;
  SPATTN_MODULES_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace)));
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> alignments[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_w},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_x},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, has_c ? align_c : align_y},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_y}};
  for (const auto& [attribute, bytes] : alignments)
    SPATTN_MODULES_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, attribute, &bytes, sizeof(bytes)));

  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  SPATTN_MODULES_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, plan->desc, plan->w, plan->x, plan->c, plan->y,
                                                             preference, 1, &result, &found));
  if (found == 0)
    throw Error(ErrorCode::kUnsupported,
                fmt::format("cuBLASLt has no {} GEMM for m={} n={} k={} (row strides W {}, X {}, Y {}; alignments {}, "
                            "{}, {} bytes){}; use contiguous, 16-byte aligned tensors",
                            bf16 ? "bf16" : "fp16", m, n, k, ldw, ldx, ldy, align_w, align_x, align_y,
                            has_bias ? " with a bias epilogue" : ""));
  plan->algo = result.algo;
  slot = std::move(plan);
  return *slot;
}

void Gemm::run(const GemmArgs& a, bool bf16, cudaStream_t stream) {
  if (!handle_) SPATTN_MODULES_CUBLAS_CHECK(cublasLtCreate(&handle_));
  workspace_.reserve(kWorkspaceBytes);
  const bool has_c = a.beta != 0.0f;
  const Key key{a.m,
                a.n,
                a.k,
                a.ldw,
                a.ldx,
                a.ldy,
                has_c ? a.ldc : 0,
                a.bias != nullptr,
                has_c,
                bf16,
                alignment_of(a.w),
                alignment_of(a.x),
                alignment_of(a.y),
                has_c ? alignment_of(a.c) : 0u};
  Plan& plan = plan_for(key);
  if (a.bias)
    SPATTN_MODULES_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &a.bias, sizeof(a.bias)));
  const void* c = has_c ? a.c : a.y;
  SPATTN_MODULES_CUBLAS_CHECK(cublasLtMatmul(handle_, plan.desc, &a.alpha, a.w, plan.w, a.x, plan.x, &a.beta, c,
                                             plan.c, a.y, plan.y, &plan.algo, workspace_.data(), workspace_.bytes(),
                                             stream));
  last_shapes_ += fmt::format("{}{}x{}x{}{}", last_shapes_.empty() ? "" : ", ", a.m, a.n, a.k, a.bias ? "+bias" : "");
}

}  // namespace spattn::modules
