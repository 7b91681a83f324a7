// The search-space tables and static pruning (no GPU, no compiles).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <spattn/autotune.hpp>

#include <algorithm>
#include <set>

#include "autotune/search_space.hpp"
#include "autotune/tuner.hpp"
#include "engine/backward.hpp"
#include "engine/select.hpp"

namespace spattn::autotune {
namespace {

engine::Problem problem_of(int64_t seq, int64_t heads = 16, int64_t head_dim = 128, DType dtype = DType::kBFloat16) {
  engine::Problem p;
  p.nq = p.nk = seq;
  p.heads = p.kv_heads = heads;
  p.head_dim = head_dim;
  p.dtype = dtype;
  return p;
}

TEST(SearchSpace, EveryTableConfigIsValidAndFitsItsFamily) {
  std::set<std::string> seen_rows;
  for (const TableRow& row : search_table()) {
    SCOPED_TRACE(fmt::format("{} hd{}", row.family, row.head_dim));
    const int limit = std::string(row.family) == "sm_90a" ? 227 * 1024 : 163 * 1024;
    EXPECT_FALSE(row.configs.empty());
    std::set<std::string> unique;
    const KernelFamily kernels = KernelConfig::parse(row.configs.front()).family;
    for (const char* text : row.configs) {
      const KernelConfig c = KernelConfig::parse(text);
      EXPECT_EQ(c.family, kernels) << text << ": one kernel family per row";
      for (DType d : row.dtypes) EXPECT_NO_THROW(c.check(row.head_dim, d, row.family, limit)) << text;
      EXPECT_TRUE(unique.insert(text).second) << "duplicate " << text;
    }
    for (DType d : row.dtypes)
      EXPECT_TRUE(seen_rows.insert(fmt::format("{}/{}/{}/{}", row.family, to_string(kernels), to_string(d), row.head_dim))
                      .second)
          << "two rows for the same (arch, kernel family, dtype, head dim)";
  }
  // Every head dim a kernel family supports has a row on each arch it runs on, for both dtypes.
  for (const char* arch : {"sm_90a", "sm_80"})
    for (const KernelFamilyInfo& f : kernel_families())
      for (DType d : {DType::kBFloat16, DType::kFloat16})
        for (int hd : f.head_dims)
          if (family_supports(f.family, hd, d, arch))
            EXPECT_TRUE(seen_rows.count(fmt::format("{}/{}/{}/{}", arch, f.name, to_string(d), hd)))
                << arch << " " << f.name << " " << hd;
}

TEST(SearchSpace, ArchFamiliesAndLimits) {
  EXPECT_EQ(arch_family("sm_90a"), "sm_90a");
  EXPECT_EQ(arch_family("sm_90"), "sm_90a");
  EXPECT_EQ(arch_family("sm_80"), "sm_80");
  EXPECT_EQ(arch_family("sm_89"), "sm_80");
  EXPECT_EQ(arch_limits("sm_90a").smem_per_block, 227 * 1024);
  EXPECT_EQ(arch_limits("sm_80").smem_per_block, 163 * 1024);
  EXPECT_EQ(arch_limits("sm_86").smem_per_block, 99 * 1024);
  EXPECT_FALSE(arch_limits("sm_80").from_device);
  try {
    arch_family("sm_75");
    FAIL() << "sm_75 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("sm_90a"), std::string::npos) << e.what();
  }
  try {
    table_configs("sm_90a", DType::kBFloat16, 80);
    FAIL() << "head dim 80 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("32, 64, 96, 128, 256"), std::string::npos) << e.what();
  }
  const runtime::DeviceInfo a100 = typical_device("sm_80");
  EXPECT_EQ(a100.sm_count, 108);
  EXPECT_EQ(a100.arch(), "sm_80");
  EXPECT_EQ(typical_device("sm_90a").arch(), "sm_90a");
  EXPECT_EQ(typical_device("sm_90a").sm_count, 132);
}

TEST(SearchSpace, HeuristicFirstDeduplicatedAndExpandedOverSchedules) {
  const Pattern window = Pattern::parse(R"({"type":"local_window","window":1024})");
  KernelConfig h;  // 128x64w4s1, row-major: also a table entry
  const auto cands = enumerate_candidates(window, problem_of(16384), arch_limits("sm_90a"), h);
  ASSERT_FALSE(cands.empty());
  EXPECT_TRUE(cands[0].heuristic);
  EXPECT_EQ(cands[0].config, h);
  std::set<std::string> names;
  for (size_t k = 0; k < cands.size(); ++k) {
    EXPECT_TRUE(names.insert(cands[k].config.to_string()).second) << "duplicate " << cands[k].config.to_string();
    EXPECT_EQ(cands[k].heuristic, k == 0);
    EXPECT_TRUE(cands[k].config.permute) << "a window layout has no permutation to switch off";
    EXPECT_TRUE(cands[k].pruned.empty()) << cands[k].config.to_string() << ": " << cands[k].pruned;
  }
  const std::vector<KernelConfig> table = table_configs("sm_90a", DType::kBFloat16, 128);
  // sm90 forward tiles of two or three consumer warpgroups also take turns, longest-first.
  const auto with_turns = std::count_if(table.begin(), table.end(), [](const KernelConfig& c) {
    return c.family == KernelFamily::kSm90 && c.tile_m >= 128;
  });
  EXPECT_GT(with_turns, 0);
  EXPECT_EQ(cands.size(), table.size() * schedule_orders().size() + with_turns);  // the heuristic is one of them
  for (const Candidate& c : cands) {
    if (c.config.turns) EXPECT_EQ(c.config.schedule, ScheduleOrder::kLongestFirst) << c.config.to_string();
  }
  for (ScheduleOrder o : schedule_orders())
    EXPECT_TRUE(std::any_of(cands.begin(), cands.end(), [&](const Candidate& c) { return c.config.schedule == o; }));
}

TEST(SearchSpace, PermutationVariantsOnlyWhereTheLayoutPermutes) {
  const Pattern longnet = Pattern::parse(R"({"type":"longnet","segments":[2048,4096],"rates":[1,2]})");
  EXPECT_TRUE(engine::layout_permutes(longnet, problem_of(8192, 4)));
  EXPECT_FALSE(engine::layout_permutes(Pattern::parse("dense"), problem_of(8192, 4)));
  const auto cands = enumerate_candidates(longnet, problem_of(8192, 4), arch_limits("sm_90a"), KernelConfig{});
  const auto off = std::count_if(cands.begin(), cands.end(), [](const Candidate& c) { return !c.config.permute; });
  const auto on = std::count_if(cands.begin(), cands.end(), [](const Candidate& c) {
    return c.config.permute && c.config.gather == TokenGather::kInline;
  });
  EXPECT_GT(off, 0);
  EXPECT_EQ(off, on) << "every tile x schedule with and without (the heuristic is one of them)";
  // sm90 tiles of a permuting layout also try their rows copied first; sm80 ones cannot.
  const auto sm90_off = std::count_if(cands.begin(), cands.end(), [](const Candidate& c) {
    return !c.config.permute && c.config.family == KernelFamily::kSm90;
  });
  const auto copied = std::count_if(cands.begin(), cands.end(), [](const Candidate& c) {
    return c.config.gather == TokenGather::kCopy;
  });
  EXPECT_GT(sm90_off, 0);
  EXPECT_EQ(copied, sm90_off);
  for (const Candidate& c : cands)
    if (c.config.gather == TokenGather::kCopy) {
      EXPECT_EQ(c.config.family, KernelFamily::kSm90) << c.config.to_string();
      EXPECT_TRUE(c.config.permute) << c.config.to_string();
    }
  const auto dense = enumerate_candidates(Pattern::parse("dense"), problem_of(8192, 4), arch_limits("sm_90a"), KernelConfig{});
  EXPECT_TRUE(std::none_of(dense.begin(), dense.end(),
                           [](const Candidate& c) { return c.config.gather == TokenGather::kCopy; }))
      << "nothing to copy in natural order";
}

TEST(SearchSpace, StaticPruningSaysWhy) {
  const Pattern dense = Pattern::parse("dense");
  // A small shared-memory limit prunes the big tiles and says by how much.
  TargetLimits small = arch_limits("sm_90a");
  small.smem_per_block = 60 * 1024;
  const auto cands = enumerate_candidates(dense, problem_of(4096), small, KernelConfig{});
  size_t pruned = 0;
  for (const Candidate& c : cands) {
    const int smem = c.config.smem_bytes(128);
    if (smem > small.smem_per_block) {
      ++pruned;
      EXPECT_NE(c.pruned.find("shared memory"), std::string::npos) << c.pruned;
      EXPECT_NE(c.pruned.find(std::to_string(smem)), std::string::npos) << c.pruned;
    } else {
      EXPECT_TRUE(c.pruned.empty()) << c.pruned;
    }
  }
  EXPECT_GT(pruned, 0u);
  EXPECT_LT(pruned, cands.size());

  // A heuristic config the kernel cannot hold is listed, pruned with validate()'s reason.
  const KernelConfig too_big = KernelConfig::parse("128x128w4s1");  // 32 rows per warp x 128 keys
  const auto c2 = enumerate_candidates(dense, problem_of(4096), arch_limits("sm_90a"), too_big);
  ASSERT_TRUE(c2[0].heuristic);
  EXPECT_NE(c2[0].pruned.find("score accumulators"), std::string::npos) << c2[0].pruned;

  // sm_86 (99 KiB): head dim 256 with two stages does not fit.
  const auto c3 = enumerate_candidates(dense, problem_of(4096, 16, 256), arch_limits("sm_86"),
                                       KernelConfig::parse("64x64w4s2"));
  EXPECT_FALSE(c3[0].pruned.empty());
}

// The backward pass's candidates: its own table (valid backward configs for every head
// dim the kernel supports), the baseline first, no schedule expansion (the backward
// kernel ignores the order), permutation variants where the layout permutes, and the
// shared memory of the smaller parts pruned with the reason.
TEST(SearchSpace, BackwardCandidatesComeFromTheBackwardTable) {
  for (const char* arch : {"sm_80", "sm_90a"})
    for (int d : backward_head_dims())
      for (const KernelConfig& c : backward_table_configs(arch, d))
        EXPECT_NO_THROW(check_backward_config(c, d, DType::kBFloat16, arch, 227 * 1024))
            << c.to_string() << " d" << d << " " << arch;
  EXPECT_THROW((void)backward_table_configs("sm_90a", 256), Error);
  // sm_90a adds the sm90 family's rows for the head dims it supports, and only there.
  auto has_sm90 = [](const std::vector<KernelConfig>& v) {
    return std::any_of(v.begin(), v.end(), [](const KernelConfig& c) { return c.family == KernelFamily::kSm90; });
  };
  EXPECT_TRUE(has_sm90(backward_table_configs("sm_90a", 128)));
  EXPECT_TRUE(has_sm90(backward_table_configs("sm_90a", 64)));
  EXPECT_FALSE(has_sm90(backward_table_configs("sm_90a", 96)));
  EXPECT_FALSE(has_sm90(backward_table_configs("sm_80", 128)));

  const Pattern window = Pattern::parse(R"({"type":"local_window","window":1024})");
  const KernelConfig base = KernelConfig::parse("64x128w8s2");
  const auto cands = enumerate_candidates(window, problem_of(16384), arch_limits("sm_90a"), base, TunePass::kBackward);
  ASSERT_FALSE(cands.empty());
  EXPECT_TRUE(cands[0].heuristic);
  EXPECT_EQ(cands[0].config, base);
  EXPECT_EQ(cands.size(), backward_table_configs("sm_90a", 128).size()) << "the baseline is a table row; one order";
  for (const Candidate& c : cands) {
    EXPECT_EQ(c.config.schedule, base.schedule);
    EXPECT_TRUE(c.pruned.empty()) << c.config.to_string() << ": " << c.pruned;
  }
  // 99 KiB (sm_86): 128 keys with two buffers do not fit; the reason names the memory.
  const auto small = enumerate_candidates(window, problem_of(16384), arch_limits("sm_86"), base, TunePass::kBackward);
  EXPECT_NE(small[0].pruned.find("shared memory"), std::string::npos) << small[0].pruned;
  EXPECT_TRUE(std::any_of(small.begin(), small.end(), [](const Candidate& c) { return c.pruned.empty(); }));
  // A forward-only config as the baseline is pruned with the backward check's words.
  const auto fwd = enumerate_candidates(window, problem_of(16384), arch_limits("sm_90a"),
                                        KernelConfig::parse("sm90:128x128s2"), TunePass::kBackward);
  EXPECT_NE(fwd[0].pruned.find("tile_m (queries per step) must be 64"), std::string::npos) << fwd[0].pruned;
  // Permutation variants for a permuting layout; its sm90 rows also with the rows copied.
  const Pattern longnet = Pattern::parse(R"({"type":"longnet","segments":[2048,4096],"rates":[1,2]})");
  const auto ln = enumerate_candidates(longnet, problem_of(8192, 4), arch_limits("sm_90a"), base, TunePass::kBackward);
  EXPECT_EQ(std::count_if(ln.begin(), ln.end(), [](const Candidate& c) { return !c.config.permute; }),
            std::count_if(ln.begin(), ln.end(),
                          [](const Candidate& c) { return c.config.permute && c.config.gather == TokenGather::kInline; }));
  const auto sm90_off = std::count_if(ln.begin(), ln.end(), [](const Candidate& c) {
    return !c.config.permute && c.config.family == KernelFamily::kSm90;
  });
  const auto copied = std::count_if(ln.begin(), ln.end(), [](const Candidate& c) {
    return c.config.gather == TokenGather::kCopy && c.config.family == KernelFamily::kSm90 && c.pruned.empty();
  });
  EXPECT_GT(sm90_off, 0);
  EXPECT_EQ(copied, sm90_off) << "every sm90 backward row, copied, passes the backward check";
}

TEST(SearchSpace, DryRunListsCandidatesWithoutAGpu) {
  AutotuneOptions o;
  o.arch = "sm_80";
  Autotuner tuner(o);
  TuneProblem p;
  p.nq = 16384;
  p.head_dim = 64;
  const auto cands = tuner.candidates(Pattern::parse(R"({"type":"local_window","window":1024})"), p);
  ASSERT_FALSE(cands.empty());
  EXPECT_TRUE(cands[0].heuristic);
  EXPECT_EQ(cands[0].config.to_string().substr(0, 10), "128x64w4s2") << "the heuristic for D=64";
  for (const CandidateReport& c : cands) EXPECT_TRUE(c.status == "candidate" || c.status == "pruned") << c.status;
  // The problem is checked like any other.
  p.kv_heads = 3;
  EXPECT_THROW(tuner.candidates(Pattern::parse("dense"), p), Error);
}

// The backward heuristic: the sm90 kernel on sm_90a at head dim 128 for natural-order
// layouts; the sm80 kernel for permuted layouts, other head dims and other archs; the
// reason names the family and why; heuristic_for_pass answers for both passes.
TEST(SearchSpace, BackwardHeuristicChoosesTheFamilyByArchHeadDimAndLayout) {
  const Pattern window = Pattern::parse(R"({"type":"local_window","window":1024})");
  const Pattern longnet = Pattern::parse(R"({"type":"longnet","segments":[2048,4096],"rates":[1,2]})");
  const runtime::DeviceInfo h200 = typical_device("sm_90a"), a100 = typical_device("sm_80");
  const engine::KernelChoice hopper = engine::backward_heuristic(window, problem_of(16384), h200);
  EXPECT_EQ(hopper.config.to_string(), "sm90:64x128s2") << hopper.source;
  EXPECT_NE(hopper.source.find("sm90 family"), std::string::npos) << hopper.source;
  const engine::KernelChoice permuted = engine::backward_heuristic(longnet, problem_of(16384), h200);
  EXPECT_EQ(permuted.config.to_string(), "sm90:64x128s2:copy") << permuted.source;
  EXPECT_NE(permuted.source.find("permuted tokens copied"), std::string::npos) << permuted.source;
  const Pattern grid = Pattern::parse(R"({"type":"neighborhood","grid":[128,128],"window":[13,13]})");
  const engine::KernelChoice partial = engine::backward_heuristic(grid, problem_of(16384), h200);
  EXPECT_EQ(partial.config.family, KernelFamily::kSm80) << partial.source;
  EXPECT_NE(partial.source.find("most of its tiles are partial"), std::string::npos) << partial.source;
  const engine::KernelChoice d64 = engine::backward_heuristic(window, problem_of(16384, 16, 64), h200);
  EXPECT_EQ(d64.config.family, KernelFamily::kSm80) << d64.source;
  const engine::KernelChoice ampere = engine::backward_heuristic(window, problem_of(16384), a100);
  EXPECT_EQ(ampere.config.to_string(), "64x128w8s2") << ampere.source;
  EXPECT_NE(ampere.source.find("not sm90"), std::string::npos) << ampere.source;
  EXPECT_EQ(engine::heuristic_for_pass(TunePass::kBackward, window, problem_of(16384), h200).config, hopper.config);
  EXPECT_EQ(engine::heuristic_for_pass(TunePass::kForward, window, problem_of(16384), h200).config,
            engine::heuristic(window, problem_of(16384), h200).config);
  for (const engine::KernelChoice* c : {&hopper, &permuted, &partial, &d64, &ampere})
    EXPECT_NO_THROW(check_backward_config(c->config, c == &d64 ? 64 : 128, DType::kBFloat16,
                                          c == &ampere ? "sm_80" : "sm_90a", 0));
}

}  // namespace
}  // namespace spattn::autotune
