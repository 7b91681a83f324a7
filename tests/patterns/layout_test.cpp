// Block tables equal the tile reduction of the token predicate, exactly, for every
// pattern kind, composition, tile size and token order.
#include <gtest/gtest.h>

#include <spattn/layout.hpp>

#include "tests/patterns/layout_check.hpp"

namespace spattn::test {
namespace {

Pattern P(const char* json) { return Pattern::parse(json); }

LayoutOptions tiles(int64_t m, int64_t n, bool permute = true, ScheduleOrder s = ScheduleOrder::kRowMajor) {
  LayoutOptions o;
  o.tile_m = m;
  o.tile_n = n;
  o.permute = permute;
  o.schedule = s;
  return o;
}

void check_all_tiles(const Pattern& p, const Shape& s) {
  for (auto [m, n] : {std::pair{16, 16}, {32, 32}, {64, 64}, {128, 128}, {64, 32}, {16, 48}, {7, 5}}) {
    for (bool permute : {true, false}) {
      const LayoutOptions o = tiles(m, n, permute);
      compile_and_check(p, s, o, describe(p, s, o));
    }
  }
}

TEST(Layout, EveryKindAtEveryTile) {
  const Shape cross{203, 317, 2};
  const Shape self{300, 300, 3};
  check_all_tiles(P(R"({"type":"dense"})"), cross);
  check_all_tiles(P(R"({"type":"dense","causal":true})"), cross);
  check_all_tiles(P(R"({"type":"local_window","window":40})"), cross);
  check_all_tiles(P(R"({"type":"local_window","left":50,"right":0,"causal":true})"), self);
  check_all_tiles(P(R"({"type":"global_local","global":20,"window":30})"), cross);
  check_all_tiles(P(R"({"type":"global_local","global":37,"window":50,"causal":true})"), self);
  check_all_tiles(P(R"({"type":"global_local","global":64,"left":10,"right":70,"causal":true})"), cross);
  check_all_tiles(P(R"({"type":"global_local","global":3,"left":0,"right":0})"), self);
  check_all_tiles(P(R"({"type":"strided","stride":6,"mode":"relative"})"), self);
  check_all_tiles(P(R"({"type":"strided","stride":6,"mode":"relative","causal":true})"), cross);
  check_all_tiles(P(R"({"type":"strided","stride":5,"mode":"columns"})"), cross);
  check_all_tiles(P(R"({"type":"dilated_sparse","block":16,"rates":[1,2,4],"reach":2})"), cross);
  check_all_tiles(P(R"({"type":"hierarchical","levels":[{"stride":16,"window":64,"block":16},
      {"stride":64,"window":128,"block":32},{"stride":128,"window":-1,"block":64}]})"), cross);
  check_all_tiles(P(R"({"type":"neighborhood","grid":[15,20],"window":[5,7],"dilation":[1,2]})"), self);
  check_all_tiles(P(R"({"type":"neighborhood","grid":[5,6,10],"window":[3,3,4],"dilation":[1,2,1],"causal":true})"),
                  self);
  check_all_tiles(P(R"({"type":"neighborhood","grid":[300],"window":[31],"dilation":[3]})"), self);
  check_all_tiles(P(R"({"type":"custom","block":32,"pairs":[[0,0],[1,0],[2,5],[6,9],[3,1]]})"), cross);
  check_all_tiles(P(R"({"type":"butterfly","block":16})"), cross);
  check_all_tiles(P(R"({"type":"longnet","segments":[64,128,256],"rates":[1,2,4]})"), self);
  check_all_tiles(P(R"({"type":"longnet","segments":[50,120],"rates":[3,5],"causal":true})"), self);
}

TEST(Layout, Compositions) {
  const Shape cross{190, 250, 4};
  const Shape self{256, 256, 4};
  check_all_tiles(P(R"({"union":[{"type":"strided","stride":8},{"type":"local_window","window":16}]})"), self);
  check_all_tiles(
      P(R"({"union":[{"type":"strided","stride":8,"mode":"columns"},{"type":"local_window","window":16}],"causal":true})"),
      cross);
  check_all_tiles(P(R"({"intersect":[{"type":"local_window","window":64},{"type":"strided","stride":4}]})"), cross);
  // Stride classes of whole tiles in their own order, less the band of the part before
  // (rows sharing one class, each losing its band's keys).
  check_all_tiles(P(R"({"union":[{"type":"strided","stride":32},{"type":"local_window","window":24}]})"),
                  Shape{1024, 1024, 2});
  check_all_tiles(P(R"({"union":[{"type":"local_window","left":40,"right":3},{"type":"strided","stride":64}]})"),
                  Shape{900, 1100, 2});
  check_all_tiles(P(R"({"intersect":[{"type":"neighborhood","grid":[16,16],"window":[7,7]},{"type":"dense","causal":true}]})"),
                  self);
  check_all_tiles(P(R"({"branches":[{"type":"local_window","window":32},{"type":"global_local","global":8,"window":0}]})"),
                  cross);
  check_all_tiles(P(R"({"branches":[{"type":"longnet","segments":[32,64],"rates":[1,2]},{"type":"strided","stride":16}]})"),
                  self);
  check_all_tiles(P(R"({"heads":[{"first":0,"count":2,"pattern":{"type":"longnet","segments":[64],"rates":[2]}},
      {"first":2,"count":2,"pattern":{"union":[{"type":"strided","stride":4},{"type":"local_window","window":8}]}}]})"),
                  self);
  check_all_tiles(P(R"({"union":[{"type":"neighborhood","grid":[16,16],"window":[3,3]},{"type":"global_local","global":4,"window":0},
      {"type":"strided","stride":16,"mode":"columns"}]})"),
                  self);
}

TEST(Layout, ScheduleOrders) {
  const Pattern p = P(R"({"branches":[{"type":"local_window","window":64,"causal":true},{"type":"longnet","segments":[64,128],"rates":[1,2]}]})");
  const Shape s{400, 400, 3};
  for (ScheduleOrder order : {ScheduleOrder::kRowMajor, ScheduleOrder::kHilbert, ScheduleOrder::kLongestFirst}) {
    const LayoutOptions o = tiles(32, 16, true, order);
    const Layout layout = compile_layout(p, s, o);
    check_layout(p, s, o, layout, describe(p, s, o));
    if (order == ScheduleOrder::kLongestFirst) {
      auto len = [&](const WorkItem& w) {
        const BlockTable& t = layout.tables[w.table];
        return t.row_ptr[w.q_tile + 1] - t.row_ptr[w.q_tile];
      };
      for (size_t k = 1; k < layout.schedule.size(); ++k) EXPECT_GE(len(layout.schedule[k - 1]), len(layout.schedule[k]));
    }
    if (order == ScheduleOrder::kRowMajor) {
      for (size_t k = 1; k < layout.schedule.size(); ++k) EXPECT_LE(layout.schedule[k - 1].head, layout.schedule[k].head);
    }
  }
}

// Random configurations of every pattern: fixed seeds, the configuration printed on
// failure.
TEST(Layout, RandomConfigurations) {
  constexpr int kConfigs = 260;
  for (int k = 0; k < kConfigs; ++k) {
    const uint64_t seed = 1000 + k;
    RandomPatterns gen(seed);
    const Shape shape = gen.shape(k % 5 == 0 ? 260 : 120, 4);
    const Pattern p = gen.pattern(shape, 2);
    const LayoutOptions o = gen.options();
    compile_and_check(p, shape, o, "seed " + std::to_string(seed) + ": " + describe(p, shape, o));
    if (HasFailure()) return;
  }
}

TEST(Layout, TileSizeNeverChangesPairs) {
  const Pattern p = P(R"({"union":[{"type":"strided","stride":8},{"type":"hierarchical","levels":[{"stride":16,"window":48,"block":16}]}]})");
  const Shape s{333, 333, 2};
  int64_t pairs = -1;
  for (int64_t t : {1, 8, 16, 33, 64, 128, 256, 512}) {
    for (bool permute : {true, false}) {
      const Layout l = compile_layout(p, s, tiles(t, t, permute));
      int64_t n = 0;
      for (const BlockTable& bt : l.tables) n += bt.allowed_pairs * static_cast<int64_t>(bt.heads.size());
      if (pairs < 0) pairs = n;
      EXPECT_EQ(n, pairs) << "tile " << t << " permute " << permute;
    }
  }
}

// Permutations do what they are for: token-level patterns become block-sparse.
TEST(Layout, PermutationsMakeTokenPatternsBlockSparse) {
  auto listed = [](const Layout& l) {
    int64_t n = 0;
    for (const BlockTable& t : l.tables) n += static_cast<int64_t>(t.cols.size() * t.heads.size());
    return n;
  };
  {
    const Pattern p = P(R"({"type":"longnet","segments":[256,512,1024],"rates":[1,2,4]})");
    const Shape s{4096, 4096, 4};
    const Layout permuted = compile_layout(p, s, tiles(64, 64));
    const Layout natural = compile_layout(p, s, tiles(64, 64, false));
    EXPECT_LT(listed(permuted) * 3, listed(natural) * 2);
    // Rate 1 with whole-tile segments needs no permutation; rate 2 does.
    for (const BlockTable& t : permuted.tables) {
      const int r = permuted.parts[t.part].branch == 0 ? 1 : 2;
      if (r == 1) {
        EXPECT_TRUE(t.q_slots.empty());
      }
      // Partial tiles only on the causal-free diagonal blocks' padding: none here.
      for (size_t q = 0; q < t.full_count.size(); ++q) {
        EXPECT_EQ(t.full_count[q], t.row_ptr[q + 1] - t.row_ptr[q]);
      }
    }
    EXPECT_TRUE(permuted.covers_all_rows);
  }
  {
    const Pattern p = P(R"({"type":"strided","stride":16})");
    const Shape s{4096, 4096, 1};
    EXPECT_LT(listed(compile_layout(p, s, tiles(64, 64))) * 8, listed(compile_layout(p, s, tiles(64, 64, false))));
  }
  {
    // Rows much wider than a tile: Hilbert order turns each query tile into a square.
    const Pattern p = P(R"({"type":"neighborhood","grid":[256,256],"window":[7,7]})");
    const Shape s{65536, 65536, 1};
    const Layout permuted = compile_layout(p, s, tiles(64, 64));
    EXPECT_FALSE(permuted.tables[0].q_slots.empty());
    EXPECT_LT(listed(permuted) * 10, listed(compile_layout(p, s, tiles(64, 64, false))) * 7);
  }
  {
    // A tile per grid row is as good as it gets: the natural order is kept.
    const Pattern p = P(R"({"type":"neighborhood","grid":[64,64],"window":[7,7]})");
    const Layout l = compile_layout(p, Shape{4096, 4096, 1}, tiles(64, 64));
    EXPECT_TRUE(l.tables[0].q_slots.empty());
  }
}

// Grids in residue-class + Hilbert order, checked exhaustively where they are chosen.
TEST(Layout, GridOrdersAreExact) {
  for (const char* spec : {R"({"type":"neighborhood","grid":[6,10,12],"window":[3,3,3],"dilation":[1,2,2]})",
                           R"({"type":"neighborhood","grid":[24,40],"window":[5,5],"dilation":[2,1],"causal":true})",
                           R"({"type":"neighborhood","grid":[200],"window":[9],"dilation":[4]})"}) {
    const Pattern p = Pattern::parse(spec);
    int64_t n = 1;
    for (int64_t g : std::get<Neighborhood>(p.node()).grid) n *= g;
    const Shape s{n, n, 1};
    for (int64_t t : {16, 32}) {
      const LayoutOptions o = tiles(t, t);
      const Layout l = compile_layout(p, s, o);
      if (std::get<Neighborhood>(p.node()).grid.size() > 1) {
        EXPECT_FALSE(l.tables[0].q_slots.empty()) << spec << " tile " << t;
      }
      check_layout(p, s, o, l, describe(p, s, o));
    }
  }
}

// Permutations never more than double the slots: tiny segments, strides past the
// sequence or one-cell residue classes keep natural order.
TEST(Layout, PaddingBoundsPermutations) {
  const LayoutOptions o = tiles(64, 64);
  for (const char* spec : {R"({"type":"longnet","segments":[3],"rates":[2]})", R"({"type":"strided","stride":5000})",
                           R"({"type":"neighborhood","grid":[64,64],"window":[3,3],"dilation":[32,32]})"}) {
    const Pattern p = Pattern::parse(spec);
    const Shape s{4096, 4096, 2};
    const Layout l = compile_layout(p, s, o);
    for (const BlockTable& t : l.tables) {
      EXPECT_TRUE(t.q_slots.empty()) << spec;
      EXPECT_TRUE(t.k_slots.empty()) << spec;
    }
  }
}

TEST(Layout, LongNetRowsThatNeverTakePart) {
  // One branch of rate 2 and a single head: odd positions are in no table.
  const Pattern p = P(R"({"type":"longnet","segments":[64],"rates":[2]})");
  const Shape s{256, 256, 1};
  const Layout l = compile_layout(p, s, tiles(32, 32));
  EXPECT_FALSE(l.covers_all_rows);
  check_layout(p, s, tiles(32, 32), l, "longnet rate 2, one head");
}

TEST(Layout, HeadsShareTables) {
  const Pattern p = P(R"({"type":"longnet","segments":[128,256],"rates":[1,4]})");
  const Layout l = compile_layout(p, Shape{512, 512, 16}, tiles(64, 64));
  // Branch rate 1: one table for all heads; rate 4: one table per group of 4 heads.
  ASSERT_EQ(l.tables.size(), 5u);
  EXPECT_EQ(l.tables[0].heads.size(), 16u);
  for (size_t t = 1; t < 5; ++t) EXPECT_EQ(l.tables[t].heads.size(), 4u);
}

TEST(Layout, Errors) {
  const Pattern p = P(R"({"type":"local_window","window":8})");
  auto code = [&](const Pattern& pat, const Shape& s, const LayoutOptions& o) {
    try {
      compile_layout(pat, s, o);
    } catch (const Error& e) {
      return std::pair{e.code(), std::string(e.what())};
    }
    return std::pair{ErrorCode::kInternal, std::string("no error")};
  };
  auto [c1, m1] = code(p, Shape{64, 64, 1}, tiles(0, 64));
  EXPECT_EQ(c1, ErrorCode::kInvalidArgument);
  EXPECT_NE(m1.find("layout: tile_m must be in [1, 4096] (got 0)"), std::string::npos) << m1;
  auto [c2, m2] = code(p, Shape{64, 64, 1}, tiles(64, 5000));
  EXPECT_EQ(c2, ErrorCode::kInvalidArgument);
  EXPECT_NE(m2.find("layout: tile_n must be in [1, 4096] (got 5000)"), std::string::npos) << m2;
  auto [c3, m3] = code(P(R"({"type":"adaptive","block":64,"top_k":4})"), Shape{256, 256, 1}, tiles(64, 64));
  EXPECT_EQ(c3, ErrorCode::kUnsupported);
  EXPECT_NE(m3.find("adaptive"), std::string::npos) << m3;
  auto [c4, m4] = code(p, Shape{int64_t{1} << 31, 64, 1}, tiles(64, 64));
  EXPECT_EQ(c4, ErrorCode::kUnsupported);
  EXPECT_NE(m4.find("at most 2^30 tokens"), std::string::npos) << m4;
  EXPECT_THROW(schedule_order_from_string("spiral"), Error);
  EXPECT_EQ(schedule_order_from_string("hilbert"), ScheduleOrder::kHilbert);
}

// Table memory grows with the active tiles, not with N^2.
TEST(Layout, MemoryIsLinearInActiveTiles) {
  const Pattern p = P(R"({"type":"local_window","window":1024})");
  for (int64_t n : {int64_t{1} << 16, int64_t{1} << 18}) {
    const Layout l = compile_layout(p, Shape{n, n, 8}, tiles(128, 128));
    ASSERT_EQ(l.tables.size(), 1u);
    const BlockTable& t = l.tables[0];
    EXPECT_LE(static_cast<int64_t>(t.cols.size()), (n / 128) * 10);
    EXPECT_TRUE(t.q_slots.empty());
    EXPECT_TRUE(t.k_slots.empty());
  }
}

}  // namespace
}  // namespace spattn::test
