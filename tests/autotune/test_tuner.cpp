// The tuner's GPU-free half: the check problem, and candidates compiled through the cache
// and pruned after compiling (two NVRTC compiles).
#include <gtest/gtest.h>

#include <spattn/autotune.hpp>
#include <spattn/cache.hpp>

#include "api/select.hpp"
#include "autotune/harness.hpp"
#include "autotune/tuner.hpp"
#include "tests/support/test_support.hpp"

namespace spattn::autotune {
namespace {

Selection heuristic(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device) {
  const api::Choice c = api::heuristic(pattern, problem, device);
  return {c.config, c.source};
}

engine::Problem problem_of(int64_t seq, int64_t heads, int64_t kv_heads) {
  engine::Problem p;
  p.batch = 2;
  p.nq = p.nk = seq;
  p.heads = heads;
  p.kv_heads = kv_heads;
  return p;
}

TEST(CheckProblem, SmallerButFaithful) {
  const Pattern window = Pattern::parse(R"({"type":"local_window","window":1024})");
  engine::Problem c = check_problem_for(window, problem_of(16384, 16, 16), 4096, 2);
  EXPECT_EQ(c.batch, 1);
  EXPECT_EQ(c.nq, 4096);
  EXPECT_EQ(c.nk, 4096);
  EXPECT_EQ(c.heads, 2);
  EXPECT_EQ(c.kv_heads, 2);
  // GQA keeps its ratio.
  c = check_problem_for(window, problem_of(16384, 16, 4), 4096, 2);
  EXPECT_EQ(c.heads, 4);
  EXPECT_EQ(c.kv_heads, 1);
  // Short problems stay as they are (apart from batch).
  c = check_problem_for(window, problem_of(1000, 2, 2), 4096, 2);
  EXPECT_EQ(c.nq, 1000);
  // Cross-attention keeps the ratio of lengths.
  engine::Problem cross = problem_of(8192, 2, 2);
  cross.nk = 32768;
  c = check_problem_for(window, cross, 4096, 2);
  EXPECT_EQ(c.nq, 4096);
  EXPECT_EQ(c.nk, 16384);
  // A grid needs its full size; head groups need all their heads.
  const Pattern grid = Pattern::parse(R"({"type":"neighborhood","grid":[64,64],"window":[7,7]})");
  c = check_problem_for(grid, problem_of(4096, 8, 8), 1024, 2);
  EXPECT_EQ(c.nq, 4096);
  EXPECT_EQ(c.heads, 2);
  const Pattern groups = Pattern::parse(
      R"({"heads":[{"first":0,"count":4,"pattern":{"type":"dense"}},{"first":4,"count":4,"pattern":{"type":"local_window","window":64}}]})");
  c = check_problem_for(groups, problem_of(16384, 8, 8), 4096, 2);
  EXPECT_EQ(c.nq, 4096);
  EXPECT_EQ(c.heads, 8);
}

TEST(Tolerances, PerDtype) {
  EXPECT_DOUBLE_EQ(tolerance_for(DType::kBFloat16).rel_l2, 1e-2);
  EXPECT_DOUBLE_EQ(tolerance_for(DType::kFloat16).rel_l2, 2e-3);
}

TEST(CompileCandidates, CompilesThroughTheCacheAndPrunesSpills) {
  test::TempDir dir("tune-compile");
  test::ScopedEnv env("SPATTN_CACHE_DIR", dir.path().string());
  const Pattern window = Pattern::parse(R"({"type":"local_window","window":256})");
  engine::Problem p = problem_of(2048, 2, 2);
  p.batch = 1;
  p.head_dim = 64;
  AutotuneOptions o;
  o.arch = "sm_90a";
  // The heuristic here is 64x64w4s2 (longest first); the same tile in another order
  // shares its kernel, so this is one forward kernel and the support kernels.
  o.configs = {KernelConfig::parse("64x64w4s2:hilbert")};
  const CacheCounters before = KernelCache::global_counters();
  const AutotuneReport r = compile_candidates(window, p, o, heuristic);
  const CacheCounters after = KernelCache::global_counters();
  ASSERT_EQ(r.candidates.size(), 2u) << r.to_table();
  EXPECT_EQ(after.compiles - before.compiles, 2u) << "timed and check kernels share a source; support once";
  for (const CandidateReport& c : r.candidates) {
    EXPECT_EQ(c.status, "compiled") << c.config.to_string() << ": " << c.detail;
    EXPECT_GT(c.registers, 0);
    EXPECT_GE(c.local_bytes, 0);
  }
  EXPECT_TRUE(r.candidates[0].heuristic);
  EXPECT_EQ(r.arch, "sm_90a");
  EXPECT_EQ(r.bucket.rfind("local_window|", 0), 0u) << r.bucket;
  EXPECT_NE(r.to_table().find("compile only: 2 candidates"), std::string::npos) << r.to_table();

  // Again: cache hits only. With no local memory allowed, everything but the baseline
  // (which is always timed) is pruned, saying why.
  o.max_local_bytes = -1;
  const AutotuneReport again = compile_candidates(window, p, o, heuristic);
  EXPECT_EQ(KernelCache::global_counters().compiles, after.compiles);
  EXPECT_EQ(again.candidates[0].status, "compiled");
  EXPECT_TRUE(again.candidates[0].cache_hit);
  EXPECT_EQ(again.candidates[1].status, "pruned");
  EXPECT_NE(again.candidates[1].detail.find("local memory"), std::string::npos) << again.candidates[1].detail;
  const nlohmann::json j = nlohmann::json::parse(again.to_json());
  EXPECT_EQ(j["candidates"][1]["status"], "pruned");
}

}  // namespace
}  // namespace spattn::autotune
