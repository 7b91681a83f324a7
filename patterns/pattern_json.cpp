// Pattern specs as JSON (DESIGN.md §8): parsing with field-by-field errors, the
// canonical printed form, validation against a problem shape, and the presets.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include <fmt/ranges.h>

#include <nlohmann/json.hpp>
#include <spattn/pattern.hpp>

#include "common/check.hpp"
#include "common/json.hpp"
#include "common/text.hpp"
#include "patterns/limits.hpp"

namespace spattn {

namespace {

using nlohmann::json;
using ordered_json = nlohmann::ordered_json;

using limits::kMaxValue;

constexpr const char* kKnownTypes =
    "dense, local_window, global_local, strided, dilated_sparse, hierarchical, neighborhood, "
    "adaptive, custom, butterfly, longnet; or a composition {\"union\": [...]}, "
    "{\"intersect\": [...]}, {\"branches\": [...]}, {\"heads\": [...]}, or {\"preset\": name}";

std::string index_path(const std::string& path, size_t k) { return fmt::format("{}[{}]", path, k); }

std::string preset_names() {
  std::string names;
  for (const Preset& p : presets()) names += (names.empty() ? "" : ", ") + p.name;
  return names;
}

// --- range checks shared by parse() and validate() ----------------------------------

void require_min(int64_t v, int64_t lo, const std::string& path) {
  SPATTN_REQUIRE(v >= lo, "{}: must be >= {} (got {})", path, lo, v);
  SPATTN_REQUIRE(v <= kMaxValue, "{}: must be <= 2^40 (got {})", path, v);
}

void require_count(size_t n, size_t max, const std::string& path, const char* what) {
  SPATTN_REQUIRE(n <= max, "{}: at most {} {} (got {})", path, max, what, n);
}

// The items of a composition. Their own fields are checked where they are built (parse)
// or by check_tree (validate): only what the composition adds is checked here.
void check_items(const std::vector<Pattern>& items, const std::string& path, std::string_view kind,
                 bool single_branch) {
  SPATTN_REQUIRE(!items.empty(), "{}: must list at least one pattern", path);
  for (size_t k = 0; k < items.size(); ++k) {
    const std::string ip = index_path(path, k);
    SPATTN_REQUIRE(!single_branch || items[k].branch_count() == 1,
                   "{}: a {} member must have a single softmax branch, but this {} pattern has {}; "
                   "combine multi-branch patterns (longnet with several segments, branches) with "
                   "\"branches\" instead",
                   ip, kind, items[k].kind(), items[k].branch_count());
  }
}

// Checks the shape-independent constraints of one node, not those of the patterns it
// contains; `path` names the pattern in messages.
void check_node(const Pattern& pattern, const std::string& path) {
  const PatternNode& node = pattern.node();
  if (const auto* p = std::get_if<LocalWindow>(&node)) {
    require_min(p->left, 0, path + ".left");
    require_min(p->right, 0, path + ".right");
  } else if (const auto* p = std::get_if<GlobalLocal>(&node)) {
    require_min(p->global, 0, path + ".global");
    require_min(p->left, 0, path + ".left");
    require_min(p->right, 0, path + ".right");
  } else if (const auto* p = std::get_if<Strided>(&node)) {
    require_min(p->stride, 1, path + ".stride");
  } else if (const auto* p = std::get_if<DilatedSparse>(&node)) {
    require_min(p->block, 1, path + ".block");
    SPATTN_REQUIRE(!p->rates.empty(), "{}.rates: must list at least one rate", path);
    require_count(p->rates.size(), limits::kMaxRates, path + ".rates", "rates");
    for (size_t k = 0; k < p->rates.size(); ++k) require_min(p->rates[k], 1, index_path(path + ".rates", k));
    SPATTN_REQUIRE(p->reach >= 0 && p->reach <= limits::kMaxReach, "{}.reach: must be in [0, {}] (got {})", path,
                   limits::kMaxReach, p->reach);
  } else if (const auto* p = std::get_if<Hierarchical>(&node)) {
    SPATTN_REQUIRE(!p->levels.empty(), "{}.levels: must list at least one level", path);
    require_count(p->levels.size(), limits::kMaxLevels, path + ".levels", "levels");
    for (size_t k = 0; k < p->levels.size(); ++k) {
      const std::string lp = index_path(path + ".levels", k);
      const HierarchicalLevel& l = p->levels[k];
      require_min(l.stride, 1, lp + ".stride");
      SPATTN_REQUIRE(l.window >= -1, "{}.window: must be -1 (global) or >= 0 (got {})", lp, l.window);
      SPATTN_REQUIRE(l.window <= kMaxValue, "{}.window: must be <= 2^40 (got {})", lp, l.window);
      require_min(l.block, 1, lp + ".block");
    }
  } else if (const auto* p = std::get_if<Neighborhood>(&node)) {
    SPATTN_REQUIRE(p->grid.size() >= 1 && p->grid.size() <= 3,
                   "{}.grid: must have 1, 2 or 3 dimensions (got {})", path, p->grid.size());
    for (size_t k = 0; k < p->grid.size(); ++k) require_min(p->grid[k], 1, index_path(path + ".grid", k));
    // Each axis is at most 2^40: the running product is compared before it can overflow.
    int64_t cells = 1;
    for (int64_t g : p->grid) {
      SPATTN_REQUIRE(cells <= limits::kMaxTokens / g,
                     "{}.grid: the grid has more than 2^30 cells (at most 2^30 tokens); got {}", path,
                     fmt::join(p->grid, " x "));
      cells *= g;
    }
    SPATTN_REQUIRE(p->window.size() == p->grid.size(),
                   "{}.window: {} values but grid has {} dimensions; they must pair up", path,
                   p->window.size(), p->grid.size());
    for (size_t k = 0; k < p->window.size(); ++k) require_min(p->window[k], 1, index_path(path + ".window", k));
    SPATTN_REQUIRE(p->dilation.empty() || p->dilation.size() == p->grid.size(),
                   "{}.dilation: {} values but grid has {} dimensions; they must pair up", path,
                   p->dilation.size(), p->grid.size());
    for (size_t k = 0; k < p->dilation.size(); ++k)
      require_min(p->dilation[k], 1, index_path(path + ".dilation", k));
  } else if (const auto* p = std::get_if<Adaptive>(&node)) {
    require_min(p->block, 1, path + ".block");
    SPATTN_REQUIRE(p->top_k.has_value() != p->keep_ratio.has_value(),
                   "{}: an adaptive pattern needs exactly one of top_k (>= 1) and keep_ratio (in (0, 1])",
                   path);
    if (p->top_k) require_min(*p->top_k, 1, path + ".top_k");
    if (p->keep_ratio) {
      SPATTN_REQUIRE(*p->keep_ratio > 0 && *p->keep_ratio <= 1, "{}.keep_ratio: must be in (0, 1] (got {})",
                     path, *p->keep_ratio);
    }
  } else if (const auto* p = std::get_if<Custom>(&node)) {
    require_min(p->block, 1, path + ".block");
    require_count(p->pairs.size(), limits::kMaxPairs, path + ".pairs", "pairs");
    for (size_t k = 0; k < p->pairs.size(); ++k) {
      const auto& [qb, kb] = p->pairs[k];
      SPATTN_REQUIRE(qb >= 0 && kb >= 0 && qb <= kMaxValue && kb <= kMaxValue,
                     "{}: block indices must be in [0, 2^40] (got [{}, {}])", index_path(path + ".pairs", k),
                     qb, kb);
    }
  } else if (const auto* p = std::get_if<Butterfly>(&node)) {
    require_min(p->block, 1, path + ".block");
  } else if (const auto* p = std::get_if<LongNet>(&node)) {
    SPATTN_REQUIRE(!p->segments.empty(), "{}.segments: must list at least one segment length", path);
    SPATTN_REQUIRE(p->segments.size() == p->rates.size(),
                   "{}.segments: {} values but rates has {}; they must pair up", path, p->segments.size(),
                   p->rates.size());
    require_count(p->segments.size(), limits::kMaxSegments, path + ".segments", "segments");
    for (size_t k = 0; k < p->segments.size(); ++k) {
      require_min(p->segments[k], 1, index_path(path + ".segments", k));
      require_min(p->rates[k], 1, index_path(path + ".rates", k));
    }
  } else if (const auto* p = std::get_if<Union>(&node)) {
    check_items(p->items, path + ".union", "union", true);
  } else if (const auto* p = std::get_if<Intersect>(&node)) {
    check_items(p->items, path + ".intersect", "intersect", true);
  } else if (const auto* p = std::get_if<Branches>(&node)) {
    check_items(p->items, path + ".branches", "branches", false);
  } else if (const auto* p = std::get_if<HeadGroups>(&node)) {
    SPATTN_REQUIRE(!p->groups.empty(), "{}.heads: must list at least one head group", path);
    require_count(p->groups.size(), limits::kMaxHeadGroups, path + ".heads", "head groups");
    for (size_t k = 0; k < p->groups.size(); ++k) {
      const std::string gp = index_path(path + ".heads", k);
      const HeadGroup& g = p->groups[k];
      require_min(g.first, 0, gp + ".first");
      require_min(g.count, 1, gp + ".count");
      SPATTN_REQUIRE(g.pattern != nullptr, "{}.pattern: missing", gp);
    }
  }
  const int branches = pattern.branch_count();
  SPATTN_REQUIRE(branches <= limits::kMaxBranches,
                 "{}: {} softmax branches (longnet segments and branches items); at most {}", path, branches,
                 limits::kMaxBranches);
}

// The children of a node, with the path of each (for walks over the tree).
template <class Fn>
void for_each_child(const Pattern& pattern, const std::string& path, Fn&& fn) {
  const PatternNode& node = pattern.node();
  auto items = [&](const std::vector<Pattern>& v, const char* key) {
    for (size_t k = 0; k < v.size(); ++k) fn(v[k], index_path(path + key, k));
  };
  if (const auto* p = std::get_if<Union>(&node)) items(p->items, ".union");
  if (const auto* p = std::get_if<Intersect>(&node)) items(p->items, ".intersect");
  if (const auto* p = std::get_if<Branches>(&node)) items(p->items, ".branches");
  if (const auto* p = std::get_if<HeadGroups>(&node)) {
    for (size_t k = 0; k < p->groups.size(); ++k) {
      if (p->groups[k].pattern) fn(*p->groups[k].pattern, index_path(path + ".heads", k) + ".pattern");
    }
  }
}

// Depth and size of a pattern built in C++ (parsed ones are bounded as they are read),
// without recursion: the walks after it may then recurse.
void check_structure(const Pattern& pattern, const std::string& path) {
  std::vector<std::pair<const Pattern*, int>> todo{{&pattern, 1}};
  std::vector<std::string> paths{path};
  int64_t terms = 0;
  while (!todo.empty()) {
    const Pattern* p = todo.back().first;
    const int depth = todo.back().second;
    const std::string here = std::move(paths.back());
    todo.pop_back();
    paths.pop_back();
    SPATTN_REQUIRE(++terms <= limits::kMaxTerms, "{}: more than {} pattern nodes (leaves and compositions)", path,
                   limits::kMaxTerms);
    SPATTN_REQUIRE(depth <= limits::kMaxDepth, "{}: compositions nested deeper than {} levels", here,
                   limits::kMaxDepth);
    for_each_child(*p, here, [&](const Pattern& child, std::string child_path) {
      todo.emplace_back(&child, depth + 1);
      paths.push_back(std::move(child_path));
    });
  }
}

// check_node over the whole tree (depth-bounded by check_structure).
void check_tree(const Pattern& pattern, const std::string& path) {
  for_each_child(pattern, path, [](const Pattern& child, const std::string& child_path) { check_tree(child, child_path); });
  check_node(pattern, path);
}

void check_shape(const Pattern& pattern, const Shape& shape, const std::string& path) {
  const PatternNode& node = pattern.node();
  if (const auto* p = std::get_if<Neighborhood>(&node)) {
    int64_t cells = 1;
    for (int64_t g : p->grid) cells *= g;  // at most 2^30 (check_node)
    SPATTN_REQUIRE(cells == shape.nq && cells == shape.nk,
                   "{}.grid: dimensions multiply to {} but the problem has Nq = {} and Nk = {}; a "
                   "neighborhood pattern needs Nq == Nk == the product of the grid",
                   path, cells, shape.nq, shape.nk);
  } else if (std::holds_alternative<LongNet>(node)) {
    SPATTN_REQUIRE(shape.nq == shape.nk,
                   "{}: longnet is defined for self-attention only and needs Nq == Nk (got Nq = {}, "
                   "Nk = {})",
                   path, shape.nq, shape.nk);
  } else if (const auto* p = std::get_if<Custom>(&node)) {
    const int64_t qblocks = (shape.nq + p->block - 1) / p->block;
    const int64_t kblocks = (shape.nk + p->block - 1) / p->block;
    for (size_t k = 0; k < p->pairs.size(); ++k) {
      const auto& [qb, kb] = p->pairs[k];
      SPATTN_REQUIRE(qb < qblocks, "{}: query block {} is out of range [0, {}) for Nq = {} at block {}",
                     index_path(path + ".pairs", k), qb, qblocks, shape.nq, p->block);
      SPATTN_REQUIRE(kb < kblocks, "{}: key block {} is out of range [0, {}) for Nk = {} at block {}",
                     index_path(path + ".pairs", k), kb, kblocks, shape.nk, p->block);
    }
  } else if (const auto* p = std::get_if<Union>(&node)) {
    for (size_t k = 0; k < p->items.size(); ++k) check_shape(p->items[k], shape, index_path(path + ".union", k));
  } else if (const auto* p = std::get_if<Intersect>(&node)) {
    for (size_t k = 0; k < p->items.size(); ++k)
      check_shape(p->items[k], shape, index_path(path + ".intersect", k));
  } else if (const auto* p = std::get_if<Branches>(&node)) {
    for (size_t k = 0; k < p->items.size(); ++k)
      check_shape(p->items[k], shape, index_path(path + ".branches", k));
  } else if (const auto* p = std::get_if<HeadGroups>(&node)) {
    // Every head in exactly one group.
    std::vector<size_t> order(p->groups.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return p->groups[a].first < p->groups[b].first; });
    int64_t next = 0;
    size_t prev = 0;
    for (size_t n = 0; n < order.size(); ++n) {
      const size_t k = order[n];
      const HeadGroup& g = p->groups[k];
      const std::string gp = index_path(path + ".heads", k);
      SPATTN_REQUIRE(g.first + g.count <= shape.heads, "{}: heads {}..{} are past the last head ({} heads)", gp,
                     g.first, g.first + g.count - 1, shape.heads);
      SPATTN_REQUIRE(g.first >= next, "{}: heads {}..{} overlap {}", gp, g.first, g.first + g.count - 1,
                     index_path(path + ".heads", prev));
      SPATTN_REQUIRE(g.first == next, "{}: heads {}..{} are in no group", path + ".heads", next, g.first - 1);
      next = g.first + g.count;
      prev = k;
      check_shape(*g.pattern, Shape{shape.nq, shape.nk, g.count}, gp + ".pattern");
    }
    SPATTN_REQUIRE(next == shape.heads, "{}: heads {}..{} are in no group", path + ".heads", next,
                   shape.heads - 1);
  }
}

// --- JSON reading --------------------------------------------------------------------

std::string describe(const json& v) { return detail::describe_json(v); }

// Reads one JSON object, remembering which keys were consumed so that unknown ones
// can be reported.
class ObjectReader {
 public:
  ObjectReader(const json& obj, std::string path, std::string kind)
      : obj_(obj), path_(std::move(path)), kind_(std::move(kind)) {}

  const std::string& path() const { return path_; }
  std::string field(const char* key) const { return path_ + "." + key; }
  bool has(const char* key) const { return obj_.contains(key); }

  const json* get(const char* key) {
    allowed_.push_back(key);
    auto it = obj_.find(key);
    return it == obj_.end() ? nullptr : &*it;
  }
  const json& require(const char* key) {
    const json* v = get(key);
    SPATTN_REQUIRE(v != nullptr, "{}: missing (required for a {} pattern)", field(key), kind_);
    return *v;
  }

  int64_t integer(const char* key) { return as_integer(require(key), field(key)); }
  int64_t integer_or(const char* key, int64_t fallback) {
    const json* v = get(key);
    return v ? as_integer(*v, field(key)) : fallback;
  }
  std::vector<int64_t> integers(const char* key, size_t max_count) {
    return as_integers(require(key), field(key), max_count);
  }
  std::vector<int64_t> integers_or_empty(const char* key, size_t max_count) {
    const json* v = get(key);
    return v ? as_integers(*v, field(key), max_count) : std::vector<int64_t>{};
  }
  bool causal() {
    const json* v = get("causal");
    if (!v) return false;
    SPATTN_REQUIRE(v->is_boolean(), "{}: must be true or false (got {})", field("causal"), describe(*v));
    return v->get<bool>();
  }

  // Throws for any key that no getter asked for.
  void finish() const {
    for (auto it = obj_.begin(); it != obj_.end(); ++it) {
      if (std::find(allowed_.begin(), allowed_.end(), it.key()) == allowed_.end()) {
        std::string known;
        for (const std::string& k : allowed_) known += (known.empty() ? "" : ", ") + k;
        SPATTN_FAIL(ErrorCode::kInvalidArgument, "{}.{}: unknown field for a {} pattern (allowed: {})", path_,
                    detail::printable(it.key(), 60), kind_, known);
      }
    }
  }

  static int64_t as_integer(const json& v, const std::string& path) {
    // Integers beyond 2^64 reach us as floating point.
    SPATTN_REQUIRE(!(v.is_number_float() && std::abs(v.get<double>()) >= 9.2e18),
                   "{}: must be an integer of magnitude at most 2^40 (got {})", path, describe(v));
    SPATTN_REQUIRE(v.is_number_integer(), "{}: must be an integer (got {})", path, describe(v));
    if (v.is_number_unsigned()) {
      SPATTN_REQUIRE(v.get<uint64_t>() <= static_cast<uint64_t>(kMaxValue), "{}: must be <= 2^40 (got {})", path,
                     describe(v));
    }
    return v.get<int64_t>();
  }
  static std::vector<int64_t> as_integers(const json& v, const std::string& path, size_t max_count) {
    SPATTN_REQUIRE(v.is_array(), "{}: must be an array of integers (got {})", path, describe(v));
    require_count(v.size(), max_count, path, "values");
    std::vector<int64_t> out;
    for (size_t k = 0; k < v.size(); ++k) out.push_back(as_integer(v[k], index_path(path, k)));
    return out;
  }

 private:
  const json& obj_;
  std::string path_;
  std::string kind_;
  std::vector<std::string> allowed_;
};

// What one parse has read so far: the pattern nodes (bounded by limits::kMaxTerms).
struct ParseContext {
  int64_t terms = 0;
};

Pattern from_json(const json& j, const std::string& path, int depth, ParseContext& ctx);

std::vector<Pattern> read_items(const json& v, const std::string& path, int depth, ParseContext& ctx) {
  SPATTN_REQUIRE(v.is_array(), "{}: must be an array of patterns (got {})", path, describe(v));
  std::vector<Pattern> items;
  for (size_t k = 0; k < v.size(); ++k) items.push_back(from_json(v[k], index_path(path, k), depth + 1, ctx));
  return items;
}

// "window": w is shorthand for left = right = w / 2; or give left and right.
void read_window(ObjectReader& r, int64_t& left, int64_t& right, bool required) {
  const json* w = r.get("window");
  const json* l = r.get("left");
  const json* rt = r.get("right");
  if (w) {
    SPATTN_REQUIRE(!l && !rt, "{}: give either window or left/right, not both", r.field("window"));
    const int64_t win = ObjectReader::as_integer(*w, r.field("window"));
    require_min(win, 0, r.field("window"));
    left = right = win / 2;
    return;
  }
  SPATTN_REQUIRE(!required || l || rt, "{}: missing (a local_window pattern needs window, or left and right)",
                 r.field("window"));
  left = l ? ObjectReader::as_integer(*l, r.field("left")) : 0;
  right = rt ? ObjectReader::as_integer(*rt, r.field("right")) : 0;
}

Pattern from_preset(const std::string& name, const std::string& path) {
  for (const Preset& p : presets()) {
    if (p.name == name) return p.pattern;
  }
  SPATTN_FAIL(ErrorCode::kInvalidArgument, "{}: unknown preset '{}' (known: {})", path, detail::printable(name, 60),
              preset_names());
}

Pattern from_json(const json& j, const std::string& path, int depth, ParseContext& ctx) {
  SPATTN_REQUIRE(j.is_object(),
                 "{}: a pattern must be a JSON object with \"type\" (or a composition or preset), got {}", path,
                 describe(j));
  SPATTN_REQUIRE(depth <= limits::kMaxDepth, "{}: compositions nested deeper than {} levels", path,
                 limits::kMaxDepth);
  SPATTN_REQUIRE(++ctx.terms <= limits::kMaxTerms, "{}: more than {} pattern nodes (leaves and compositions)", path,
                 limits::kMaxTerms);
  static const char* kCompositions[] = {"union", "intersect", "branches", "heads", "preset"};
  std::string form;
  for (const char* key : kCompositions) {
    if (j.contains(key)) {
      SPATTN_REQUIRE(form.empty(), "{}: has both \"{}\" and \"{}\"; a pattern has one form", path, form, key);
      form = key;
    }
  }
  if (!form.empty()) {
    SPATTN_REQUIRE(!j.contains("type"), "{}: has both \"type\" and \"{}\"; a pattern has one form", path, form);
    ObjectReader r(j, path, form);
    const json& v = r.require(form.c_str());
    const bool causal = r.causal();
    r.finish();
    const std::string fp = r.field(form.c_str());
    if (form == "preset") {
      SPATTN_REQUIRE(v.is_string(), "{}: must be a preset name (got {})", fp, describe(v));
      const Pattern p = from_preset(v.get<std::string>(), fp);
      return causal ? p.with_causal(true) : p;
    }
    auto checked = [&](Pattern p) {
      check_node(p, path);
      return p;
    };
    if (form == "union") return checked(Pattern(Union{read_items(v, fp, depth, ctx)}, causal));
    if (form == "intersect") return checked(Pattern(Intersect{read_items(v, fp, depth, ctx)}, causal));
    if (form == "branches") return checked(Pattern(Branches{read_items(v, fp, depth, ctx)}, causal));
    SPATTN_REQUIRE(v.is_array(), "{}: must be an array of head groups (got {})", fp, describe(v));
    require_count(v.size(), limits::kMaxHeadGroups, fp, "head groups");
    HeadGroups groups;
    for (size_t k = 0; k < v.size(); ++k) {
      const std::string gp = index_path(fp, k);
      SPATTN_REQUIRE(v[k].is_object(), "{}: a head group is {{\"first\": f, \"count\": n, \"pattern\": P}} (got {})",
                     gp, describe(v[k]));
      ObjectReader g(v[k], gp, "head group");
      HeadGroup group;
      group.first = g.integer("first");
      group.count = g.integer("count");
      group.pattern =
          std::make_shared<const Pattern>(from_json(g.require("pattern"), g.field("pattern"), depth + 1, ctx));
      g.finish();
      groups.groups.push_back(std::move(group));
    }
    return checked(Pattern(std::move(groups), causal));
  }

  SPATTN_REQUIRE(j.contains("type"), "{}.type: missing; known types: {}", path, kKnownTypes);
  const json& tv = j["type"];
  SPATTN_REQUIRE(tv.is_string(), "{}.type: must be a string (got {})", path, describe(tv));
  const std::string type = tv.get<std::string>();
  ObjectReader r(j, path, type);
  r.get("type");
  PatternNode node;
  if (type == "dense") {
    node = Dense{};
  } else if (type == "local_window") {
    LocalWindow p;
    read_window(r, p.left, p.right, true);
    node = p;
  } else if (type == "global_local") {
    GlobalLocal p;
    p.global = r.integer("global");
    read_window(r, p.left, p.right, false);
    node = p;
  } else if (type == "strided") {
    Strided p;
    p.stride = r.integer("stride");
    if (const json* m = r.get("mode")) {
      SPATTN_REQUIRE(m->is_string() && (*m == "relative" || *m == "columns"),
                     "{}: must be \"relative\" or \"columns\" (got {})", r.field("mode"), describe(*m));
      p.mode = *m == "relative" ? StrideMode::kRelative : StrideMode::kColumns;
    }
    node = p;
  } else if (type == "dilated_sparse") {
    DilatedSparse p;
    p.block = r.integer("block");
    p.rates = r.integers("rates", limits::kMaxRates);
    p.reach = r.integer_or("reach", 1);
    node = p;
  } else if (type == "hierarchical") {
    Hierarchical p;
    const json& levels = r.require("levels");
    const std::string lp = r.field("levels");
    SPATTN_REQUIRE(levels.is_array(), "{}: must be an array of levels (got {})", lp, describe(levels));
    require_count(levels.size(), limits::kMaxLevels, lp, "levels");
    for (size_t k = 0; k < levels.size(); ++k) {
      const std::string ip = index_path(lp, k);
      SPATTN_REQUIRE(levels[k].is_object(), "{}: a level is {{\"stride\": s, \"window\": w, \"block\": b}} (got {})",
                     ip, describe(levels[k]));
      ObjectReader lr(levels[k], ip, "hierarchical level");
      HierarchicalLevel l;
      l.stride = lr.integer("stride");
      l.window = lr.integer("window");
      l.block = lr.integer("block");
      lr.finish();
      p.levels.push_back(l);
    }
    node = p;
  } else if (type == "neighborhood") {
    Neighborhood p;
    p.grid = r.integers("grid", 16);  // check_node says how many dimensions
    p.window = r.integers("window", 16);
    p.dilation = r.integers_or_empty("dilation", 16);
    node = p;
  } else if (type == "adaptive") {
    Adaptive p;
    p.block = r.integer("block");
    if (const json* k = r.get("top_k")) p.top_k = ObjectReader::as_integer(*k, r.field("top_k"));
    if (const json* k = r.get("keep_ratio")) {
      SPATTN_REQUIRE(k->is_number(), "{}: must be a number (got {})", r.field("keep_ratio"), describe(*k));
      p.keep_ratio = k->get<double>();
    }
    node = p;
  } else if (type == "custom") {
    Custom p;
    p.block = r.integer("block");
    const json& pairs = r.require("pairs");
    const std::string pp = r.field("pairs");
    SPATTN_REQUIRE(pairs.is_array(), "{}: must be an array of [query block, key block] pairs (got {})", pp,
                   describe(pairs));
    require_count(pairs.size(), limits::kMaxPairs, pp, "pairs");
    for (size_t k = 0; k < pairs.size(); ++k) {
      const std::string ip = index_path(pp, k);
      SPATTN_REQUIRE(pairs[k].is_array() && pairs[k].size() == 2,
                     "{}: must be a [query block, key block] pair (got {})", ip, describe(pairs[k]));
      p.pairs.emplace_back(ObjectReader::as_integer(pairs[k][0], index_path(ip, 0)),
                           ObjectReader::as_integer(pairs[k][1], index_path(ip, 1)));
    }
    node = p;
  } else if (type == "butterfly") {
    node = Butterfly{r.integer("block")};
  } else if (type == "longnet") {
    LongNet p;
    p.segments = r.integers("segments", limits::kMaxSegments);
    p.rates = r.integers("rates", limits::kMaxSegments);
    node = p;
  } else {
    SPATTN_FAIL(ErrorCode::kInvalidArgument, "{}.type: unknown pattern type '{}' (known: {})", path,
                detail::printable(type, 60), kKnownTypes);
  }
  const bool causal = r.causal();
  r.finish();
  Pattern pattern(std::move(node), causal);
  check_node(pattern, path);
  return pattern;
}

// --- JSON printing -------------------------------------------------------------------

ordered_json to_ordered(const Pattern& pattern) {
  ordered_json j;
  const PatternNode& node = pattern.node();
  auto items = [](const std::vector<Pattern>& v) {
    ordered_json a = ordered_json::array();
    for (const Pattern& p : v) a.push_back(to_ordered(p));
    return a;
  };
  if (const auto* p = std::get_if<Union>(&node)) {
    j["union"] = items(p->items);
  } else if (const auto* p = std::get_if<Intersect>(&node)) {
    j["intersect"] = items(p->items);
  } else if (const auto* p = std::get_if<Branches>(&node)) {
    j["branches"] = items(p->items);
  } else if (const auto* p = std::get_if<HeadGroups>(&node)) {
    ordered_json a = ordered_json::array();
    for (const HeadGroup& g : p->groups) {
      ordered_json e;
      e["first"] = g.first;
      e["count"] = g.count;
      e["pattern"] = g.pattern ? to_ordered(*g.pattern) : ordered_json();
      a.push_back(e);
    }
    j["heads"] = a;
  } else {
    j["type"] = std::string(pattern.kind());
    if (const auto* p = std::get_if<LocalWindow>(&node)) {
      j["left"] = p->left;
      j["right"] = p->right;
    } else if (const auto* p = std::get_if<GlobalLocal>(&node)) {
      j["global"] = p->global;
      j["left"] = p->left;
      j["right"] = p->right;
    } else if (const auto* p = std::get_if<Strided>(&node)) {
      j["stride"] = p->stride;
      j["mode"] = p->mode == StrideMode::kRelative ? "relative" : "columns";
    } else if (const auto* p = std::get_if<DilatedSparse>(&node)) {
      j["block"] = p->block;
      j["rates"] = p->rates;
      j["reach"] = p->reach;
    } else if (const auto* p = std::get_if<Hierarchical>(&node)) {
      ordered_json a = ordered_json::array();
      for (const HierarchicalLevel& l : p->levels) {
        ordered_json e;
        e["stride"] = l.stride;
        e["window"] = l.window;
        e["block"] = l.block;
        a.push_back(e);
      }
      j["levels"] = a;
    } else if (const auto* p = std::get_if<Neighborhood>(&node)) {
      j["grid"] = p->grid;
      j["window"] = p->window;
      j["dilation"] = p->dilation.empty() ? std::vector<int64_t>(p->grid.size(), 1) : p->dilation;
    } else if (const auto* p = std::get_if<Adaptive>(&node)) {
      j["block"] = p->block;
      if (p->top_k) j["top_k"] = *p->top_k;
      if (p->keep_ratio) j["keep_ratio"] = *p->keep_ratio;
    } else if (const auto* p = std::get_if<Custom>(&node)) {
      j["block"] = p->block;
      ordered_json a = ordered_json::array();
      for (const auto& [qb, kb] : p->pairs) a.push_back({qb, kb});
      j["pairs"] = a;
    } else if (const auto* p = std::get_if<Butterfly>(&node)) {
      j["block"] = p->block;
    } else if (const auto* p = std::get_if<LongNet>(&node)) {
      j["segments"] = p->segments;
      j["rates"] = p->rates;
    }
  }
  if (pattern.causal()) j["causal"] = true;
  return j;
}

std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return {};
  const auto e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}

Pattern hierarchical(std::initializer_list<HierarchicalLevel> levels) {
  return Pattern(Hierarchical{std::vector<HierarchicalLevel>(levels)});
}

}  // namespace

Pattern Pattern::parse(std::string_view text, std::string_view path_view) {
  const std::string path(path_view);
  const std::string s = trim(text);
  SPATTN_REQUIRE(!s.empty(), "{}: empty; give JSON like {{\"type\": \"local_window\", \"window\": 1024}} or a "
                 "preset name ({})", path, preset_names());
  if (s.front() != '{' && s.front() != '[' && s.front() != '"') return from_preset(s, path);
  const json j = detail::parse_json_strict(s, path, {limits::kMaxJsonDepth, limits::kMaxJsonBytes});
  if (j.is_string()) return from_preset(j.get<std::string>(), path);
  ParseContext ctx;
  return from_json(j, path, 1, ctx);
}

std::string Pattern::to_json() const { return to_ordered(*this).dump(); }

void Pattern::validate(const Shape& shape) const {
  SPATTN_REQUIRE(shape.nq >= 1, "shape: Nq must be >= 1 (got {})", shape.nq);
  SPATTN_REQUIRE(shape.nk >= 1, "shape: Nk must be >= 1 (got {})", shape.nk);
  SPATTN_REQUIRE(shape.heads >= 1, "shape: heads must be >= 1 (got {})", shape.heads);
  if (shape.nq > limits::kMaxTokens || shape.nk > limits::kMaxTokens) {
    SPATTN_FAIL(ErrorCode::kUnsupported, "shape: at most 2^30 tokens per sequence (got Nq = {}, Nk = {})", shape.nq,
                shape.nk);
  }
  SPATTN_REQUIRE(shape.heads <= limits::kMaxHeads, "shape: heads must be <= {} (got {})", limits::kMaxHeads,
                 shape.heads);
  check_structure(*this, "pattern");
  check_tree(*this, "pattern");
  check_shape(*this, shape, "pattern");
}

const std::vector<Preset>& presets() {
  static const std::vector<Preset> kPresets = [] {
    std::vector<Preset> v;
    v.push_back({"standard",
                 "hierarchical, 3 levels: every 64-token block sees +-2 blocks of 64; every 2nd 128-block "
                 "row sees +-4 blocks of 128; every 4th 256-block row sees everything",
                 hierarchical({{64, 256, 64}, {256, 1024, 128}, {1024, -1, 256}})});
    v.push_back({"fine_grained",
                 "hierarchical, 4 levels with more local detail: 32/128/32, 128/512/64, 512/2048/128, "
                 "2048/global/256 (stride/window/block)",
                 hierarchical({{32, 128, 32}, {128, 512, 64}, {512, 2048, 128}, {2048, -1, 256}})});
    v.push_back({"long_range",
                 "hierarchical, 3 levels for long sequences: every 128-block row sees +-4 blocks; every 4th "
                 "256-block row sees +-32 blocks (16k tokens); every 16th 512-block row sees everything",
                 hierarchical({{128, 1024, 128}, {1024, 16384, 256}, {8192, -1, 512}})});
    v.push_back({"ultra_sparse",
                 "hierarchical, 3 very sparse levels: every 64-block row sees +-1 block; every 8th 256-block "
                 "row sees +-4 blocks; every 16th 1024-block row sees everything",
                 hierarchical({{64, 128, 64}, {2048, 2048, 256}, {16384, -1, 1024}})});
    v.push_back({"local_window",
                 "block-sparse window: each 128-token block attends its own and the 2 neighbouring blocks "
                 "on each side (a 640-token window at block granularity)",
                 Pattern(DilatedSparse{128, {1}, 2})});
    v.push_back({"dilated_sparse",
                 "block-sparse multi-scale: 64-token blocks at distances 0..4 (rate 1), 2..8 step 2 (rate 2) "
                 "and 4..16 step 4 (rate 4)",
                 Pattern(DilatedSparse{64, {1, 2, 4}, 4})});
    v.push_back({"global_local",
                 "the first 128 tokens are global (attend and are attended by all); every other token sees "
                 "a 512-token window (256 on each side)",
                 Pattern(GlobalLocal{128, 256, 256})});
    v.push_back({"dense", "every key", Pattern(Dense{})});
    v.push_back({"causal", "every key up to the query (bottom-right aligned when Nq != Nk)",
                 Pattern(Dense{}, true)});
    return v;
  }();
  return kPresets;
}

}  // namespace spattn
