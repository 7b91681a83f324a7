// Linear-time sequence mixers through the same JIT as the sparse kernels: a Mamba
// selective scan (S6). Kernels are generated per configuration, compiled by NVRTC into
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
  std::optional<ScanConfig> config;  // force a configuration; else the heuristic
};

// What the last forward() ran.
struct ScanExplanation {
  std::string problem;        // "B=1 L=4096 channels=1536 state=16 bf16"
  std::string device, arch;
  ScanConfig config;
  std::string config_source;  // "forced" or "heuristic (...)"
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

}  // namespace spattn
