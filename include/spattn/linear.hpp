// Linear-time sequence mixers through the same JIT as the sparse kernels: a Mamba
// selective scan (S6) and Performer (FAVOR+) attention. Kernels are generated per configuration, compiled by NVRTC into
// the kernel cache and launched asynchronously on the caller's stream.
//
//   spattn::SelectiveScanArgs a;           // device tensors, see below
//   a.x = ...; a.delta = ...; a.a_log = ...; a.b = ...; a.c = ...; a.y = ...;
//   spattn::SelectiveScan scan;            // options: device, forced config
//   scan.forward(a, stream);
//   std::cout << scan.explain();
#pragma once

#include <spattn/error.hpp>
#include <spattn/tensor.hpp>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

typedef struct CUstream_st* CUstream;

namespace spattn {

// ---------------------------------------------------------------------------------------
// Mamba selective scan (S6), forward:
//   Δ_t = softplus(Δraw_t + bias)  (or Δraw_t + bias with delta_softplus = false)
//   A = -exp(A_log)
//   h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t        (h_{-1} = 0; fp32 state)
//   y_t = (C_t · h_t + D ⊙ x_t) ⊙ silu(z_t)          (no gate when z is absent)
// per batch row and channel, with a state of `state` values per channel; B_t and C_t
// are shared by the channels (Mamba's selective B and C, one group).

// Tile configuration of the scan kernel. Changes speed, never results (beyond fp32
// rounding order). threads = channels * segments; a chunk is segments * steps steps.
struct ScanConfig {
  int channels = 32;  // consecutive channels per CTA, one per lane: 32 or 64
  int segments = 8;   // time segments per chunk, one warp row each, scanned in parallel and
                      // combined: 1 (a plain sequential scan per channel), 2, 4, 8 or 16
  int steps = 16;     // consecutive steps per thread and chunk: 4, 8, 16 or 32

  // Throws kInvalidArgument naming the field and what is supported.
  void validate() const;
  int threads() const { return channels * segments; }
  // Dynamic shared memory of the kernel for a state size.
  int smem_bytes(int state) const;
  std::string to_string() const;                 // "32x8x16" (channels x segments x steps)
  static ScanConfig parse(std::string_view text);  // inverse of to_string; throws kInvalidArgument
  bool operator==(const ScanConfig&) const = default;
};

// The table of configurations the scan is offered with (benchmarks, tuning, tests).
std::vector<ScanConfig> scan_configs();
// State sizes the scan kernel is generated for.
std::vector<int> scan_state_sizes();

// Tensors of one scan. Sequence tensors are [B, L, channels] (x, delta, z, y) or
// [B, L, state] (b, c), rank 3, last dimension contiguous, any batch and step strides;
// x, delta, z, b, c and y share one dtype (fp16, bf16 or fp32). Parameters are fp32
// and contiguous. Optional tensors are absent when their data is null.
struct SelectiveScanArgs {
  TensorView x;            // u
  TensorView delta;        // Δraw
  TensorView a_log;        // [channels, state] (rank 2)
  TensorView b;            // [B, L, state]
  TensorView c;            // [B, L, state]
  TensorView d;            // [channels] (rank 1), optional: D = 0
  TensorView delta_bias;   // [channels] (rank 1), optional: bias = 0
  TensorView z;            // [B, L, channels], optional: no gate
  TensorView y;            // [B, L, channels], written
  TensorView final_state;  // [B, channels, state] fp32 contiguous, optional: h after the last step
  bool delta_softplus = true;
};

// The problem a SelectiveScanArgs describes, after validation.
struct ScanShape {
  int64_t batch = 1, length = 1, channels = 1, state = 16;
  DType dtype = DType::kBFloat16;
};

// Validates shapes, dtypes, strides and sizes (no GPU needed). Throws kInvalidArgument
// naming the tensor and what was expected, kUnsupported for a state size or dtype the
// kernel is not generated for.
ScanShape check_selective_scan(const SelectiveScanArgs& args);

struct SelectiveScanOptions {
  int device = -1;                   // -1: the device of the current context (else 0)
  // Force a configuration; else this GPU's tuning database (`spattn autotune --op scan`),
  // else the heuristic. explain() says which decided and why.
  std::optional<ScanConfig> config;
  bool use_tuning_db = true;         // consult the tuning database of this GPU
  // CTAs per sequence along time (each scans a split, then the splits are composed);
  // 0: chosen from the problem and the GPU (explain() says how many and why).
  int splits = 0;
};

// What the last forward() ran.
struct ScanExplanation {
  std::string problem;        // "B=1 L=4096 channels=1536 state=16 bf16"
  std::string device, arch;
  ScanConfig config;
  std::string config_source;  // "forced", "tuning database (...)" or "heuristic (...)"
  int splits = 1;              // CTAs per sequence along time
  int64_t split_length = 0;    // steps per split
  std::string splits_source;
  std::string kernel, cache_key;
  bool cache_hit = false;
  double compile_ms = 0;
  std::string to_string() const;
};

class SelectiveScan {
 public:
  explicit SelectiveScan(SelectiveScanOptions options = {});
  ~SelectiveScan();
  SelectiveScan(SelectiveScan&&) noexcept;
  SelectiveScan& operator=(SelectiveScan&&) noexcept;

  // y (and final_state) from the inputs; asynchronous on `stream`. Throws spattn::Error
  // on invalid input, an unsupported size, or a missing GPU.
  void forward(const SelectiveScanArgs& args, CUstream stream = nullptr);
  // The configuration forward() would use for a problem on a device (no launch; the
  // kernel is compiled into the cache).
  ScanExplanation prepare(const ScanShape& shape);
  std::string explain() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// fp64 host reference of the scan (sequential over time), on contiguous fp32 host
// arrays of the shapes above (d, delta_bias, z may be null). Writes y [B, L, channels]
// and, when final_state is not null, the state after the last step [B, channels, state].
void reference_selective_scan(const ScanShape& shape, const float* x, const float* delta, const float* a_log,
                              const float* b, const float* c, const float* d, const float* delta_bias,
                              const float* z, bool delta_softplus, std::vector<double>& y,
                              std::vector<double>* final_state = nullptr);

// ---------------------------------------------------------------------------------------
// Performer (FAVOR+) attention: softmax attention exp(q·k / sqrt(D)) estimated with m
// positive orthogonal random features,
//   φ(x) = exp(ω x̂ - |x̂|²/2) / sqrt(m),  x̂ = x D^(-1/4),  ω: m rows [m, D]
//   non-causal: O = φ(Q) (φ(K)ᵀ V) / (φ(Q) φ(K)ᵀ 1)
//   causal (Nq == Nk): O_i = φ(q_i) Σ_{j<=i} φ(k_j) v_jᵀ / φ(q_i) Σ_{j<=i} φ(k_j)
// in O(N m D) time and O(N m) memory. Q [B, Nq, H, D], K [B, Nk, Hkv, D], V [B, Nk, Hkv, Dv],
// O [B, Nq, H, Dv] (H % Hkv == 0), one dtype (fp16, bf16 or fp32), head dim contiguous.
// A row whose denominator underflows gets output 0.
//
// The kernels compute with stabilisers (the per-row max of a query's exponents, one max
// per batch and head over the keys) that cancel exactly; the projections ω x̂ and the
// products with φ are cuBLAS GEMMs (loaded at run time), fp32 accumulation, φ in fp32.

// Orthogonal random features: blocks of D rows, each block the rows of a random
// orthogonal matrix (Gram-Schmidt on Gaussian rows) scaled by the norms of independent
// Gaussian vectors, the last block truncated to what m leaves (Choromanski et al. 2021).
// The same (head_dim, features, seed) give the same values on every host.
struct PerformerFeatures {
  int64_t head_dim = 0, features = 0;
  uint64_t seed = 0;
  std::vector<float> omega;  // [features, head_dim], row-major

  static PerformerFeatures draw(int64_t head_dim, int64_t features, uint64_t seed);
  // The values the kernels see for inputs of `dtype` (ω is rounded to it for the GEMMs).
  std::vector<float> rounded(DType dtype) const;
};

// Tile configuration of the causal prefix scan. Changes speed, never results (beyond
// fp32 rounding order). 256 threads per CTA.
struct PerformerConfig {
  int chunk = 32;  // tokens per step of the scan: 16, 32 or 64
  int slice = 32;  // columns of V per CTA: 16, 32 or 64
  void validate() const;
  int smem_bytes(int features) const;
  std::string to_string() const;  // "32x32" (chunk x slice)
  static PerformerConfig parse(std::string_view text);
  bool operator==(const PerformerConfig&) const = default;
};
std::vector<PerformerConfig> performer_configs();

struct PerformerShape {
  int64_t batch = 1, nq = 1, nk = 1, heads = 1, kv_heads = 1, head_dim = 64, v_dim = 64;
  DType dtype = DType::kBFloat16;
};

// Validates tensors (no GPU needed); throws kInvalidArgument naming the tensor, or
// kUnsupported for a head dim, dtype or feature count the kernels do not serve.
PerformerShape check_performer(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                               bool causal, int64_t features);

struct PerformerOptions {
  int64_t features = 256;   // m: a multiple of 16, 16 to 1024
  uint64_t seed = 0;        // of the random features
  bool causal = false;
  int device = -1;          // -1: the device of the current context (else 0)
  // The causal prefix scan's configuration; else this GPU's tuning database (`spattn
  // autotune --op performer`), else the first of the table that fits.
  std::optional<PerformerConfig> config;
  bool use_tuning_db = true;  // consult the tuning database of this GPU (causal only)
  bool tf32 = false;        // the fp32 GEMMs with φ through TF32 tensor cores (faster, ~1e-3 error)
};

class Performer {
 public:
  Performer(int64_t head_dim, PerformerOptions options = {});
  ~Performer();
  Performer(Performer&&) noexcept;
  Performer& operator=(Performer&&) noexcept;

  // Draws new features from `seed` (a redraw between training steps, as FAVOR+ does).
  void redraw(uint64_t seed);
  const PerformerFeatures& features() const;
  const PerformerOptions& options() const;

  // O from Q, K, V; asynchronous on `stream`. The object owns its device workspace
  // (grown as needed) and must outlive the launches that use it.
  void forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
               CUstream stream = nullptr);
  std::string explain() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// fp64 host reference of the estimator, with no stabiliser, over explicit pair weights
// φ(q_i)·φ(k_j) (j <= i when causal): contiguous fp32 host arrays of the shapes above and
// ω [features, head_dim] (pass PerformerFeatures::rounded(dtype) to match the kernels).
void reference_performer(const PerformerShape& shape, const float* q, const float* k, const float* v,
                         const float* omega, int64_t features, bool causal, std::vector<double>& out);

}  // namespace spattn
