// Pieces of the layout compiler shared with the statistics and the picture (internal
// to patterns/).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include <spattn/layout.hpp>

#include "patterns/budget.hpp"
#include "patterns/rows.hpp"

// Internal to libspattn: hidden, so that the per-row calls bind directly.
#pragma GCC visibility push(hidden)
namespace spattn::detail {

// Asks for transparent huge pages over [data, data + bytes) (whole 2 MiB pages inside
// it; a hint, failures are ignored): a large array written once, front to back, then
// costs one page fault per 2 MiB instead of one per 4 KiB.
void advise_huge_pages(void* data, size_t bytes);

// The token order of one table.
struct OrderSpec {
  enum Kind {
    kIdentity,  // natural order
    kClass,     // relative stride s: queries and keys grouped by token % s
    kColumns,   // column stride s: keys compacted to the multiples of s
    kRun,       // LongNet branch (w, r) head group o: per segment, the tokens of residue o
    kGrid,      // neighborhood: dilation residue classes, Hilbert order inside each
  };
  Kind kind = kIdentity;
  int64_t s = 1;
  int64_t w = 0, r = 1, o = 0;
  const Neighborhood* grid = nullptr;
  bool operator==(const OrderSpec& other) const;
};

// Slots of one table and, for a query token, the region of key tokens its allowed keys
// lie in and where that region starts among the key slots.
class TokenOrder {
 public:
  // `rect` is resolved (ends filled in); outside the whole problem the order keeps only the
  // tokens inside the rectangle, in the same order, each group re-padded to whole tiles.
  TokenOrder(const OrderSpec& spec, const Shape& shape, int64_t tile_m, int64_t tile_n, const TokenRect& rect);

  const OrderSpec& spec() const { return spec_; }
  int64_t tile_m() const { return tm_; }
  int64_t tile_n() const { return tn_; }
  int64_t num_q_tiles() const { return num_q_tiles_; }
  int64_t num_k_tiles() const { return num_k_tiles_; }
  const std::vector<int32_t>& q_slots() const { return q_slots_; }  // empty: identity
  const std::vector<int32_t>& k_slots() const { return k_slots_; }

  int64_t q_token(int64_t slot) const;  // -1 for padding
  Region region(int64_t i, int64_t& base) const;
  // kGrid: the key slot of rank `rank` of region() (the token k_begin + rank).
  int64_t k_slot_of(int64_t rank) const { return k_inverse_[static_cast<size_t>(rank)]; }
  // True when the order holds only part of an axis (a sub-rectangle of the problem).
  bool restricted() const { return restricted_; }

  static bool slots_are_identity(const std::vector<int32_t>& slots, int64_t n, int64_t tile);
  // Host bytes an order of this spec holds (its slots and lookup tables), before it is built.
  static uint64_t bytes_needed(const OrderSpec& spec, const Shape& shape, int64_t tile_m, int64_t tile_n);

 private:
  void build_grid();
  void restrict_to(const TokenRect& rect);
  Region whole_region(int64_t i, int64_t& base) const;  // region() of the whole problem
  int64_t group_of(int64_t token) const;  // tokens of one group share a region

  OrderSpec spec_;
  int64_t nq_, nk_, tm_, tn_;
  int64_t num_q_tiles_ = 0, num_k_tiles_ = 0;
  bool q_identity_ = true;
  std::vector<int32_t> q_slots_, k_slots_;
  std::vector<int64_t> kbase_;      // kClass: first key slot of each class
  int64_t run_stride_ = 0;          // kRun: key slots per whole segment
  std::vector<int32_t> k_inverse_;  // kGrid, or restricted: key token - k_begin -> slot
  bool restricted_ = false;
  int64_t k_begin_ = 0, k_end_ = 0;
};

// Token orders built during one compile, shared by the order choice (which samples
// them) and the tables (a Hilbert order of a large grid is worth building once).
class OrderCache {
 public:
  OrderCache(const Shape& shape, int64_t tile_m, int64_t tile_n, const TokenRect& rect, LayoutBudget& budget)
      : shape_(shape), tm_(tile_m), tn_(tile_n), rect_(rect), budget_(budget) {}
  const TokenOrder& get(const OrderSpec& spec);  // built orders are charged to the budget
  LayoutBudget& budget() { return budget_; }
  // Whether `spec` lists fewer tiles than natural order for the predicate `node_key`
  // (Node::key()): `estimate` once per pair, remembered (splitting unions into parts
  // and planning the tables both ask).
  template <typename Estimate>
  bool permutation_pays(const std::string& node_key, const OrderSpec& spec, Estimate&& estimate) {
    for (const auto& [k, s, pays] : pays_) {
      if (k == node_key && s == spec) return pays;
    }
    const bool pays = estimate();
    pays_.emplace_back(node_key, spec, pays);
    return pays;
  }

 private:
  std::vector<std::tuple<std::string, OrderSpec, bool>> pays_;
  Shape shape_;
  int64_t tm_, tn_;
  TokenRect rect_;
  LayoutBudget& budget_;
  std::vector<std::pair<OrderSpec, std::unique_ptr<TokenOrder>>> orders_;
};

// Reduces the rows of one (part, head group) to its CSR table.
class TableBuilder {
 public:
  // Memory and row operations are charged to `budget`.
  TableBuilder(RowGen& gen, const TokenOrder& order, LayoutBudget& budget);
  BlockTable build();
  // Listed tiles of the whole table, estimated from `samples` evenly spaced query tiles.
  double estimate_listed_tiles(int samples);
  // Refuses, before build(), a table whose row operations or listed tiles, projected
  // from `samples` evenly spaced query tiles, would not fit the budget (tables of few
  // tiles are simply built: the meter stops them).
  void check_projection(int samples);
  // Allowed keys of query token i as sorted key-slot intervals; false (and `out` left
  // alone) when they are those of the previous row.
  bool slot_row(int64_t i, const Region& region, int64_t base, Ivs& out);
  int64_t row_pairs() const { return pairs_; }

 private:
  int64_t reduce(int64_t qt, Ivs& touched, Ivs& full);
  bool row_tiles(int64_t i, const Region& region, int64_t base);
  bool reduce_uniform(int64_t qt, Ivs& touched, Ivs& full, int64_t& pairs);
  bool reduce_uniform_holes(int64_t qt, Ivs& touched, Ivs& full, int64_t& pairs);
  bool uniform_rows(int64_t qt, int64_t& i0, int64_t& i1, int64_t& rows) const;
  int64_t reduce_grid(int64_t qt, Ivs& touched, Ivs& full);
  bool reduce_band(int64_t qt, Ivs& touched, Ivs& full, int64_t& pairs);
  int64_t tile_of(int64_t slot) const { return shift_ >= 0 ? slot >> shift_ : slot / tn_; }

  RowGen& gen_;
  const TokenOrder& order_;
  LayoutBudget& budget_;
  int64_t tn_;
  int shift_ = -1;  // log2(tile_n) when it is a power of two
  Ivs row_, rt_, rf_, prev_t_, prev_f_, tmp_;
  std::vector<int64_t> tile_count_, tiles_;  // reduce_grid: allowed keys per key tile
  Ivs lost_set_;                               // reduce_uniform_holes: a row's losses in the shared set
  std::vector<int64_t> set_keys_, lost_keys_;  // ... and their keys per key tile
  int64_t pairs_ = 0;
  int64_t last_base_ = 0;
  Progression last_prog_;  // row_tiles: the last progression row (first key slot, step, count)
  bool have_row_ = false;
};

// One table to build: a part, the heads that share its predicate, and its order.
struct PartTable {
  int part = 0;
  std::vector<int32_t> heads;
  OrderSpec order;
  Node positive;
  std::vector<Node> excludes;
};

// compile_layout() without the limits on tile sizes (the picture uses tiles as large as
// the sequence).
Layout compile_unchecked(const Pattern& pattern, const Shape& shape, const LayoutOptions& options);
// The same, charged to a budget that the caller may share between several compiles.
Layout compile_budgeted(const Pattern& pattern, const Shape& shape, const LayoutOptions& options,
                        LayoutBudget& budget);

std::vector<LayoutPart> decompose_parts(const Pattern& pattern, const Shape& shape, const LayoutOptions& options,
                                        OrderCache& cache);
std::vector<PartTable> plan_tables(const std::vector<LayoutPart>& parts, const Shape& shape,
                                   const LayoutOptions& options, OrderCache& cache);

}  // namespace spattn::detail
#pragma GCC visibility pop
