// Layout statistics against brute-force counts; the block picture; the pattern CLI.
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>
#include <spattn/layout.hpp>

#include "tests/patterns/layout_check.hpp"
#include "tests/support/test_support.hpp"

namespace spattn::test {
namespace {

struct Brute {
  int64_t pairs = 0;            // with branch multiplicity, all heads
  int64_t natural_touched = 0;  // tiles of the natural grid with an allowed pair, all heads
};

Brute brute_force(const Pattern& p, const Shape& s, int64_t tm, int64_t tn) {
  Brute b;
  const int64_t nqt = (s.nq + tm - 1) / tm, nkt = (s.nk + tn - 1) / tn;
  for (int64_t h = 0; h < s.heads; ++h) {
    std::vector<char> touched(static_cast<size_t>(nqt * nkt), 0);
    for (int64_t i = 0; i < s.nq; ++i) {
      for (int64_t j = 0; j < s.nk; ++j) {
        const int m = multiplicity(p, s, h, i, j);
        b.pairs += m;
        if (m) touched[(i / tm) * nkt + j / tn] = 1;
      }
    }
    for (char c : touched) b.natural_touched += c;
  }
  return b;
}

TEST(Stats, MatchBruteForce) {
  for (int trial = 0; trial < 80; ++trial) {
    const uint64_t seed = 7000 + trial;
    RandomPatterns gen(seed);
    const Shape s = gen.shape(150, 3);
    const Pattern p = gen.pattern(s, 2);
    const LayoutOptions o = gen.options();
    SCOPED_TRACE("seed " + std::to_string(seed) + ": " + describe(p, s, o));
    const Layout layout = compile_layout(p, s, o);
    const LayoutStats st = layout_stats(p, layout, 64);
    const Brute b = brute_force(p, s, o.tile_m, o.tile_n);
    EXPECT_EQ(st.allowed_pairs_total, b.pairs);
    EXPECT_DOUBLE_EQ(st.allowed_pairs, double(b.pairs) / double(s.heads));
    EXPECT_NEAR(st.density, double(b.pairs) / (double(s.heads) * double(s.nq) * double(s.nk)), 1e-12);
    EXPECT_DOUBLE_EQ(st.useful_flops, 4.0 * 64 * double(b.pairs));
    const int64_t nqt = (s.nq + o.tile_m - 1) / o.tile_m, nkt = (s.nk + o.tile_n - 1) / o.tile_n;
    EXPECT_NEAR(st.natural_block_density, double(b.natural_touched) / double(nqt * nkt * s.heads), 1e-12);
    int64_t listed = 0, full = 0, total = 0;
    for (const BlockTable& t : layout.tables) {
      const int64_t hs = static_cast<int64_t>(t.heads.size());
      listed += static_cast<int64_t>(t.cols.size()) * hs;
      for (int32_t f : t.full_count) full += f * hs;
      total += t.num_q_tiles * t.num_k_tiles * hs;
    }
    EXPECT_EQ(st.active_tiles, listed);
    EXPECT_EQ(st.full_tiles, full);
    EXPECT_EQ(st.partial_tiles, listed - full);
    EXPECT_EQ(st.total_tiles, total);
    EXPECT_NEAR(st.tile_density,
                double(listed) * double(o.tile_m * o.tile_n) / (double(s.nq) * double(s.nk) * double(s.heads)), 1e-9);
    EXPECT_EQ(st.parts, static_cast<int>(layout.parts.size()));
    EXPECT_GT(st.table_bytes, 0);
  }
}

TEST(Stats, FullAndPartialTilesOfNaturalLayouts) {
  const Shape s{200, 170, 2};
  for (const char* spec : {R"({"type":"local_window","window":40,"causal":true})",
                           R"({"type":"global_local","global":16,"window":24})", "standard",
                           R"({"type":"dilated_sparse","block":8,"rates":[1,3],"reach":2})"}) {
    SCOPED_TRACE(spec);
    const Pattern p = Pattern::parse(spec);
    LayoutOptions o;
    o.tile_m = 32;
    o.tile_n = 16;
    o.permute = false;
    const LayoutStats st = layout_stats(p, compile_layout(p, s, o));
    int64_t full = 0, partial = 0;
    for (int64_t h = 0; h < s.heads; ++h) {
      for (int64_t qt = 0; qt * 32 < s.nq; ++qt) {
        for (int64_t kt = 0; kt * 16 < s.nk; ++kt) {
          int64_t allowed = 0, cells = 0;
          bool padding = (kt + 1) * 16 > s.nk;
          for (int64_t i = qt * 32; i < std::min(s.nq, qt * 32 + 32); ++i) {
            for (int64_t j = kt * 16; j < std::min(s.nk, kt * 16 + 16); ++j) {
              ++cells;
              allowed += p.allowed(s, h, i, j);
            }
          }
          if (allowed == 0) continue;
          if (allowed == cells && !padding) ++full;
          else ++partial;
        }
      }
    }
    EXPECT_EQ(st.full_tiles, full);
    EXPECT_EQ(st.partial_tiles, partial);
  }
}

TEST(Stats, HierarchicalLevelCoverage) {
  const Shape s{1000, 1000, 1};
  for (bool causal : {false, true}) {
    const Pattern p = Pattern::parse("fine_grained").with_causal(causal);
    const LayoutStats st = layout_stats(p, compile_layout(p, s));
    const auto& levels = std::get<Hierarchical>(p.node()).levels;
    ASSERT_EQ(st.level_coverage.size(), levels.size());
    for (size_t l = 0; l < levels.size(); ++l) {
      const Pattern one(Hierarchical{{levels[l]}}, causal);
      int64_t pairs = 0, queries = 0;
      for (int64_t i = 0; i < s.nq; ++i) {
        if ((i / levels[l].block) % std::max<int64_t>(1, levels[l].stride / levels[l].block) == 0) ++queries;
        for (int64_t j = 0; j < s.nk; ++j) pairs += one.allowed(s, 0, i, j);
      }
      EXPECT_NEAR(st.level_coverage[l], double(pairs) / 1e6, 1e-12) << l;
      EXPECT_EQ(st.level_queries[l], queries) << l;
    }
  }
  EXPECT_TRUE(layout_stats(Pattern(), compile_layout(Pattern(), s)).level_coverage.empty());
}

TEST(Stats, LongNetDensityCountsBranchMultiplicity) {
  // Every query attends its own segment in each of two identical branches: density 2x.
  const Pattern p = Pattern::parse(R"({"type":"longnet","segments":[64,64],"rates":[1,1]})");
  const LayoutStats st = layout_stats(p, compile_layout(p, Shape{256, 256, 1}));
  EXPECT_EQ(st.allowed_pairs_total, 2 * 4 * 64 * 64);
  EXPECT_DOUBLE_EQ(st.density, 2.0 * 64 / 256);
}

TEST(Stats, RenderCausal) {
  const std::string pic = render_pattern(Pattern::parse("causal"), Shape{16, 16, 1}, 4);
  EXPECT_NE(pic.find("|+...|\n|#+..|\n|##+.|\n|###+|\n"), std::string::npos) << pic;
  // Large sequences are drawn as groups of blocks, at most max_cells per side.
  const std::string big = render_pattern(Pattern::parse(R"({"type":"local_window","window":1024})"),
                                         Shape{1 << 20, 1 << 20, 1}, 128, 0, 32);
  EXPECT_NE(big.find("32 x 32 cells"), std::string::npos) << big;
  EXPECT_THROW(render_pattern(Pattern(), Shape{16, 16, 1}, 4, 3), Error);
}

// --- the CLI (skipped when the spattn binary has not been built) --------------------

bool have_cli() { return std::filesystem::exists(cli_path()); }

TEST(PatternCli, StatsJsonMatchesTheLibrary) {
  if (!have_cli()) GTEST_SKIP() << "spattn CLI not built at " << cli_path();
  const CommandResult r = run_command(cli_path() + " --json pattern stats --pattern standard --seq 4096 --heads 2");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  const Pattern p = Pattern::parse("standard");
  LayoutOptions o;
  o.tile_m = o.tile_n = 128;
  const LayoutStats st = layout_stats(p, compile_layout(p, Shape{4096, 4096, 2}, o));
  EXPECT_DOUBLE_EQ(j["density"].get<double>(), st.density);
  EXPECT_EQ(j["allowed_pairs"].get<double>(), st.allowed_pairs);
  EXPECT_EQ(j["total_tiles"].get<int64_t>(), st.total_tiles);
  EXPECT_EQ(j["active_tiles"].get<int64_t>(), st.active_tiles);
  EXPECT_EQ(j["full_tiles"].get<int64_t>(), st.full_tiles);
  EXPECT_EQ(j["partial_tiles"].get<int64_t>(), st.partial_tiles);
  EXPECT_DOUBLE_EQ(j["useful_flops"].get<double>(), st.useful_flops);
  EXPECT_EQ(j["levels"].size(), 3u);
}

TEST(PatternCli, BadPatternExitsWith2AndNamesTheField) {
  if (!have_cli()) GTEST_SKIP() << "spattn CLI not built at " << cli_path();
  const CommandResult r =
      run_command(cli_path() + R"( pattern stats --pattern '{"type":"longnet","segments":[64],"rates":[0]}' --seq 256)");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("pattern.rates[0]: must be >= 1 (got 0)"), std::string::npos) << r.err;
  const CommandResult u = run_command(cli_path() + " pattern stats --pattern standard --seq 0");
  EXPECT_EQ(u.status, 2);
  EXPECT_NE(u.err.find("--seq"), std::string::npos) << u.err;
}

TEST(PatternCli, PresetsAndShow) {
  if (!have_cli()) GTEST_SKIP() << "spattn CLI not built at " << cli_path();
  const CommandResult r = run_command(cli_path() + " pattern presets");
  ASSERT_EQ(r.status, 0) << r.err;
  for (const Preset& p : presets()) EXPECT_NE(r.out.find(p.name), std::string::npos) << p.name;
  const CommandResult s = run_command(cli_path() + " pattern show --pattern causal --seq 512 --tile 128");
  ASSERT_EQ(s.status, 0) << s.err;
  EXPECT_NE(s.out.find("|###+|"), std::string::npos) << s.out;
}

}  // namespace
}  // namespace spattn::test
