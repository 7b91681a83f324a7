// The Pattern value and its token-level predicate (DESIGN.md §3). This file is the one
// definition of what every pattern means; the layout compiler derives its row ranges
// from the same formulas and the tests check the two against each other.
#include <spattn/pattern.hpp>

#include <algorithm>
#include <cstdlib>

#include "common/check.hpp"
#include "patterns/arith.hpp"

namespace spattn {

namespace {

template <class... Ts>
struct Overloaded : Ts... {
  using Ts::operator()...;
};
template <class... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

bool in_window(int64_t i, int64_t j, int64_t left, int64_t right) {
  return j >= i - left && j <= i + right;
}

bool dilated_allowed(const DilatedSparse& p, int64_t i, int64_t j) {
  const int64_t d = std::abs(i / p.block - j / p.block);
  if (d == 0) return true;
  for (int64_t r : p.rates) {
    if (d % r == 0 && d <= r * p.reach) return true;
  }
  return false;
}

bool hierarchical_allowed(const Hierarchical& p, int64_t i, int64_t j) {
  for (const HierarchicalLevel& l : p.levels) {
    const int64_t qb = i / l.block;
    const int64_t s = std::max<int64_t>(1, l.stride / l.block);
    if (qb % s != 0) continue;
    if (l.window == -1) return true;
    if (std::abs(qb - j / l.block) <= (l.window / l.block) / 2) return true;
  }
  return false;
}

bool neighborhood_allowed(const Neighborhood& p, int64_t i, int64_t j) {
  // Row-major: the last axis varies fastest.
  for (size_t a = p.grid.size(); a-- > 0;) {
    const int64_t g = p.grid[a];
    const int64_t d = p.dilation.empty() ? 1 : p.dilation[a];
    const int64_t ci = i % g, cj = j % g;
    i /= g;
    j /= g;
    if (ci % d != cj % d) return false;
    const int64_t len = (g - ci % d + d - 1) / d;  // positions with this residue
    const int64_t w = p.window[a];
    if (w >= len) continue;  // the window covers the whole residue class
    const int64_t start = std::clamp(ci / d - w / 2, int64_t{0}, len - w);
    const int64_t tj = cj / d;
    if (tj < start || tj >= start + w) return false;
  }
  return true;
}

bool custom_allowed(const Custom& p, int64_t i, int64_t j) {
  return std::binary_search(p.pairs.begin(), p.pairs.end(), std::pair{i / p.block, j / p.block});
}

bool butterfly_allowed(const Butterfly& p, int64_t i, int64_t j) {
  const uint64_t x = static_cast<uint64_t>(i / p.block) ^ static_cast<uint64_t>(j / p.block);
  return (x & (x - 1)) == 0;  // zero (same block) or a single bit
}

// Head group of head h in LongNet branch with rate r (torchscale: heads split into r
// groups of ceil(H / r)).
int64_t longnet_group(int64_t heads, int64_t r, int64_t h) { return h / detail::ceil_div(heads, r); }

bool longnet_takes_part(const LongNet& p, const Shape& shape, int b, int64_t h, int64_t i) {
  const int64_t w = p.segments[b], r = p.rates[b];
  return (i % w) % r == longnet_group(shape.heads, r, h);
}

bool longnet_allowed(const LongNet& p, const Shape& shape, int b, int64_t h, int64_t i, int64_t j) {
  const int64_t w = p.segments[b], r = p.rates[b];
  const int64_t o = longnet_group(shape.heads, r, h);
  return i / w == j / w && (i % w) % r == o && (j % w) % r == o;
}

// The head group of h, or nullptr.
const HeadGroup* group_of(const HeadGroups& p, int64_t h) {
  for (const HeadGroup& g : p.groups) {
    if (h >= g.first && h < g.first + g.count) return &g;
  }
  return nullptr;
}

Shape group_shape(const Shape& shape, const HeadGroup& g) { return Shape{shape.nq, shape.nk, g.count}; }

// Branch b of a Branches node: which item, and which branch of that item.
std::pair<const Pattern*, int> branch_item(const Branches& p, int b) {
  for (const Pattern& item : p.items) {
    const int n = item.branch_count();
    if (b < n) return {&item, b};
    b -= n;
  }
  return {nullptr, 0};
}

bool in_shape(const Shape& s, int64_t h, int64_t i, int64_t j) {
  return h >= 0 && h < s.heads && i >= 0 && i < s.nq && j >= 0 && j < s.nk;
}

bool causal_ok(const Shape& s, int64_t i, int64_t j) { return j <= i + (s.nk - s.nq); }

}  // namespace

Pattern::Pattern() : node_(std::make_shared<const PatternNode>(Dense{})) {}

Pattern::Pattern(PatternNode node, bool causal) : causal_(causal) {
  // Custom pairs are kept in canonical order so that equal patterns print equally and
  // the predicate can binary-search them.
  if (auto* c = std::get_if<Custom>(&node)) {
    std::sort(c->pairs.begin(), c->pairs.end());
    c->pairs.erase(std::unique(c->pairs.begin(), c->pairs.end()), c->pairs.end());
  }
  node_ = std::make_shared<const PatternNode>(std::move(node));
}

std::string_view Pattern::kind() const {
  return std::visit(Overloaded{
                        [](const Dense&) { return std::string_view("dense"); },
                        [](const LocalWindow&) { return std::string_view("local_window"); },
                        [](const GlobalLocal&) { return std::string_view("global_local"); },
                        [](const Strided&) { return std::string_view("strided"); },
                        [](const DilatedSparse&) { return std::string_view("dilated_sparse"); },
                        [](const Hierarchical&) { return std::string_view("hierarchical"); },
                        [](const Neighborhood&) { return std::string_view("neighborhood"); },
                        [](const Adaptive&) { return std::string_view("adaptive"); },
                        [](const Custom&) { return std::string_view("custom"); },
                        [](const Butterfly&) { return std::string_view("butterfly"); },
                        [](const LongNet&) { return std::string_view("longnet"); },
                        [](const Union&) { return std::string_view("union"); },
                        [](const Intersect&) { return std::string_view("intersect"); },
                        [](const Branches&) { return std::string_view("branches"); },
                        [](const HeadGroups&) { return std::string_view("heads"); },
                    },
                    *node_);
}

int Pattern::branch_count() const {
  if (const auto* l = std::get_if<LongNet>(node_.get())) return static_cast<int>(l->segments.size());
  if (const auto* b = std::get_if<Branches>(node_.get())) {
    int n = 0;
    for (const Pattern& item : b->items) n += item.branch_count();
    return n;
  }
  if (const auto* g = std::get_if<HeadGroups>(node_.get())) {
    int n = 0;
    for (const HeadGroup& group : g->groups) n = std::max(n, group.pattern->branch_count());
    return n;
  }
  return 1;
}

bool Pattern::allowed(const Shape& shape, int64_t h, int64_t i, int64_t j) const {
  if (!in_shape(shape, h, i, j)) return false;
  if (causal_ && !causal_ok(shape, i, j)) return false;
  return std::visit(
      Overloaded{
          [](const Dense&) { return true; },
          [&](const LocalWindow& p) { return in_window(i, j, p.left, p.right); },
          [&](const GlobalLocal& p) { return j < p.global || i < p.global || in_window(i, j, p.left, p.right); },
          [&](const Strided& p) {
            return p.mode == StrideMode::kRelative ? (i - j) % p.stride == 0 : j % p.stride == 0;
          },
          [&](const DilatedSparse& p) { return dilated_allowed(p, i, j); },
          [&](const Hierarchical& p) { return hierarchical_allowed(p, i, j); },
          [&](const Neighborhood& p) { return neighborhood_allowed(p, i, j); },
          [&](const Adaptive&) -> bool {
            SPATTN_FAIL(ErrorCode::kUnsupported,
                        "adaptive patterns depend on the data (block scores); their token "
                        "predicate is only known on the GPU at run time");
          },
          [&](const Custom& p) { return custom_allowed(p, i, j); },
          [&](const Butterfly& p) { return butterfly_allowed(p, i, j); },
          [&](const LongNet& p) {
            for (size_t b = 0; b < p.segments.size(); ++b) {
              if (longnet_allowed(p, shape, static_cast<int>(b), h, i, j)) return true;
            }
            return false;
          },
          [&](const Union& p) {
            return std::any_of(p.items.begin(), p.items.end(),
                               [&](const Pattern& q) { return q.allowed(shape, h, i, j); });
          },
          [&](const Intersect& p) {
            return std::all_of(p.items.begin(), p.items.end(),
                               [&](const Pattern& q) { return q.allowed(shape, h, i, j); });
          },
          [&](const Branches& p) {
            return std::any_of(p.items.begin(), p.items.end(),
                               [&](const Pattern& q) { return q.allowed(shape, h, i, j); });
          },
          [&](const HeadGroups& p) {
            const HeadGroup* g = group_of(p, h);
            return g != nullptr && g->pattern->allowed(group_shape(shape, *g), h - g->first, i, j);
          },
      },
      *node_);
}

bool Pattern::takes_part(const Shape& shape, int b, int64_t h, int64_t i) const {
  if (b < 0 || h < 0 || h >= shape.heads || i < 0 || i >= shape.nq) return false;
  if (const auto* l = std::get_if<LongNet>(node_.get())) {
    return b < static_cast<int>(l->segments.size()) && longnet_takes_part(*l, shape, b, h, i);
  }
  if (const auto* br = std::get_if<Branches>(node_.get())) {
    auto [item, local] = branch_item(*br, b);
    return item != nullptr && item->takes_part(shape, local, h, i);
  }
  if (const auto* hg = std::get_if<HeadGroups>(node_.get())) {
    const HeadGroup* g = group_of(*hg, h);
    return g != nullptr && b < g->pattern->branch_count() &&
           g->pattern->takes_part(group_shape(shape, *g), b, h - g->first, i);
  }
  return b == 0;
}

bool Pattern::allowed_in_branch(const Shape& shape, int b, int64_t h, int64_t i, int64_t j) const {
  if (b < 0 || !in_shape(shape, h, i, j)) return false;
  if (causal_ && !causal_ok(shape, i, j)) return false;
  if (const auto* l = std::get_if<LongNet>(node_.get())) {
    return b < static_cast<int>(l->segments.size()) && longnet_allowed(*l, shape, b, h, i, j);
  }
  if (const auto* br = std::get_if<Branches>(node_.get())) {
    auto [item, local] = branch_item(*br, b);
    return item != nullptr && item->allowed_in_branch(shape, local, h, i, j);
  }
  if (const auto* hg = std::get_if<HeadGroups>(node_.get())) {
    const HeadGroup* g = group_of(*hg, h);
    return g != nullptr && b < g->pattern->branch_count() &&
           g->pattern->allowed_in_branch(group_shape(shape, *g), b, h - g->first, i, j);
  }
  return b == 0 && allowed(shape, h, i, j);
}

}  // namespace spattn
