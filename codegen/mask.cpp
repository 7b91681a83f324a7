// Rendering of the token predicate (DESIGN.md §3) as C++ source: the code the kernel
// evaluates in partial tiles. The expressions mirror Pattern::allowed term by term;
// tests compile the rendered function on the host and compare the two on random
// (h, i, j) for every pattern kind.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <optional>
#include <sstream>

#include "codegen/kernel_spec.hpp"
#include "common/check.hpp"

namespace spattn::codegen {
namespace {

template <class... F>
struct Overload : F... {
  using F::operator()...;
};
template <class... F>
Overload(F...) -> Overload<F...>;

// Token indices are below 2^30 (the engine refuses longer sequences), so the predicate
// runs in 32-bit arithmetic (cheaper divisions, fewer registers in the kernel). Pattern
// constants beyond 2^30 act exactly like 2^30 there and are clamped.
constexpr int64_t kIndexLimit = int64_t{1} << 30;
std::string ll(int64_t v) { return fmt::format("{}", std::clamp<int64_t>(v, -kIndexLimit, kIndexLimit)); }

// Evaluates `expr` (which may use h and heads) for the heads of one head group: with h
// replaced by h - first and heads by the group's count.
std::string in_group(const std::string& expr, int64_t first, int64_t count) {
  if (expr.find('h') == std::string::npos) return expr;
  return fmt::format("([&](int h, int heads) {{ (void)h; (void)heads; return {}; }}(h - {}, {}))", expr, ll(first),
                     ll(count));
}

class Emitter {
 public:
  explicit Emitter(std::string qualifiers) : qualifiers_(std::move(qualifiers)) {}

  // Expression for "query i of head h may attend key j" (union over branches).
  std::string allowed(const Pattern& p) {
    const int n = p.branch_count();
    if (n == 1) return in_branch(p, 0);
    std::vector<std::string> terms;
    for (int b = 0; b < n; ++b) terms.push_back(in_branch(p, b));
    return "(" + join(terms, " || ") + ")";
  }

  // Expression for allowed_in_branch(b, h, i, j): the pattern's own term and its causal flag.
  std::string in_branch(const Pattern& p, int b) {
    std::string e = node_branch(p, b);
    if (p.causal()) e = "(" + e + " && j <= i + (nk - nq))";
    return e;
  }

  std::string prelude() const { return prelude_.str(); }

 private:
  static std::string join(const std::vector<std::string>& v, const char* sep) {
    std::string out;
    for (size_t k = 0; k < v.size(); ++k) out += (k ? sep : "") + v[k];
    return out.empty() ? "false" : out;
  }

  std::string node_branch(const Pattern& p, int b) {
    return std::visit(
        Overload{
            [&](const Dense&) -> std::string { return "true"; },
            [&](const LocalWindow& w) -> std::string {
              return fmt::format("(j >= i - {} && j <= i + {})", ll(w.left), ll(w.right));
            },
            [&](const GlobalLocal& g) -> std::string {
              return fmt::format("((j >= i - {} && j <= i + {}) || j < {} || i < {})", ll(g.left), ll(g.right),
                                 ll(g.global), ll(g.global));
            },
            [&](const Strided& s) -> std::string {
              if (s.mode == StrideMode::kRelative) return fmt::format("((i - j) % {} == 0)", ll(s.stride));
              return fmt::format("(j % {} == 0)", ll(s.stride));
            },
            [&](const DilatedSparse& d) -> std::string {
              std::vector<std::string> terms{"dI == 0"};
              for (int64_t r : d.rates)
                terms.push_back(fmt::format("(dI % {} == 0 && dI <= {})", ll(r), ll(r * d.reach)));
              return fmt::format("([&]() {{ const int dI = i / {0} > j / {0} ? i / {0} - j / {0} : j / {0} - i / {0}; return {1}; }}())",
                                 ll(d.block), join(terms, " || "));
            },
            [&](const Hierarchical& hr) -> std::string {
              std::vector<std::string> terms;
              for (const auto& l : hr.levels) {
                const int64_t s = std::max<int64_t>(1, l.stride / l.block);
                std::string t = fmt::format("((i / {0}) % {1} == 0", ll(l.block), ll(s));
                if (l.window != -1)
                  t += fmt::format(" && (i / {0} > j / {0} ? i / {0} - j / {0} : j / {0} - i / {0}) <= {1}", ll(l.block),
                                   ll((l.window / l.block) / 2));
                terms.push_back(t + ")");
              }
              return "(" + join(terms, " || ") + ")";
            },
            [&](const Neighborhood& n) -> std::string { return neighborhood(n); },
            [&](const Adaptive&) -> std::string {
              SPATTN_FAIL(ErrorCode::kUnsupported,
                          "adaptive patterns choose their blocks on the GPU at run time; the generated "
                          "predicate cannot express them");
            },
            [&](const Custom& c) -> std::string { return custom(c); },
            [&](const Butterfly& bf) -> std::string {
              return fmt::format("([&]() {{ const int x = (i / {0}) ^ (j / {0}); return (x & (x - 1)) == 0; }}())",
                                 ll(bf.block));
            },
            [&](const LongNet& ln) -> std::string {
              SPATTN_ASSERT(b >= 0 && b < static_cast<int>(ln.segments.size()));
              const int64_t w = ln.segments[b], r = ln.rates[b];
              // Head group o = h / ceil(H / r); position within the segment decides the residue.
              return fmt::format(
                  "([&]() {{ const int o = h / ((heads + {1} - 1) / {1}); return i / {0} == j / {0} && "
                  "(i % {0}) % {1} == o && (j % {0}) % {1} == o; }}())",
                  ll(w), ll(r));
            },
            [&](const Union& u) -> std::string {
              std::vector<std::string> terms;
              for (const auto& item : u.items) terms.push_back(allowed(item));
              return "(" + join(terms, " || ") + ")";
            },
            [&](const Intersect& x) -> std::string {
              std::vector<std::string> terms;
              for (const auto& item : x.items) terms.push_back(allowed(item));
              return "(" + join(terms, " && ") + ")";
            },
            [&](const Branches& br) -> std::string {
              int base = 0;
              for (const auto& item : br.items) {
                const int n = item.branch_count();
                if (b < base + n) return in_branch(item, b - base);
                base += n;
              }
              SPATTN_FAIL(ErrorCode::kInternal, "branch {} out of range", b);
            },
            [&](const HeadGroups& hg) -> std::string {
              std::string e = "false";
              // Nested conditionals: the group that contains h decides.
              for (auto it = hg.groups.rbegin(); it != hg.groups.rend(); ++it) {
                const Pattern& gp = *it->pattern;
                // Inside a group its pattern sees the group's own heads: h - first of count.
                const std::string term =
                    b < gp.branch_count() ? in_group(in_branch(gp, b), it->first, it->count) : std::string("false");
                e = fmt::format("((h >= {} && h < {}) ? {} : {})", ll(it->first), ll(it->first + it->count), term, e);
              }
              return e;
            },
        },
        p.node());
  }

  std::string neighborhood(const Neighborhood& n) {
    if (!axis_helper_) {
      axis_helper_ = true;
      // NATTEN per-axis rule: same dilation residue; in the residue class of length L
      // the window of min(w, L) positions starts at clamp(t_i - w/2, 0, L - w).
      prelude_ << qualifiers_ << " bool spattn_nbr_axis(int xi, int xj, int g, int w, int d) {\n"
               << "  const int ri = xi % d;\n"
               << "  if (ri != xj % d) return false;\n"
               << "  const int len = (g - ri + d - 1) / d;\n"
               << "  const int ti = xi / d, tj = xj / d;\n"
               << "  int start = 0, width = len;\n"
               << "  if (w < len) {\n"
               << "    start = ti - w / 2;\n"
               << "    if (start < 0) start = 0;\n"
               << "    if (start > len - w) start = len - w;\n"
               << "    width = w;\n"
               << "  }\n"
               << "  return tj >= start && tj < start + width;\n"
               << "}\n";
    }
    std::vector<std::string> terms;
    int64_t inner = 1;
    for (size_t a = n.grid.size(); a-- > 0;) {
      const int64_t d = a < n.dilation.size() ? n.dilation[a] : 1;
      terms.push_back(fmt::format("spattn_nbr_axis((i / {0}) % {1}, (j / {0}) % {1}, {1}, {2}, {3})", ll(inner),
                                  ll(n.grid[a]), ll(n.window[a]), ll(d)));
      inner *= n.grid[a];
    }
    std::reverse(terms.begin(), terms.end());
    return "(" + join(terms, " && ") + ")";
  }

  std::string custom(const Custom& c) {
    std::vector<long long> keys;
    keys.reserve(c.pairs.size());
    for (const auto& [qi, kj] : c.pairs) keys.push_back((static_cast<long long>(qi) << 32) | kj);
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    const int id = custom_count_++;
    prelude_ << "// custom pattern " << id << ": " << keys.size() << " (query block, key block) pairs, sorted\n";
    prelude_ << (qualifiers_.find("__device__") != std::string::npos ? "__device__ " : "") << "static const long long spattn_custom_"
             << id << "[" << std::max<size_t>(1, keys.size()) << "] = {";
    for (size_t k = 0; k < keys.size(); ++k) prelude_ << (k % 8 ? " " : "\n  ") << keys[k] << "LL,";
    if (keys.empty()) prelude_ << "-1LL";
    prelude_ << "\n};\n";
    prelude_ << qualifiers_ << " bool spattn_custom_has_" << id << "(long long key) {\n"
             << "  int lo = 0, hi = " << keys.size() << ";\n"
             << "  while (lo < hi) {\n"
             << "    const int mid = (lo + hi) / 2;\n"
             << "    if (spattn_custom_" << id << "[mid] < key) lo = mid + 1; else hi = mid;\n"
             << "  }\n"
             << "  return lo < " << keys.size() << " && spattn_custom_" << id << "[lo] == key;\n"
             << "}\n";
    return fmt::format("spattn_custom_has_{}((static_cast<long long>(i / {}) << 32) | (j / {}))", id, ll(c.block),
                       ll(c.block));
  }

  std::string qualifiers_;
  std::ostringstream prelude_;
  bool axis_helper_ = false;
  int custom_count_ = 0;
};


// ---- interval form ------------------------------------------------------------------
// Many predicates allow, for each query, one or two contiguous key ranges (windows,
// causal bounds, global columns, hierarchies: every level's window contains the query,
// so their union is one range). For those the kernel compares key indices with per-row
// bounds in registers instead of evaluating the predicate per element.

constexpr const char* kBig = "1073741824";      // 2^30: beyond every token index
constexpr const char* kNegBig = "-1073741824";

struct Interval {
  std::string lo, hi;  // inclusive; empty when lo > hi
};
using IntervalSet = std::vector<Interval>;  // union; at most kMaxIntervals members

constexpr size_t kMaxIntervals = 2;

std::string imax(const std::string& a, const std::string& b) { return "max(" + a + ", " + b + ")"; }
std::string imin(const std::string& a, const std::string& b) { return "min(" + a + ", " + b + ")"; }

std::optional<IntervalSet> intersect_sets(const IntervalSet& a, const IntervalSet& b) {
  IntervalSet out;
  for (const auto& x : a)
    for (const auto& y : b) out.push_back({imax(x.lo, y.lo), imin(x.hi, y.hi)});
  if (out.size() > kMaxIntervals) return std::nullopt;
  return out;
}

class IntervalEmitter {
 public:
  // Allowed keys of query i (head h) in branch b as a union of ranges, if expressible.
  std::optional<IntervalSet> in_branch(const Pattern& p, int b) {
    auto set = node_branch(p, b);
    if (set && p.causal()) set = intersect_sets(*set, {{kNegBig, "i + (nk - nq)"}});
    return set;
  }

 private:
  std::optional<IntervalSet> allowed(const Pattern& p) {
    if (p.branch_count() != 1) return std::nullopt;
    return in_branch(p, 0);
  }

  std::optional<IntervalSet> node_branch(const Pattern& p, int b) {
    return std::visit(
        Overload{
            [&](const Dense&) -> std::optional<IntervalSet> { return IntervalSet{{kNegBig, kBig}}; },
            [&](const LocalWindow& w) -> std::optional<IntervalSet> {
              return IntervalSet{{"i - " + ll(w.left), "i + " + ll(w.right)}};
            },
            [&](const GlobalLocal& g) -> std::optional<IntervalSet> {
              const std::string gl = ll(g.global);
              // Global rows see everything; other rows see the global columns and their window.
              return IntervalSet{{fmt::format("(i < {} ? {} : {})", gl, kNegBig, kNegBig),
                                  fmt::format("(i < {} ? {} : {} - 1)", gl, kBig, gl)},
                                 {"i - " + ll(g.left), "i + " + ll(g.right)}};
            },
            [&](const Hierarchical& hr) -> std::optional<IntervalSet> {
              // Each active level's window contains i's block, so the union is one range.
              std::string lo = kBig, hi = kNegBig;
              for (const auto& l : hr.levels) {
                const int64_t s = std::max<int64_t>(1, l.stride / l.block);
                const std::string active = fmt::format("((i / {}) % {} == 0)", ll(l.block), ll(s));
                std::string llo = kNegBig, lhi = kBig;
                if (l.window != -1) {
                  const int64_t w = (l.window / l.block) / 2;
                  llo = fmt::format("(i / {0} - {1}) * {0}", ll(l.block), ll(w));
                  lhi = fmt::format("(i / {0} + {1} + 1) * {0} - 1", ll(l.block), ll(w));
                }
                lo = imin(lo, fmt::format("({} ? {} : {})", active, llo, kBig));
                hi = imax(hi, fmt::format("({} ? {} : {})", active, lhi, kNegBig));
              }
              return IntervalSet{{lo, hi}};
            },
            [&](const Union& u) -> std::optional<IntervalSet> {
              IntervalSet out;
              for (const auto& item : u.items) {
                auto set = allowed(item);
                if (!set) return std::nullopt;
                out.insert(out.end(), set->begin(), set->end());
              }
              if (out.empty() || out.size() > kMaxIntervals) return std::nullopt;
              return out;
            },
            [&](const Intersect& x) -> std::optional<IntervalSet> {
              std::optional<IntervalSet> acc = IntervalSet{{kNegBig, kBig}};
              for (const auto& item : x.items) {
                auto set = allowed(item);
                if (!set) return std::nullopt;
                acc = intersect_sets(*acc, *set);
                if (!acc) return std::nullopt;
              }
              return acc;
            },
            [&](const Branches& br) -> std::optional<IntervalSet> {
              int base = 0;
              for (const auto& item : br.items) {
                const int n = item.branch_count();
                if (b < base + n) return in_branch(item, b - base);
                base += n;
              }
              return std::nullopt;
            },
            [&](const HeadGroups& hg) -> std::optional<IntervalSet> {
              // Per-group ranges selected by h; a head outside every group allows nothing.
              IntervalSet out(kMaxIntervals, Interval{"1", "0"});
              for (auto it = hg.groups.rbegin(); it != hg.groups.rend(); ++it) {
                const Pattern& gp = *it->pattern;
                IntervalSet set{{"1", "0"}};
                if (b < gp.branch_count()) {
                  auto s = in_branch(gp, b);
                  if (!s) return std::nullopt;
                  set = *s;
                }
                const std::string cond = fmt::format("(h >= {} && h < {})", ll(it->first), ll(it->first + it->count));
                for (size_t k = 0; k < kMaxIntervals; ++k) {
                  Interval v = k < set.size() ? set[k] : Interval{"1", "0"};
                v = {in_group(v.lo, it->first, it->count), in_group(v.hi, it->first, it->count)};
                  out[k] = {fmt::format("({} ? {} : {})", cond, v.lo, out[k].lo),
                            fmt::format("({} ? {} : {})", cond, v.hi, out[k].hi)};
                }
              }
              return out;
            },
            [&](const auto&) -> std::optional<IntervalSet> { return std::nullopt; },
        },
        p.node());
  }
};

}  // namespace

std::string render_predicate(const std::vector<LayoutPart>& parts, const std::string& name,
                             const std::string& qualifiers) {
  Emitter em(qualifiers);
  std::vector<std::string> cases;
  for (size_t k = 0; k < parts.size(); ++k) {
    const LayoutPart& part = parts[k];
    std::string e = em.in_branch(part.pattern, part.branch);
    for (const Pattern& ex : part.exclude) e += " && !" + em.allowed(ex);
    cases.push_back(fmt::format("    case {}: return {};\n", k, e));
  }
  std::ostringstream out;
  out << em.prelude();
  out << qualifiers << " bool " << name
      << "(int part, int h, int i, int j, int nq, int nk, int heads) {\n";
  out << "  (void)h; (void)i; (void)j; (void)nq; (void)nk; (void)heads;\n";
  out << "  switch (part) {\n";
  for (const auto& c : cases) out << c;
  out << "    default: return false;\n  }\n}\n";
  return out.str();
}

std::optional<std::string> render_row_bounds(const std::vector<LayoutPart>& parts, const std::string& name,
                                             const std::string& qualifiers) {
  IntervalEmitter em;
  std::vector<IntervalSet> sets;
  for (const LayoutPart& part : parts) {
    if (!part.exclude.empty()) return std::nullopt;
    auto set = em.in_branch(part.pattern, part.branch);
    if (!set || set->empty()) return std::nullopt;
    set->resize(kMaxIntervals, Interval{"1", "0"});
    sets.push_back(*set);
  }
  std::ostringstream out;
  out << qualifiers << " void " << name
      << "(int part, int h, int i, int nq, int nk, int heads, int& lo0, int& hi0, int& lo1, int& hi1) {\n";
  out << "  (void)h; (void)i; (void)nq; (void)nk; (void)heads;\n";
  out << "  switch (part) {\n";
  for (size_t k = 0; k < sets.size(); ++k) {
    out << "    case " << k << ":\n";
    out << "      lo0 = " << sets[k][0].lo << ";\n      hi0 = " << sets[k][0].hi << ";\n";
    out << "      lo1 = " << sets[k][1].lo << ";\n      hi1 = " << sets[k][1].hi << ";\n";
    out << "      return;\n";
  }
  out << "    default:\n      lo0 = lo1 = 1;\n      hi0 = hi1 = 0;\n  }\n}\n";
  return out.str();
}

}  // namespace spattn::codegen
