// The token predicate (DESIGN.md §3) against hand-computed cases and independent
// implementations: torchscale's LongNet index logic and NATTEN's neighborhood windows.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

#include <spattn/pattern.hpp>

#include "tests/patterns/torchscale.hpp"

namespace spattn::test {
namespace {

Pattern P(const char* json) { return Pattern::parse(json); }

TEST(Predicate, LocalWindowAndCausal) {
  const Pattern w = P(R"({"type":"local_window","window":8})");  // left = right = 4
  const Shape s{100, 100, 1};
  EXPECT_TRUE(w.allowed(s, 0, 50, 46));
  EXPECT_TRUE(w.allowed(s, 0, 50, 54));
  EXPECT_FALSE(w.allowed(s, 0, 50, 45));
  EXPECT_FALSE(w.allowed(s, 0, 50, 55));
  const Pattern c = w.with_causal(true);
  EXPECT_TRUE(c.allowed(s, 0, 50, 50));
  EXPECT_FALSE(c.allowed(s, 0, 50, 51));
  // Cross attention: causal is bottom-right aligned (j <= i + Nk - Nq), the window is not.
  const Shape x{10, 30, 1};
  const Pattern dense_causal = P(R"({"type":"dense","causal":true})");
  EXPECT_TRUE(dense_causal.allowed(x, 0, 0, 20));
  EXPECT_FALSE(dense_causal.allowed(x, 0, 0, 21));
  EXPECT_TRUE(dense_causal.allowed(x, 0, 9, 29));
  EXPECT_FALSE(w.allowed(x, 0, 0, 20));
  // Indices outside the shape are never allowed.
  EXPECT_FALSE(w.allowed(s, 0, -1, 0));
  EXPECT_FALSE(w.allowed(s, 0, 0, 100));
  EXPECT_FALSE(w.allowed(s, 1, 0, 0));
}

TEST(Predicate, GlobalLocalStridedDilated) {
  const Shape s{512, 512, 1};
  const Pattern gl = P(R"({"type":"global_local","global":16,"window":8})");
  EXPECT_TRUE(gl.allowed(s, 0, 300, 3));     // global key
  EXPECT_TRUE(gl.allowed(s, 0, 3, 300));     // global query
  EXPECT_TRUE(gl.allowed(s, 0, 300, 304));   // window
  EXPECT_FALSE(gl.allowed(s, 0, 300, 305));
  const Pattern rel = P(R"({"type":"strided","stride":64})");
  EXPECT_TRUE(rel.allowed(s, 0, 200, 8));
  EXPECT_TRUE(rel.allowed(s, 0, 8, 200));
  EXPECT_FALSE(rel.allowed(s, 0, 200, 9));
  const Pattern col = P(R"({"type":"strided","stride":64,"mode":"columns"})");
  EXPECT_TRUE(col.allowed(s, 0, 5, 128));
  EXPECT_FALSE(col.allowed(s, 0, 128, 129));
  // Block level: I = 10; distances 0, 1 (rate 1), 2, 4 (rate 2, reach 2), 3, 6 (rate 3).
  const Pattern dil = P(R"({"type":"dilated_sparse","block":4,"rates":[1,2,3],"reach":2})");
  std::set<int64_t> want{0, 1, 2, 3, 4, 6};
  for (int64_t kb = 0; kb < 20; ++kb) {
    EXPECT_EQ(dil.allowed(s, 0, 40, kb * 4 + 1), want.count(std::abs(10 - kb)) == 1) << kb;
  }
}

TEST(Predicate, Hierarchical) {
  const Pattern p = P(R"({"preset":"standard"})");
  const Shape s{4096, 4096, 1};
  // Query 0 is in a level-3 row (256-block 0, every 4th): it sees everything.
  EXPECT_TRUE(p.allowed(s, 0, 0, 4095));
  // Query 300: level 1 sees 64-blocks 2..6, level 2 (128-block 2, even) sees 128-blocks
  // 0..6; no level 3 (256-block 1).
  EXPECT_TRUE(p.allowed(s, 0, 300, 0));
  EXPECT_TRUE(p.allowed(s, 0, 300, 895));
  EXPECT_FALSE(p.allowed(s, 0, 300, 896));
  // Query 400: level 1 only (64-block 6: blocks 4..8 = tokens 256..575).
  EXPECT_FALSE(p.allowed(s, 0, 400, 255));
  EXPECT_TRUE(p.allowed(s, 0, 400, 256));
  EXPECT_TRUE(p.allowed(s, 0, 400, 575));
  EXPECT_FALSE(p.allowed(s, 0, 400, 576));
}

TEST(Predicate, CustomAndButterfly) {
  const Shape s{64, 64, 1};
  const Pattern c = P(R"({"type":"custom","block":16,"pairs":[[0,0],[3,1]]})");
  EXPECT_TRUE(c.allowed(s, 0, 5, 10));
  EXPECT_TRUE(c.allowed(s, 0, 50, 20));
  EXPECT_FALSE(c.allowed(s, 0, 50, 50));
  const Pattern b = P(R"({"type":"butterfly","block":4})");  // blocks 0..15
  for (int64_t kb = 0; kb < 16; ++kb) {
    const bool want = kb == 5 || kb == 4 || kb == 7 || kb == 1 || kb == 13;  // 5 ^ {0, 1, 2, 4, 8}
    EXPECT_EQ(b.allowed(s, 0, 21, kb * 4 + 3), want) << kb;
  }
}

// NATTEN's window, computed by enumerating each axis's residue class.
std::vector<int64_t> natten_axis(int64_t g, int64_t w, int64_t d, int64_t c) {
  std::vector<int64_t> cls;
  for (int64_t x = c % d; x < g; x += d) cls.push_back(x);
  const int64_t len = static_cast<int64_t>(cls.size());
  const int64_t idx = std::find(cls.begin(), cls.end(), c) - cls.begin();
  const int64_t n = std::min(w, len);
  const int64_t start = w >= len ? 0 : std::clamp<int64_t>(idx - w / 2, 0, len - w);
  return std::vector<int64_t>(cls.begin() + start, cls.begin() + start + n);
}

TEST(Predicate, NeighborhoodMatchesNattenWindows) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 40; ++trial) {
    const int dims = 1 + trial % 3;
    Neighborhood p;
    int64_t n = 1;
    for (int a = 0; a < dims; ++a) {
      p.grid.push_back(std::uniform_int_distribution<int64_t>(1, dims == 1 ? 40 : 9)(rng));
      p.window.push_back(std::uniform_int_distribution<int64_t>(1, 7)(rng));
      p.dilation.push_back(std::uniform_int_distribution<int64_t>(1, 3)(rng));
      n *= p.grid.back();
    }
    const Pattern pat(p);
    const Shape s{n, n, 1};
    SCOPED_TRACE(pat.to_json());
    for (int64_t i = 0; i < n; ++i) {
      // Coordinates of i (row-major) and the allowed coordinates per axis.
      std::vector<int64_t> c(dims);
      int64_t rest = i;
      for (int a = dims - 1; a >= 0; --a) {
        c[a] = rest % p.grid[a];
        rest /= p.grid[a];
      }
      std::vector<std::set<int64_t>> axis(dims);
      int64_t expected = 1;
      for (int a = 0; a < dims; ++a) {
        const auto keys = natten_axis(p.grid[a], p.window[a], p.dilation[a], c[a]);
        axis[a] = std::set<int64_t>(keys.begin(), keys.end());
        expected *= static_cast<int64_t>(keys.size());
      }
      int64_t count = 0;
      for (int64_t j = 0; j < n; ++j) {
        bool in = true;
        int64_t r = j;
        for (int a = dims - 1; a >= 0; --a) {
          in = in && axis[a].count(r % p.grid[a]) == 1;
          r /= p.grid[a];
        }
        ASSERT_EQ(pat.allowed(s, 0, i, j), in) << "i=" << i << " j=" << j;
        count += in;
      }
      EXPECT_EQ(count, expected);
    }
  }
}

TEST(Predicate, LongNetMatchesTorchscaleIndexLogic) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t n = std::uniform_int_distribution<int64_t>(1, 90)(rng);
    const int64_t heads = std::uniform_int_distribution<int64_t>(1, 9)(rng);
    const bool causal = trial % 2 == 1;
    LongNet l;
    const int branches = 1 + trial % 3;
    for (int b = 0; b < branches; ++b) {
      l.segments.push_back(std::uniform_int_distribution<int64_t>(1, 100)(rng));
      l.rates.push_back(std::uniform_int_distribution<int64_t>(1, 6)(rng));
    }
    const Pattern p(l, causal);
    const Shape s{n, n, heads};
    SCOPED_TRACE(p.to_json() + " N=" + std::to_string(n) + " H=" + std::to_string(heads));
    ASSERT_EQ(p.branch_count(), branches);
    for (int b = 0; b < branches; ++b) {
      const auto want = torchscale_branch(n, heads, l.segments[b], l.rates[b], causal);
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t i = 0; i < n; ++i) {
          bool any = false;
          for (int64_t j = 0; j < n; ++j) {
            ASSERT_EQ(p.allowed_in_branch(s, b, h, i, j), want[h][i * n + j] != 0)
                << "branch " << b << " head " << h << " i " << i << " j " << j;
            any = any || want[h][i * n + j];
          }
          // A query takes part iff it is kept by dense_to_sparse (it then sees itself).
          EXPECT_EQ(p.takes_part(s, b, h, i), any);
        }
      }
    }
  }
}

TEST(Predicate, Compositions) {
  const Shape s{64, 64, 4};
  const Pattern u = P(R"({"union":[{"type":"local_window","window":2},{"type":"strided","stride":16,"mode":"columns"}]})");
  EXPECT_TRUE(u.allowed(s, 0, 40, 41));
  EXPECT_TRUE(u.allowed(s, 0, 40, 16));
  EXPECT_FALSE(u.allowed(s, 0, 40, 17));
  const Pattern x = P(R"({"intersect":[{"type":"local_window","window":16},{"type":"dense","causal":true}]})");
  EXPECT_TRUE(x.allowed(s, 0, 40, 32));
  EXPECT_FALSE(x.allowed(s, 0, 40, 41));
  const Pattern hg = P(R"({"heads":[{"first":0,"count":1,"pattern":{"type":"dense","causal":true}},
      {"first":1,"count":3,"pattern":{"type":"longnet","segments":[8],"rates":[3]}}]})");
  EXPECT_TRUE(hg.allowed(s, 0, 10, 3));
  EXPECT_FALSE(hg.allowed(s, 0, 10, 11));
  // Heads 1..3 are a 3-head LongNet: local heads 0, 1, 2 are groups 0, 1, 2.
  EXPECT_TRUE(hg.allowed(s, 1, 8, 11));   // residues 0 and 3 % 3 == 0 in segment 1
  EXPECT_FALSE(hg.allowed(s, 2, 8, 11));
  EXPECT_TRUE(hg.allowed(s, 2, 9, 12));
  EXPECT_EQ(hg.branch_count(), 1);
  EXPECT_TRUE(hg.takes_part(s, 0, 0, 5));
  EXPECT_FALSE(hg.takes_part(s, 0, 1, 5));  // 5 % 3 != 0
  const Pattern br = P(R"({"branches":[{"type":"local_window","window":2},{"type":"longnet","segments":[16,32],"rates":[1,2]}],"causal":true})");
  EXPECT_EQ(br.branch_count(), 3);
  EXPECT_TRUE(br.allowed_in_branch(s, 0, 0, 10, 9));
  EXPECT_FALSE(br.allowed_in_branch(s, 0, 0, 10, 11));  // causal applies to every branch
  EXPECT_TRUE(br.allowed_in_branch(s, 1, 0, 20, 16));
  EXPECT_FALSE(br.allowed_in_branch(s, 1, 0, 20, 15));  // other segment
  EXPECT_TRUE(br.allowed_in_branch(s, 2, 0, 20, 2));    // rate 2, group 0
  EXPECT_FALSE(br.allowed_in_branch(s, 2, 0, 21, 3));   // 21 is in group 1: heads 2..3
  EXPECT_TRUE(br.allowed_in_branch(s, 2, 2, 21, 3));
  EXPECT_FALSE(br.allowed_in_branch(s, 3, 0, 1, 0));    // no such branch
}

}  // namespace
}  // namespace spattn::test
