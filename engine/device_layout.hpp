// A layout on the device: its block tables packed into one int32 arena with a
// descriptor per table, and its launch list. Built once per plan and read by every
// kernel that walks the tables (both forward families, the split merge); the backward
// pass and tables built at run time reuse the same packing.
#pragma once

#include <spattn/layout.hpp>

#include <cstdint>
#include <vector>

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
  const int32_t* arena() const { return reinterpret_cast<const int32_t*>(arena_.get()); }
  const SpattnBwdTable* tables() const { return reinterpret_cast<const SpattnBwdTable*>(tables_.get()); }
  const int32_t* work() const { return reinterpret_cast<const int32_t*>(work_.get()); }
  const int32_t* dq_work() const { return reinterpret_cast<const int32_t*>(dq_work_.get()); }
  int64_t num_items() const { return static_cast<int64_t>(work_begin_.empty() ? 0 : work_begin_.back()); }
  int64_t num_dq_items() const { return static_cast<int64_t>(dq_begin_.empty() ? 0 : dq_begin_.back()); }
  const std::vector<int64_t>& work_begin() const { return work_begin_; }
  const std::vector<int64_t>& dq_begin() const { return dq_begin_; }
  bool sole_key_writer() const { return sole_key_writer_; }

 private:
  std::vector<int64_t> work_begin_, dq_begin_;
  bool sole_key_writer_ = false;
  runtime::DeviceBuffer arena_, tables_, work_, dq_work_;
};

// Where the sm90 kernels' copies of permuted rows go (KernelConfig ":copy"): every table
// with query slots gets, per query head, a run of num_q_tiles * tile_m copy rows in slot
// order; every table with key slots, per KV head its query heads read, a run of
// num_k_tiles * tile_n rows (K and V alike). Tables in natural order get none.
struct TokenCopyPlan {
  std::vector<int32_t> q_row;   // [tables][Hq]: first copy row of (table, query head), -1: none
  std::vector<int32_t> kv_row;  // [tables][Hkv]: first copy row of (table, KV head), -1: none
  // 4 ints per run: first copy row, arena offset of the slots, rows, source head.
  std::vector<int32_t> q_segments, kv_segments;
  int64_t q_rows = 0, kv_rows = 0;                // copy rows per batch row
  int64_t max_q_segment = 0, max_kv_segment = 0;  // rows of the longest run
  bool empty() const { return q_segments.empty() && kv_segments.empty(); }
};
// `tables` are the packed descriptors of the layout's tables (their slot offsets), and
// kv_group = Hq / Hkv. Throws kUnsupported when the copies exceed 32-bit row indices.
TokenCopyPlan plan_token_copies(const Layout& layout, const std::vector<SpattnTable>& tables, int64_t kv_group);

class DeviceLayout {
 public:
  DeviceLayout() = default;
  // Packs and uploads to the current device; with kv_group > 0 also the plan of the
  // copies of permuted rows (plan_token_copies) and its per-table row indices.
  DeviceLayout(const Layout& layout, WorkList work, int64_t copies_kv_group = 0);

  const int32_t* arena() const { return reinterpret_cast<const int32_t*>(arena_.get()); }
  const SpattnTable* tables() const { return reinterpret_cast<const SpattnTable*>(tables_.get()); }
  const int32_t* work() const { return reinterpret_cast<const int32_t*>(work_.get()); }
  const int32_t* groups() const { return reinterpret_cast<const int32_t*>(groups_.get()); }
  const WorkList& work_list() const { return work_list_; }
  size_t device_bytes() const {
    return arena_.size() + tables_.size() + work_.size() + groups_.size() + q_copy_row_.size() +
           kv_copy_row_.size() + q_segments_.size() + kv_segments_.size();
  }
  // The copies of permuted rows: empty without (or when no table is permuted).
  const TokenCopyPlan& copies() const { return copies_; }
  const int32_t* q_copy_row() const { return reinterpret_cast<const int32_t*>(q_copy_row_.get()); }
  const int32_t* kv_copy_row() const { return reinterpret_cast<const int32_t*>(kv_copy_row_.get()); }
  const int32_t* q_segments() const { return reinterpret_cast<const int32_t*>(q_segments_.get()); }
  const int32_t* kv_segments() const { return reinterpret_cast<const int32_t*>(kv_segments_.get()); }

 private:
  WorkList work_list_;
  TokenCopyPlan copies_;
  runtime::DeviceBuffer arena_, tables_, work_, groups_;
  runtime::DeviceBuffer q_copy_row_, kv_copy_row_, q_segments_, kv_segments_;
};

}  // namespace spattn::engine
