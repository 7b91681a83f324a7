// Statistics of compiled layouts and the ASCII block picture.
#include <algorithm>
#include <deque>
#include <map>

#include <spattn/layout.hpp>

#include "common/check.hpp"
#include "patterns/arith.hpp"
#include "patterns/budget.hpp"
#include "patterns/layout_internal.hpp"
#include "patterns/limits.hpp"

namespace spattn {

namespace {

// Natural-order tables of a pattern, possibly compiled member by member.
struct NaturalTables {
  std::deque<Layout> owned;
  std::vector<const Layout*> layouts;
  // Per head: (layout, table) pairs.
  std::vector<std::vector<std::pair<size_t, size_t>>> of_head;

  void add(const Layout& l) {  // l must outlive this object
    const size_t k = layouts.size();
    if (of_head.empty()) of_head.resize(static_cast<size_t>(l.shape.heads));
    for (size_t t = 0; t < l.tables.size(); ++t) {
      for (int32_t h : l.tables[t].heads) of_head[h].emplace_back(k, t);
    }
    layouts.push_back(&l);
  }
  void add(Layout&& l) {
    owned.push_back(std::move(l));
    add(static_cast<const Layout&>(owned.back()));
  }
};

bool natural_order(const Layout& layout) {
  return std::all_of(layout.tables.begin(), layout.tables.end(),
                     [](const BlockTable& t) { return t.q_slots.empty() && t.k_slots.empty(); });
}

// Keys a natural-order compile would enumerate one by one: periodic leaves inside a
// union or intersection (alone they are progressions, O(1) per row).
double periodic_work(const Pattern& p, const Shape& shape, bool in_composition) {
  const PatternNode& n = p.node();
  if (const auto* s = std::get_if<Strided>(&n)) {
    return in_composition && s->stride > 1 ? double(shape.nq) * double(shape.nk) / double(s->stride) : 0.0;
  }
  if (const auto* l = std::get_if<LongNet>(&n)) {
    double w = 0;
    for (size_t b = 0; b < l->segments.size(); ++b) {
      if (in_composition) w += double(shape.nq) * double(std::min(l->segments[b], shape.nk)) / double(l->rates[b]);
    }
    return w;
  }
  double w = 0;
  auto items = [&](const std::vector<Pattern>& v, bool comp) {
    for (const Pattern& q : v) w += periodic_work(q, shape, comp);
  };
  if (const auto* u = std::get_if<Union>(&n)) items(u->items, true);
  if (const auto* x = std::get_if<Intersect>(&n)) items(x->items, true);
  if (const auto* b = std::get_if<Branches>(&n)) items(b->items, in_composition);
  if (const auto* h = std::get_if<HeadGroups>(&n)) {
    for (const HeadGroup& g : h->groups) w += periodic_work(*g.pattern, shape, in_composition);
  }
  return w;
}

// The natural-order tables of `pattern` at the given tiles. With `split`, a top-level
// union is compiled member by member: touched tiles are the same, and a member's row
// sets stay single progressions; full tiles are then those one member fills alone.
void add_natural(const Pattern& pattern, bool causal, const Shape& shape, int64_t tm, int64_t tn, bool split,
                 detail::LayoutBudget& budget, NaturalTables& out) {
  causal = causal || pattern.causal();
  if (const auto* u = std::get_if<Union>(&pattern.node()); u != nullptr && split) {
    for (const Pattern& m : u->items) add_natural(m, causal, shape, tm, tn, split, budget, out);
    return;
  }
  LayoutOptions o;
  o.tile_m = tm;
  o.tile_n = tn;
  o.permute = false;
  out.add(detail::compile_budgeted(pattern.with_causal(causal), shape, o, budget));
}

// Per query tile: the key tiles any of the tables touches and those one of them lists
// as full (each once, in no particular order).
struct TileUnion {
  std::vector<int32_t> touched, full;
};
template <class Fn>
void for_each_tile_union(const NaturalTables& nt, const std::vector<std::pair<size_t, size_t>>& tables, int64_t nqt,
                         int64_t nkt, detail::LayoutBudget& budget, Fn&& fn) {
  TileUnion u;
  // The query tile that last listed each key tile: a tile listed by several tables is
  // counted once without sorting.
  std::vector<int64_t> seen_touched, seen_full;
  if (tables.size() > 1) {
    budget.check_scratch(2 * sizeof(int64_t) * static_cast<uint64_t>(nkt), "tile marks");
    seen_touched.assign(static_cast<size_t>(nkt), -1);
    seen_full.assign(static_cast<size_t>(nkt), -1);
  }
  for (int64_t q = 0; q < nqt; ++q) {
    u.touched.clear();
    u.full.clear();
    for (const auto& [l, t] : tables) {
      const BlockTable& bt = nt.layouts[l]->tables[t];
      const int64_t lo = bt.row_ptr[q], hi = bt.row_ptr[q + 1], full_end = lo + bt.full_count[q];
      budget.spend(static_cast<uint64_t>(hi - lo));
      if (tables.size() == 1) {
        u.touched.assign(bt.cols.begin() + lo, bt.cols.begin() + hi);
        u.full.assign(bt.cols.begin() + lo, bt.cols.begin() + full_end);
        break;
      }
      for (int64_t c = lo; c < hi; ++c) {
        const int32_t k = bt.cols[c];
        if (seen_touched[k] != q) {
          seen_touched[k] = q;
          u.touched.push_back(k);
        }
        if (c < full_end && seen_full[k] != q) {
          seen_full[k] = q;
          u.full.push_back(k);
        }
      }
    }
    fn(q, u);
  }
}

}  // namespace

LayoutStats layout_stats(const Pattern& pattern, const Layout& layout, int64_t head_dim) {
  SPATTN_REQUIRE(head_dim >= 1, "stats: head_dim must be >= 1 (got {})", head_dim);
  const Shape& shape = layout.shape;
  SPATTN_REQUIRE(layout.rect == (TokenRect{0, shape.nq, 0, shape.nk}),
                 "stats: the layout covers the rectangle of rows [{}, {}) and keys [{}, {}), not the whole problem; "
                 "layout_stats describes whole-problem layouts (compile one without LayoutOptions::rect)",
                 layout.rect.q_begin, layout.rect.q_end, layout.rect.k_begin, layout.rect.k_end);
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
  s.tile_density = double(s.active_tiles) * double(layout.tile_m) * double(layout.tile_n) / (cells * double(shape.heads));
  s.density = s.allowed_pairs / cells;
  s.useful_flops = 4.0 * double(head_dim) * double(s.allowed_pairs_total);
  s.parts = static_cast<int>(layout.parts.size());

  // Block density in natural order: the tiles a FlexAttention-style block mask of the
  // same tile size would visit (touched tiles are exact also member by member).
  // One budget for the natural-order compiles and the passes over their tables.
  LayoutOptions budget_options;
  budget_options.tile_m = layout.tile_m;
  budget_options.tile_n = layout.tile_n;
  detail::LayoutBudget budget(budget_options, shape);
  budget.set_context("the natural-order tables (natural_block_density)");
  NaturalTables natural;
  if (natural_order(layout)) {
    natural.add(layout);
  } else {
    add_natural(pattern, false, shape, layout.tile_m, layout.tile_n, true, budget, natural);
  }
  const int64_t nqt = detail::ceil_div(shape.nq, layout.tile_m), nkt = detail::ceil_div(shape.nk, layout.tile_n);
  std::map<std::vector<std::pair<size_t, size_t>>, int64_t> memo;
  {
    // The pass below visits every listed tile of each distinct set of tables once.
    std::map<std::vector<std::pair<size_t, size_t>>, bool> sets;
    uint64_t visits = 0;
    for (const auto& tables : natural.of_head) {
      if (!sets.emplace(tables, true).second) continue;
      for (const auto& [l, t] : tables) visits += natural.layouts[l]->tables[t].cols.size();
    }
    budget.check_projection(visits, 0, "tile marks");
  }
  int64_t touched = 0;
  for (const auto& tables : natural.of_head) {
    auto it = memo.find(tables);
    if (it == memo.end()) {
      int64_t n = 0;
      for_each_tile_union(natural, tables, nqt, nkt, budget,
                          [&](int64_t, const TileUnion& u) { n += static_cast<int64_t>(u.touched.size()); });
      it = memo.emplace(tables, n).first;
    }
    touched += it->second;
  }
  s.natural_block_density = double(touched) / (double(nqt) * double(nkt) * double(shape.heads));

  // Per-level coverage of a hierarchical pattern: each level's rows are one interval.
  if (const auto* hier = std::get_if<Hierarchical>(&pattern.node())) {
    const int64_t shift = shape.nk - shape.nq;
    for (const HierarchicalLevel& l : hier->levels) {
      budget.spend(static_cast<uint64_t>(shape.nq));
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
  SPATTN_REQUIRE(max_cells >= 1 && max_cells <= limits::kMaxPictureCells, "show: max_cells must be in [1, {}] (got {})",
                 limits::kMaxPictureCells, max_cells);
  SPATTN_REQUIRE(head >= 0 && head < shape.heads, "show: head must be in [0, {}) (got {})", shape.heads, head);
  pattern.validate(shape);
  const int64_t qblocks = detail::ceil_div(shape.nq, block), kblocks = detail::ceil_div(shape.nk, block);
  // One cell per group x group blocks, the same group on both axes so that the
  // picture keeps the aspect of the attention matrix.
  const int64_t group = std::max(detail::ceil_div(qblocks, max_cells), detail::ceil_div(kblocks, max_cells));
  // A cell is exactly a tile of group * block tokens: compile at that tile size. Unions
  // with periodic members that natural order would enumerate key by key (beyond ~10^8
  // keys) are drawn member by member; a cell that only the union fills then shows '+'.
  const int64_t cell = group * block;
  LayoutOptions budget_options;
  budget_options.tile_m = budget_options.tile_n = cell;
  detail::LayoutBudget budget(budget_options, shape);
  NaturalTables natural;
  add_natural(pattern, false, shape, cell, cell, periodic_work(pattern, shape, false) > 1e8, budget, natural);
  const int64_t rows = detail::ceil_div(shape.nq, cell), cols = detail::ceil_div(shape.nk, cell);
  std::vector<std::string> grid(static_cast<size_t>(rows), std::string(static_cast<size_t>(cols), '.'));
  int64_t active = 0;
  for_each_tile_union(natural, natural.of_head[head], rows, cols, budget, [&](int64_t q, const TileUnion& u) {
    for (int32_t k : u.touched) grid[q][k] = '+';
    for (int32_t k : u.full) grid[q][k] = '#';
    active += static_cast<int64_t>(u.touched.size());
  });
  std::string out = fmt::format("{} x {} tokens, head {}: {} x {} cells of {} x {} tokens ({} x {} blocks of {})\n",
                                shape.nq, shape.nk, head, rows, cols, cell, cell, group, group, block);
  const std::string border = "+" + std::string(static_cast<size_t>(cols), '-') + "+\n";
  out += border;
  for (const std::string& line : grid) out += "|" + line + "|\n";
  out += border;
  out += fmt::format("'#' every pair allowed, '+' some pairs, '.' none; {} of {} cells active\n", active, rows * cols);
  return out;
}

}  // namespace spattn
