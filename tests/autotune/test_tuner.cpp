// The tuner's GPU-free half: the check problem, and candidates compiled through the cache
// and pruned after compiling (two NVRTC compiles).
#include <gtest/gtest.h>

#include <spattn/autotune.hpp>
#include <spattn/cache.hpp>

#include "api/select.hpp"
#include "autotune/harness.hpp"
#include "autotune/search_space.hpp"
#include "autotune/tuner.hpp"
#include "tests/support/test_support.hpp"

namespace spattn::autotune {
namespace {

// The tuner's mechanics are tested on sm80 configurations (the same on every arch).
Selection heuristic(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device) {
  const api::Choice c = engine::heuristic_for(KernelFamily::kSm80, pattern, problem, device);
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

// The whole run with a stand-in GPU: the device description and each candidate's check
// and timing are faked (in the worker processes), everything else is real — candidates,
// compiles, worker processes, the winner, the database, and selection reading it.
class FakeGpuTune : public ::testing::Test {
 protected:
  static runtime::DeviceInfo fake_gpu() {
    runtime::DeviceInfo d = typical_device("sm_90a");
    d.name = "Fake H100";
    d.regs_per_sm = 65536;
    d.driver_version = 13000;
    return d;
  }
  AutotuneReport run(const std::function<nlohmann::json(const KernelConfig&)>& measure, double budget = 0) {
    AutotuneOptions o;
    o.configs = {KernelConfig::parse("64x64w4s2:hilbert"), KernelConfig::parse("64x64w4s2")};
    o.budget_seconds = budget;
    o.candidate_timeout_s = 30;
    TuneHooks hooks;
    hooks.probe = fake_gpu;
    hooks.measure = measure;
    return tune(pattern_, problem_, o, heuristic, hooks);
  }
  static const CandidateReport& find(const AutotuneReport& r, const std::string& config) {
    for (const CandidateReport& c : r.candidates)
      if (c.config.to_string() == config) return c;
    ADD_FAILURE() << "no candidate " << config << "\n" << r.to_table();
    return r.candidates.front();
  }
  static nlohmann::json ok(double ms) {
    return {{"status", "ok"}, {"median_ms", ms}, {"p20_ms", ms * 0.99}, {"p80_ms", ms * 1.01}, {"runs", 20},
            {"rel_l2_err", 1e-3}, {"max_abs_err", 1e-3}};
  }
  test::TempDir dir_{"tune-fake"};
  test::ScopedEnv env_{"SPATTN_CACHE_DIR", dir_.path().string()};
  Pattern pattern_ = Pattern::parse(R"({"type":"local_window","window":256})");
  engine::Problem problem_ = [] {
    engine::Problem p;
    p.nq = p.nk = 2048;
    p.heads = p.kv_heads = 2;
    p.head_dim = 64;
    return p;
  }();
};

TEST_F(FakeGpuTune, FastestCorrectWinsFaultsAreContainedAndTheDatabaseServesIt) {
  const AutotuneReport r = run([](const KernelConfig& c) -> nlohmann::json {
    if (c.schedule == ScheduleOrder::kRowMajor) std::abort();  // a kernel that takes its process down
    return ok(c.schedule == ScheduleOrder::kHilbert ? 0.8 : 1.0);
  });
  ASSERT_EQ(r.candidates.size(), 3u) << r.to_table();
  EXPECT_TRUE(r.isolated);
  EXPECT_EQ(r.candidates[0].config.to_string(), "64x64w4s2:longest");
  EXPECT_EQ(r.candidates[0].status, "ok");
  EXPECT_EQ(find(r, "64x64w4s2:hilbert").status, "ok");
  EXPECT_EQ(find(r, "64x64w4s2").status, "fault");
  EXPECT_NE(find(r, "64x64w4s2").detail.find("signal 6"), std::string::npos) << find(r, "64x64w4s2").detail;
  ASSERT_GE(r.best, 0);
  EXPECT_EQ(r.candidates[r.best].config.to_string(), "64x64w4s2:hilbert");
  EXPECT_NEAR(r.speedup, 1.25, 1e-9);
  EXPECT_NEAR(find(r, "64x64w4s2:hilbert").tflops, r.useful_flops / 0.8e9, 1e-6);
  ASSERT_TRUE(r.saved);
  EXPECT_EQ(std::filesystem::path(r.db_file).parent_path(), dir_.path() / "tuning");
  const std::string table = r.to_table();
  EXPECT_NE(table.find("1.250x"), std::string::npos) << table;
  EXPECT_NE(table.find("winner   64x64w4s2:hilbert"), std::string::npos) << table;

  // Selection reads it (what Attention::explain() shows).
  const api::Choice choice = api::choose(pattern_, problem_, fake_gpu(), true);
  EXPECT_EQ(choice.config.to_string(), "64x64w4s2:hilbert");
  EXPECT_EQ(choice.source.rfind("tuning database (", 0), 0u) << choice.source;
  EXPECT_NE(choice.source.find("1.25x"), std::string::npos) << choice.source;
}

TEST_F(FakeGpuTune, WrongAnswersAreNeverChosenAndNoiseKeepsTheHeuristic) {
  const AutotuneReport r = run([](const KernelConfig& c) -> nlohmann::json {
    if (c.schedule == ScheduleOrder::kHilbert) return {{"status", "wrong"}, {"detail", "rel L2 0.5"}};
    return ok(c.schedule == ScheduleOrder::kRowMajor ? 0.995 : 1.0);  // 0.5% faster: noise
  });
  EXPECT_EQ(find(r, "64x64w4s2:hilbert").status, "wrong");
  EXPECT_EQ(find(r, "64x64w4s2").status, "ok");
  ASSERT_EQ(r.best, r.heuristic) << r.to_table();
  EXPECT_FALSE(r.note.empty());
  EXPECT_TRUE(r.saved);
  EXPECT_EQ(api::choose(pattern_, problem_, fake_gpu(), true).config.to_string(), "64x64w4s2:longest");
}

TEST_F(FakeGpuTune, TheBudgetAlwaysLeavesTheBaseline) {
  const AutotuneReport r = run([](const KernelConfig&) { return ok(1.0); }, 1e-6);
  EXPECT_EQ(r.candidates[0].status, "ok") << r.to_table();
  EXPECT_EQ(r.candidates[1].status, "skipped");
  EXPECT_EQ(r.candidates[2].status, "skipped");
  EXPECT_EQ(r.best, r.heuristic);
}

// Backward tuning: the backward heuristic as the baseline, backward configs compiled as
// backward kernels, the winner under a "bwd|" key, read by choose_backward and not by the
// forward selection.
TEST_F(FakeGpuTune, BackwardTuningHasItsOwnEntriesAndTheBackwardSelectionReadsThem) {
  AutotuneOptions o;
  o.pass = TunePass::kBackward;
  o.configs = {KernelConfig::parse("64x64w4s2")};
  o.candidate_timeout_s = 30;
  TuneHooks hooks;
  hooks.probe = fake_gpu;
  hooks.measure = [](const KernelConfig& c) { return ok(c.tile_n == 64 ? 0.5 : 1.0); };
  const AutotuneReport r = tune(pattern_, problem_, o, heuristic, hooks);
  EXPECT_EQ(r.pass, TunePass::kBackward);
  ASSERT_EQ(r.candidates.size(), 2u) << r.to_table();
  EXPECT_TRUE(r.candidates[0].heuristic);
  EXPECT_EQ(r.candidates[0].config, engine::backward_heuristic(pattern_, problem_, fake_gpu()).config);
  for (const CandidateReport& c : r.candidates) {
    EXPECT_EQ(c.status, "ok") << c.config.to_string() << ": " << c.detail;
    EXPECT_GT(c.registers, 0) << "compiled as a backward kernel";
  }
  ASSERT_GE(r.best, 0);
  EXPECT_EQ(r.candidates[r.best].config.to_string(), "64x64w4s2");
  EXPECT_EQ(r.bucket.rfind("bwd|local_window|", 0), 0u) << r.bucket;
  EXPECT_NE(r.to_table().find("pass     backward"), std::string::npos) << r.to_table();
  EXPECT_EQ(nlohmann::json::parse(r.to_json())["pass"], "backward");
  const api::Choice b = api::choose_backward(pattern_, problem_, fake_gpu(), true);
  EXPECT_EQ(b.config.to_string(), "64x64w4s2");
  EXPECT_EQ(b.source.rfind("tuning database (", 0), 0u) << b.source;
  EXPECT_EQ(api::choose(pattern_, problem_, fake_gpu(), true).source.rfind("heuristic (", 0), 0u);
}

TEST_F(FakeGpuTune, NothingCorrectSavesNothing) {
  const AutotuneReport r = run([](const KernelConfig&) -> nlohmann::json { return {{"status", "wrong"}}; });
  EXPECT_EQ(r.best, -1);
  EXPECT_FALSE(r.saved);
  EXPECT_FALSE(std::filesystem::exists(dir_.path() / "tuning"));
  EXPECT_NE(r.to_table().find("nothing was saved"), std::string::npos);
}

}  // namespace
}  // namespace spattn::autotune
