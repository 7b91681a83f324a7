// Layouts: what a kernel needs to run a pattern at one problem shape and tile size.
//
// compile_layout() reduces the token predicate of a Pattern to block tables. Token
// sparsity that is not block-sparse in natural order (LongNet dilation, relative
// strides, grids) is made block-sparse by a token permutation ("slots"). A pattern
// may need several *parts* (LongNet branches, branch items, union members that want
// different token orders); every part has its own softmax and the parts' outputs are
// merged with LSE weights. Within one branch the parts' allowed key sets are disjoint,
// so the merge is exactly one softmax over their union.
//
// Tile size is a pure performance choice: it never changes which pairs are allowed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <spattn/pattern.hpp>

namespace spattn {

// Order in which (table, query tile, head) work items are launched. Never changes results.
enum class ScheduleOrder {
  kRowMajor,      // head-major, then query tiles in order
  kHilbert,       // along a Hilbert curve over (query tile, key tile) block coordinates
  kLongestFirst,  // most key tiles first (evens out the tail of imbalanced patterns)
};
const char* to_string(ScheduleOrder order);
ScheduleOrder schedule_order_from_string(std::string_view name);  // throws kInvalidArgument

// A sub-rectangle of a problem: query rows [q_begin, q_end) against keys [k_begin, k_end),
// in the problem's own (global) token positions. An end of -1 means the end of the axis.
// Sequence-parallel attention runs one rectangle per (query shard, key shard) pair.
struct TokenRect {
  int64_t q_begin = 0, q_end = -1;
  int64_t k_begin = 0, k_end = -1;
  bool operator==(const TokenRect&) const = default;
};

struct LayoutOptions {
  int64_t tile_m = 128;  // query tile (rows per work item)
  int64_t tile_n = 64;   // key tile
  bool permute = true;   // allow token permutations; false: natural order everywhere
  ScheduleOrder schedule = ScheduleOrder::kRowMajor;
  // Only the pairs of this rectangle (default: the whole problem). Every predicate, causal
  // alignment included, still sees the whole problem's shape and global token indices:
  // the layout lists exactly the pattern's allowed pairs that lie in the rectangle.
  TokenRect rect;
  // Budgets of the compile (never change results; patterns/README.md "Limits"). 0: from
  // SPATTN_LAYOUT_MAX_BYTES / SPATTN_LAYOUT_MAX_WORK, else half the physical memory (at
  // most 32 GiB) and ~10 s of host work.
  uint64_t max_bytes = 0;  // host memory of the layout and the scratch that builds it
  uint64_t max_work = 0;   // row operations (key intervals produced, keys visited)
};

// One softmax domain: key j is allowed for query i of head h iff pattern.allowed_in_branch
// (branch, h, i, j) holds and no pattern of `exclude` allows it. The kernel evaluates
// exactly this predicate in partial tiles, on original token indices and the original
// (global) head index, with the layout's shape. A part taken from inside a head group
// carries that group as a one-group HeadGroups wrapper (false for every other head; the
// group's pattern sees head h - first of `count` heads), so the predicate needs no other
// context.
//
// Counting every part that allows (h, i, j) gives the number of branches of the whole
// pattern that allow it: LSE-merging the parts is exactly the pattern's attention.
struct LayoutPart {
  Pattern pattern;               // the part's own predicate (a branch item, or a union member)
  int branch = 0;                // the branch of `pattern` this part runs (see Pattern::branch_count)
  std::vector<Pattern> exclude;  // pairs already covered by earlier parts of the same branch
};

// Block tables for one part and the set of heads that share them.
struct BlockTable {
  int part = 0;                // index into Layout::parts
  std::vector<int32_t> heads;  // query heads that use this table, ascending

  // Token order. Empty: identity (slot s holds token s; slots past the end are padding).
  // Otherwise slot s holds an original token index, or -1 for padding; the size is
  // num_q_tiles * tile_m (resp. num_k_tiles * tile_n).
  std::vector<int32_t> q_slots;
  std::vector<int32_t> k_slots;
  int64_t num_q_tiles = 0;
  int64_t num_k_tiles = 0;

  // CSR over query tiles: query tile t visits key tiles cols[row_ptr[t] .. row_ptr[t+1]);
  // the first full_count[t] of them are full (every valid pair allowed, no padding key),
  // the rest are partial (the kernel evaluates the predicate). Listed tiles are never empty.
  std::vector<int64_t> row_ptr;
  std::vector<int32_t> full_count;
  std::vector<int32_t> cols;

  // Allowed (query, key) pairs of this table for one of its heads (the same for each):
  // what the kernel's useful work is, and what layout_stats() adds up.
  int64_t allowed_pairs = 0;
};

// One unit of kernel work: a query tile of a table, for one head.
struct WorkItem {
  int32_t table = 0;
  int32_t q_tile = 0;
  int32_t head = 0;
};

// Statistics of a compiled layout (DESIGN.md §3, §8 "Stats").
struct LayoutStats {
  double density = 0;             // allowed pairs / (Nq*Nk), averaged over heads, branch multiplicity counted
  double allowed_pairs = 0;       // allowed pairs per head (mean over heads)
  int64_t allowed_pairs_total = 0;  // summed over heads
  int64_t total_tiles = 0;        // query tiles x key tiles of every table, summed over heads
  int64_t active_tiles = 0;       // listed tiles, summed over heads
  int64_t full_tiles = 0;
  int64_t partial_tiles = 0;
  double natural_block_density = 0;  // touched tiles / all tiles without any permutation
  double tile_density = 0;  // listed tiles x tile_m x tile_n / (Nq x Nk x heads): the kernel's work vs dense
  double useful_flops = 0;        // 4 * head_dim * allowed_pairs_total
  std::vector<double> level_coverage;  // hierarchical: fraction of pairs each level allows; else empty
  std::vector<int64_t> level_queries;  // hierarchical: queries that take part in each level
  int parts = 0;
  int64_t table_bytes = 0;        // host memory of the tables and slots
};

struct Layout {
  Shape shape;  // the whole problem the predicates are evaluated on
  // The rectangle of `shape` the tables cover, ends resolved (the whole problem unless
  // LayoutOptions::rect said otherwise). Slots always hold global token indices; a table
  // whose rectangle is not a whole axis lists that axis's slots explicitly (only tokens
  // inside the rectangle, each group padded to whole tiles), so a kernel that indexes
  // its inputs by token reads rows [q_begin, q_end) and [k_begin, k_end) only.
  TokenRect rect;
  int64_t tile_m = 0;
  int64_t tile_n = 0;
  std::vector<LayoutPart> parts;
  std::vector<BlockTable> tables;
  // True when every (head, query of the rectangle) is a row of at least one table; false means some rows
  // have no table (e.g. LongNet rows in no branch of their head) and the kernel must
  // write O = 0, LSE = -inf for them before (or instead of) running.
  bool covers_all_rows = true;
  // Adaptive layouts (adaptive_layout): the block the GPU selects per call; 0 for the
  // layouts compile_layout builds.
  int64_t adaptive_block = 0;
  std::vector<WorkItem> schedule;  // every (table, q_tile, head) once, in launch order

  bool needs_merge() const { return parts.size() > 1; }
};

// Compiles the layout. Throws kInvalidArgument for an invalid pattern/shape/tile (tiles
// in [1, 4096], at most 2^31 tiles per table, a rectangle that is empty or leaves the shape) and kUnsupported for adaptive patterns
// (their tables are built on the GPU), sequences over 2^30 tokens, and layouts that
// would need more host memory or work than the options' budgets allow (the message
// says which, and how to raise it). Cost O(rows x row intervals + listed tiles) on one
// thread; table memory O(listed tiles + permuted tokens).
//
// Token orders (with permute): LongNet branches group each segment's residue-o tokens
// per head group; relative strides group classes token % stride; column strides compact
// the keys to the multiples of the stride; 2-D/3-D (or dilated) neighborhoods group the
// dilation residues and follow a Hilbert curve inside each. A group is padded to whole
// tiles, so tiles never straddle segments or classes. An order is only used where it
// lists fewer tiles than natural order (estimated on a sample) and at most doubles the
// slots; unions whose members want different orders become several parts.
Layout compile_layout(const Pattern& pattern, const Shape& shape, const LayoutOptions& options = {});

// Exact statistics (pair counts from the layout's row ranges, not O(N^2) enumeration).
// natural_block_density compiles the natural-order tables unless the layout is already
// in natural order. Whole-problem layouts only (kInvalidArgument for a rectangle).
LayoutStats layout_stats(const Pattern& pattern, const Layout& layout, int64_t head_dim = 128);

// ASCII block picture in natural token order (like the seeds' visualize_pattern):
// at most max_cells x max_cells characters, one cell per group of blocks: '#' every
// pair of the cell allowed, '+' some, '.' none; a header line and a legend line.
std::string render_pattern(const Pattern& pattern, const Shape& shape, int64_t block = 128,
                           int64_t head = 0, int max_cells = 64);

// A block table turned around for the backward pass: per key tile, the query tiles that
// attend it — full tiles first, then partial tiles, each list in ascending order. It
// lists exactly the (query tile, key tile) pairs of the forward table with the same
// full / partial classification, so dK and dV accumulate over precisely the forward's
// work (and partial tiles evaluate the same predicate). Cost O(query tiles + key tiles +
// listed tiles); token orders are the forward table's (q_slots, k_slots).
struct TransposedTable {
  int64_t num_q_tiles = 0;
  int64_t num_k_tiles = 0;
  std::vector<int64_t> col_ptr;     // num_k_tiles + 1 offsets into rows
  std::vector<int32_t> full_count;  // per key tile: how many of its query tiles are full
  std::vector<int32_t> rows;        // query tile indices
};
TransposedTable transpose_table(const BlockTable& table);

}  // namespace spattn
