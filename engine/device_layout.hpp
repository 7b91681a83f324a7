// A layout on the device: its block tables packed into one int32 arena with a
// descriptor per table, and its launch list. Built once per plan and read by every
// kernel that walks the tables (both forward families, the split merge); the backward
// pass and tables built at run time reuse the same packing.
#pragma once

#include <spattn/layout.hpp>

#include <cstdint>
#include <vector>

#include "engine/row_copies.hpp"
#include "runtime/device.hpp"
#include "templates/params.cuh"

namespace spattn::engine {

// The launch list of a layout: its schedule, with rows much longer than a fair share of
// the work split into pieces over several work items (merged afterwards by LSE), so a
// few long rows (global tokens, causal diagonals) do not leave the GPU idle at the end.
struct WorkList {
  std::vector<int32_t> items;   // 6 ints per item, see SpattnFwdParams::work
  std::vector<int32_t> groups;  // 5 ints per split row: first slot, pieces, table, q_tile, head
  int32_t split_slots = 0;
  int64_t max_piece = 0;        // key tiles of the longest work item

  int64_t num_items() const { return static_cast<int64_t>(items.size() / 6); }
  int64_t num_groups() const { return static_cast<int64_t>(groups.size() / 5); }
};
// `concurrent` is how many work items the GPU runs at once (SMs x CTAs per SM).
// Splitting never happens for rows shorter than a fair share of the total work.
// Longest first sorts within groups of `heads_per_group` consecutive heads (0: all heads
// one group): items running at the same time then read the K/V of a few heads, which
// stay in L2, instead of streaming every head's from memory (causal rows sorted by
// length across all heads would mix every head at once).
WorkList build_work_list(const Layout& layout, int64_t concurrent, bool longest_first, int64_t heads_per_group = 0);
// The query heads of such a group: those whose keys and values (nk rows of head_dim,
// 16-bit K and V) fit in half the L2, times the query heads per KV head.
int64_t longest_first_heads_per_group(int64_t l2_bytes, int64_t nk, int64_t head_dim, int64_t kv_group);

// Host form of the tables: the arena (slots, CSR offsets, full counts, columns) and one
// SpattnTable per table with offsets into it. Throws kUnsupported when a table does not
// fit the 32-bit offsets of the device format.
struct PackedTables {
  std::vector<int32_t> arena;
  std::vector<SpattnTable> tables;
};
PackedTables pack_tables(const Layout& layout);

// Host form of the transposed tables of a layout (for the backward pass) and its work
// lists, 4 ints per item (table, tile, first index into the table's heads, head count),
// grouped by table (`*_begin[t]` .. `*_begin[t + 1]` are table t's items):
// - `work`: per key tile that some query tile attends; one item per query head, or in
//   deterministic mode one per KV head covering the table's query heads of its group;
// - `dq_work` (deterministic mode only): per query tile with key tiles, per query head,
//   over the forward rows (which are then packed too).
// Deterministic mode needs every token at most once in a table's query and key orders
// (one writer per accumulator row per launch); it throws kUnsupported otherwise.
struct BackwardPacking {
  bool deterministic = false;
  int64_t kv_group = 1;  // query heads per KV head
};
struct PackedBackwardTables {
  std::vector<int32_t> arena;
  std::vector<SpattnBwdTable> tables;
  std::vector<int32_t> work, dq_work;
  std::vector<int64_t> work_begin, dq_begin;
  int64_t num_items() const { return static_cast<int64_t>(work.size() / 4); }
  int64_t num_dq_items() const { return static_cast<int64_t>(dq_work.size() / 4); }
  // Every (KV head, key token) gets its dK and dV from exactly one work item: the
  // tables' heads partition the query heads, each query head is its own KV head, and
  // in every table the key tiles with work hold every key token once. The kernels can
  // then store dK, dV straight into the outputs instead of adding them into fp32
  // accumulators that a conversion pass reads back.
  bool sole_key_writer = false;
};
PackedBackwardTables pack_backward_tables(const Layout& layout, const BackwardPacking& packing = {});

// The backward pass's tables on the device, with the host's item ranges per table.
class DeviceBackwardLayout {
 public:
  DeviceBackwardLayout() = default;
  DeviceBackwardLayout(const Layout& layout, const BackwardPacking& packing);
  // Uploads tables packed elsewhere (the documents' capacity tables, which kernels then
  // rewrite per call).
  explicit DeviceBackwardLayout(const PackedBackwardTables& packed);
  const int32_t* arena() const { return reinterpret_cast<const int32_t*>(arena_.get()); }
  const SpattnBwdTable* tables() const { return reinterpret_cast<const SpattnBwdTable*>(tables_.get()); }
  const int32_t* work() const { return reinterpret_cast<const int32_t*>(work_.get()); }
  const int32_t* dq_work() const { return reinterpret_cast<const int32_t*>(dq_work_.get()); }
  int64_t num_items() const { return static_cast<int64_t>(work_begin_.empty() ? 0 : work_begin_.back()); }
  int64_t num_dq_items() const { return static_cast<int64_t>(dq_begin_.empty() ? 0 : dq_begin_.back()); }
  const std::vector<int64_t>& work_begin() const { return work_begin_; }
  const std::vector<int64_t>& dq_begin() const { return dq_begin_; }
  bool sole_key_writer() const { return sole_key_writer_; }
  const std::vector<SlotOffsets>& slot_offsets() const { return slot_offsets_; }

 private:
  std::vector<int64_t> work_begin_, dq_begin_;
  std::vector<SlotOffsets> slot_offsets_;
  bool sole_key_writer_ = false;
  runtime::DeviceBuffer arena_, tables_, work_, dq_work_;
};

class DeviceLayout {
 public:
  DeviceLayout() = default;
  // Packs and uploads to the current device. `batch_copies` > 1 uploads that many copies
  // of the arena one after another (tables the GPU rewrites per batch, see
  // SpattnFwdParams::arena_stride_b).
  DeviceLayout(const Layout& layout, WorkList work, int64_t batch_copies = 1);

  const int32_t* arena() const { return reinterpret_cast<const int32_t*>(arena_.get()); }
  const SpattnTable* tables() const { return reinterpret_cast<const SpattnTable*>(tables_.get()); }
  const int32_t* work() const { return reinterpret_cast<const int32_t*>(work_.get()); }
  const int32_t* groups() const { return reinterpret_cast<const int32_t*>(groups_.get()); }
  const WorkList& work_list() const { return work_list_; }
  size_t device_bytes() const { return arena_.size() + tables_.size() + work_.size() + groups_.size(); }
  // Elements between the batch copies of the arena (0: one copy shared by every batch).
  int32_t arena_stride() const { return arena_stride_; }
  int64_t batch_copies() const { return batch_copies_; }
  // Per table, its slot lists' offsets into the arena (for plan_token_copies).
  const std::vector<SlotOffsets>& slot_offsets() const { return slot_offsets_; }

 private:
  WorkList work_list_;
  std::vector<SlotOffsets> slot_offsets_;
  int32_t arena_stride_ = 0;
  int64_t batch_copies_ = 1;
  runtime::DeviceBuffer arena_, tables_, work_, groups_;
};

}  // namespace spattn::engine
