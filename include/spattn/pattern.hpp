// Attention patterns: which keys each query attends to, per head.
//
// A Pattern is an immutable value: a tree whose leaves are the pattern kinds of
// DESIGN.md §3 and whose inner nodes are compositions. It is parsed from and printed
// to JSON (the one form used by the CLI, manifests and the C ABI) and answers the
// token-level predicate allowed(h, i, j) on the host. Block tables and layouts are
// derived from it by compile_layout() (spattn/layout.hpp).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace spattn {

class Pattern;

// --- leaves -------------------------------------------------------------------------

// Every key (with causal: every key j <= i + (Nk - Nq)).
struct Dense {};

// i - left <= j <= i + right, on absolute token indices (also when Nq != Nk; only
// causal is bottom-right aligned). JSON "window": w means left = right = w / 2.
struct LocalWindow {
  int64_t left = 0;
  int64_t right = 0;
};

// Inside the window (i - left <= j <= i + right), or j < global, or i < global.
struct GlobalLocal {
  int64_t global = 0;
  int64_t left = 0;
  int64_t right = 0;
};

enum class StrideMode { kRelative, kColumns };

// kRelative: (i - j) % stride == 0. kColumns: j % stride == 0.
struct Strided {
  int64_t stride = 1;
  StrideMode mode = StrideMode::kRelative;
};

// Block level (I = i / block, J = j / block): J == I, or for some rate r
// |I - J| % r == 0 and |I - J| <= r * reach.
struct DilatedSparse {
  int64_t block = 64;
  std::vector<int64_t> rates;
  int64_t reach = 1;
};

// Some level with block b and s = max(1, stride / b): (i / b) % s == 0 and
// (window == -1 or |i / b - j / b| <= (window / b) / 2).
struct HierarchicalLevel {
  int64_t stride = 1;
  int64_t window = -1;
  int64_t block = 1;
};
struct Hierarchical {
  std::vector<HierarchicalLevel> levels;
};

// Tokens on a 1-D/2-D/3-D row-major grid (last axis fastest); NATTEN semantics per
// axis (DESIGN.md §3): i and j share x % dilation, and inside that residue class the
// window of `window` positions starts at clamp(t_i - window / 2, 0, L - window).
// Needs Nq == Nk == product of the grid. `dilation` defaults to all ones.
struct Neighborhood {
  std::vector<int64_t> grid;
  std::vector<int64_t> window;
  std::vector<int64_t> dilation;
};

// Block level, chosen on the GPU at run time from block scores (top_k or keep_ratio,
// exactly one of them set). Its tables are not built on the host.
struct Adaptive {
  int64_t block = 128;
  std::optional<int64_t> top_k;
  std::optional<double> keep_ratio;
};

// An explicit list of (query block, key block) pairs; kept sorted and deduplicated.
struct Custom {
  int64_t block = 128;
  std::vector<std::pair<int64_t, int64_t>> pairs;
};

// Block level: J == I or J == I xor 2^k for some k >= 0.
struct Butterfly {
  int64_t block = 128;
};

// torchscale LongNet: one branch per (segment w, rate r), merged by LSE (DESIGN.md §3).
// In branch (w, r) head h is in group o = h / ceil(H / r); query i takes part iff
// (i % w) % r == o and then attends the keys j of its segment (j / w == i / w) with
// (j % w) % r == o (and j <= i when causal). Needs Nq == Nk.
struct LongNet {
  std::vector<int64_t> segments;
  std::vector<int64_t> rates;
};

// --- compositions -------------------------------------------------------------------

// Union and intersection of single-branch patterns (multi-branch patterns -- LongNet
// with several segments, Branches -- cannot be members: combine them with Branches).
struct Union {
  std::vector<Pattern> items;
};
struct Intersect {
  std::vector<Pattern> items;
};
// Each branch has its own softmax; outputs are merged with LSE weights over the
// branches in which the query takes part.
struct Branches {
  std::vector<Pattern> items;
};
struct HeadGroup {
  int64_t first = 0;
  int64_t count = 0;
  std::shared_ptr<const Pattern> pattern;  // never null
};
// Head h uses the pattern of the group with first <= h < first + count, evaluated as a
// problem of `count` heads in which h is head h - first. The groups must cover every
// head exactly once (validate()). Its branch b is branch b of the group's pattern.
struct HeadGroups {
  std::vector<HeadGroup> groups;
};

using PatternNode = std::variant<Dense, LocalWindow, GlobalLocal, Strided, DilatedSparse,
                                 Hierarchical, Neighborhood, Adaptive, Custom, Butterfly, LongNet,
                                 Union, Intersect, Branches, HeadGroups>;

// The problem a pattern is evaluated on. Causal is bottom-right aligned when Nq != Nk.
struct Shape {
  int64_t nq = 0;     // query tokens
  int64_t nk = 0;     // key tokens
  int64_t heads = 1;  // query heads
};

class Pattern {
 public:
  Pattern();  // dense, non-causal
  Pattern(PatternNode node, bool causal = false);

  // Parses inline JSON, or a preset name (see presets()). Throws spattn::Error
  // (kInvalidArgument) naming the bad field (as a JSON path starting at `path`, e.g.
  // "pattern.rates[1]") and the allowed range. Checks everything that does not depend
  // on the problem shape; validate() checks the rest.
  static Pattern parse(std::string_view json_or_preset, std::string_view path = "pattern");
  // Canonical JSON (stable key order; the form used in cache keys and manifests).
  std::string to_json() const;

  const PatternNode& node() const { return *node_; }
  bool causal() const { return causal_; }
  Pattern with_causal(bool causal) const { return Pattern(*node_, causal); }

  // Short kind name: "dense", "local_window", ..., "union", "branches", "heads".
  std::string_view kind() const;

  // Checks the pattern against a problem shape (grid size == Nk == Nq, head groups
  // cover [0, heads), custom pairs in range...) and every field range (for patterns
  // built in C++ rather than parsed). Throws kInvalidArgument.
  void validate(const Shape& shape) const;

  // The token-level predicate of DESIGN.md §3: does query i of head h attend key j?
  // For Branches and LongNet this is the union over branches (see branch_count()).
  // Indices outside the shape give false. Adaptive patterns depend on the data and
  // throw kUnsupported. Does not validate (call validate() once first).
  bool allowed(const Shape& shape, int64_t h, int64_t i, int64_t j) const;

  // Number of independent softmax branches (LongNet: one per segment/rate pair;
  // Branches: the sum over its items; everything else 1).
  int branch_count() const;
  // Does query i of head h take part in branch b, and may it attend key j there?
  // Attention over a pattern is the LSE merge of one softmax per branch, i.e. one
  // softmax over the multiset of keys in which key j counts once per branch allowing it.
  bool allowed_in_branch(const Shape& shape, int b, int64_t h, int64_t i, int64_t j) const;
  // Does query i of head h take part in branch b? Only LongNet leaves rows out; every
  // other single-branch pattern has every query take part in its branch 0.
  bool takes_part(const Shape& shape, int b, int64_t h, int64_t i) const;

  bool operator==(const Pattern& other) const { return to_json() == other.to_json(); }

 private:
  std::shared_ptr<const PatternNode> node_;
  bool causal_ = false;
};

// Named presets (DESIGN.md §3): hierarchical standard, fine_grained, long_range,
// ultra_sparse; block-sparse local_window, dilated_sparse, global_local; and the
// conveniences dense and causal. In JSON a preset is {"preset": "name"} (optionally
// with "causal": true); it expands to an ordinary pattern value.
struct Preset {
  std::string name;
  std::string description;
  Pattern pattern;
};
const std::vector<Preset>& presets();

}  // namespace spattn
