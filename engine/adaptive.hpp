// The run-time half of adaptive patterns: per call, block scores (block means of Q and
// K, optionally projected, multiplied by cuBLAS; or the caller's), the top-k selection
// and the tables it writes, all on the call's stream (no host synchronisation, so a
// forward pass can be captured in a CUDA graph once its buffers exist).
#pragma once

#include <spattn/adaptive.hpp>
#include <spattn/tensor.hpp>

#include <string>
#include <vector>

#include "engine/device_layout.hpp"
#include "engine/jit.hpp"
#include "runtime/device.hpp"

typedef struct CUstream_st* CUstream;

namespace spattn::engine {

struct Problem;

// Where a selection writes its tables: `copies` copies of an arena, `stride` elements
// apart (one per batch), and one descriptor per query head (its row offsets are read from
// the first copy; full counts and key tiles are written into each batch's copy).
struct AdaptiveTarget {
  int32_t* arena = nullptr;
  const SpattnTable* tables = nullptr;
  int32_t stride = 0;
  int64_t copies = 0;
};

// Whether a call gave any adaptive input (scores, projections, chosen blocks, gates, gate
// gradients): what plans of static patterns refuse.
bool has_adaptive_inputs(const AdaptiveInputs* inputs);

class AdaptiveSelector {
 public:
  // The geometry of the plan's problem; tiles as in its layout (adaptive_layout).
  AdaptiveSelector(const Pattern& pattern, const Problem& problem, int64_t tile_m, int64_t tile_n, int device);

  // Scores (computed or from `inputs`), selection and this call's tables for `batch`
  // batches into `target` (which holds at least `batch` copies). Checks the inputs'
  // shapes first (kInvalidArgument naming the tensor and the expected shape). Returns
  // the chosen blocks on the device, [batch, Hq, nq_blocks, max_k] contiguous (the
  // caller's `inputs.blocks` when given), ready in stream order.
  const int32_t* run(const TensorView& q, const TensorView& k, const AdaptiveInputs& inputs, int64_t batch,
                     const AdaptiveTarget& target, CUstream stream);
  const AdaptiveGeometry& geometry() const { return geometry_; }
  // The kernels' view of inputs.gates at this selector's tiles (none without gates; the
  // caller completes the scale and the backward's partials).
  SpattnGates gates(const AdaptiveInputs& inputs) const;

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

// The backward pass's tables of an adaptive pattern, built per call on the GPU: the
// selection runs again on the call's inputs (the forward's, so it chooses the same blocks)
// and writes the forward rows at the backward tiles, then their columns are transposed
// (SpattnAdaptiveColumnsParams) — in every batch's copy of one capacity arena. Table h
// serves query head h; the work list holds every key tile of every head.
class AdaptiveBackwardTables {
 public:
  // `layout`: adaptive_layout at the backward config's tiles.
  AdaptiveBackwardTables(const Pattern& pattern, const Layout& layout, const Problem& problem, int device,
                         bool deterministic);
  ~AdaptiveBackwardTables();

  // This call's tables for `batch` batches on `stream` (growing the copies first), and
  // the kernels' gates: with inputs.gates_grad, zeroed partials for the key-tile kernel.
  SpattnGates build(const TensorView& q, const TensorView& k, const AdaptiveInputs& inputs, int64_t batch,
                    CUstream stream);
  // After the backward kernels: inputs.gates_grad from the partials of `gates` (as build
  // returned it); nothing without gates_grad.
  void write_gate_grads(const AdaptiveInputs& inputs, const SpattnGates& gates, int64_t batch, CUstream stream);

  const DeviceBackwardLayout& tables() const { return tables_; }
  int32_t arena_stride() const { return stride_; }
  std::string describe() const { return selector_.describe(); }

 private:
  void reserve(int64_t batch);

  AdaptiveSelector selector_;
  int64_t heads_;
  int tile_m_, tile_n_;
  int64_t num_q_tiles_, num_k_tiles_;
  PackedBackwardTables packed_;  // one copy
  std::vector<SpattnTable> forward_;  // per head: the forward rows inside the arena
  int64_t copies_ = 0;
  int32_t stride_ = 0;
  DeviceBackwardLayout tables_;
  const JitKernel* columns_ = nullptr;
  const JitKernel* transpose_ = nullptr;
  const JitKernel* gate_grads_ = nullptr;
  runtime::DeviceBuffer forward_tables_, counts_, partials_;
};

}  // namespace spattn::engine
