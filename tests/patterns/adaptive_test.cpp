// Adaptive patterns on the host: the block geometry (diagonal, allowed blocks, k per
// query block) for square, rectangular and bottom-right-aligned causal problems, the
// reference selection's rules (diagonal kept, ties to the lower index, NaN as -inf,
// ascending output), and the host part of the layout (row capacities, tiles that must
// divide the block).
#include <gtest/gtest.h>

#include <spattn/adaptive.hpp>
#include <spattn/error.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>

namespace spattn {
namespace {

Pattern P(const char* json) { return Pattern::parse(json); }

template <class F>
void expect_error(F&& f, ErrorCode code, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected: " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(AdaptiveGeometry, SquareCausalAndNot) {
  const AdaptiveGeometry c = adaptive_geometry(P(R"({"type":"adaptive","block":64,"top_k":4,"causal":true})"), 1000, 1000);
  EXPECT_EQ(c.nq_blocks, 16);
  EXPECT_EQ(c.nk_blocks, 16);
  EXPECT_EQ(c.max_k, 4);
  for (int I = 0; I < 16; ++I) {
    EXPECT_EQ(c.diagonal[I], I);
    EXPECT_EQ(c.allowed[I], I + 1);
    EXPECT_EQ(c.k[I], std::min(4, I + 1));
  }
  const AdaptiveGeometry n = adaptive_geometry(P(R"({"type":"adaptive","block":64,"top_k":40})"), 1000, 1000);
  EXPECT_EQ(n.max_k, 16);  // top_k clipped to the blocks there are
  for (int I = 0; I < 16; ++I) {
    EXPECT_EQ(n.diagonal[I], I);
    EXPECT_EQ(n.allowed[I], 16);
    EXPECT_EQ(n.k[I], 16);
  }
}

TEST(AdaptiveGeometry, CausalIsBottomRightAligned) {
  // Nk > Nq: the last query sees every key; block 0's last query (63) reaches key 263.
  const Pattern causal = P(R"({"type":"adaptive","block":64,"top_k":2,"causal":true})");
  const AdaptiveGeometry a = adaptive_geometry(causal, 100, 300);
  ASSERT_EQ(a.nq_blocks, 2);
  ASSERT_EQ(a.nk_blocks, 5);
  EXPECT_EQ(a.diagonal[0], 4);  // 263 / 64
  EXPECT_EQ(a.allowed[0], 5);
  EXPECT_EQ(a.diagonal[1], 4);  // 299 / 64
  // Nk < Nq: the first queries see nothing (k = 0), later ones the first blocks.
  const AdaptiveGeometry b = adaptive_geometry(causal, 300, 100);
  ASSERT_EQ(b.nq_blocks, 5);
  ASSERT_EQ(b.nk_blocks, 2);
  for (int I = 0; I < 3; ++I) {  // reach = 64 I + 63 - 200 < 0 for I <= 2
    EXPECT_EQ(b.k[I], 0) << I;
    EXPECT_EQ(b.diagonal[I], -1) << I;
  }
  EXPECT_EQ(b.diagonal[3], 0);  // reach 55
  EXPECT_EQ(b.allowed[3], 1);
  EXPECT_EQ(b.k[3], 1);
  EXPECT_EQ(b.diagonal[4], 1);  // reach 99
  EXPECT_EQ(b.k[4], 2);
  // The geometry agrees with the token rule: block d(I) holds the last key that the
  // block's last query may attend under causal.
  for (const auto& [nq, nk] : {std::pair{100, 300}, std::pair{300, 100}, std::pair{1000, 1000}, std::pair{777, 1234}}) {
    const AdaptiveGeometry g = adaptive_geometry(causal, nq, nk);
    for (int64_t I = 0; I < g.nq_blocks; ++I) {
      const int64_t last_q = std::min<int64_t>((I + 1) * 64, nq) - 1;
      const int64_t last_key = last_q + nk - nq;  // causal: j <= i + Nk - Nq
      if (last_key < 0) {
        EXPECT_EQ(g.k[I], 0);
      } else {
        EXPECT_EQ(g.diagonal[I], std::min<int64_t>(last_key, nk - 1) / 64) << nq << "x" << nk << " I=" << I;
        EXPECT_EQ(g.allowed[I], g.diagonal[I] + 1);
      }
    }
  }
}

TEST(AdaptiveGeometry, KeepRatioRoundsUpExactProductsExactly) {
  // 0.1 * 30 is 3.0000000000000004 in doubles; it counts as 3.
  const AdaptiveGeometry g = adaptive_geometry(P(R"({"type":"adaptive","block":32,"keep_ratio":0.1})"), 960, 960);
  ASSERT_EQ(g.nk_blocks, 30);
  for (int I = 0; I < 30; ++I) EXPECT_EQ(g.k[I], 3);
  // Causal: ceil(0.25 * (I + 1)), at least 1.
  const AdaptiveGeometry c =
      adaptive_geometry(P(R"({"type":"adaptive","block":32,"keep_ratio":0.25,"causal":true})"), 960, 960);
  for (int I = 0; I < 30; ++I) EXPECT_EQ(c.k[I], (I + 1 + 3) / 4) << I;
  EXPECT_EQ(c.max_k, 8);
}

TEST(AdaptiveGeometry, RefusesOtherPatternsAndEmptyShapes) {
  expect_error([] { adaptive_geometry(P(R"({"type":"local_window","window":64})"), 100, 100); },
               ErrorCode::kInvalidArgument, "only a lone adaptive pattern");
  expect_error([] { adaptive_geometry(P(R"({"type":"adaptive","block":64,"top_k":2})"), 0, 100); },
               ErrorCode::kInvalidArgument, "empty problem");
  EXPECT_TRUE(is_adaptive(P(R"({"type":"adaptive","block":64,"top_k":2})")));
  EXPECT_FALSE(is_adaptive(P(R"({"union":[{"type":"adaptive","block":64,"top_k":2},{"type":"dense"}]})")));
}

TEST(AdaptiveSelect, DiagonalTiesNanAndOrder) {
  const AdaptiveGeometry g = adaptive_geometry(P(R"({"type":"adaptive","block":16,"top_k":3})"), 64, 64);
  ASSERT_EQ(g.nk_blocks, 4);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> scores = {
      // row 0: the diagonal (0) scores lowest but is kept; then 1 and 3 (tied, both fit)
      -5.f, 2.f, 1.f, 2.f,
      // row 1: ties everywhere: the lowest indices besides the diagonal (0, 2)
      1.f, 1.f, 1.f, 1.f,
      // row 2: NaN counts as -inf and ties with it: the lower index (0) wins
      nan, -std::numeric_limits<float>::infinity(), 0.f, 3.f,
      // row 3: the diagonal also scores highest: the next two
      0.f, 1.f, 2.f, 9.f};
  const std::vector<int32_t> got = adaptive_select_reference(g, scores.data());
  const std::vector<int32_t> want = {0, 1, 3, 0, 1, 2, 0, 2, 3, 1, 2, 3};
  EXPECT_EQ(got, want);
}

TEST(AdaptiveSelect, MatchesBruteForceOnRandomScores) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (const char* json : {R"({"type":"adaptive","block":32,"top_k":5,"causal":true})",
                           R"({"type":"adaptive","block":32,"keep_ratio":0.3})"}) {
    const AdaptiveGeometry g = adaptive_geometry(P(json), 700, 900);
    std::vector<float> s(static_cast<size_t>(g.nq_blocks * g.nk_blocks));
    for (float& x : s) x = u(rng);
    const std::vector<int32_t> got = adaptive_select_reference(g, s.data());
    for (int64_t I = 0; I < g.nq_blocks; ++I) {
      // Brute force: block J is chosen iff it is the diagonal, or allowed and fewer than
      // k - 1 other allowed non-diagonal blocks score higher.
      std::set<int32_t> want;
      for (int32_t J = 0; J < g.allowed[I]; ++J) {
        if (J == g.diagonal[I]) {
          want.insert(J);
          continue;
        }
        int better = 0;
        for (int32_t X = 0; X < g.allowed[I]; ++X)
          if (X != J && X != g.diagonal[I] && s[I * g.nk_blocks + X] > s[I * g.nk_blocks + J]) ++better;
        if (better < g.k[I] - 1) want.insert(J);
      }
      std::vector<int32_t> row(got.begin() + I * g.max_k, got.begin() + (I + 1) * g.max_k);
      std::vector<int32_t> expect(want.begin(), want.end());
      expect.resize(static_cast<size_t>(g.max_k), -1);
      EXPECT_EQ(row, expect) << json << " row " << I;
    }
  }
}

TEST(AdaptiveLayout, RowCapacitiesAndTables) {
  const Pattern p = P(R"({"type":"adaptive","block":128,"top_k":3,"causal":true})");
  LayoutOptions o;
  o.tile_m = 64;
  o.tile_n = 32;
  const Layout layout = adaptive_layout(p, Shape{1000, 1000, 3}, o);
  const AdaptiveGeometry g = adaptive_geometry(p, 1000, 1000);
  ASSERT_EQ(layout.tables.size(), 3u);
  ASSERT_EQ(layout.parts.size(), 1u);
  EXPECT_TRUE(layout.parts[0].pattern.causal());  // the partial-tile predicate
  EXPECT_EQ(layout.schedule.size(), 3u * 16u);
  for (size_t h = 0; h < 3; ++h) {
    const BlockTable& t = layout.tables[h];
    EXPECT_EQ(t.heads, std::vector<int32_t>{static_cast<int32_t>(h)});
    EXPECT_TRUE(t.q_slots.empty() && t.k_slots.empty());
    ASSERT_EQ(t.num_q_tiles, 16);
    EXPECT_EQ(t.num_k_tiles, 8 * 4);
    for (int64_t qt = 0; qt < 16; ++qt)
      EXPECT_EQ(t.row_ptr[qt + 1] - t.row_ptr[qt], g.k[qt / 2] * 4) << qt;
    EXPECT_EQ(static_cast<int64_t>(t.cols.size()), t.row_ptr.back());
  }
  const LayoutStats s = adaptive_stats(layout, 128);
  EXPECT_GT(s.allowed_pairs_total, 0);
  EXPECT_LE(s.allowed_pairs_total, 3 * 1000 * 1000);
  EXPECT_EQ(s.active_tiles, 3 * layout.tables[0].row_ptr.back());
}

TEST(AdaptiveLayout, TilesMustDivideTheBlock) {
  const Pattern p = P(R"({"type":"adaptive","block":64,"top_k":2})");
  LayoutOptions o;
  o.tile_m = 128;
  o.tile_n = 64;
  expect_error([&] { adaptive_layout(p, Shape{512, 512, 1}, o); }, ErrorCode::kInvalidArgument,
               "adaptive block 64 needs kernel tiles that divide it; the config's tiles are 128x64");
  o.tile_m = 64;
  o.rect = TokenRect{0, 256, 0, 512};
  expect_error([&] { adaptive_layout(p, Shape{512, 512, 1}, o); }, ErrorCode::kInvalidArgument,
               "whole problems only");
}

}  // namespace
}  // namespace spattn
