// The run-time half of adaptive patterns: per call, block scores (block means of Q and
// K, optionally projected, multiplied by cuBLAS; or the caller's), the top-k selection
// and the tables it writes, all on the call's stream (no host synchronisation, so a
// forward pass can be captured in a CUDA graph once its buffers exist).
#pragma once

#include <spattn/adaptive.hpp>
#include <spattn/tensor.hpp>

#include <string>

#include "engine/device_layout.hpp"
#include "engine/jit.hpp"
#include "runtime/device.hpp"

typedef struct CUstream_st* CUstream;

namespace spattn::engine {

struct Problem;

class AdaptiveSelector {
 public:
  // The geometry of the plan's problem; tiles as in its layout (adaptive_layout).
  AdaptiveSelector(const Pattern& pattern, const Problem& problem, int64_t tile_m, int64_t tile_n, int device);

  // Scores (computed or from `inputs`), selection and this call's tables for `batch`
  // batches into `tables` (which holds `batch` copies of the arena). Checks the inputs'
  // shapes first (kInvalidArgument naming the tensor and the expected shape).
  void run(const TensorView& q, const TensorView& k, const AdaptiveInputs& inputs, int64_t batch,
           const DeviceLayout& tables, CUstream stream);

  // One line for explain(): the selection and where its scores came from.
  std::string describe() const;

 private:
  void check_inputs(const AdaptiveInputs& inputs, int64_t batch) const;
  // Block means of q or k ([B][heads][blocks][D] fp32) into `out`.
  void pool(const TensorView& x, int64_t blocks, runtime::DeviceBuffer& out, int64_t batch, CUstream stream);
  // out = pooled x W (W shared [D, P] or per head [heads, D, P]).
  void project(const runtime::DeviceBuffer& pooled, const TensorView& w, int64_t heads, int64_t blocks,
               runtime::DeviceBuffer& out, int64_t batch, CUstream stream);

  AdaptiveGeometry geometry_;
  int64_t heads_, kv_heads_, head_dim_;
  int64_t tile_m_, tile_n_;
  const JitKernel* pool_ = nullptr;
  const JitKernel* select_ = nullptr;
  runtime::DeviceBuffer rows_;  // k, diagonal, allowed per query block (int32, 3 x nq_blocks)
  runtime::DeviceBuffer pooled_q_, pooled_k_, proj_q_, proj_k_, scores_, chosen_;
  std::string last_source_ = "not run yet";
};

}  // namespace spattn::engine
