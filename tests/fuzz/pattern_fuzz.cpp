// Pattern JSON -> parse -> print -> parse round trip, validation, and compile_layout at
// small shapes, with every table checked against the token predicate by brute force:
// listed tiles hold allowed pairs, full tiles only allowed pairs, every allowed pair is
// in a listed tile, and the allowed-pair counts add up to the pattern's (branch
// multiplicity counted). The shape and layout options come from a hash of the input.
#include <spattn/layout.hpp>
#include <spattn/pattern.hpp>

#include <vector>

#include "tests/fuzz/fuzz.hpp"

namespace spattn::fuzz {
namespace {

bool part_allows(const Shape& s, const LayoutPart& part, int64_t h, int64_t i, int64_t j) {
  if (!part.pattern.allowed_in_branch(s, part.branch, h, i, j)) return false;
  for (const Pattern& e : part.exclude) {
    if (e.allowed(s, h, i, j)) return false;
  }
  return true;
}

void check_table(const Layout& layout, const BlockTable& t) {
  const Shape& s = layout.shape;
  const LayoutPart& part = layout.parts[static_cast<size_t>(t.part)];
  const int64_t tm = layout.tile_m, tn = layout.tile_n;
  auto q_token = [&](int64_t slot) -> int64_t {
    if (t.q_slots.empty()) return slot < s.nq ? slot : -1;
    return t.q_slots[static_cast<size_t>(slot)];
  };
  auto k_token = [&](int64_t slot) -> int64_t {
    if (t.k_slots.empty()) return slot < s.nk ? slot : -1;
    return t.k_slots[static_cast<size_t>(slot)];
  };
  FUZZ_CHECK(t.row_ptr.size() == static_cast<size_t>(t.num_q_tiles) + 1);
  FUZZ_CHECK(t.q_slots.empty() || t.q_slots.size() == static_cast<size_t>(t.num_q_tiles * tm));
  FUZZ_CHECK(t.k_slots.empty() || t.k_slots.size() == static_cast<size_t>(t.num_k_tiles * tn));
  std::vector<char> is_row(static_cast<size_t>(s.nq), 0);
  for (int64_t slot = 0; slot < t.num_q_tiles * tm; ++slot) {
    const int64_t i = q_token(slot);
    FUZZ_CHECK(i >= -1 && i < s.nq);
    if (i >= 0) is_row[static_cast<size_t>(i)] = 1;
  }
  for (int32_t h : t.heads) {
    FUZZ_CHECK(h >= 0 && h < s.heads);
    std::vector<char> covered(static_cast<size_t>(s.nq * s.nk), 0);
    for (int64_t qt = 0; qt < t.num_q_tiles; ++qt) {
      const int64_t lo = t.row_ptr[qt], hi = t.row_ptr[qt + 1];
      FUZZ_CHECK(lo <= hi && t.full_count[qt] <= hi - lo);
      for (int64_t c = lo; c < hi; ++c) {
        const int64_t kt = t.cols[static_cast<size_t>(c)];
        FUZZ_CHECK(kt >= 0 && kt < t.num_k_tiles);
        const bool full = c - lo < t.full_count[qt];
        bool any = false;
        for (int64_t qs = qt * tm; qs < (qt + 1) * tm; ++qs) {
          const int64_t i = q_token(qs);
          if (i < 0) continue;
          for (int64_t ks = kt * tn; ks < (kt + 1) * tn; ++ks) {
            const int64_t j = k_token(ks);
            FUZZ_CHECK(j >= -1 && j < s.nk);
            if (j < 0) {
              FUZZ_CHECK(!full);  // a tile holding a padding key is never full
              continue;
            }
            const bool ok = part_allows(s, part, h, i, j);
            if (full) FUZZ_CHECK(ok);
            any = any || ok;
            covered[static_cast<size_t>(i * s.nk + j)] = 1;
          }
        }
        FUZZ_CHECK(any);  // listed tiles are never empty
      }
    }
    int64_t pairs = 0;
    for (int64_t i = 0; i < s.nq; ++i) {
      if (!is_row[static_cast<size_t>(i)]) continue;
      for (int64_t j = 0; j < s.nk; ++j) {
        if (!part_allows(s, part, h, i, j)) continue;
        ++pairs;
        FUZZ_CHECK(covered[static_cast<size_t>(i * s.nk + j)]);
      }
    }
    FUZZ_CHECK(pairs == t.allowed_pairs);
  }
}

void check_layout(const Pattern& p, const Layout& layout) {
  const Shape& s = layout.shape;
  int64_t from_tables = 0;
  for (const BlockTable& t : layout.tables) {
    check_table(layout, t);
    from_tables += t.allowed_pairs * static_cast<int64_t>(t.heads.size());
  }
  int64_t expected = 0;
  const int branches = p.branch_count();
  for (int64_t h = 0; h < s.heads; ++h) {
    for (int64_t i = 0; i < s.nq; ++i) {
      for (int64_t j = 0; j < s.nk; ++j) {
        for (int b = 0; b < branches; ++b) expected += p.allowed_in_branch(s, b, h, i, j) ? 1 : 0;
      }
    }
  }
  FUZZ_CHECK(from_tables == expected);
  FUZZ_CHECK(layout_stats(p, layout).allowed_pairs_total == expected);
  size_t items = 0;
  for (const BlockTable& t : layout.tables) items += t.heads.size() * static_cast<size_t>(t.num_q_tiles);
  FUZZ_CHECK(layout.schedule.size() == items);
}

// The grid of a neighborhood leaf (at the top or below one composition), whose product
// is the only shape it validates for.
int64_t grid_cells(const Pattern& p) {
  const PatternNode& n = p.node();
  auto cells = [](const Neighborhood& g) {
    int64_t c = 1;
    for (int64_t d : g.grid) c *= d;
    return c;
  };
  if (const auto* g = std::get_if<Neighborhood>(&n)) return cells(*g);
  const std::vector<Pattern>* items = nullptr;
  if (const auto* u = std::get_if<Union>(&n)) items = &u->items;
  if (const auto* x = std::get_if<Intersect>(&n)) items = &x->items;
  if (const auto* b = std::get_if<Branches>(&n)) items = &b->items;
  if (items) {
    for (const Pattern& q : *items) {
      if (const auto* g = std::get_if<Neighborhood>(&q.node())) return cells(*g);
    }
  }
  return 0;
}

}  // namespace
}  // namespace spattn::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace spattn;
  if (size > 4096) return 0;  // small inputs explore more; limits are tested elsewhere
  const std::string_view text = fuzz::as_text(data, size);
  Pattern p;
  try {
    p = Pattern::parse(text);
  } catch (const Error&) {
    return 0;
  }
  // The printed form is canonical: it parses back to itself.
  const std::string json = p.to_json();
  const Pattern again = Pattern::parse(json);
  FUZZ_CHECK(again.to_json() == json);

  uint64_t h = fuzz::hash(data, size);
  auto take = [&](uint64_t n) {
    const uint64_t v = h % n;
    h = h / n ^ (h << 37);
    return static_cast<int64_t>(v);
  };
  Shape shape;
  shape.nq = 1 + take(40);
  shape.nk = take(2) ? shape.nq : 1 + take(40);
  shape.heads = 1 + take(3);
  if (const int64_t cells = fuzz::grid_cells(p); cells > 0 && cells <= 64) shape.nq = shape.nk = cells;
  static const int64_t kTiles[] = {1, 2, 3, 4, 5, 8, 16, 64};
  LayoutOptions o;
  o.tile_m = kTiles[take(8)];
  o.tile_n = take(2) ? o.tile_m : kTiles[take(8)];
  o.permute = take(4) != 0;
  o.schedule = static_cast<ScheduleOrder>(take(3));
  o.max_work = 20'000'000;
  o.max_bytes = 64 << 20;
  try {
    p.validate(shape);
  } catch (const Error&) {
    return 0;
  }
  Layout layout;
  try {
    layout = compile_layout(p, shape, o);
  } catch (const Error& e) {
    // Valid patterns compile unless they are adaptive or over a budget.
    FUZZ_CHECK(e.code() == ErrorCode::kUnsupported);
    return 0;
  }
  fuzz::check_layout(p, layout);
  const std::string picture = render_pattern(p, shape, o.tile_m, take(shape.heads), 8);
  FUZZ_CHECK(!picture.empty());
  return 0;
}
