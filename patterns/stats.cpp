// Statistics of compiled layouts and the ASCII block picture.
#include <algorithm>
#include <map>

#include <spattn/layout.hpp>

#include "common/check.hpp"
#include "patterns/arith.hpp"
#include "patterns/layout_internal.hpp"

namespace spattn {

namespace {

// Tables of each head.
std::vector<std::vector<size_t>> tables_by_head(const Layout& layout) {
  std::vector<std::vector<size_t>> by_head(static_cast<size_t>(layout.shape.heads));
  for (size_t t = 0; t < layout.tables.size(); ++t) {
    for (int32_t h : layout.tables[t].heads) by_head[h].push_back(t);
  }
  return by_head;
}

bool natural_order(const Layout& layout) {
  return std::all_of(layout.tables.begin(), layout.tables.end(),
                     [](const BlockTable& t) { return t.q_slots.empty() && t.k_slots.empty(); });
}

// Per query tile of a natural-order layout: the key tiles any table of the given set
// touches (first) and lists as full (second), merged over the tables.
struct TileUnion {
  std::vector<int32_t> touched, full;
};
template <class Fn>
void for_each_tile_union(const Layout& layout, const std::vector<size_t>& tables, int64_t nqt, Fn&& fn) {
  TileUnion u;
  for (int64_t q = 0; q < nqt; ++q) {
    u.touched.clear();
    u.full.clear();
    for (size_t t : tables) {
      const BlockTable& bt = layout.tables[t];
      const int64_t lo = bt.row_ptr[q], hi = bt.row_ptr[q + 1];
      u.touched.insert(u.touched.end(), bt.cols.begin() + lo, bt.cols.begin() + hi);
      u.full.insert(u.full.end(), bt.cols.begin() + lo, bt.cols.begin() + lo + bt.full_count[q]);
    }
    if (tables.size() > 1) {
      std::sort(u.touched.begin(), u.touched.end());
      u.touched.erase(std::unique(u.touched.begin(), u.touched.end()), u.touched.end());
      std::sort(u.full.begin(), u.full.end());
      u.full.erase(std::unique(u.full.begin(), u.full.end()), u.full.end());
    }
    fn(q, u);
  }
}

}  // namespace

LayoutStats layout_stats(const Pattern& pattern, const Layout& layout, int64_t head_dim) {
  SPATTN_REQUIRE(head_dim >= 1, "stats: head_dim must be >= 1 (got {})", head_dim);
  const Shape& shape = layout.shape;
  LayoutStats s;
  for (const BlockTable& t : layout.tables) {
    const int64_t heads = static_cast<int64_t>(t.heads.size());
    s.allowed_pairs_total += t.allowed_pairs * heads;
    s.total_tiles += t.num_q_tiles * t.num_k_tiles * heads;
    int64_t full = 0;
    for (int32_t f : t.full_count) full += f;
    const int64_t listed = static_cast<int64_t>(t.cols.size());
    s.active_tiles += listed * heads;
    s.full_tiles += full * heads;
    s.partial_tiles += (listed - full) * heads;
    s.table_bytes += static_cast<int64_t>(t.cols.size() * sizeof(int32_t) + t.row_ptr.size() * sizeof(int64_t) +
                                          t.full_count.size() * sizeof(int32_t) + t.q_slots.size() * sizeof(int32_t) +
                                          t.k_slots.size() * sizeof(int32_t) + t.heads.size() * sizeof(int32_t));
  }
  const double cells = double(shape.nq) * double(shape.nk);
  s.allowed_pairs = double(s.allowed_pairs_total) / double(shape.heads);
  s.density = s.allowed_pairs / cells;
  s.useful_flops = 4.0 * double(head_dim) * double(s.allowed_pairs_total);
  s.parts = static_cast<int>(layout.parts.size());

  // Block density in natural order: the tiles a FlexAttention-style block mask of the
  // same tile size would visit.
  Layout natural_copy;
  const Layout* natural = &layout;
  if (!natural_order(layout)) {
    LayoutOptions o;
    o.tile_m = layout.tile_m;
    o.tile_n = layout.tile_n;
    o.permute = false;
    natural_copy = detail::compile_unchecked(pattern, shape, o);
    natural = &natural_copy;
  }
  const int64_t nqt = detail::ceil_div(shape.nq, layout.tile_m), nkt = detail::ceil_div(shape.nk, layout.tile_n);
  std::map<std::vector<size_t>, int64_t> memo;
  int64_t touched = 0;
  for (const auto& tables : tables_by_head(*natural)) {
    auto it = memo.find(tables);
    if (it == memo.end()) {
      int64_t n = 0;
      for_each_tile_union(*natural, tables, nqt, [&](int64_t, const TileUnion& u) { n += static_cast<int64_t>(u.touched.size()); });
      it = memo.emplace(tables, n).first;
    }
    touched += it->second;
  }
  s.natural_block_density = double(touched) / (double(nqt) * double(nkt) * double(shape.heads));

  // Per-level coverage of a hierarchical pattern: each level's rows are one interval.
  if (const auto* hier = std::get_if<Hierarchical>(&pattern.node())) {
    const int64_t shift = shape.nk - shape.nq;
    for (const HierarchicalLevel& l : hier->levels) {
      int64_t pairs = 0, queries = 0;
      const int64_t s_rows = std::max<int64_t>(1, l.stride / l.block);
      for (int64_t i = 0; i < shape.nq; ++i) {
        const int64_t qb = i / l.block;
        if (qb % s_rows != 0) continue;
        int64_t lo = 0, hi = shape.nk;
        if (l.window != -1) {
          const int64_t hw = (l.window / l.block) / 2;
          lo = std::max<int64_t>(0, (qb - hw) * l.block);
          hi = std::min(shape.nk, (qb + hw + 1) * l.block);
        }
        if (pattern.causal()) hi = std::min(hi, i + shift + 1);
        if (hi > lo) pairs += hi - lo;
        ++queries;
      }
      s.level_coverage.push_back(double(pairs) / cells);
      s.level_queries.push_back(queries);
    }
  }
  return s;
}

std::string render_pattern(const Pattern& pattern, const Shape& shape, int64_t block, int64_t head, int max_cells) {
  SPATTN_REQUIRE(block >= 1, "show: block must be >= 1 (got {})", block);
  SPATTN_REQUIRE(max_cells >= 1, "show: max_cells must be >= 1 (got {})", max_cells);
  SPATTN_REQUIRE(head >= 0 && head < shape.heads, "show: head must be in [0, {}) (got {})", shape.heads, head);
  pattern.validate(shape);
  const int64_t qblocks = detail::ceil_div(shape.nq, block), kblocks = detail::ceil_div(shape.nk, block);
  // One cell per group x group blocks, the same group on both axes so that the
  // picture keeps the aspect of the attention matrix.
  const int64_t group = std::max(detail::ceil_div(qblocks, max_cells), detail::ceil_div(kblocks, max_cells));
  // A cell is exactly a tile of group * block tokens: compile at that tile size.
  LayoutOptions o;
  o.tile_m = o.tile_n = group * block;
  o.permute = false;
  const Layout layout = detail::compile_unchecked(pattern, shape, o);
  const int64_t rows = detail::ceil_div(shape.nq, o.tile_m), cols = detail::ceil_div(shape.nk, o.tile_n);
  std::vector<std::string> grid(static_cast<size_t>(rows), std::string(static_cast<size_t>(cols), '.'));
  int64_t active = 0;
  for_each_tile_union(layout, tables_by_head(layout)[head], rows, [&](int64_t q, const TileUnion& u) {
    for (int32_t k : u.touched) grid[q][k] = '+';
    for (int32_t k : u.full) grid[q][k] = '#';
    active += static_cast<int64_t>(u.touched.size());
  });
  std::string out = fmt::format("{} x {} tokens, head {}: {} x {} cells of {} x {} tokens ({} x {} blocks of {})\n",
                                shape.nq, shape.nk, head, rows, cols, o.tile_m, o.tile_n, group, group, block);
  const std::string border = "+" + std::string(static_cast<size_t>(cols), '-') + "+\n";
  out += border;
  for (const std::string& line : grid) out += "|" + line + "|\n";
  out += border;
  out += fmt::format("'#' every pair allowed, '+' some pairs, '.' none; {} of {} cells active\n", active, rows * cols);
  return out;
}

}  // namespace spattn
