// Copies of permuted rows for the sm90 kernels (KernelConfig ":copy"). Tables whose
// tokens are permuted (LongNet classes, strides, grids) would have their rows gathered
// one by one inside the kernel; instead a gather kernel writes them, each call, in slot
// order into workspace copies, and the kernel loads the copies by TMA like tiles in
// natural order. Shared by the forward and the backward pass.
#pragma once

#include <spattn/layout.hpp>
#include <spattn/tensor.hpp>

#include <cstdint>
#include <vector>

#include "engine/jit.hpp"
#include "runtime/device.hpp"
#include "templates/params.cuh"

namespace spattn::engine {

// A table's slot lists as offsets into its packed arena (-1: natural order).
struct SlotOffsets {
  int32_t q_slots = -1;
  int32_t k_slots = -1;
};

// Where the copies go: every table with query slots gets, per query head, a run of
// num_q_tiles * tile_m copy rows in slot order (Q, and dO for the backward pass); every
// table with key slots, per KV head its query heads read, a run of num_k_tiles * tile_n
// rows (K and V). Tables in natural order get none.
struct TokenCopyPlan {
  std::vector<int32_t> q_row;   // [tables][Hq]: first copy row of (table, query head), -1: none
  std::vector<int32_t> kv_row;  // [tables][Hkv]: first copy row of (table, KV head), -1: none
  // 4 ints per run: first copy row, arena offset of the slots, rows, source head.
  std::vector<int32_t> q_segments, kv_segments;
  int64_t q_rows = 0, kv_rows = 0;                // copy rows per batch row
  int64_t max_q_segment = 0, max_kv_segment = 0;  // rows of the longest run
  bool empty() const { return q_segments.empty() && kv_segments.empty(); }
};
// `tables` holds the slot offsets of the layout's tables (one per table, in order), and
// kv_group = Hq / Hkv. Throws kUnsupported when the copies exceed 32-bit row indices.
TokenCopyPlan plan_token_copies(const Layout& layout, const std::vector<SlotOffsets>& tables, int64_t kv_group);

class RowCopies {
 public:
  RowCopies() = default;
  // Uploads the plan's row indices and runs to the current device; `gather` is the
  // support kernel spattn_gather_rows.
  RowCopies(TokenCopyPlan plan, const JitKernel& gather, DType dtype, int64_t head_dim);

  bool empty() const { return plan_.empty(); }
  const TokenCopyPlan& plan() const { return plan_; }
  size_t workspace_bytes(int64_t batch) const;

  // Writes this call's copies of `batch` rows: Q (and dO when given: the same slots)
  // per query head, K and V per KV head; `arena` is the arena the plan's slot offsets
  // index, nq / nk the token counts (slots at or past them are padding: zero rows).
  void gather(const int32_t* arena, const TensorView& q, const TensorView* d_o, const TensorView& k,
              const TensorView& v, int64_t batch, int64_t nq, int64_t nk, CUstream stream);

  // Tensor maps over the copies ([B, rows, 1, D]: the kernels read them at head 0) with
  // boxes of tile_m (Q, dO) and tile_n (K, V) rows, and the device row indices for the
  // kernel parameters (null where nothing of that side is copied). d_o may be null.
  struct Maps {
    const int32_t* q_row = nullptr;
    const int32_t* kv_row = nullptr;
  };
  Maps encode(SpattnTensorMap& q, SpattnTensorMap* d_o, SpattnTensorMap& k, SpattnTensorMap& v, int tile_m,
              int tile_n, int64_t batch) const;

 private:
  TokenCopyPlan plan_;
  const JitKernel* gather_ = nullptr;
  DType dtype_ = DType::kBFloat16;
  int64_t head_dim_ = 0;
  runtime::DeviceBuffer q_row_, kv_row_, q_segments_, kv_segments_;
  runtime::DeviceBuffer q_, d_o_, k_, v_;
};

}  // namespace spattn::engine
