// The layout compiler: pattern -> parts -> (per group of heads with the same predicate)
// token order and CSR block tables, plus the work schedule.
//
// Tables are exact: a key tile is listed for a query tile iff some real query row of the
// tile allows some key of it, and it is listed as full iff every real row allows every
// slot of it (a tile holding a padding slot or a key past Nk is never full). Rows come
// from detail::RowGen as key intervals, so the cost is O(rows x intervals + listed
// tiles), never O(Nq x Nk).
#include <spattn/layout.hpp>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>

#include "common/check.hpp"
#include "common/log.hpp"
#include "common/text.hpp"
#include "patterns/arith.hpp"
#include "patterns/hilbert.hpp"
#include "patterns/layout_internal.hpp"
#include "patterns/limits.hpp"
#include "patterns/rows.hpp"

namespace spattn {

const char* to_string(ScheduleOrder order) {
  switch (order) {
    case ScheduleOrder::kRowMajor: return "row_major";
    case ScheduleOrder::kHilbert: return "hilbert";
    case ScheduleOrder::kLongestFirst: return "longest_first";
  }
  return "unknown";
}

ScheduleOrder schedule_order_from_string(std::string_view name) {
  if (name == "row_major") return ScheduleOrder::kRowMajor;
  if (name == "hilbert") return ScheduleOrder::kHilbert;
  if (name == "longest_first") return ScheduleOrder::kLongestFirst;
  SPATTN_FAIL(ErrorCode::kInvalidArgument, "schedule: unknown order '{}' (known: row_major, hilbert, longest_first)",
              name);
}

namespace detail {

// Large tables (tens of MiB for patterns with dense rows at 1M tokens) are written
// once, front to back: with transparent huge pages on request, the first touch costs
// one fault per 2 MiB instead of one per 4 KiB.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (bytes < 2 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint: failure is fine
#else
  (void)data;
  (void)bytes;
#endif
}

namespace {

// --- which token order a part wants ----------------------------------------------------

// Whether a token order lists fewer tiles than natural order for this predicate,
// estimated on a sample of query tiles of each. A permutation costs gathers and
// padding, so it has to save at least 10%.
bool permutation_pays(const Node& n, const OrderSpec& spec, const Shape& shape, OrderCache& cache) {
  return cache.permutation_pays(n.key(), spec, [&] {
    constexpr int kSamples = 48;
    RowGen gen(n, {}, shape, &cache.budget());
    const TokenOrder& permuted = cache.get(spec);
    const TokenOrder& natural = cache.get(OrderSpec{});
    const double p = TableBuilder(gen, permuted, cache.budget()).estimate_listed_tiles(kSamples);
    const double q = TableBuilder(gen, natural, cache.budget()).estimate_listed_tiles(kSamples);
    return p < 0.9 * q;
  });
}

// Slots an order needs for n tokens: its groups (classes, segment runs) are each padded
// to whole tiles.
int64_t padded_slots(const OrderSpec& spec, int64_t n, int64_t tile) {
  switch (spec.kind) {
    case OrderSpec::kClass: {
      const int64_t q = n / spec.s, r = n % spec.s;  // r classes of q + 1 tokens, the others q
      const int64_t classes = std::min(spec.s, n);
      return r * round_up(q + 1, tile) + (classes - r) * round_up(q, tile);
    }
    case OrderSpec::kRun: {
      const int64_t per = spec.o < spec.w ? ceil_div(spec.w - spec.o, spec.r) : 0;
      int64_t total = (n / spec.w) * round_up(per, tile);
      const int64_t rest = n % spec.w;
      if (rest > spec.o) total += round_up(ceil_div(rest - spec.o, spec.r), tile);
      return total;
    }
    case OrderSpec::kGrid: {
      const Neighborhood& g = *spec.grid;
      std::vector<std::vector<int64_t>> lens(g.grid.size());
      double classes = 1;
      for (size_t a = 0; a < g.grid.size(); ++a) {
        const int64_t d = g.dilation.empty() ? 1 : g.dilation[a];
        classes *= double(std::min(d, g.grid[a]));
        for (int64_t r = 0; r < std::min(d, g.grid[a]); ++r) lens[a].push_back(ceil_div(g.grid[a] - r, d));
      }
      if (classes > double(n) / 2) return INT64_MAX;  // classes of one or two cells
      int64_t total = 0;
      std::vector<size_t> idx(g.grid.size(), 0);
      for (;;) {
        int64_t cells = 1;
        for (size_t a = 0; a < idx.size(); ++a) cells *= lens[a][idx[a]];
        total += round_up(cells, tile);
        size_t a = idx.size();
        while (a-- > 0 && ++idx[a] == lens[a].size()) idx[a] = 0;
        if (a == static_cast<size_t>(-1)) break;
      }
      return total;
    }
    default:
      return round_up(n, tile);
  }
}

// A permutation may at most double the slots (padding is work the kernel does).
bool padding_acceptable(const OrderSpec& spec, const Shape& shape, const LayoutOptions& o) {
  return padded_slots(spec, shape.nq, o.tile_m) <= 2 * shape.nq + o.tile_m &&
         padded_slots(spec, shape.nk, o.tile_n) <= 2 * shape.nk + o.tile_n;
}

// The order a leaf wants, or natural order.
OrderSpec leaf_order(const Node& n, const Shape& shape, const LayoutOptions& o, OrderCache& cache) {
  OrderSpec spec;
  if (n.kind == NodeKind::kStrided) {
    const auto& s = std::get<Strided>(*n.leaf);
    if (s.stride <= 1) return spec;
    spec.kind = s.mode == StrideMode::kRelative ? OrderSpec::kClass : OrderSpec::kColumns;
    spec.s = s.stride;
    // Compacting the key columns never lists more tiles; stride classes only pay when
    // each class fills tiles (checked below).
  } else if (n.kind == NodeKind::kLongNet) {
    // Runs keep tiles inside segments and residues; for rate 1 and whole-tile segments
    // they come out as the identity.
    spec.kind = OrderSpec::kRun;
    spec.w = n.w;
    spec.r = n.r;
    spec.o = n.o;
  } else if (n.kind == NodeKind::kNeighborhood) {
    const auto& g = std::get<Neighborhood>(*n.leaf);
    bool dilated = false;
    for (int64_t d : g.dilation) dilated = dilated || d > 1;
    if (g.grid.size() == 1 && !dilated) return spec;  // a 1-D window is a band already
    spec.kind = OrderSpec::kGrid;
    spec.grid = &g;
  }
  if (spec.kind != OrderSpec::kIdentity && !padding_acceptable(spec, shape, o)) return OrderSpec{};
  if ((spec.kind == OrderSpec::kClass || spec.kind == OrderSpec::kGrid) && !permutation_pays(n, spec, shape, cache)) {
    return OrderSpec{};
  }
  return spec;
}

// Head-independent order key of a union member, used to split unions into parts.
std::string static_order_key(const Pattern& p, const Shape& shape, const LayoutOptions& o, OrderCache& cache) {
  const PatternNode& n = p.node();
  if (std::holds_alternative<Strided>(n) || std::holds_alternative<Neighborhood>(n)) {
    const std::optional<Node> leaf = resolve(p, shape, 0, 0);
    const OrderSpec spec = leaf_order(*leaf, shape, o, cache);
    switch (spec.kind) {
      case OrderSpec::kClass: return fmt::format("class:{}", spec.s);
      case OrderSpec::kColumns: return fmt::format("columns:{}", spec.s);
      case OrderSpec::kGrid: return "grid:" + p.with_causal(false).to_json();
      default: return "";
    }
  }
  if (const auto* l = std::get_if<LongNet>(&n)) return fmt::format("run:{}:{}", l->segments[0], l->rates[0]);
  // Each item is visited once: visiting the first twice doubles the work per level of
  // nesting.
  auto common = [&](const std::vector<Pattern>& items) {
    std::string k = static_order_key(items[0], shape, o, cache);
    for (size_t m = 1; m < items.size(); ++m) {
      if (static_order_key(items[m], shape, o, cache) != k) return std::string();
    }
    return k;
  };
  if (const auto* u = std::get_if<Union>(&n)) return common(u->items);
  if (const auto* b = std::get_if<Branches>(&n)) return common(b->items);
  if (const auto* x = std::get_if<Intersect>(&n)) {
    for (const Pattern& q : x->items) {
      std::string k = static_order_key(q, shape, o, cache);
      if (!k.empty()) return k;
    }
    return "";
  }
  if (const auto* h = std::get_if<HeadGroups>(&n)) {
    std::vector<Pattern> subs;
    for (const HeadGroup& g : h->groups) subs.push_back(*g.pattern);
    return common(subs);
  }
  return "";
}

OrderSpec node_order(const Node& n, const Shape& shape, const LayoutOptions& o, OrderCache& cache) {
  if (n.kind == NodeKind::kUnion) {
    const OrderSpec spec = node_order(n.children[0], shape, o, cache);
    for (size_t c = 1; c < n.children.size(); ++c) {
      if (!(node_order(n.children[c], shape, o, cache) == spec)) return OrderSpec{};
    }
    return spec;
  }
  if (n.kind == NodeKind::kIntersect) {
    // Any operand's order keeps the intersection compact: take the first that has one.
    for (const Node& c : n.children) {
      const OrderSpec cs = node_order(c, shape, o, cache);
      if (cs.kind != OrderSpec::kIdentity) return cs;
    }
    return OrderSpec{};
  }
  return leaf_order(n, shape, o, cache);
}

// --- parts -----------------------------------------------------------------------------

// Head groups enclosing a part, outermost first: the part's pattern is evaluated on the
// original head index through HeadGroups wrappers that contain only those heads.
using Wrap = std::vector<std::pair<int64_t, int64_t>>;

Pattern wrap_pattern(Pattern p, const Wrap& wrap) {
  for (size_t k = wrap.size(); k-- > 0;) {
    HeadGroups g;
    g.groups.push_back(HeadGroup{wrap[k].first, wrap[k].second, std::make_shared<const Pattern>(std::move(p))});
    p = Pattern(std::move(g));
  }
  return p;
}

void decompose(const Pattern& p, bool causal, const Wrap& wrap, const Shape& shape, const LayoutOptions& o,
               OrderCache& cache, std::vector<LayoutPart>& parts) {
  causal = causal || p.causal();
  const PatternNode& n = p.node();
  if (const auto* b = std::get_if<Branches>(&n)) {
    for (const Pattern& item : b->items) decompose(item, causal, wrap, shape, o, cache, parts);
    return;
  }
  if (const auto* h = std::get_if<HeadGroups>(&n)) {
    for (const HeadGroup& g : h->groups) {
      Wrap inner = wrap;
      inner.emplace_back(g.first, g.count);
      decompose(*g.pattern, causal, inner, Shape{shape.nq, shape.nk, g.count}, o, cache, parts);
    }
    return;
  }
  const Pattern self = wrap_pattern(p.with_causal(causal), wrap);
  if (const auto* l = std::get_if<LongNet>(&n)) {
    for (size_t b = 0; b < l->segments.size(); ++b) parts.push_back(LayoutPart{self, static_cast<int>(b), {}});
    return;
  }
  if (const auto* u = std::get_if<Union>(&n); u != nullptr && o.permute) {
    // Members that want different token orders become separate parts; each later part
    // excludes the earlier ones so that the parts of this branch stay disjoint. Natural
    // order goes first: a permuted part then subtracts a band, which stays compact in
    // its own order.
    std::vector<std::string> keys;
    std::vector<std::vector<Pattern>> groups;
    for (const Pattern& m : u->items) {
      const std::string k = static_order_key(m, shape, o, cache);
      auto it = std::find(keys.begin(), keys.end(), k);
      if (it == keys.end()) {
        keys.push_back(k);
        groups.emplace_back();
        it = keys.end() - 1;
      }
      groups[it - keys.begin()].push_back(m);
    }
    if (groups.size() > 1) {
      auto natural = std::find(keys.begin(), keys.end(), "");
      if (natural != keys.end()) std::rotate(groups.begin(), groups.begin() + (natural - keys.begin()),
                                             groups.begin() + (natural - keys.begin()) + 1);
      std::vector<Pattern> earlier;
      for (auto& members : groups) {
        Pattern member = members.size() == 1 ? members[0] : Pattern(Union{members});
        member = wrap_pattern(member.with_causal(member.causal() || causal), wrap);
        parts.push_back(LayoutPart{member, 0, earlier});
        earlier.push_back(member);
      }
      return;
    }
  }
  parts.push_back(LayoutPart{self, 0, {}});
}

// --- building one table ----------------------------------------------------------------

// Appends [lo, hi) to a sorted range list, merging with the last range when they touch.
inline void append_range(Ivs& v, int64_t lo, int64_t hi, bool& unsorted) {
  if (!v.empty()) {
    Iv& b = v.back();
    if (lo >= b.lo && lo <= b.hi) {
      if (hi > b.hi) b.hi = hi;
      return;
    }
    if (lo < b.lo) unsorted = true;
  }
  v.push_back({lo, hi});
}

}  // namespace

bool OrderSpec::operator==(const OrderSpec& x) const {
  if (kind != x.kind) return false;
  switch (kind) {
    case kIdentity: return true;
    case kClass:
    case kColumns: return s == x.s;
    case kRun: return w == x.w && r == x.r && o == x.o;
    case kGrid: return grid == x.grid || (grid->grid == x.grid->grid && grid->dilation == x.grid->dilation);
  }
  return false;
}

TokenOrder::TokenOrder(const OrderSpec& spec, const Shape& shape, int64_t tile_m, int64_t tile_n,
                       const TokenRect& rect)
    : spec_(spec), nq_(shape.nq), nk_(shape.nk), tm_(tile_m), tn_(tile_n) {
  num_q_tiles_ = ceil_div(nq_, tm_);
  num_k_tiles_ = ceil_div(nk_, tn_);
  switch (spec.kind) {
    case OrderSpec::kIdentity:
      break;
    case OrderSpec::kClass: {
      const int64_t s = spec.s;
      for (int64_t c = 0; c < std::min(s, nq_); ++c) {
        for (int64_t t = c; t < nq_; t += s) q_slots_.push_back(static_cast<int32_t>(t));
        q_slots_.resize(round_up(static_cast<int64_t>(q_slots_.size()), tm_), -1);
      }
      kbase_.assign(static_cast<size_t>(std::min(s, nk_)), 0);  // region() asks only for classes < Nk
      for (int64_t c = 0; c < std::min(s, nk_); ++c) {
        kbase_[c] = static_cast<int64_t>(k_slots_.size());
        for (int64_t t = c; t < nk_; t += s) k_slots_.push_back(static_cast<int32_t>(t));
        k_slots_.resize(round_up(static_cast<int64_t>(k_slots_.size()), tn_), -1);
      }
      break;
    }
    case OrderSpec::kColumns:
      for (int64_t t = 0; t < nk_; t += spec.s) k_slots_.push_back(static_cast<int32_t>(t));
      k_slots_.resize(round_up(static_cast<int64_t>(k_slots_.size()), tn_), -1);
      break;
    case OrderSpec::kRun: {
      // Per segment, the tokens of residue o, each segment's run padded to whole tiles.
      const int64_t w = spec.w, r = spec.r, o = spec.o;
      auto build = [&](int64_t n, int64_t tile, std::vector<int32_t>& slots) {
        int64_t total = 0;
        for (int64_t seg = 0; seg < n; seg += w) {
          const int64_t start = seg + o, end = std::min(seg + w, n);
          if (start < end) total += round_up(ceil_div(end - start, r), tile);
        }
        slots.assign(static_cast<size_t>(total), -1);
        int64_t pos = 0;
        for (int64_t seg = 0; seg < n; seg += w) {
          const int64_t start = seg + o, end = std::min(seg + w, n);
          if (start >= end) continue;
          const int64_t begin = pos;
          for (int64_t t = start; t < end; t += r) slots[pos++] = static_cast<int32_t>(t);
          pos = begin + round_up(pos - begin, tile);
        }
      };
      build(nq_, tm_, q_slots_);
      build(nk_, tn_, k_slots_);
      run_stride_ = o < w ? round_up(ceil_div(w - o, r), tn_) : 0;
      break;
    }
    case OrderSpec::kGrid:
      build_grid();
      break;
  }
  if (spec.kind != OrderSpec::kIdentity) {
    if (spec.kind != OrderSpec::kColumns) num_q_tiles_ = static_cast<int64_t>(q_slots_.size()) / tm_;
    num_k_tiles_ = static_cast<int64_t>(k_slots_.size()) / tn_;
  }
  q_identity_ = spec.kind == OrderSpec::kIdentity || spec.kind == OrderSpec::kColumns;
  if (!(rect == TokenRect{0, nq_, 0, nk_})) restrict_to(rect);
}

int64_t TokenOrder::group_of(int64_t token) const {
  switch (spec_.kind) {
    case OrderSpec::kClass: return token % spec_.s;
    case OrderSpec::kRun: return token / spec_.w;
    case OrderSpec::kGrid: {
      // The dilation residue on every axis (row-major, last axis fastest).
      const Neighborhood& g = *spec_.grid;
      int64_t key = 0, rest = token;
      for (size_t a = g.grid.size(); a-- > 0;) {
        const int64_t d = g.dilation.empty() ? 1 : g.dilation[a];
        key = key * d + (rest % g.grid[a]) % d;
        rest /= g.grid[a];
      }
      return key;
    }
    default: return 0;
  }
}

// A sub-rectangle keeps the tokens of the whole problem's order that lie inside it, in
// the same order, and pads each group (stride class, segment, residue class) to whole
// tiles again, so that tiles still never straddle groups. Every key region of the whole
// order stays contiguous in the kept keys, so region() only clips it to the rectangle.
void TokenOrder::restrict_to(const TokenRect& rect) {
  restricted_ = true;
  k_begin_ = rect.k_begin;
  k_end_ = rect.k_end;
  auto keep = [&](const std::vector<int32_t>& slots, int64_t lo, int64_t hi, int64_t tile) {
    std::vector<int32_t> out;
    if (slots.empty()) {  // natural order
      for (int64_t t = lo; t < hi; ++t) out.push_back(static_cast<int32_t>(t));
    } else {
      int64_t group = -1;
      for (int32_t t : slots) {
        if (t < lo || t >= hi) continue;
        const int64_t g = group_of(t);
        if (g != group && !out.empty()) out.resize(round_up(static_cast<int64_t>(out.size()), tile), -1);
        group = g;
        out.push_back(t);
      }
    }
    out.resize(round_up(static_cast<int64_t>(out.size()), tile), -1);
    return out;
  };
  q_slots_ = keep(q_identity_ ? std::vector<int32_t>{} : q_slots_, rect.q_begin, rect.q_end, tm_);
  k_slots_ = keep(k_slots_, rect.k_begin, rect.k_end, tn_);
  k_inverse_.assign(static_cast<size_t>(rect.k_end - rect.k_begin), -1);
  for (size_t s = 0; s < k_slots_.size(); ++s) {
    if (k_slots_[s] >= 0) k_inverse_[k_slots_[s] - rect.k_begin] = static_cast<int32_t>(s);
  }
  q_identity_ = false;
  num_q_tiles_ = static_cast<int64_t>(q_slots_.size()) / tm_;
  num_k_tiles_ = static_cast<int64_t>(k_slots_.size()) / tn_;
}

// Grid tokens grouped by dilation residue (each class padded to whole tiles), and
// inside a class along the Hilbert curve of the class's sub-grid. Cells of the
// bounding power-of-two cube that lie outside the sub-grid are simply skipped, which
// keeps non-power-of-two and non-square grids local.
void TokenOrder::build_grid() {
  const Neighborhood& p = *spec_.grid;
  const int dims = static_cast<int>(p.grid.size());
  int64_t g[3] = {1, 1, 1}, d[3] = {1, 1, 1};
  for (int a = 0; a < dims; ++a) {
    g[a] = p.grid[a];
    d[a] = p.dilation.empty() ? 1 : p.dilation[a];
  }
  // Row-major strides.
  int64_t st[3] = {0, 0, 0};
  {
    int64_t s = 1;
    for (int a = dims - 1; a >= 0; --a) {
      st[a] = s;
      s *= g[a];
    }
  }
  std::vector<std::pair<uint64_t, int32_t>> cells;
  k_inverse_.assign(static_cast<size_t>(nk_), -1);
  int64_t res[3] = {0, 0, 0};
  const int64_t r0 = std::min(d[0], g[0]), r1 = dims > 1 ? std::min(d[1], g[1]) : 1,
                r2 = dims > 2 ? std::min(d[2], g[2]) : 1;
  for (res[0] = 0; res[0] < r0; ++res[0]) {
    for (res[1] = 0; res[1] < r1; ++res[1]) {
      for (res[2] = 0; res[2] < r2; ++res[2]) {
        int64_t len[3] = {1, 1, 1};
        uint64_t longest = 1;
        for (int a = 0; a < dims; ++a) {
          len[a] = ceil_div(g[a] - res[a], d[a]);
          longest = std::max<uint64_t>(longest, static_cast<uint64_t>(len[a]));
        }
        const int bits = bits_for(longest);
        cells.clear();
        uint64_t c[3] = {0, 0, 0};
        for (c[0] = 0; c[0] < static_cast<uint64_t>(len[0]); ++c[0]) {
          for (c[1] = 0; c[1] < static_cast<uint64_t>(len[1]); ++c[1]) {
            for (c[2] = 0; c[2] < static_cast<uint64_t>(len[2]); ++c[2]) {
              int64_t token = 0;
              for (int a = 0; a < dims; ++a) token += (res[a] + d[a] * static_cast<int64_t>(c[a])) * st[a];
              cells.emplace_back(dims == 1 ? c[0] : hilbert_index(c, dims, bits), static_cast<int32_t>(token));
            }
          }
        }
        std::sort(cells.begin(), cells.end());
        for (const auto& cell : cells) {
          k_inverse_[cell.second] = static_cast<int32_t>(k_slots_.size());
          q_slots_.push_back(cell.second);
          k_slots_.push_back(cell.second);
        }
        q_slots_.resize(round_up(static_cast<int64_t>(q_slots_.size()), tm_), -1);
        k_slots_.resize(round_up(static_cast<int64_t>(k_slots_.size()), tn_), -1);
      }
    }
  }
}

uint64_t TokenOrder::bytes_needed(const OrderSpec& spec, const Shape& shape, int64_t tm, int64_t tn) {
  constexpr uint64_t kSlot = sizeof(int32_t);
  switch (spec.kind) {
    case OrderSpec::kIdentity:
      return 0;
    case OrderSpec::kColumns:
      return kSlot * static_cast<uint64_t>(round_up(ceil_div(shape.nk, spec.s), tn));
    case OrderSpec::kClass:
      return kSlot * static_cast<uint64_t>(padded_slots(spec, shape.nq, tm) + padded_slots(spec, shape.nk, tn)) +
             sizeof(int64_t) * static_cast<uint64_t>(std::min(spec.s, shape.nk));
    case OrderSpec::kRun:
      return kSlot * static_cast<uint64_t>(padded_slots(spec, shape.nq, tm) + padded_slots(spec, shape.nk, tn));
    case OrderSpec::kGrid:
      // Slots, the key inverse, and the (Hilbert index, token) pairs of a class sorted
      // while it is built.
      return kSlot * static_cast<uint64_t>(padded_slots(spec, shape.nq, tm) + padded_slots(spec, shape.nk, tn)) +
             (kSlot + 16) * static_cast<uint64_t>(shape.nk);
  }
  return 0;
}

const TokenOrder& OrderCache::get(const OrderSpec& spec) {
  for (const auto& [k, order] : orders_) {
    if (k == spec) return *order;
  }
  // Building an order visits every slot once (grids also sort theirs).
  budget_.hold(TokenOrder::bytes_needed(spec, shape_, tm_, tn_), "token orders");
  const bool whole = rect_ == TokenRect{0, shape_.nq, 0, shape_.nk};
  if (spec.kind != OrderSpec::kIdentity || !whole) {
    budget_.spend(static_cast<uint64_t>(4 * (shape_.nq + shape_.nk)));
    // A rectangle's slots and key inverse.
    if (!whole) budget_.hold(sizeof(int32_t) * static_cast<uint64_t>(2 * (shape_.nq + 2 * shape_.nk)), "token orders");
  }
  orders_.emplace_back(spec, std::make_unique<TokenOrder>(spec, shape_, tm_, tn_, rect_));
  return *orders_.back().second;
}

Region TokenOrder::region(int64_t i, int64_t& base) const {
  const Region whole = whole_region(i, base);
  if (!restricted_) return whole;
  // The region's ranks whose tokens lie in [k_begin, k_end); they are contiguous kept slots.
  base = 0;
  const int64_t first = whole.start >= k_begin_ ? 0 : ceil_div(k_begin_ - whole.start, whole.step);
  const int64_t last = whole.start >= k_end_ ? 0 : std::min(whole.count, ceil_div(k_end_ - whole.start, whole.step));
  if (first >= last) return Region{k_begin_, 1, 0};
  const Region out{whole.start + first * whole.step, whole.step, last - first};
  // Grid rows name keys by rank through k_slot_of(); the other orders by base + rank.
  if (spec_.kind != OrderSpec::kGrid) base = k_inverse_[static_cast<size_t>(out.start - k_begin_)];
  return out;
}

Region TokenOrder::whole_region(int64_t i, int64_t& base) const {
  base = 0;
  switch (spec_.kind) {
    case OrderSpec::kIdentity:
    case OrderSpec::kGrid:
      return Region{0, 1, nk_};
    case OrderSpec::kClass: {
      const int64_t c = i % spec_.s;
      if (c >= nk_) return Region{0, 1, 0};
      base = kbase_[c];
      return Region{c, spec_.s, ceil_div(nk_ - c, spec_.s)};
    }
    case OrderSpec::kColumns:
      return Region{0, spec_.s, ceil_div(nk_, spec_.s)};
    case OrderSpec::kRun: {
      const int64_t seg = i / spec_.w;
      const int64_t start = seg * spec_.w + spec_.o, end = std::min(seg * spec_.w + spec_.w, nk_);
      if (start >= end) return Region{0, 1, 0};
      base = seg * run_stride_;
      return Region{start, spec_.r, ceil_div(end - start, spec_.r)};
    }
  }
  return Region{0, 1, 0};
}

int64_t TokenOrder::q_token(int64_t slot) const {
  if (q_identity_) return slot < nq_ ? slot : -1;
  return q_slots_[static_cast<size_t>(slot)];
}

bool TokenOrder::slots_are_identity(const std::vector<int32_t>& slots, int64_t n, int64_t tile) {
  if (slots.empty()) return true;
  if (static_cast<int64_t>(slots.size()) != round_up(n, tile)) return false;
  for (int64_t s = 0; s < static_cast<int64_t>(slots.size()); ++s) {
    if (slots[s] != (s < n ? s : -1)) return false;
  }
  return true;
}

TableBuilder::TableBuilder(RowGen& gen, const TokenOrder& order, LayoutBudget& budget)
    : gen_(gen), order_(order), budget_(budget), tn_(order.tile_n()) {
  if ((tn_ & (tn_ - 1)) == 0) shift_ = bits_for(static_cast<uint64_t>(tn_));
}

// Allowed keys of query token i as sorted slot intervals (orders other than kGrid,
// whose rows reduce_grid() handles). Returns false when they are those of the previous
// row (out is then left as it was).
bool TableBuilder::slot_row(int64_t i, const Region& rg, int64_t base, Ivs& out) {
  const Ivs& ranks = gen_.row(i, rg);
  if (gen_.repeated() && base == last_base_ && have_row_) return false;
  last_base_ = base;
  have_row_ = true;
  pairs_ = iv_size(ranks);
  out.clear();
  for (const Iv& iv : ranks) out.push_back({iv.lo + base, iv.hi + base});
  return true;
}

// Key tiles of query token i: rt_ those it reaches, rf_ those it allows completely;
// pairs_ its allowed keys. False when its keys are those of the previous row (rt_ and
// rf_ are then left alone).
bool TableBuilder::row_tiles(int64_t i, const Region& rg, int64_t base) {
  bool unsorted = false;
  // Periodic rows in natural order would list every key; in their own order they are
  // single intervals, which the row memo serves faster.
  if (gen_.progression_rows() && order_.spec().kind == OrderSpec::kIdentity) {
    const Progression p = gen_.row_progression(i, rg);
    pairs_ = p.count;
    const int64_t first = p.first + base;
    // A period of whole tiles maps rows whose first key lies in one tile, with as many
    // keys, to the same key tiles: those of the row before (a stride class's rows in a
    // query tile), left in rt_ / rf_ or with the caller.
    if (p.count > 0 && p.step > 1 && tn_ > 1 && p.step % tn_ == 0 && have_row_ && p.step == last_prog_.step &&
        p.count == last_prog_.count && tile_of(first) == tile_of(last_prog_.first)) {
      return false;
    }
    have_row_ = p.count > 0;
    last_prog_ = Progression{first, p.step, p.count};
    rt_.clear();
    rf_.clear();
    if (p.count == 0) return true;
    const int64_t last = first + (p.count - 1) * p.step;
    if (p.step == 1 || tn_ == 1) {
      if (p.step == 1) {
        row_.assign(1, Iv{first, last + 1});
      } else {
        row_.clear();
        for (int64_t k = first; k <= last; k += p.step) row_.push_back({k, k + 1});
      }
    } else {
      // Period >= 2 in tiles of >= 2 slots: no tile is full; with a period up to the tile
      // size every tile of the hull is reached.
      if (p.step <= tn_) {
        rt_.push_back({tile_of(first), tile_of(last) + 1});
      } else {
        for (int64_t k = first; k <= last; k += p.step) append_range(rt_, tile_of(k), tile_of(k) + 1, unsorted);
      }
      return true;
    }
  } else if (!slot_row(i, rg, base, row_)) {
    return false;
  }
  rt_.clear();
  rf_.clear();
  for (const Iv& iv : row_) {
    append_range(rt_, tile_of(iv.lo), tile_of(iv.hi - 1) + 1, unsorted);
    const int64_t f0 = tile_of(iv.lo + tn_ - 1), f1 = tile_of(iv.hi);
    if (f0 < f1) append_range(rf_, f0, f1, unsorted);
  }
  return true;
}

// The first and last real rows of query tile qt and their count, when the rows ascend
// and share the positive leaf's key set (RowGen::uniform_keys).
bool TableBuilder::uniform_rows(int64_t qt, int64_t& i0, int64_t& i1, int64_t& rows) const {
  const OrderSpec::Kind kind = order_.spec().kind;
  const int64_t tm = order_.tile_m();
  i0 = -1, i1 = -1, rows = 0;
  for (int64_t s = qt * tm; s < (qt + 1) * tm; ++s) {
    const int64_t i = order_.q_token(s);
    if (i < 0) continue;
    if (i <= i1) return false;
    if (i0 < 0) i0 = i;
    i1 = i;
    ++rows;
  }
  return i0 >= 0 && gen_.uniform_keys(i0, i1, kind == OrderSpec::kRun || kind == OrderSpec::kClass);
}

// Reduces the rows of query tile qt: `touched` gets the key tiles some real row allows
// a key of, `full` those that every real row allows completely.
// A query tile whose rows all have one key set (a LongNet run, a block of a block
// pattern, a stride class) is reduced at once: every row allows the set, or with causal
// the set's slots below a bound that grows with the row, so that the tile's touched
// tiles are those of its last row and its full tiles those of its first. False when the
// tile does not qualify (rows not ascending, or keys that differ).
bool TableBuilder::reduce_uniform(int64_t qt, Ivs& touched, Ivs& full, int64_t& pairs) {
  const OrderSpec::Kind kind = order_.spec().kind;
  if (!gen_.single_leaf() || kind == OrderSpec::kGrid) return false;
  const int64_t tm = order_.tile_m();
  int64_t i0 = -1, i1 = -1, rows = 0;
  if (!uniform_rows(qt, i0, i1, rows)) return false;
  int64_t base = 0;
  const Region rg = order_.region(i0, base);
  const Ivs& set = gen_.unclipped_row(i0, rg);
  pairs = 0;
  size_t k = 0;
  int64_t before = 0;  // ranks in set[0, k), all below the bound
  const int64_t all = iv_size(set), none = std::numeric_limits<int64_t>::max();
  for (int64_t s = qt * tm; s < (qt + 1) * tm; ++s) {
    const int64_t i = order_.q_token(s);
    if (i < 0) continue;
    if (!gen_.causal()) {
      pairs += all;
      continue;
    }
    const int64_t kb = gen_.causal_rank(i, rg);
    while (k < set.size() && set[k].hi <= kb) before += set[k].hi - set[k].lo, ++k;
    pairs += before + (k < set.size() && set[k].lo < kb ? kb - set[k].lo : 0);
  }
  auto bound = [&](int64_t i) { return gen_.causal() ? gen_.causal_rank(i, rg) : none; };
  auto tiles_below = [&](int64_t kb, bool want_full, Ivs& out) {
    bool unsorted = false;
    out.clear();
    for (const Iv& iv : set) {
      if (iv.lo >= kb) break;
      const int64_t lo = iv.lo + base, hi = std::min(iv.hi, kb) + base;
      if (!want_full) {
        append_range(out, tile_of(lo), tile_of(hi - 1) + 1, unsorted);
      } else if (tile_of(lo + tn_ - 1) < tile_of(hi)) {
        append_range(out, tile_of(lo + tn_ - 1), tile_of(hi), unsorted);
      }
    }
  };
  tiles_below(bound(i1), false, touched);
  tiles_below(bound(i0), true, full);
  have_row_ = false;
  return true;
}

// Rows that share the positive leaf's key set S as in reduce_uniform, each losing keys
// to the excluded nodes (a union's later part: a stride class less the band of the
// part before it), without causal: per key tile of S's hull, S's keys times the rows
// less the lost ones. A tile is listed when a key is left, full when S covers it and no
// row loses a key in it.
bool TableBuilder::reduce_uniform_holes(int64_t qt, Ivs& touched, Ivs& full, int64_t& pairs) {
  if (!gen_.has_excludes() || gen_.causal() || order_.spec().kind == OrderSpec::kGrid) return false;
  int64_t i0 = -1, i1 = -1, rows = 0;
  if (!uniform_rows(qt, i0, i1, rows)) return false;  // also: the positive node is one leaf
  int64_t base = 0;
  const Region rg = order_.region(i0, base);
  const Ivs& set = gen_.positive_row(i0, rg);  // stays valid across excluded()
  touched.clear();
  full.clear();
  have_row_ = false;
  pairs = 0;
  if (set.empty()) return true;
  const int64_t t0 = tile_of(set.front().lo + base), t1 = tile_of(set.back().hi - 1 + base) + 1;
  const size_t n = static_cast<size_t>(t1 - t0);
  budget_.spend(n + set.size());
  // Keys of [lo, hi) (ranks) per key tile, into counts.
  auto count = [&](int64_t lo, int64_t hi, std::vector<int64_t>& counts) {
    for (int64_t t = tile_of(lo + base); t <= tile_of(hi - 1 + base); ++t)
      counts[t - t0] += std::min(hi + base, (t + 1) * tn_) - std::max(lo + base, t * tn_);
  };
  set_keys_.assign(n, 0);
  lost_keys_.assign(n, 0);
  for (const Iv& iv : set) count(iv.lo, iv.hi, set_keys_);
  int64_t lost = 0;
  for (int64_t s = qt * order_.tile_m(); s < (qt + 1) * order_.tile_m(); ++s) {
    const int64_t i = order_.q_token(s);
    if (i < 0) continue;
    const Ivs& taken = gen_.excluded(i, rg, set.front().lo, set.back().hi);
    if (taken.empty()) continue;
    iv_intersect(set, taken, lost_set_);
    budget_.spend(taken.size() + lost_set_.size());
    for (const Iv& iv : lost_set_) {
      lost += iv.hi - iv.lo;
      count(iv.lo, iv.hi, lost_keys_);
    }
  }
  pairs = rows * iv_size(set) - lost;
  bool unsorted = false;
  for (size_t k = 0; k < n; ++k) {
    const int64_t t = t0 + static_cast<int64_t>(k);
    if (rows * set_keys_[k] > lost_keys_[k]) append_range(touched, t, t + 1, unsorted);
    if (set_keys_[k] == tn_ && lost_keys_[k] == 0) append_range(full, t, t + 1, unsorted);
  }
  return true;
}

// Grid orders scatter a row's keys over many slots: instead of sorting them per row, the
// allowed keys of each key tile are counted over the query tile's rows. A tile is full
// iff every real row allows all its slots (padding slots are never allowed).
int64_t TableBuilder::reduce_grid(int64_t qt, Ivs& touched, Ivs& full) {
  const int64_t tm = order_.tile_m();
  if (tile_count_.size() != static_cast<size_t>(order_.num_k_tiles())) {
    budget_.hold(sizeof(int64_t) * 2 * static_cast<uint64_t>(order_.num_k_tiles()), "key tile counts");
    tile_count_.assign(static_cast<size_t>(order_.num_k_tiles()), 0);
  }
  tiles_.clear();
  int64_t rows = 0, pairs = 0, base = 0;
  for (int64_t s = qt * tm; s < (qt + 1) * tm; ++s) {
    const int64_t i = order_.q_token(s);
    if (i < 0) continue;
    ++rows;
    const Ivs& keys = gen_.row(i, order_.region(i, base));  // key tokens
    pairs += iv_size(keys);
    budget_.spend(static_cast<uint64_t>(iv_size(keys)));  // each key is visited below
    for (const Iv& iv : keys) {
      for (int64_t t = iv.lo; t < iv.hi; ++t) {
        const int64_t tile = tile_of(order_.k_slot_of(t));
        if (tile_count_[tile]++ == 0) tiles_.push_back(tile);
      }
    }
  }
  std::sort(tiles_.begin(), tiles_.end());
  touched.clear();
  full.clear();
  bool unsorted = false;
  for (int64_t tile : tiles_) {
    append_range(touched, tile, tile + 1, unsorted);
    if (tile_count_[tile] == rows * tn_) append_range(full, tile, tile + 1, unsorted);
    tile_count_[tile] = 0;
  }
  have_row_ = false;
  return pairs;
}

// A local window in natural order is a band: both ends of row i's interval grow with i
// (also under causal), and consecutive rows overlap, so the tile's keys are one range
// from its first row's start to its last row's end, and its fully allowed keys run
// from the last row's start to the first row's end. Global + local is the same band
// beside the global keys G = [0, g), for query tiles without global rows whose causal
// bound (if any) leaves G whole: its tiles are G's and the band's range, and a tile is
// full when it lies in G or when what it holds past G lies in every row's band.
bool TableBuilder::reduce_band(int64_t qt, Ivs& touched, Ivs& full, int64_t& pairs) {
  if (!gen_.single_leaf() || order_.spec().kind != OrderSpec::kIdentity || order_.restricted()) return false;
  int64_t left = 0, right = 0, global = 0;
  if (gen_.positive().kind == NodeKind::kWindow) {
    const auto& w = std::get<LocalWindow>(*gen_.positive().leaf);
    left = w.left, right = w.right;
  } else if (gen_.positive().kind == NodeKind::kGlobalLocal) {
    const auto& p = std::get<GlobalLocal>(*gen_.positive().leaf);
    left = p.left, right = p.right, global = p.global;
  } else {
    return false;
  }
  const int64_t nk = gen_.nk(), shift = gen_.nk() - gen_.nq(), tm = order_.tile_m();
  const int64_t g = std::min(global, nk);
  const int64_t first = qt * tm, last = std::min(gen_.nq(), (qt + 1) * tm) - 1;
  if (first > last || first < global) return false;               // no rows, or global rows: the general path
  if (g > 0 && gen_.causal() && first + shift + 1 < g) return false;  // causal cuts into G
  int64_t first_lo = -1, last_hi = -1, max_lo = 0, min_hi = nk;
  bool empty_row = false;
  pairs = 0;
  for (int64_t i = first; i <= last; ++i) {
    const int64_t lo = std::max<int64_t>(0, i - left);
    int64_t hi = std::min(nk, i + right + 1);
    if (gen_.causal()) hi = std::min(hi, i + shift + 1);
    pairs += g;
    if (lo >= hi) {
      empty_row = true;
      continue;
    }
    pairs += hi - lo - std::max<int64_t>(0, std::min(g, hi) - lo);  // the band less its part in G
    if (first_lo < 0) first_lo = lo;
    last_hi = hi;
    max_lo = std::max(max_lo, lo);
    min_hi = std::min(min_hi, hi);
  }
  touched.clear();
  full.clear();
  have_row_ = false;
  bool unsorted = false;
  if (g > 0) append_range(touched, 0, tile_of(g - 1) + 1, unsorted);
  if (first_lo >= 0) append_range(touched, tile_of(first_lo), tile_of(last_hi - 1) + 1, unsorted);
  if (unsorted) iv_normalize(touched);
  const int64_t whole = tile_of(g);  // tiles [0, whole) lie in G
  if (whole > 0) full.push_back({0, whole});
  if (first_lo >= 0 && !empty_row && max_lo < min_hi) {
    // Tile t >= whole holds [max(t tn, g), (t + 1) tn) outside G: full from the first
    // tile whose part outside G starts at max_lo or later, up to min_hi.
    const int64_t from = g >= max_lo ? whole : std::max(whole, tile_of(max_lo + tn_ - 1));
    const int64_t to = tile_of(min_hi);
    if (from < to) append_range(full, from, to, unsorted);
  }
  return true;
}

int64_t TableBuilder::reduce(int64_t qt, Ivs& touched, Ivs& full) {
  const int64_t tm = order_.tile_m();
  budget_.spend(static_cast<uint64_t>(tm));  // the tile's rows are visited at least once
  if (order_.spec().kind == OrderSpec::kGrid) return reduce_grid(qt, touched, full);
  int64_t pairs = 0;
  if (reduce_uniform(qt, touched, full, pairs) || reduce_uniform_holes(qt, touched, full, pairs) ||
      reduce_band(qt, touched, full, pairs)) {
    return pairs;
  }
  touched.clear();
  full.clear();
  bool any_row = false, full_dead = false, have_prev = false, unsorted = false;
  // Every row of a query tile has the same key region: token orders pad each segment
  // or class to whole tiles.
  Region rg;
  int64_t base = 0;
  bool have_region = false;
  for (int64_t s = qt * tm; s < (qt + 1) * tm; ++s) {
    const int64_t i = order_.q_token(s);
    if (i < 0) continue;
    if (!have_region) {
      rg = order_.region(i, base);
      have_region = true;
    }
    const bool fresh = row_tiles(i, rg, base);
    pairs += pairs_;
    if (!fresh) {
      // The same keys as the row before: nothing new for the tile.
      if (have_prev) continue;
      rt_ = prev_t_;
      rf_ = prev_f_;
    } else if (have_prev && rt_ == prev_t_ && rf_ == prev_f_) {
      continue;  // neighbouring rows mostly reach the same tiles
    }
    budget_.spend(rt_.size() + rf_.size() + full.size());
    for (const Iv& r : rt_) append_range(touched, r.lo, r.hi, unsorted);
    if (!full_dead) {
      if (!any_row) {
        full = rf_;
      } else {
        iv_intersect(full, rf_, tmp_);
        full.swap(tmp_);
      }
      full_dead = full.empty();
    }
    any_row = true;
    prev_t_.swap(rt_);
    prev_f_.swap(rf_);
    have_prev = true;
  }
  if (unsorted) iv_normalize(touched);
  return pairs;
}

BlockTable TableBuilder::build() {
  BlockTable t;
  const int64_t nqt = order_.num_q_tiles(), nkt = order_.num_k_tiles();
  if (nkt > INT32_MAX) {
    SPATTN_FAIL(ErrorCode::kUnsupported, "layout: {} key tiles do not fit the int32 tables; use a larger tile_n", nkt);
  }
  t.num_q_tiles = nqt;
  t.num_k_tiles = nkt;
  SPATTN_REQUIRE(nqt <= limits::kMaxTileGrid / std::max<int64_t>(nkt, 1),
                 "layout: {} x {} tiles of {}x{} tokens in one table; at most 2^31 (use larger tiles: tile_m, "
                 "tile_n / --tile)",
                 nqt, nkt, order_.tile_m(), tn_);
  budget_.hold((sizeof(int64_t) * 2 + sizeof(int32_t)) * static_cast<uint64_t>(nqt + 1), "block tables");
  t.row_ptr.assign(static_cast<size_t>(nqt) + 1, 0);
  t.full_count.assign(static_cast<size_t>(nqt), 0);
  // Pass 1: full and partial tiles of every query tile as ranges (compact even when a
  // row lists thousands of tiles). Pass 2: expand them into cols, allocated once.
  Ivs touched, full, partial;
  std::vector<Iv> ranges;
  std::vector<int64_t> range_end(static_cast<size_t>(nqt), 0);
  int64_t pairs = 0;
  // The ranges are scratch; the listed tiles they expand to are held by the table. Both
  // are charged as they grow, so that a table too large for the budget stops here, not
  // in the allocator.
  uint64_t scratch = 0;
  for (int64_t qt = 0; qt < nqt; ++qt) {
    pairs += reduce(qt, touched, full);
    iv_subtract(touched, full, partial);
    const int64_t nfull = iv_size(full);
    t.full_count[qt] = static_cast<int32_t>(nfull);
    const int64_t listed = nfull + iv_size(partial);
    t.row_ptr[qt + 1] = t.row_ptr[qt] + listed;
    const uint64_t grown = sizeof(Iv) * (full.size() + partial.size()) + sizeof(int32_t) * static_cast<uint64_t>(listed);
    budget_.hold(grown, "listed tiles");
    scratch += sizeof(Iv) * (full.size() + partial.size());
    ranges.insert(ranges.end(), full.begin(), full.end());
    ranges.insert(ranges.end(), partial.begin(), partial.end());
    range_end[qt] = static_cast<int64_t>(ranges.size());
  }
  budget_.spend(static_cast<uint64_t>(t.row_ptr[nqt]));  // the expansion below
  t.cols.reserve(static_cast<size_t>(t.row_ptr[nqt]));
  advise_huge_pages(t.cols.data(), t.cols.capacity() * sizeof(int32_t));
  // One pass over the ranges, each expanded in place (the capacity is reserved).
  for (const Iv& iv : ranges) {
    if (iv.hi - iv.lo == 1) {  // single tiles (strided, dilated rows) need no bulk path
      t.cols.push_back(static_cast<int32_t>(iv.lo));
      continue;
    }
    const size_t at = t.cols.size();
    t.cols.resize(at + static_cast<size_t>(iv.hi - iv.lo));
    std::iota(t.cols.begin() + static_cast<std::ptrdiff_t>(at), t.cols.end(), static_cast<int32_t>(iv.lo));
  }
  budget_.release(scratch);
  t.allowed_pairs = pairs;
  return t;
}

double TableBuilder::estimate_listed_tiles(int samples) {
  const int64_t nqt = order_.num_q_tiles();
  if (nqt == 0) return 0;
  const int64_t n = std::min<int64_t>(samples, nqt);
  Ivs touched, full;
  double listed = 0;
  for (int64_t k = 0; k < n; ++k) {
    reduce(k * nqt / n, touched, full);
    listed += double(iv_size(touched));
  }
  return listed * double(nqt) / double(n);
}

void TableBuilder::check_projection(int samples) {
  const int64_t nqt = order_.num_q_tiles();
  if (nqt <= 2 * samples) return;
  constexpr double kMax = 1.8e19;
  const uint64_t before = budget_.work();
  Ivs touched, full;
  double listed = 0;
  for (int k = 0; k < samples; ++k) {
    reduce(k * nqt / samples, touched, full);
    listed += double(iv_size(touched));
    // Projected from the tiles sampled so far; a projection far over the budget after a
    // few tiles needs no more samples to be refused.
    const double scale = double(nqt) / double(k + 1);
    const double work = double(budget_.work() - before) * scale;
    // Listed tiles cost an int32 each in the table and about a range each while building.
    const double bytes = listed * scale * double(sizeof(int32_t) + sizeof(Iv));
    const double slack = k + 1 == samples ? 1.0 : 4.0;
    budget_.check_projection(static_cast<uint64_t>(std::min(work / slack, kMax)),
                             static_cast<uint64_t>(std::min(bytes / slack, kMax)), "listed tiles");
  }
}

std::vector<LayoutPart> decompose_parts(const Pattern& pattern, const Shape& shape, const LayoutOptions& options,
                                        OrderCache& cache) {
  std::vector<LayoutPart> parts;
  decompose(pattern, false, {}, shape, options, cache, parts);
  return parts;
}

std::vector<PartTable> plan_tables(const std::vector<LayoutPart>& parts, const Shape& shape,
                                   const LayoutOptions& options, OrderCache& cache) {
  std::vector<PartTable> plans;
  // Resolving a pattern for a head builds its nodes and their key text: about a hundred
  // row operations per pattern node.
  constexpr uint64_t kResolveCost = 128;
  for (size_t p = 0; p < parts.size(); ++p) {
    std::map<std::string, size_t> by_key;
    for (int64_t h = 0; h < shape.heads; ++h) {
      cache.budget().spend(kResolveCost * (1 + parts[p].exclude.size()));
      std::optional<Node> pos = resolve(parts[p].pattern, shape, h, parts[p].branch);
      if (!pos) continue;
      std::vector<Node> ex;
      std::string key = pos->key();
      for (const Pattern& e : parts[p].exclude) {
        std::optional<Node> n = resolve(e, shape, h, 0);
        if (!n) continue;
        key += "|" + n->key();
        ex.push_back(std::move(*n));
      }
      auto it = by_key.find(key);
      if (it != by_key.end()) {
        plans[it->second].heads.push_back(static_cast<int32_t>(h));
        continue;
      }
      by_key.emplace(key, plans.size());
      PartTable plan;
      plan.part = static_cast<int>(p);
      plan.heads.push_back(static_cast<int32_t>(h));
      plan.order = options.permute ? node_order(*pos, shape, options, cache) : OrderSpec{};
      plan.positive = std::move(*pos);
      plan.excludes = std::move(ex);
      plans.push_back(std::move(plan));
    }
  }
  return plans;
}

}  // namespace detail

using detail::ceil_div;

namespace {

// The rectangle with its ends filled in; throws unless it is a non-empty part of the shape.
TokenRect resolve_rect(const TokenRect& r, const Shape& shape) {
  TokenRect out = r;
  if (out.q_end == -1) out.q_end = shape.nq;
  if (out.k_end == -1) out.k_end = shape.nk;
  SPATTN_REQUIRE(out.q_begin >= 0 && out.q_begin < out.q_end && out.q_end <= shape.nq,
                 "layout: rect query rows [{}, {}) must be a non-empty range inside [0, {}) (Nq)", r.q_begin, r.q_end,
                 shape.nq);
  SPATTN_REQUIRE(out.k_begin >= 0 && out.k_begin < out.k_end && out.k_end <= shape.nk,
                 "layout: rect keys [{}, {}) must be a non-empty range inside [0, {}) (Nk)", r.k_begin, r.k_end,
                 shape.nk);
  return out;
}

void check_options(const LayoutOptions& o) {
  SPATTN_REQUIRE(o.tile_m >= 1 && o.tile_m <= limits::kMaxTile, "layout: tile_m must be in [1, {}] (got {})", limits::kMaxTile, o.tile_m);
  SPATTN_REQUIRE(o.tile_n >= 1 && o.tile_n <= limits::kMaxTile, "layout: tile_n must be in [1, {}] (got {})", limits::kMaxTile, o.tile_n);
}

// Whether every (head, query of the rectangle) is a row of some table.
bool rows_covered(const Layout& layout) {
  const Shape& s = layout.shape;
  const int64_t q0 = layout.rect.q_begin, rows = layout.rect.q_end - q0;
  std::vector<std::vector<int>> tables_of(static_cast<size_t>(s.heads));
  for (size_t t = 0; t < layout.tables.size(); ++t) {
    for (int32_t h : layout.tables[t].heads) tables_of[h].push_back(static_cast<int>(t));
  }
  std::map<std::vector<int>, bool> memo;
  for (const auto& ts : tables_of) {
    auto it = memo.find(ts);
    if (it != memo.end()) {
      if (!it->second) return false;
      continue;
    }
    bool all = false;
    std::vector<char> seen;
    for (int t : ts) {
      const BlockTable& bt = layout.tables[t];
      if (bt.q_slots.empty()) {
        all = true;
        break;
      }
      if (seen.empty()) seen.assign(static_cast<size_t>(rows), 0);
      for (int32_t tok : bt.q_slots) {
        if (tok >= 0) seen[tok - q0] = 1;
      }
    }
    if (!all) all = !seen.empty() && std::all_of(seen.begin(), seen.end(), [](char c) { return c != 0; });
    memo.emplace(ts, all);
    if (!all) return false;
  }
  return true;
}

std::vector<WorkItem> make_schedule(const Layout& layout, ScheduleOrder order) {
  std::vector<WorkItem> items;
  size_t total = 0;
  for (const BlockTable& t : layout.tables) total += t.heads.size() * static_cast<size_t>(t.num_q_tiles);
  items.reserve(total);
  // Row-major: head-major, then each table of the head, then its query tiles in order.
  std::vector<std::vector<int32_t>> tables_of(static_cast<size_t>(layout.shape.heads));
  for (size_t t = 0; t < layout.tables.size(); ++t) {
    for (int32_t h : layout.tables[t].heads) tables_of[h].push_back(static_cast<int32_t>(t));
  }
  for (int32_t h = 0; h < layout.shape.heads; ++h) {
    for (int32_t t : tables_of[h]) {
      for (int64_t q = 0; q < layout.tables[t].num_q_tiles; ++q) items.push_back({t, static_cast<int32_t>(q), h});
    }
  }
  auto length = [&](const WorkItem& w) {
    const BlockTable& t = layout.tables[w.table];
    return t.row_ptr[w.q_tile + 1] - t.row_ptr[w.q_tile];
  };
  if (order == ScheduleOrder::kLongestFirst) {
    std::stable_sort(items.begin(), items.end(),
                     [&](const WorkItem& a, const WorkItem& b) { return length(a) > length(b); });
  } else if (order == ScheduleOrder::kHilbert) {
    // Within each head, along the Hilbert curve over (query tile, mean key tile): items
    // launched together touch nearby K/V tiles and share them in L2.
    int64_t side = 1;
    for (const BlockTable& t : layout.tables) side = std::max({side, t.num_q_tiles, t.num_k_tiles});
    const int bits = detail::bits_for(static_cast<uint64_t>(side));
    std::vector<uint64_t> key(items.size());
    for (size_t k = 0; k < items.size(); ++k) {
      const BlockTable& t = layout.tables[items[k].table];
      const int64_t lo = t.row_ptr[items[k].q_tile], hi = t.row_ptr[items[k].q_tile + 1];
      int64_t sum = 0;
      for (int64_t c = lo; c < hi; ++c) sum += t.cols[c];
      const uint64_t c[2] = {static_cast<uint64_t>(items[k].q_tile),
                             static_cast<uint64_t>(hi > lo ? sum / (hi - lo) : 0)};
      key[k] = detail::hilbert_index(c, 2, bits);
    }
    std::vector<size_t> idx(items.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
      if (items[a].head != items[b].head) return items[a].head < items[b].head;
      return key[a] < key[b];
    });
    std::vector<WorkItem> sorted(items.size());
    for (size_t k = 0; k < idx.size(); ++k) sorted[k] = items[idx[k]];
    items.swap(sorted);
  }
  return items;
}

}  // namespace

Layout compile_layout(const Pattern& pattern, const Shape& shape, const LayoutOptions& options) {
  check_options(options);
  return detail::compile_unchecked(pattern, shape, options);
}

Layout detail::compile_unchecked(const Pattern& pattern, const Shape& shape, const LayoutOptions& options) {
  detail::LayoutBudget budget(options, shape);
  return compile_budgeted(pattern, shape, options, budget);
}

Layout detail::compile_budgeted(const Pattern& pattern, const Shape& shape, const LayoutOptions& options,
                                detail::LayoutBudget& budget) {
  pattern.validate(shape);
  const TokenRect rect = resolve_rect(options.rect, shape);
  // The tile grid of natural order, before anything is built (permuted orders are
  // checked again per table: they may add padding tiles).
  const int64_t nqt = ceil_div(shape.nq, options.tile_m), nkt = ceil_div(shape.nk, options.tile_n);
  SPATTN_REQUIRE(nqt <= limits::kMaxTileGrid / nkt,
                 "layout: {} x {} tiles of {}x{} tokens in one table; at most 2^31 (use larger tiles: tile_m, "
                 "tile_n / --tile)",
                 nqt, nkt, options.tile_m, options.tile_n);
  const std::string outer = budget.context();
  if (outer.empty()) budget.set_context(fmt::format("this {} pattern", pattern.kind()));
  Layout layout;
  layout.shape = shape;
  layout.rect = rect;
  layout.tile_m = options.tile_m;
  layout.tile_n = options.tile_n;
  detail::OrderCache orders(shape, options.tile_m, options.tile_n, rect, budget);
  layout.parts = detail::decompose_parts(pattern, shape, options, orders);
  std::vector<detail::PartTable> plans = detail::plan_tables(layout.parts, shape, options, orders);
  // The schedule: every (table, query tile, head) once, plus the keys that order it.
  {
    uint64_t items = 0;
    for (const detail::PartTable& plan : plans) {
      items += plan.heads.size() * static_cast<uint64_t>(orders.get(plan.order).num_q_tiles());
    }
    if (items > static_cast<uint64_t>(INT32_MAX)) {
      SPATTN_FAIL(ErrorCode::kUnsupported,
                  "layout: {} work items (query tiles x heads) exceed the int32 schedule; use larger tiles or fewer "
                  "heads", items);
    }
    budget.hold(items * (3 * sizeof(WorkItem) + 2 * sizeof(uint64_t)), "work schedule");
    budget.spend(items);
  }
  for (detail::PartTable& plan : plans) {
    const detail::TokenOrder& order = orders.get(plan.order);
    if (order.num_q_tiles() == 0) continue;  // no query of these heads takes part
    const std::string_view kind = layout.parts[plan.part].pattern.kind();
    budget.set_context(fmt::format("the {} part{}{}", kind == "heads" ? "head group" : kind,
                                   outer.empty() ? "" : " of ", outer));
    detail::RowGen gen(std::move(plan.positive), std::move(plan.excludes), shape, &budget);
    detail::TableBuilder(gen, order, budget).check_projection(16);
    detail::TableBuilder builder(gen, order, budget);
    BlockTable table = builder.build();
    table.part = plan.part;
    table.heads = std::move(plan.heads);
    // Orders that come out as the identity (a LongNet branch of rate 1 whose segments
    // are whole tiles) are stored as such: the kernel then loads contiguously.
    if (!detail::TokenOrder::slots_are_identity(order.q_slots(), shape.nq, options.tile_m)) {
      budget.hold(sizeof(int32_t) * order.q_slots().size(), "token orders");
      table.q_slots = order.q_slots();
    }
    if (!detail::TokenOrder::slots_are_identity(order.k_slots(), shape.nk, options.tile_n)) {
      budget.hold(sizeof(int32_t) * order.k_slots().size(), "token orders");
      table.k_slots = order.k_slots();
    }
    layout.tables.push_back(std::move(table));
  }
  budget.set_context(outer);
  // rows_covered() visits the query slots of every table once per distinct set of
  // tables, at most once per head; the Hilbert schedule visits each item's key tiles.
  budget.check_scratch(static_cast<uint64_t>(rect.q_end - rect.q_begin), "row coverage");
  for (const BlockTable& t : layout.tables) {
    const uint64_t per_head = t.q_slots.size() +
                              (options.schedule == ScheduleOrder::kHilbert ? t.cols.size() : 0);
    budget.spend(t.heads.size() * per_head);
  }
  layout.covers_all_rows = rows_covered(layout);
  layout.schedule = make_schedule(layout, options.schedule);
  log::debug("layout: {} at Nq = {}, Nk = {}, {} heads: {} row operations, {} held", pattern.kind(), shape.nq,
             shape.nk, shape.heads, budget.work(), human_bytes(budget.bytes()));
  return layout;
}

}  // namespace spattn
