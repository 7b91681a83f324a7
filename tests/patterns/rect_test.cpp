// Layouts of a sub-rectangle of the problem (LayoutOptions::rect): query rows [q0, q1)
// against keys [k0, k1) in global positions. Every table is decoded and compared, pair by
// pair, with the whole problem's predicate restricted to the rectangle — for every
// pattern kind, compositions, rectangles that are and are not tile-aligned, and random
// configurations.
#include <gtest/gtest.h>

#include <spattn/layout.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include "tests/patterns/layout_check.hpp"

namespace spattn::test {
namespace {

Pattern P(const char* json) { return Pattern::parse(json); }

std::string describe_rect(const TokenRect& r) {
  return "rect q[" + std::to_string(r.q_begin) + ", " + std::to_string(r.q_end) + ") k[" + std::to_string(r.k_begin) +
         ", " + std::to_string(r.k_end) + ")";
}

// Every property of a rectangle's layout, by enumerating the rectangle's (head, query,
// key) triples: slots hold only tokens of the rectangle, listed tiles are exactly the
// non-empty ones with the right full / partial class, every allowed pair of the
// rectangle lies in a listed tile, pair counts, and that counting the parts allowing a
// pair gives the number of the whole pattern's branches allowing it (global indices).
void check_rect_layout(const Pattern& pattern, const Shape& shape, const LayoutOptions& options, const Layout& layout,
                       const std::string& what) {
  SCOPED_TRACE(what);
  const TokenRect& r = layout.rect;
  const int64_t q0 = r.q_begin, q1 = r.q_end, k0 = r.k_begin, k1 = r.k_end;
  ASSERT_EQ(q0, options.rect.q_begin);
  ASSERT_EQ(k0, options.rect.k_begin);
  ASSERT_EQ(q1, options.rect.q_end == -1 ? shape.nq : options.rect.q_end);
  ASSERT_EQ(k1, options.rect.k_end == -1 ? shape.nk : options.rect.k_end);
  ASSERT_EQ(layout.shape.nq, shape.nq);
  ASSERT_EQ(layout.shape.nk, shape.nk);
  const int64_t nq = q1 - q0, nk = k1 - k0, H = shape.heads;
  const int64_t tm = options.tile_m, tn = options.tile_n;
  const bool whole_q = q0 == 0 && q1 == shape.nq, whole_k = k0 == 0 && k1 == shape.nk;
  const size_t P = layout.parts.size();
  ASSERT_GE(P, 1u);

  // pred[p][h][(i - q0) * nk + (j - k0)]: the part's predicate on global indices.
  std::vector<std::vector<char>> pred(P * static_cast<size_t>(H));
  for (size_t p = 0; p < P; ++p) {
    for (int64_t h = 0; h < H; ++h) {
      auto& m = pred[p * H + h];
      m.assign(static_cast<size_t>(nq * nk), 0);
      for (int64_t i = q0; i < q1; ++i)
        for (int64_t j = k0; j < k1; ++j) m[(i - q0) * nk + (j - k0)] = part_allows(shape, layout.parts[p], h, i, j);
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t i = q0; i < q1; ++i) {
      for (int64_t j = k0; j < k1; ++j) {
        int parts = 0;
        for (size_t p = 0; p < P; ++p) parts += pred[p * H + h][(i - q0) * nk + (j - k0)];
        const int want = multiplicity(pattern, shape, h, i, j);
        if (parts != want) {
          ADD_FAILURE() << "head " << h << " pair (" << i << ", " << j << "): parts allow it " << parts
                        << " times, the whole pattern's branches " << want;
          return;
        }
      }
    }
  }

  std::vector<int> table_of(P * static_cast<size_t>(H), -1);
  for (size_t t = 0; t < layout.tables.size(); ++t) {
    const BlockTable& bt = layout.tables[t];
    SCOPED_TRACE("table " + std::to_string(t));
    ASSERT_GE(bt.part, 0);
    ASSERT_LT(bt.part, static_cast<int>(P));
    for (int32_t h : bt.heads) {
      ASSERT_GE(h, 0);
      ASSERT_LT(h, H);
      ASSERT_EQ(table_of[bt.part * H + h], -1) << "head " << h << " in two tables of a part";
      table_of[bt.part * H + h] = static_cast<int>(t);
    }
    // A part of an axis is always listed explicitly; the whole axis may be the identity.
    if (!whole_q) ASSERT_FALSE(bt.q_slots.empty()) << "a rectangle's query slots must be explicit";
    // (A table may have no key slots at all: e.g. no multiple of a column stride in the rectangle.)
    if (!whole_k && bt.num_k_tiles > 0) ASSERT_FALSE(bt.k_slots.empty()) << "a rectangle's key slots must be explicit";
    if (bt.q_slots.empty()) {
      ASSERT_EQ(bt.num_q_tiles, (nq + tm - 1) / tm);
    } else {
      ASSERT_EQ(static_cast<int64_t>(bt.q_slots.size()), bt.num_q_tiles * tm);
    }
    if (bt.k_slots.empty()) {
      ASSERT_EQ(bt.num_k_tiles, whole_k ? (nk + tn - 1) / tn : 0);
    } else {
      ASSERT_EQ(static_cast<int64_t>(bt.k_slots.size()), bt.num_k_tiles * tn);
    }
    auto q_token = [&](int64_t s) -> int64_t {
      if (bt.q_slots.empty()) return s < nq ? s : -1;
      return bt.q_slots[s];
    };
    auto k_token = [&](int64_t s) -> int64_t {
      if (bt.k_slots.empty()) return s < nk ? s : -1;
      return bt.k_slots[s];
    };
    std::vector<int64_t> q_slot_of(static_cast<size_t>(nq), -1), k_slot_of(static_cast<size_t>(nk), -1);
    for (int64_t s = 0; s < bt.num_q_tiles * tm; ++s) {
      const int64_t tok = q_token(s);
      if (tok < 0) {
        ASSERT_EQ(tok, -1);
        continue;
      }
      ASSERT_GE(tok, q0) << "query slot " << s << " holds a token before the rectangle";
      ASSERT_LT(tok, q1) << "query slot " << s << " holds a token past the rectangle";
      ASSERT_EQ(q_slot_of[tok - q0], -1) << "query token " << tok << " in two slots";
      q_slot_of[tok - q0] = s;
    }
    for (int64_t s = 0; s < bt.num_k_tiles * tn; ++s) {
      const int64_t tok = k_token(s);
      if (tok < 0) {
        ASSERT_EQ(tok, -1);
        continue;
      }
      ASSERT_GE(tok, k0) << "key slot " << s << " holds a token before the rectangle";
      ASSERT_LT(tok, k1) << "key slot " << s << " holds a token past the rectangle";
      ASSERT_EQ(k_slot_of[tok - k0], -1) << "key token " << tok << " in two slots";
      k_slot_of[tok - k0] = s;
    }
    for (int64_t qt = 0; qt < bt.num_q_tiles; ++qt) {
      bool any = false;
      for (int64_t s = qt * tm; s < (qt + 1) * tm; ++s) any = any || q_token(s) >= 0;
      ASSERT_TRUE(any) << "query tile " << qt << " has only padding";
    }
    ASSERT_EQ(static_cast<int64_t>(bt.row_ptr.size()), bt.num_q_tiles + 1);
    ASSERT_EQ(bt.row_ptr.back(), static_cast<int64_t>(bt.cols.size()));
    std::vector<char> listed(static_cast<size_t>(bt.num_q_tiles * bt.num_k_tiles), 0);
    for (int64_t qt = 0; qt < bt.num_q_tiles; ++qt) {
      const int64_t lo = bt.row_ptr[qt], hi = bt.row_ptr[qt + 1];
      ASSERT_LE(lo, hi);
      ASSERT_LE(bt.full_count[qt], hi - lo);
      for (int64_t c = lo; c < hi; ++c) {
        const int32_t kt = bt.cols[c];
        ASSERT_GE(kt, 0);
        ASSERT_LT(kt, bt.num_k_tiles);
        ASSERT_EQ(listed[qt * bt.num_k_tiles + kt], 0) << "key tile listed twice";
        listed[qt * bt.num_k_tiles + kt] = 1;
        const bool full = c < lo + bt.full_count[qt];
        for (int32_t h : bt.heads) {
          const auto& m = pred[bt.part * H + h];
          int64_t allowed = 0, real_pairs = 0;
          bool padding_key = false;
          for (int64_t ks = kt * tn; ks < (kt + 1) * tn; ++ks) padding_key = padding_key || k_token(ks) < 0;
          for (int64_t qs = qt * tm; qs < (qt + 1) * tm; ++qs) {
            const int64_t i = q_token(qs);
            if (i < 0) continue;
            for (int64_t ks = kt * tn; ks < (kt + 1) * tn; ++ks) {
              const int64_t j = k_token(ks);
              if (j < 0) continue;
              ++real_pairs;
              allowed += m[(i - q0) * nk + (j - k0)];
            }
          }
          ASSERT_GT(allowed, 0) << "empty tile (" << qt << ", " << kt << ") listed for head " << h;
          ASSERT_EQ(full, !padding_key && allowed == real_pairs)
              << "tile (" << qt << ", " << kt << ") head " << h << " listed " << (full ? "full" : "partial") << " but "
              << allowed << "/" << real_pairs << " pairs allowed";
        }
      }
    }
    for (int32_t h : bt.heads) {
      const auto& m = pred[bt.part * H + h];
      int64_t count = 0;
      for (int64_t i = 0; i < nq; ++i) {
        for (int64_t j = 0; j < nk; ++j) {
          if (!m[i * nk + j]) continue;
          ++count;
          ASSERT_GE(q_slot_of[i], 0) << "query " << i + q0 << " has allowed keys but no slot";
          ASSERT_GE(k_slot_of[j], 0) << "key " << j + k0 << " is allowed but has no slot";
          ASSERT_TRUE(listed[(q_slot_of[i] / tm) * bt.num_k_tiles + k_slot_of[j] / tn])
              << "allowed pair (" << i + q0 << ", " << j + k0 << ") of head " << h << " is in no listed tile";
        }
      }
      ASSERT_EQ(bt.allowed_pairs, count) << "head " << h;
    }
  }
  for (size_t p = 0; p < P; ++p) {
    for (int64_t h = 0; h < H; ++h) {
      if (table_of[p * H + h] >= 0) continue;
      const auto& m = pred[p * H + h];
      ASSERT_TRUE(std::none_of(m.begin(), m.end(), [](char c) { return c != 0; }))
          << "part " << p << " head " << h << " allows pairs of the rectangle but has no table";
    }
  }
  bool covered = true;
  for (int64_t h = 0; h < H && covered; ++h) {
    std::vector<char> rows(static_cast<size_t>(nq), 0);
    for (const BlockTable& bt : layout.tables) {
      if (std::find(bt.heads.begin(), bt.heads.end(), h) == bt.heads.end()) continue;
      for (int64_t s = 0; s < bt.num_q_tiles * tm; ++s) {
        const int64_t tok = bt.q_slots.empty() ? (s < nq ? s : -1) : bt.q_slots[s];
        if (tok >= 0) rows[tok - q0] = 1;
      }
    }
    covered = std::all_of(rows.begin(), rows.end(), [](char c) { return c != 0; });
  }
  ASSERT_EQ(layout.covers_all_rows, covered);
  size_t expected = 0;
  for (const BlockTable& bt : layout.tables) expected += bt.heads.size() * static_cast<size_t>(bt.num_q_tiles);
  ASSERT_EQ(layout.schedule.size(), expected);
}

void compile_and_check_rect(const Pattern& p, const Shape& s, const LayoutOptions& o, const std::string& what) {
  Layout layout;
  try {
    layout = compile_layout(p, s, o);
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": compile_layout threw: " << e.what();
    return;
  }
  check_rect_layout(p, s, o, layout, what);
}

LayoutOptions rect_options(int64_t tm, int64_t tn, bool permute, TokenRect rect) {
  LayoutOptions o;
  o.tile_m = tm;
  o.tile_n = tn;
  o.permute = permute;
  o.rect = rect;
  return o;
}

// Rectangles of a self-attention problem of n tokens: tile-aligned shard pairs (the
// ring's), diagonal and off-diagonal blocks on both sides of the diagonal, and ragged
// ones that no tile divides.
std::vector<TokenRect> rects(int64_t n) {
  const int64_t h = n / 2, q = n / 4;
  return {{0, q, 0, q},         {q, h, 0, q},          {0, q, h, n},          {h, n, q, h},
          {3 * q, n, 3 * q, n}, {7, h + 13, 5, n - 3}, {q + 1, q + 30, h - 9, n - 1}, {n - 5, n, 0, 11},
          {0, n, q + 3, h + 1}, {h - 2, h + 3, 0, n}};
}

void check_rects(const Pattern& p, const Shape& s) {
  for (const TokenRect& r : rects(s.nq)) {
    for (auto [m, n] : {std::pair{16, 16}, {32, 8}, {7, 5}}) {
      for (bool permute : {true, false}) {
        const LayoutOptions o = rect_options(m, n, permute, r);
        compile_and_check_rect(p, s, o, describe(p, s, o) + " " + describe_rect(r));
        if (::testing::Test::HasFailure()) return;
      }
    }
  }
}

TEST(RectLayout, EveryKind) {
  const Shape s{256, 256, 3};
  check_rects(P(R"({"type":"dense"})"), s);
  check_rects(P(R"({"type":"dense","causal":true})"), s);
  check_rects(P(R"({"type":"local_window","window":40})"), s);
  check_rects(P(R"({"type":"local_window","left":50,"right":0,"causal":true})"), s);
  check_rects(P(R"({"type":"local_window","left":3,"right":70})"), s);
  check_rects(P(R"({"type":"global_local","global":20,"window":30})"), s);
  check_rects(P(R"({"type":"global_local","global":9,"window":16,"causal":true})"), s);
  check_rects(P(R"({"type":"strided","stride":6,"mode":"relative"})"), s);
  check_rects(P(R"({"type":"strided","stride":6,"mode":"relative","causal":true})"), s);
  check_rects(P(R"({"type":"strided","stride":5,"mode":"columns"})"), s);
  check_rects(P(R"({"type":"dilated_sparse","block":16,"rates":[1,2,4],"reach":2})"), s);
  check_rects(P(R"({"type":"hierarchical","levels":[{"stride":16,"window":64,"block":16},
      {"stride":64,"window":128,"block":32},{"stride":128,"window":-1,"block":64}]})"), s);
  check_rects(P(R"({"type":"neighborhood","grid":[16,16],"window":[5,7],"dilation":[1,2]})"), s);
  check_rects(P(R"({"type":"neighborhood","grid":[4,8,8],"window":[3,3,4],"dilation":[1,2,1],"causal":true})"), s);
  check_rects(P(R"({"type":"neighborhood","grid":[256],"window":[31],"dilation":[3]})"), s);
  check_rects(P(R"({"type":"neighborhood","grid":[256],"window":[9]})"), s);
  check_rects(P(R"({"type":"custom","block":32,"pairs":[[0,0],[1,0],[2,5],[6,7],[3,1],[7,7]]})"), s);
  check_rects(P(R"({"type":"butterfly","block":16})"), s);
  check_rects(P(R"({"type":"longnet","segments":[64,128,256],"rates":[1,2,4]})"), s);
  check_rects(P(R"({"type":"longnet","segments":[50,120],"rates":[3,5],"causal":true})"), s);
}

TEST(RectLayout, Compositions) {
  const Shape s{256, 256, 4};
  check_rects(P(R"({"union":[{"type":"strided","stride":8},{"type":"local_window","window":16}]})"), s);
  check_rects(
      P(R"({"union":[{"type":"strided","stride":8,"mode":"columns"},{"type":"local_window","window":16}],"causal":true})"),
      s);
  check_rects(P(R"({"intersect":[{"type":"local_window","window":64},{"type":"strided","stride":4}]})"), s);
  check_rects(P(R"({"intersect":[{"type":"neighborhood","grid":[16,16],"window":[7,7]},{"type":"dense","causal":true}]})"),
              s);
  check_rects(P(R"({"branches":[{"type":"local_window","window":32},{"type":"global_local","global":8,"window":0}]})"), s);
  check_rects(P(R"({"branches":[{"type":"longnet","segments":[32,64],"rates":[1,2]},{"type":"strided","stride":16}]})"),
              s);
  check_rects(P(R"({"heads":[{"first":0,"count":2,"pattern":{"type":"longnet","segments":[64],"rates":[2]}},
      {"first":2,"count":2,"pattern":{"union":[{"type":"strided","stride":4},{"type":"local_window","window":8}]}}]})"),
              s);
  check_rects(P(R"({"union":[{"type":"neighborhood","grid":[16,16],"window":[3,3]},{"type":"global_local","global":4,"window":0},
      {"type":"strided","stride":16,"mode":"columns"}]})"),
              s);
}

// The hierarchical presets expand to blocks of 32..1024 tokens: a 4096-token problem,
// rectangles of a few hundred tokens on and off the diagonal.
TEST(RectLayout, HierarchicalPresets) {
  const Shape s{4096, 4096, 1};
  const std::vector<TokenRect> rs = {{0, 256, 0, 256}, {1024, 1280, 768, 1024}, {2000, 2201, 3, 390},
                                     {3900, 4096, 2048, 2400}};
  for (const char* name : {"standard", "fine_grained", "long_range", "ultra_sparse", "local_window", "dilated_sparse",
                           "global_local"}) {
    const Pattern p = Pattern::parse(name);
    for (const TokenRect& r : rs) {
      const LayoutOptions o = rect_options(64, 64, true, r);
      compile_and_check_rect(p, s, o, std::string(name) + " " + describe_rect(r));
      if (HasFailure()) return;
    }
  }
}

// Cross-attention: causal stays bottom-right aligned to the whole problem, not to the
// rectangle.
TEST(RectLayout, CrossAttentionKeepsGlobalCausalAlignment) {
  const Shape s{100, 260, 2};
  const Pattern p = P(R"({"type":"dense","causal":true})");
  for (const TokenRect& r : std::vector<TokenRect>{{0, 50, 0, 200}, {40, 100, 150, 260}, {3, 17, 170, 181}}) {
    const LayoutOptions o = rect_options(16, 16, true, r);
    compile_and_check_rect(p, s, o, describe_rect(r));
  }
  // Query 0 of the whole problem sees keys [0, 160]; a rectangle of keys [150, 260) holds 11 of them.
  const Layout l = compile_layout(p, s, rect_options(16, 16, true, {0, 1, 150, 260}));
  int64_t pairs = 0;
  for (const BlockTable& t : l.tables) pairs += t.allowed_pairs;
  EXPECT_EQ(pairs, 11);
}

TEST(RectLayout, RandomConfigurations) {
  constexpr int kConfigs = 800;
  for (int k = 0; k < kConfigs; ++k) {
    const uint64_t seed = 7000 + k;
    RandomPatterns gen(seed);
    const Shape shape = gen.shape(k % 5 == 0 ? 240 : 110, 3);
    const Pattern p = gen.pattern(shape, 2);
    LayoutOptions o = gen.options();
    TokenRect r;
    r.q_begin = gen.uniform(0, shape.nq - 1);
    r.q_end = gen.coin(0.2) ? -1 : gen.uniform(r.q_begin + 1, shape.nq);
    r.k_begin = gen.uniform(0, shape.nk - 1);
    r.k_end = gen.coin(0.2) ? -1 : gen.uniform(r.k_begin + 1, shape.nk);
    o.rect = r;
    compile_and_check_rect(p, shape, o, "seed " + std::to_string(seed) + ": " + describe(p, shape, o) + " " +
                                            describe_rect(r));
    if (HasFailure()) return;
  }
}

// The tiles of a rectangle are the whole layout's tiles inside it: for tile-aligned
// rectangles in natural order, the same (query tile, key tile) pairs with the same
// full / partial class, shifted to the rectangle's origin.
TEST(RectLayout, AlignedRectanglesCutTheWholeLayout) {
  const Shape s{512, 512, 2};
  for (const char* json : {R"({"type":"local_window","window":100,"causal":true})", R"({"type":"dense","causal":true})",
                           R"({"type":"global_local","global":32,"window":64})"}) {
    const Pattern p = P(json);
    const Layout whole = compile_layout(p, s, rect_options(32, 32, false, {}));
    for (const TokenRect& r : std::vector<TokenRect>{{128, 256, 0, 128}, {256, 384, 256, 512}, {64, 512, 96, 224}}) {
      const Layout part = compile_layout(p, s, rect_options(32, 32, false, r));
      ASSERT_EQ(part.tables.size(), whole.tables.size()) << json;
      for (size_t t = 0; t < whole.tables.size(); ++t) {
        const BlockTable& w = whole.tables[t];
        const BlockTable& c = part.tables[t];
        ASSERT_EQ(c.num_q_tiles, (r.q_end - r.q_begin) / 32);
        for (int64_t qt = 0; qt < c.num_q_tiles; ++qt) {
          const int64_t gq = qt + r.q_begin / 32;
          std::vector<std::pair<int32_t, bool>> want, got;
          for (int64_t x = w.row_ptr[gq]; x < w.row_ptr[gq + 1]; ++x) {
            const int32_t kt = w.cols[x];
            if (kt >= r.k_begin / 32 && kt < r.k_end / 32)
              want.emplace_back(kt - static_cast<int32_t>(r.k_begin / 32), x < w.row_ptr[gq] + w.full_count[gq]);
          }
          for (int64_t x = c.row_ptr[qt]; x < c.row_ptr[qt + 1]; ++x)
            got.emplace_back(c.cols[x], x < c.row_ptr[qt] + c.full_count[qt]);
          std::sort(want.begin(), want.end());
          std::sort(got.begin(), got.end());
          EXPECT_EQ(got, want) << json << " " << describe_rect(r) << " query tile " << qt;
        }
      }
    }
  }
}

TEST(RectLayout, WholeRectangleIsTheDefault) {
  const Shape s{300, 300, 2};
  const Pattern p = P(R"({"type":"longnet","segments":[64,128],"rates":[1,2]})");
  const Layout a = compile_layout(p, s, rect_options(32, 32, true, {}));
  const Layout b = compile_layout(p, s, rect_options(32, 32, true, {0, 300, 0, 300}));
  EXPECT_EQ(a.rect, (TokenRect{0, 300, 0, 300}));
  ASSERT_EQ(a.tables.size(), b.tables.size());
  for (size_t t = 0; t < a.tables.size(); ++t) {
    EXPECT_EQ(a.tables[t].q_slots, b.tables[t].q_slots);
    EXPECT_EQ(a.tables[t].k_slots, b.tables[t].k_slots);
    EXPECT_EQ(a.tables[t].cols, b.tables[t].cols);
    EXPECT_EQ(a.tables[t].full_count, b.tables[t].full_count);
  }
}

TEST(RectLayout, Errors) {
  const Pattern p = P(R"({"type":"local_window","window":8})");
  const Shape s{64, 80, 1};
  auto fails = [&](TokenRect r, const char* want) {
    try {
      compile_layout(p, s, rect_options(16, 16, true, r));
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
      return;
    }
    ADD_FAILURE() << describe_rect(r) << " was accepted";
  };
  fails({10, 10, 0, -1}, "rect query rows [10, 10) must be a non-empty range inside [0, 64) (Nq)");
  fails({0, 65, 0, -1}, "rect query rows [0, 65)");
  fails({-1, 5, 0, -1}, "rect query rows [-1, 5)");
  fails({0, -1, 80, -1}, "rect keys [80, -1) must be a non-empty range inside [0, 80) (Nk)");
  fails({0, -1, 5, 81}, "rect keys [5, 81)");
  // Statistics describe whole problems only.
  const Layout l = compile_layout(p, s, rect_options(16, 16, true, {0, 32, 0, 32}));
  try {
    layout_stats(p, l);
    ADD_FAILURE() << "layout_stats accepted a rectangle's layout";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("whole-problem layouts"), std::string::npos) << e.what();
  }
  // Adaptive patterns are refused as for whole problems.
  try {
    compile_layout(P(R"({"type":"adaptive","block":16,"top_k":2})"), Shape{64, 64, 1},
                   rect_options(16, 16, true, {0, 32, 0, 32}));
    ADD_FAILURE() << "adaptive accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
  }
}

}  // namespace
}  // namespace spattn::test
