#include "runtime/blas.hpp"

#include <dlfcn.h>

#include <filesystem>
#include <map>
#include <mutex>
#include <type_traits>
#include <vector>

#include "common/check.hpp"
#include "common/log.hpp"
#include "runtime/device.hpp"
#include "runtime/nvrtc.hpp"

namespace spattn::runtime::blas {
namespace {

// The few cuBLAS types used, with the values of its stable C ABI (cublas_api.h,
// library_types.h), so no cuBLAS header is needed to build.
using Handle = struct cublasContext*;
using Status = int;  // CUBLAS_STATUS_SUCCESS = 0
constexpr int kOpN = 0, kOpT = 1;                                        // cublasOperation_t
constexpr int kR32F = 0, kR16F = 2, kR16BF = 14;                         // cudaDataType
constexpr int kCompute32F = 68, kCompute32FFastTf32 = 77;                // cublasComputeType_t
constexpr int kGemmDefault = -1;                                         // cublasGemmAlgo_t

#define SPATTN_BLAS_FUNCTIONS(X)                                                                            \
  X(cublasCreate_v2, Status (*)(Handle*))                                                                   \
  X(cublasDestroy_v2, Status (*)(Handle))                                                                   \
  X(cublasSetStream_v2, Status (*)(Handle, CUstream))                                                       \
  X(cublasGetStatusString, const char* (*)(Status))                                                         \
  X(cublasGemmStridedBatchedEx,                                                                             \
    Status (*)(Handle, int, int, int, int, int, const void*, const void*, int, int, long long, const void*, \
               int, int, long long, const void*, void*, int, int, long long, int, int, int))

struct Api {
#define SPATTN_BLAS_FIELD(name, ...) std::type_identity_t<__VA_ARGS__> name = nullptr;
  SPATTN_BLAS_FUNCTIONS(SPATTN_BLAS_FIELD)
#undef SPATTN_BLAS_FIELD
};

struct State {
  Api api;
  bool ok = false;
  std::string path, reason;
};

// $SPATTN_CUBLAS, then the sonames the dynamic loader finds (a process with PyTorch
// already has one loaded), then the toolkit's library folders.
std::vector<std::string> candidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("SPATTN_CUBLAS"); env && *env) out.emplace_back(env);
  for (const char* so : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"}) out.emplace_back(so);
  const std::filesystem::path home = cuda_home();
  for (const char* dir : {"lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"})
    for (const char* so : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"})
      out.push_back((home / dir / so).string());
  return out;
}

const State& state() {
  static const State s = [] {
    State st;
    std::string tried;
    void* lib = nullptr;
    for (const std::string& c : candidates()) {
      lib = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (lib) {
        st.path = c;
        break;
      }
      tried += (tried.empty() ? "" : ", ") + c;
    }
    if (!lib) {
      st.reason = "cuBLAS not found (tried " + tried +
                  "); install the CUDA toolkit's libcublas (12 or 13), or set SPATTN_CUBLAS to its path";
      return st;
    }
#define SPATTN_BLAS_RESOLVE(name, ...)                                                             \
  st.api.name = reinterpret_cast<__VA_ARGS__>(dlsym(lib, #name));                                 \
  if (!st.api.name) {                                                                             \
    st.reason = "cuBLAS at " + st.path + " lacks " #name "; use cuBLAS 12 or newer (SPATTN_CUBLAS)"; \
    return st;                                                                                    \
  }
    SPATTN_BLAS_FUNCTIONS(SPATTN_BLAS_RESOLVE)
#undef SPATTN_BLAS_RESOLVE
    st.ok = true;
    return st;
  }();
  return s;
}

const Api& api() {
  const State& s = state();
  if (!s.ok) SPATTN_FAIL(ErrorCode::kUnsupported, "{}", s.reason);
  return s.api;
}

#define SPATTN_BLAS_CHECK(call)                                                                            \
  do {                                                                                                     \
    const Status spattn_blas_status_ = api().call;                                                         \
    if (spattn_blas_status_ != 0)                                                                          \
      SPATTN_FAIL(ErrorCode::kCuda, "cuBLAS call failed: {} returned {} ({})", #call, spattn_blas_status_, \
                  api().cublasGetStatusString(spattn_blas_status_));                                       \
  } while (0)

int data_type(DType t) {
  switch (t) {
    case DType::kFloat16: return kR16F;
    case DType::kBFloat16: return kR16BF;
    case DType::kFloat32: return kR32F;
    case DType::kInt32: break;
  }
  SPATTN_FAIL(ErrorCode::kInvalidArgument, "GEMM operands are fp16, bf16 or fp32; got {}", to_string(t));
}

// One handle per device, created in its primary context, kept for the process; calls
// through one handle are serialised (its stream is per handle).
std::mutex g_mu;
std::map<int, Handle>& handles() {
  static std::map<int, Handle> h;
  return h;
}

int to_int(int64_t v, const char* what) {
  SPATTN_REQUIRE(v >= 0 && v <= 0x7fffffff, "gemm: {} = {} does not fit cuBLAS's 32-bit sizes", what, v);
  return static_cast<int>(v);
}

}  // namespace

bool available() { return state().ok; }
std::string unavailable_reason() { return state().reason; }
std::string library_path() { return state().path; }

void gemm(int64_t m, int64_t n, int64_t k, int64_t batch, float alpha, const Operand& a, const Operand& b, float beta,
          const Output& c, CUstream stream, Compute compute) {
  SPATTN_REQUIRE(m >= 1 && n >= 1 && k >= 1 && batch >= 1, "gemm: sizes m={} n={} k={} batch={} must be >= 1", m, n,
                 k, batch);
  SPATTN_REQUIRE(a.dtype == b.dtype, "gemm: A is {} and B is {}; both operands must share a dtype",
                 to_string(a.dtype), to_string(b.dtype));
  // Row-major, an (r x c) matrix with leading dimension ld needs ld >= c.
  SPATTN_REQUIRE(a.ld >= (a.transpose ? m : k), "gemm: A's leading dimension {} is below its row length", a.ld);
  SPATTN_REQUIRE(b.ld >= (b.transpose ? k : n), "gemm: B's leading dimension {} is below its row length", b.ld);
  SPATTN_REQUIRE(c.ld >= n, "gemm: C's leading dimension {} is below n = {}", c.ld, n);
  if (compute == Compute::kFastTf32)
    SPATTN_REQUIRE(a.dtype == DType::kFloat32, "gemm: TF32 compute takes fp32 operands, not {}", to_string(a.dtype));
  api();  // throws kUnsupported without cuBLAS, before any device work
  const int device = current_device();
  std::lock_guard<std::mutex> lock(g_mu);
  Handle& h = handles()[device];
  if (!h) {
    make_current(device);
    SPATTN_BLAS_CHECK(cublasCreate_v2(&h));
    log::debug("cuBLAS {} handle created on device {}", library_path(), device);
  }
  SPATTN_BLAS_CHECK(cublasSetStream_v2(h, stream));
  // Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: a row-major matrix is
  // its column-major transpose with the same leading dimension, so B and A swap places
  // (and m and n), each keeping its own transpose flag.
  SPATTN_BLAS_CHECK(cublasGemmStridedBatchedEx(
      h, b.transpose ? kOpT : kOpN, a.transpose ? kOpT : kOpN, to_int(n, "n"), to_int(m, "m"), to_int(k, "k"),
      &alpha, b.data, data_type(b.dtype), to_int(b.ld, "ldb"), b.batch_stride, a.data, data_type(a.dtype),
      to_int(a.ld, "lda"), a.batch_stride, &beta, c.data, data_type(c.dtype), to_int(c.ld, "ldc"), c.batch_stride,
      to_int(batch, "batch"), compute == Compute::kFastTf32 ? kCompute32FFastTf32 : kCompute32F, kGemmDefault));
}

}  // namespace spattn::runtime::blas
