// Row ranges: the allowed keys of one query as sorted disjoint intervals (internal to
// patterns/).
//
// The layout compiler never enumerates (query, key) pairs. For each query row it asks
// for the allowed keys as intervals over a *region*: the arithmetic progression of key
// tokens start + k * step (k in [0, count)) that the row's token order makes
// contiguous -- all keys in natural order, one stride class, one LongNet segment's
// residue. Patterns are evaluated on that progression directly (an interval pattern
// maps to one rank interval, a periodic pattern to an interval when its period matches
// the region's, to single ranks otherwise), and unions, intersections and exclusions
// are interval algebra. Intersections and exclusions clip later operands to the hull
// of what is left, so periodic operands only enumerate inside a small range.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <spattn/pattern.hpp>

#include "patterns/arith.hpp"
#include "patterns/budget.hpp"

// Internal to libspattn: hidden, so that the per-row calls bind directly.
#pragma GCC visibility push(hidden)
namespace spattn::detail {

struct Iv {
  int64_t lo = 0;
  int64_t hi = 0;  // exclusive
  bool operator==(const Iv&) const = default;
};
using Ivs = std::vector<Iv>;  // sorted, disjoint, non-adjacent

void iv_union(const Ivs& a, const Ivs& b, Ivs& out);
void iv_intersect(const Ivs& a, const Ivs& b, Ivs& out);
void iv_subtract(const Ivs& a, const Ivs& b, Ivs& out);
void iv_normalize(Ivs& v);  // sort and merge
inline int64_t iv_size(const Ivs& v) {
  int64_t n = 0;
  for (const Iv& iv : v) n += iv.hi - iv.lo;
  return n;
}

// Candidate keys of a row: tokens start + k * step, k in [0, count), all inside [0, Nk).
struct Region {
  int64_t start = 0;
  int64_t step = 1;
  int64_t count = 0;
};

// Ranks first + n * step for n in [0, count).
struct Progression {
  int64_t first = 0;
  int64_t step = 1;
  int64_t count = 0;
};
// The ranks of `region` that hold tokens t in [a, b) with t = a0 (mod q).
Progression rank_progression(const Region& region, int64_t a0, int64_t q, int64_t a, int64_t b);

enum class NodeKind : uint8_t {
  kDense,
  kWindow,
  kGlobalLocal,
  kStrided,
  kDilated,
  kHierarchical,
  kNeighborhood,
  kCustom,
  kButterfly,
  kLongNet,  // one LongNet branch for one head group
  kUnion,
  kIntersect,
};

// A pattern resolved for one head and one branch: head groups are chosen, LongNet
// branches and head groups are concrete, causal is pushed down to the leaves.
struct Node {
  NodeKind kind = NodeKind::kDense;
  bool causal = false;
  const PatternNode* leaf = nullptr;  // leaf parameters (owned by a live Pattern)
  int64_t w = 0, r = 1, o = 0;        // kLongNet: segment, rate, head group
  std::vector<Node> children;         // kUnion, kIntersect (periodic operands last)
  std::vector<Iv> runs;               // kDilated: allowed block distances as runs [lo, hi)
  int64_t key_block = 1;              // kHierarchical: rows in one such block share their keys
  FastDiv key_div;                    // divides a query index into its row key (block, segment)
  FastDiv rate_div;                   // kLongNet: the rate

  // Block-level leaves give every row of a block the same keys: the last result is
  // kept and reused while block, clip and region stay the same.
  mutable int64_t cached_block = -1;
  mutable int64_t cached_clo = 0, cached_chi = 0;
  mutable Region cached_region;
  mutable Ivs cached;

  // Identity of the predicate, for sharing one table between heads.
  std::string key() const;
  // True for leaves whose row sets are periodic (many intervals in natural order).
  bool periodic() const;
};

// Resolves branch `branch` of `pattern` for head h of a problem of shape.heads heads.
// Empty when the head has nothing in that branch (head groups that leave it out).
// Throws kUnsupported for adaptive patterns.
std::optional<Node> resolve(const Pattern& pattern, const Shape& shape, int64_t h, int branch);

// Evaluates the allowed keys of rows for one (part, head): the positive node minus the
// excluded nodes. Not thread-safe (scratch buffers); use one per thread.
//
// Rows are memoised: every leaf has a cheap "row key" such that rows with equal keys
// have equal key sets (LongNet: the segment; block patterns: the block; strided: the
// class...), so a run of equivalent rows is evaluated once. When every leaf of the
// positive node is causal, causal is applied last, as a prefix clip, so that causal
// rows still share the memo.
class RowGen {
 public:
  // Row operations are charged to `budget` (none: free) as they are done.
  RowGen(Node positive, std::vector<Node> excludes, const Shape& shape, LayoutBudget* budget = nullptr);

  // Allowed keys of query token i as rank intervals k in [0, region.count). The
  // reference stays valid until the next call.
  const Ivs& row(int64_t i, const Region& region);
  // True when the last row() returned exactly the set of the row before it.
  bool repeated() const { return repeated_; }

  // True when every row is one arithmetic progression of ranks (a lone strided or
  // LongNet leaf, nothing excluded): row_progression() then gives it without listing
  // its ranks, so that periodic patterns cost O(1) per row even in natural order.
  bool progression_rows() const { return progression_rows_; }
  Progression row_progression(int64_t i, const Region& region) const;

  // True when rows are one leaf (no excludes): a row allows its key's set, below
  // causal_rank(i) when causal() holds.
  bool single_leaf() const { return single_leaf_; }
  const Node& positive() const { return positive_; }
  int64_t nq() const { return shape_.nq; }
  int64_t nk() const { return shape_.nk; }
  bool causal() const { return hoisted_causal_; }
  // Whether every row between tokens i0 < i1 that a tile holds has the key of i0 (keys
  // that are monotone in the token; `grouped`: the tile's rows are one stride class or
  // one LongNet run), for a positive node that is one leaf (excluded nodes aside).
  bool uniform_keys(int64_t i0, int64_t i1, bool grouped) const;
  // The key set of row i before the causal clip.
  const Ivs& unclipped_row(int64_t i, const Region& region);
  bool has_excludes() const { return !excludes_.empty(); }
  // The positive leaf's keys of row i (no excludes, no causal clip); the reference
  // stays valid until the next call of row() or positive_row() (excluded() keeps it).
  const Ivs& positive_row(int64_t i, const Region& region);
  // The keys the excluded nodes take from row i inside ranks [lo, hi) (their union);
  // valid until the next call of row() or excluded().
  const Ivs& excluded(int64_t i, const Region& region, int64_t lo, int64_t hi);
  int64_t causal_rank(int64_t i, const Region& region) const { return causal_bound(i, region); }

  // Charges `units` row operations (intervals produced, keys visited) to the budget.
  void charge(uint64_t units) {
    if (budget_ != nullptr) budget_->spend(units);
  }

 private:
  void gen(const Node& n, int64_t i, const Region& rg, int64_t clo, int64_t chi, Ivs& out, int depth);
  void leaf(const Node& n, int64_t i, const Region& rg, int64_t clo, int64_t chi, Ivs& out);
  bool row_key(const Node& n, int64_t i);  // appends to key_; false: this row has no key
  int64_t causal_bound(int64_t i, const Region& rg) const;  // first rank that causal excludes

  Node positive_;
  std::vector<Node> excludes_;
  Shape shape_;
  LayoutBudget* budget_ = nullptr;
  bool hoisted_causal_ = false;
  bool progression_rows_ = false;
  bool single_leaf_ = false;  // no excludes and a leaf: scalar row keys
  std::vector<Ivs> scratch_;  // two buffers per tree depth
  Ivs tmp_, tmp2_;
  std::vector<Iv> small_;
  // Memo of the last keyed row (before the causal clip).
  std::vector<int64_t> key_, last_key_;
  int64_t last_scalar_ = 0;
  Region last_region_;
  FastDiv step_div_;  // divides by last_region_.step
  bool have_last_ = false;
  bool repeated_ = false;
  Ivs last_, out_;
};

}  // namespace spattn::detail
#pragma GCC visibility pop
