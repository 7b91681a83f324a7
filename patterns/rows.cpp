#include "patterns/rows.hpp"

#include <algorithm>
#include <numeric>

#include "common/check.hpp"
#include "patterns/arith.hpp"

namespace spattn::detail {

// --- interval algebra ----------------------------------------------------------------

void iv_union(const Ivs& a, const Ivs& b, Ivs& out) {
  out.clear();
  size_t x = 0, y = 0;
  while (x < a.size() || y < b.size()) {
    const Iv& next = (y == b.size() || (x < a.size() && a[x].lo <= b[y].lo)) ? a[x++] : b[y++];
    if (!out.empty() && next.lo <= out.back().hi) {
      out.back().hi = std::max(out.back().hi, next.hi);
    } else {
      out.push_back(next);
    }
  }
}

void iv_intersect(const Ivs& a, const Ivs& b, Ivs& out) {
  out.clear();
  size_t x = 0, y = 0;
  while (x < a.size() && y < b.size()) {
    const int64_t lo = std::max(a[x].lo, b[y].lo);
    const int64_t hi = std::min(a[x].hi, b[y].hi);
    if (lo < hi) out.push_back({lo, hi});
    if (a[x].hi < b[y].hi) ++x;
    else ++y;
  }
}

void iv_subtract(const Ivs& a, const Ivs& b, Ivs& out) {
  out.clear();
  size_t y = 0;
  for (Iv cur : a) {
    while (y < b.size() && b[y].hi <= cur.lo) ++y;
    size_t z = y;
    while (z < b.size() && b[z].lo < cur.hi) {
      if (b[z].lo > cur.lo) out.push_back({cur.lo, b[z].lo});
      cur.lo = std::max(cur.lo, b[z].hi);
      if (cur.lo >= cur.hi) break;
      ++z;
    }
    if (cur.lo < cur.hi) out.push_back(cur);
  }
}

void iv_normalize(Ivs& v) {
  std::sort(v.begin(), v.end(), [](const Iv& a, const Iv& b) { return a.lo < b.lo; });
  size_t n = 0;
  for (const Iv& iv : v) {
    if (iv.lo >= iv.hi) continue;
    if (n > 0 && iv.lo <= v[n - 1].hi) {
      v[n - 1].hi = std::max(v[n - 1].hi, iv.hi);
    } else {
      v[n++] = iv;
    }
  }
  v.resize(n);
}


// --- resolved nodes ------------------------------------------------------------------

namespace {

bool is_leaf(NodeKind k) { return k != NodeKind::kUnion && k != NodeKind::kIntersect; }

const HeadGroup* group_of(const HeadGroups& p, int64_t h) {
  for (const HeadGroup& g : p.groups) {
    if (h >= g.first && h < g.first + g.count) return &g;
  }
  return nullptr;
}

std::vector<Iv> distance_runs(const DilatedSparse& p) {
  std::vector<int64_t> d{0};
  for (int64_t r : p.rates) {
    for (int64_t k = 1; k <= p.reach; ++k) d.push_back(k * r);
  }
  std::sort(d.begin(), d.end());
  d.erase(std::unique(d.begin(), d.end()), d.end());
  std::vector<Iv> runs;
  for (int64_t x : d) {
    if (!runs.empty() && runs.back().hi == x) ++runs.back().hi;
    else runs.push_back({x, x + 1});
  }
  return runs;
}

std::optional<Node> resolve_rec(const Pattern& p, const Shape& shape, int64_t h, int branch, bool causal) {
  causal = causal || p.causal();
  const PatternNode& pn = p.node();
  auto leaf = [&](NodeKind kind) {
    Node n;
    n.kind = kind;
    n.causal = causal;
    n.leaf = &pn;
    return std::optional<Node>(std::move(n));
  };
  if (std::holds_alternative<Adaptive>(pn)) {
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "adaptive patterns choose their blocks from the data on the GPU; the host layout "
                "compiler cannot build their tables (a lone adaptive pattern runs through "
                "spattn::Attention, whose adaptive_layout the GPU fills per call; adaptive inside a "
                "union, intersection, branches or head group is not supported yet)");
  }
  if (const auto* l = std::get_if<LongNet>(&pn)) {
    if (branch < 0 || branch >= static_cast<int>(l->segments.size())) return std::nullopt;
    auto n = leaf(NodeKind::kLongNet);
    n->w = l->segments[branch];
    n->r = l->rates[branch];
    n->o = h / ceil_div(shape.heads, n->r);
    n->key_div = FastDiv(n->w);
    n->rate_div = FastDiv(n->r);
    return n;
  }
  if (const auto* b = std::get_if<Branches>(&pn)) {
    for (const Pattern& item : b->items) {
      const int count = item.branch_count();
      if (branch < count) return resolve_rec(item, shape, h, branch, causal);
      branch -= count;
    }
    return std::nullopt;
  }
  if (const auto* hg = std::get_if<HeadGroups>(&pn)) {
    const HeadGroup* g = group_of(*hg, h);
    if (g == nullptr || branch >= g->pattern->branch_count()) return std::nullopt;
    return resolve_rec(*g->pattern, Shape{shape.nq, shape.nk, g->count}, h - g->first, branch, causal);
  }
  if (branch != 0) return std::nullopt;
  const bool is_union = std::holds_alternative<Union>(pn);
  if (is_union || std::holds_alternative<Intersect>(pn)) {
    const auto& items = is_union ? std::get<Union>(pn).items : std::get<Intersect>(pn).items;
    Node n;
    n.kind = is_union ? NodeKind::kUnion : NodeKind::kIntersect;
    for (const Pattern& item : items) {
      std::optional<Node> c = resolve_rec(item, shape, h, 0, causal);
      if (!c) {
        if (!is_union) return std::nullopt;
        continue;
      }
      n.children.push_back(std::move(*c));
    }
    if (n.children.empty()) return std::nullopt;
    if (n.children.size() == 1) return std::move(n.children[0]);
    if (!is_union) {
      // Evaluate bounded operands first: later ones are clipped to what is left.
      std::stable_sort(n.children.begin(), n.children.end(),
                       [](const Node& a, const Node& b) { return !a.periodic() && b.periodic(); });
    }
    return n;
  }
  if (std::holds_alternative<Dense>(pn)) return leaf(NodeKind::kDense);
  if (std::holds_alternative<LocalWindow>(pn)) return leaf(NodeKind::kWindow);
  if (std::holds_alternative<GlobalLocal>(pn)) return leaf(NodeKind::kGlobalLocal);
  if (std::holds_alternative<Strided>(pn)) return leaf(NodeKind::kStrided);
  if (const auto* d = std::get_if<DilatedSparse>(&pn)) {
    auto n = leaf(NodeKind::kDilated);
    n->runs = distance_runs(*d);
    n->key_div = FastDiv(d->block);
    return n;
  }
  if (const auto* hp = std::get_if<Hierarchical>(&pn)) {
    auto n = leaf(NodeKind::kHierarchical);
    n->key_block = 0;
    for (const HierarchicalLevel& l : hp->levels) n->key_block = std::gcd(n->key_block, l.block);
    n->key_div = FastDiv(n->key_block);
    return n;
  }
  if (std::holds_alternative<Neighborhood>(pn)) return leaf(NodeKind::kNeighborhood);
  if (const auto* c = std::get_if<Custom>(&pn)) {
    auto n = leaf(NodeKind::kCustom);
    n->key_div = FastDiv(c->block);
    return n;
  }
  if (const auto* b = std::get_if<Butterfly>(&pn)) {
    auto n = leaf(NodeKind::kButterfly);
    n->key_div = FastDiv(b->block);
    return n;
  }
  SPATTN_FAIL(ErrorCode::kInternal, "unhandled pattern kind '{}'", p.kind());
}

int64_t modinv(int64_t a, int64_t m) {
  // Extended Euclid; a and m coprime, m > 1.
  int64_t t = 0, nt = 1, r = m, nr = pos_mod(a, m);
  while (nr != 0) {
    const int64_t q = r / nr;
    t = std::exchange(nt, t - q * nt);
    r = std::exchange(nr, r - q * nr);
  }
  return pos_mod(t, m);
}

}  // namespace

Progression rank_progression(const Region& rg, int64_t a0, int64_t q, int64_t a, int64_t b) {
  a = std::max(a, rg.start);
  b = std::min(b, rg.start + rg.count * rg.step);
  if (a >= b) return {};
  // Rank k holds token start + k * step; it is in the progression iff
  // k * step = a0 - start (mod q): a progression of ranks with period m.
  if (rg.step == 1) {
    // Natural order: ranks are tokens - start (no divisions by the step).
    const int64_t klo = a - rg.start, khi = b - rg.start;
    const int64_t first = klo + pos_mod(a0 - rg.start - klo, q);
    if (first >= khi) return {};
    return Progression{first, q, (khi - 1 - first) / q + 1};
  }
  const int64_t g = std::gcd(rg.step, q);
  const int64_t rhs = pos_mod(a0 - rg.start, q);
  if (rhs % g != 0) return {};
  const int64_t m = q / g;
  const int64_t k0 =
      m == 1 ? 0 : static_cast<int64_t>(static_cast<__int128>(rhs / g) * modinv((rg.step / g) % m, m) % m);
  const int64_t klo = (a - rg.start + rg.step - 1) / rg.step;
  const int64_t khi = (b - rg.start + rg.step - 1) / rg.step;
  const int64_t first = m == 1 ? klo : klo + pos_mod(k0 - klo, m);
  if (first >= khi) return {};
  return Progression{first, m, (khi - 1 - first) / m + 1};
}

namespace {

// Appends rank intervals for token sets given in ascending token order, clipped to the
// ranks [clo, chi) of the region.
struct Emitter {
  const Region& rg;
  Ivs& out;
  int64_t tlo, thi;  // token range of the clip
  LayoutBudget* budget;
  bool unsorted = false;

  Emitter(const Region& region, int64_t clo, int64_t chi, Ivs& o, LayoutBudget* b)
      : rg(region), out(o), tlo(region.start + clo * region.step), thi(region.start + (chi - 1) * region.step + 1),
        budget(b) {}

  void push(int64_t lo, int64_t hi) {
    if (!out.empty()) {
      Iv& b = out.back();
      if (lo >= b.lo && lo <= b.hi) {
        if (hi > b.hi) b.hi = hi;
        return;
      }
      if (lo < b.lo) unsorted = true;
    }
    out.push_back({lo, hi});
  }

  // Tokens [a, b).
  void interval(int64_t a, int64_t b) {
    if (a < tlo) a = tlo;
    if (b > thi) b = thi;
    if (a >= b) return;
    if (rg.step == 1) {
      push(a - rg.start, b - rg.start);
    } else {
      const int64_t k0 = (a - rg.start + rg.step - 1) / rg.step;
      const int64_t k1 = (b - rg.start + rg.step - 1) / rg.step;
      if (k0 < k1) push(k0, k1);
    }
  }

  // Tokens t in [a, b) with t = a0 (mod q).
  void progression(int64_t a0, int64_t q, int64_t a, int64_t b) {
    if (q == 1) return interval(a, b);
    const Progression p = rank_progression(rg, a0, q, std::max(a, tlo), std::min(b, thi));
    if (p.count == 0) return;
    if (p.step == 1) {
      push(p.first, p.first + p.count);
      return;
    }
    // One interval per key: charged (and its memory checked) before it is listed.
    if (budget != nullptr) {
      budget->spend(static_cast<uint64_t>(p.count));
      budget->check_scratch(static_cast<uint64_t>(p.count) * sizeof(Iv), "key intervals of one row");
    }
    for (int64_t n = 0, k = p.first; n < p.count; ++n, k += p.step) push(k, k + 1);
  }

  void finish() {
    if (unsorted) iv_normalize(out);
  }
};

}  // namespace

std::string Node::key() const {
  if (is_leaf(kind)) {
    std::string k = fmt::format("L{}@{}{}", static_cast<int>(kind), static_cast<const void*>(leaf), causal ? "c" : "");
    if (kind == NodeKind::kLongNet) k += fmt::format(":{}:{}:{}", w, r, o);
    return k;
  }
  std::string k(kind == NodeKind::kUnion ? "U(" : "I(");
  for (const Node& c : children) k += c.key() + ",";
  return k + ")";
}

bool Node::periodic() const {
  if (kind == NodeKind::kLongNet) return true;
  if (kind == NodeKind::kStrided) return std::get<Strided>(*leaf).stride > 1;
  if (kind == NodeKind::kUnion) {
    return std::any_of(children.begin(), children.end(), [](const Node& c) { return c.periodic(); });
  }
  if (kind == NodeKind::kIntersect) {
    return std::all_of(children.begin(), children.end(), [](const Node& c) { return c.periodic(); });
  }
  return false;
}

std::optional<Node> resolve(const Pattern& pattern, const Shape& shape, int64_t h, int branch) {
  return resolve_rec(pattern, shape, h, branch, false);
}

// --- row generation ------------------------------------------------------------------

namespace {
int tree_depth(const Node& n) {
  int d = 0;
  for (const Node& c : n.children) d = std::max(d, tree_depth(c));
  return d + 1;
}
}  // namespace

namespace {

bool all_leaves_causal(const Node& n) {
  if (is_leaf(n.kind)) return n.causal;
  return std::all_of(n.children.begin(), n.children.end(), all_leaves_causal);
}

void strip_causal(Node& n) {
  n.causal = false;
  for (Node& c : n.children) strip_causal(c);
}

}  // namespace

RowGen::RowGen(Node positive, std::vector<Node> excludes, const Shape& shape, LayoutBudget* budget)
    : positive_(std::move(positive)), excludes_(std::move(excludes)), shape_(shape), budget_(budget) {
  // Two scratch buffers per level of the tree, allocated once: gen() holds references
  // into them across recursive calls.
  int depth = tree_depth(positive_);
  for (const Node& e : excludes_) depth = std::max(depth, tree_depth(e));
  scratch_.resize(2 * static_cast<size_t>(depth) + 2);
  // (P & C) \ (E & C) == (P \ E) & C: with a causal positive node, causal comes off
  // every leaf and is applied once at the end.
  hoisted_causal_ = all_leaves_causal(positive_);
  if (hoisted_causal_) {
    strip_causal(positive_);
    for (Node& e : excludes_) strip_causal(e);
  }
  progression_rows_ = excludes_.empty() && (positive_.kind == NodeKind::kStrided || positive_.kind == NodeKind::kLongNet);
  single_leaf_ = excludes_.empty() && is_leaf(positive_.kind);
}

int64_t RowGen::causal_bound(int64_t i, const Region& rg) const {
  const int64_t bound = i + shape_.nk - shape_.nq + 1;  // first key token causal excludes
  return bound <= rg.start ? 0 : std::min(rg.count, ceil_div(bound - rg.start, rg.step));
}

Progression RowGen::row_progression(int64_t i, const Region& rg) const {
  const Node& n = positive_;
  Progression p;
  if (n.kind == NodeKind::kStrided) {
    const auto& s = std::get<Strided>(*n.leaf);
    p = rank_progression(rg, s.mode == StrideMode::kRelative ? pos_mod(i, s.stride) : 0, s.stride, 0, shape_.nk);
  } else {
    SPATTN_ASSERT(n.kind == NodeKind::kLongNet);
    if ((i % n.w) % n.r != n.o) return p;
    const int64_t seg = i / n.w * n.w;
    p = rank_progression(rg, seg + n.o, n.r, seg, std::min(shape_.nk, seg + n.w));
  }
  if ((hoisted_causal_ || n.causal) && p.count > 0) {
    const int64_t kb = causal_bound(i, rg);
    p.count = kb <= p.first ? 0 : std::min(p.count, (kb - 1 - p.first) / p.step + 1);
  }
  return p;
}

namespace {

// The row key of a leaf: rows with equal keys have equal key sets. False when the leaf
// has no such key (every row differs).
inline bool leaf_key(const Node& n, int64_t i, int64_t& key) {
  if (n.causal) return false;
  switch (n.kind) {
    case NodeKind::kDense:
      key = 0;
      return true;
    case NodeKind::kGlobalLocal:
      key = -1;
      return i < std::get<GlobalLocal>(*n.leaf).global;
    case NodeKind::kStrided: {
      const auto& p = std::get<Strided>(*n.leaf);
      key = p.mode == StrideMode::kRelative ? i % p.stride : 0;
      return true;
    }
    case NodeKind::kDilated:
    case NodeKind::kCustom:
    case NodeKind::kButterfly:
    case NodeKind::kHierarchical:
      key = n.key_div.div(i);
      return true;
    case NodeKind::kLongNet: {
      const int64_t seg = n.key_div.div(i);
      key = n.rate_div.mod(i - seg * n.w) == n.o ? seg : -1;
      return true;
    }
    default:
      return false;  // windows and neighborhoods move with every row
  }
}

}  // namespace

bool RowGen::uniform_keys(int64_t i0, int64_t i1, bool grouped) const {
  int64_t k0 = 0, k1 = 0;
  if (!is_leaf(positive_.kind) || !leaf_key(positive_, i0, k0) || !leaf_key(positive_, i1, k1) || k0 != k1) {
    return false;
  }
  switch (positive_.kind) {
    case NodeKind::kStrided:
      return std::get<Strided>(*positive_.leaf).mode == StrideMode::kColumns || grouped;
    case NodeKind::kLongNet:
      return grouped || positive_.r == 1;
    default:
      return true;  // constant, or the block / global region of the token: monotone
  }
}

const Ivs& RowGen::unclipped_row(int64_t i, const Region& region) {
  row(i, region);
  SPATTN_ASSERT(have_last_);
  return last_;
}

bool RowGen::row_key(const Node& n, int64_t i) {
  if (is_leaf(n.kind)) {
    int64_t k = 0;
    if (!leaf_key(n, i, k)) return false;
    key_.push_back(k);
    return true;
  }
  for (const Node& c : n.children) {
    if (!row_key(c, i)) return false;
  }
  return true;
}

const Ivs& RowGen::row(int64_t i, const Region& region) {
  const bool same_region =
      region.start == last_region_.start && region.step == last_region_.step && region.count == last_region_.count;
  bool keyed, hit;
  int64_t scalar = 0;
  if (single_leaf_) {
    // The common case, kept free of the key vector.
    keyed = leaf_key(positive_, i, scalar);
    hit = keyed && have_last_ && same_region && scalar == last_scalar_;
  } else {
    key_.clear();
    keyed = row_key(positive_, i);
    for (size_t e = 0; keyed && e < excludes_.size(); ++e) keyed = row_key(excludes_[e], i);
    hit = keyed && have_last_ && same_region && key_.size() == last_key_.size();
    for (size_t k = 0; hit && k < key_.size(); ++k) hit = key_[k] == last_key_[k];
  }
  if (!hit) {
    // Keyed rows are computed into the memo itself.
    Ivs& out = keyed ? last_ : out_;
    out.clear();
    if (region.count > 0) {
      gen(positive_, i, region, 0, region.count, out, 0);
      for (const Node& e : excludes_) {
        if (out.empty()) break;
        gen(e, i, region, out.front().lo, out.back().hi, tmp_, 0);
        if (tmp_.empty()) continue;
        charge(out.size() + tmp_.size());
        iv_subtract(out, tmp_, tmp2_);
        out.swap(tmp2_);
      }
    }
    have_last_ = keyed;
    if (keyed) {
      last_key_.swap(key_);
      last_scalar_ = scalar;
      if (region.step != last_region_.step) step_div_ = FastDiv(region.step);
      last_region_ = region;
    }
  }
  repeated_ = hit && !hoisted_causal_;
  if (!hoisted_causal_) return keyed ? last_ : out_;
  // Causal last: keys below i + Nk - Nq + 1, as a rank bound.
  const int64_t bound = i + shape_.nk - shape_.nq + 1;
  int64_t kb = 0;
  if (bound > region.start) {
    // Keyed rows reuse the divider of the memo's region (the same region).
    const int64_t above = bound - region.start + region.step - 1;
    kb = std::min(region.count, keyed && above <= int64_t{0xFFFFFFFF} ? step_div_.div(above) : above / region.step);
  }
  if (keyed) {
    charge(last_.size());
    out_.clear();
    for (const Iv& iv : last_) {
      if (iv.lo >= kb) break;
      out_.push_back({iv.lo, std::min(iv.hi, kb)});
    }
  } else {
    while (!out_.empty() && out_.back().lo >= kb) out_.pop_back();
    if (!out_.empty() && out_.back().hi > kb) out_.back().hi = kb;
  }
  return out_;
}

const Ivs& RowGen::positive_row(int64_t i, const Region& region) {
  have_last_ = false;  // the memo's buffers are reused below
  last_.clear();
  if (region.count > 0) gen(positive_, i, region, 0, region.count, last_, 0);
  return last_;
}

const Ivs& RowGen::excluded(int64_t i, const Region& region, int64_t lo, int64_t hi) {
  out_.clear();
  for (const Node& e : excludes_) {
    gen(e, i, region, lo, hi, tmp_, 0);
    if (tmp_.empty()) continue;
    charge(out_.size() + tmp_.size());
    iv_union(out_, tmp_, tmp2_);
    out_.swap(tmp2_);
  }
  return out_;
}

void RowGen::gen(const Node& n, int64_t i, const Region& rg, int64_t clo, int64_t chi, Ivs& out, int depth) {
  out.clear();
  if (n.causal) {
    // Causal (bottom-right aligned): keys j <= i + Nk - Nq, i.e. ranks below the bound.
    const int64_t bound = i + shape_.nk - shape_.nq + 1;  // first disallowed key token
    const int64_t kb = bound <= rg.start ? 0 : std::min(rg.count, ceil_div(bound - rg.start, rg.step));
    chi = std::min(chi, kb);
  }
  if (clo >= chi) return;
  if (is_leaf(n.kind)) {
    leaf(n, i, rg, clo, chi, out);
    charge(out.size() + 1);
    return;
  }
  SPATTN_ASSERT(scratch_.size() >= 2 * static_cast<size_t>(depth) + 2);
  Ivs& child = scratch_[2 * depth];
  Ivs& merged = scratch_[2 * depth + 1];
  if (n.kind == NodeKind::kUnion) {
    gen(n.children[0], i, rg, clo, chi, out, depth + 1);
    for (size_t c = 1; c < n.children.size(); ++c) {
      gen(n.children[c], i, rg, clo, chi, child, depth + 1);
      if (child.empty()) continue;
      charge(out.size() + child.size());
      iv_union(out, child, merged);
      out.swap(merged);
    }
    return;
  }
  // Intersection: each operand only needs to be known inside the hull of what is left.
  gen(n.children[0], i, rg, clo, chi, out, depth + 1);
  for (size_t c = 1; c < n.children.size() && !out.empty(); ++c) {
    gen(n.children[c], i, rg, out.front().lo, out.back().hi, child, depth + 1);
    charge(out.size() + child.size());
    iv_intersect(out, child, merged);
    out.swap(merged);
  }
}

void RowGen::leaf(const Node& n, int64_t i, const Region& rg, int64_t clo, int64_t chi, Ivs& out) {
  const int64_t nk = shape_.nk;
  Emitter e(rg, clo, chi, out, budget_);
  // A leaf is charged the intervals it produces (gen()), and loops that may produce
  // none before it runs them.
  const PatternNode& pn = *n.leaf;

  // Block-level leaves: reuse the previous row's answer within the same block.
  auto cached = [&](int64_t block) {
    if (n.cached_block == block && n.cached_clo == clo && n.cached_chi == chi && n.cached_region.start == rg.start &&
        n.cached_region.step == rg.step && n.cached_region.count == rg.count) {
      out = n.cached;
      return true;
    }
    return false;
  };
  auto remember = [&](int64_t block) {
    n.cached_block = block;
    n.cached_clo = clo;
    n.cached_chi = chi;
    n.cached_region = rg;
    n.cached = out;
  };

  switch (n.kind) {
    case NodeKind::kDense:
      e.interval(0, nk);
      break;
    case NodeKind::kWindow: {
      const auto& p = std::get<LocalWindow>(pn);
      e.interval(i - p.left, i + p.right + 1);
      break;
    }
    case NodeKind::kGlobalLocal: {
      const auto& p = std::get<GlobalLocal>(pn);
      if (i < p.global) {
        e.interval(0, nk);
      } else {
        e.interval(0, p.global);
        e.interval(i - p.left, i + p.right + 1);
      }
      break;
    }
    case NodeKind::kStrided: {
      const auto& p = std::get<Strided>(pn);
      if (p.mode == StrideMode::kRelative) e.progression(pos_mod(i, p.stride), p.stride, 0, nk);
      else e.progression(0, p.stride, 0, nk);
      break;
    }
    case NodeKind::kDilated: {
      const auto& p = std::get<DilatedSparse>(pn);
      const int64_t b = p.block, qb = i / b, nb = ceil_div(nk, b);
      if (cached(qb)) return;
      charge(2 * n.runs.size());
      // Key blocks qb - d for the distances in descending order, then qb + d ascending.
      for (size_t k = n.runs.size(); k-- > 0;) {
        const Iv& run = n.runs[k];
        const int64_t jlo = std::max<int64_t>(0, qb - (run.hi - 1)), jhi = qb - run.lo;
        if (jhi < 0) continue;
        e.interval(jlo * b, (jhi + 1) * b);
      }
      for (const Iv& run : n.runs) {
        const int64_t jlo = qb + std::max<int64_t>(1, run.lo), jhi = std::min(nb - 1, qb + run.hi - 1);
        if (jlo > jhi) continue;
        e.interval(jlo * b, std::min(nk, (jhi + 1) * b));
      }
      e.finish();
      remember(qb);
      return;
    }
    case NodeKind::kHierarchical: {
      const auto& p = std::get<Hierarchical>(pn);
      charge(p.levels.size());
      small_.clear();
      for (const HierarchicalLevel& l : p.levels) {
        const int64_t qb = i / l.block;
        if (qb % std::max<int64_t>(1, l.stride / l.block) != 0) continue;
        if (l.window == -1) {
          small_.push_back({0, nk});
        } else {
          const int64_t hw = (l.window / l.block) / 2;
          small_.push_back({(qb - hw) * l.block, (qb + hw + 1) * l.block});
        }
      }
      std::sort(small_.begin(), small_.end(), [](const Iv& a, const Iv& b) { return a.lo < b.lo; });
      for (const Iv& iv : small_) e.interval(iv.lo, iv.hi);
      break;
    }
    case NodeKind::kNeighborhood: {
      const auto& p = std::get<Neighborhood>(pn);
      const int dims = static_cast<int>(p.grid.size());
      int64_t first[3] = {}, step[3] = {}, count[3] = {}, stride[3] = {};
      int64_t rest = i, s = 1;
      for (int a = dims - 1; a >= 0; --a) {
        const int64_t g = p.grid[a];
        const int64_t d = p.dilation.empty() ? 1 : p.dilation[a];
        const int64_t c = rest % g;
        rest /= g;
        const int64_t res = c % d;
        const int64_t len = (g - res + d - 1) / d;
        const int64_t w = p.window[a];
        const int64_t start = w >= len ? 0 : std::clamp(c / d - w / 2, int64_t{0}, len - w);
        first[a] = res + d * start;
        step[a] = d;
        count[a] = std::min(w, len);
        stride[a] = s;
        s *= g;
      }
      // Ascending token order: outer axes first, the last axis as a progression.
      const int last = dims - 1;
      charge(static_cast<uint64_t>(dims > 1 ? count[0] : 1) * static_cast<uint64_t>(dims > 2 ? count[1] : 1));  // lines
      auto emit_line = [&](int64_t base) {
        const int64_t t0 = base + first[last];
        e.progression(t0, step[last], t0, t0 + step[last] * (count[last] - 1) + 1);
      };
      if (dims == 1) {
        emit_line(0);
      } else if (dims == 2) {
        for (int64_t y = 0; y < count[0]; ++y) emit_line((first[0] + y * step[0]) * stride[0]);
      } else {
        for (int64_t z = 0; z < count[0]; ++z) {
          const int64_t bz = (first[0] + z * step[0]) * stride[0];
          for (int64_t y = 0; y < count[1]; ++y) emit_line(bz + (first[1] + y * step[1]) * stride[1]);
        }
      }
      break;
    }
    case NodeKind::kCustom: {
      const auto& p = std::get<Custom>(pn);
      const int64_t qb = i / p.block;
      if (cached(qb)) return;
      auto it = std::lower_bound(p.pairs.begin(), p.pairs.end(), std::pair<int64_t, int64_t>{qb, INT64_MIN});
      for (; it != p.pairs.end() && it->first == qb; ++it) {
        e.interval(it->second * p.block, std::min(nk, (it->second + 1) * p.block));
      }
      e.finish();
      remember(qb);
      return;
    }
    case NodeKind::kButterfly: {
      const auto& p = std::get<Butterfly>(pn);
      const int64_t qb = i / p.block, nb = ceil_div(nk, p.block);
      if (cached(qb)) return;
      small_.clear();
      if (qb < nb) small_.push_back({qb, qb + 1});
      for (int k = 0; k < 62 && (int64_t{1} << k) <= std::max(qb, nb); ++k) {
        const int64_t kb = qb ^ (int64_t{1} << k);
        if (kb < nb) small_.push_back({kb, kb + 1});
      }
      std::sort(small_.begin(), small_.end(), [](const Iv& a, const Iv& b) { return a.lo < b.lo; });
      for (const Iv& iv : small_) e.interval(iv.lo * p.block, std::min(nk, iv.hi * p.block));
      e.finish();
      remember(qb);
      return;
    }
    case NodeKind::kLongNet: {
      if ((i % n.w) % n.r != n.o) break;  // the query does not take part in this branch
      const int64_t seg = i / n.w * n.w;
      e.progression(seg + n.o, n.r, seg, std::min(nk, seg + n.w));
      break;
    }
    case NodeKind::kUnion:
    case NodeKind::kIntersect:
      SPATTN_ASSERT(false);
  }
  e.finish();
}

}  // namespace spattn::detail
