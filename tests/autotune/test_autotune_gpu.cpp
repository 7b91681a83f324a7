// On the GPU: `spattn autotune` picks a configuration at least as fast as the heuristic's
// (window and LongNet at 16k, timed again here, independently of the tuner), no candidate
// of the search space computes a wrong answer, Attention picks the tuned configuration
// up from the database, and a run on a prewarmed cache compiles nothing.
//
// The tuner runs through the CLI so that its worker processes start from a process that
// has not touched CUDA (this test process has).
#include <gtest/gtest.h>

#include <spattn/attention.hpp>
#include <spattn/autotune.hpp>
#include <spattn/cache.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>

#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "tests/support/gpu.hpp"
#include "tests/support/test_support.hpp"

namespace spattn {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Inputs {
  runtime::DeviceBuffer q, k, v, o;
  TensorView tq, tk, tv, to;
  Inputs(int64_t n, int64_t heads, int64_t d, DType dtype, uint64_t seed) {
    const int64_t elems = n * heads * d;
    q = runtime::DeviceBuffer(elems * 2);
    k = runtime::DeviceBuffer(elems * 2);
    v = runtime::DeviceBuffer(elems * 2);
    o = runtime::DeviceBuffer(elems * 2);
    engine::fill_random(q.data(), elems, dtype, seed + 1);
    engine::fill_random(k.data(), elems, dtype, seed + 2);
    engine::fill_random(v.data(), elems, dtype, seed + 3);
    tq = TensorView::contiguous(q.data(), dtype, {1, n, heads, d});
    tk = TensorView::contiguous(k.data(), dtype, {1, n, heads, d});
    tv = TensorView::contiguous(v.data(), dtype, {1, n, heads, d});
    to = TensorView::contiguous(o.data(), dtype, {1, n, heads, d});
    runtime::synchronize();
  }
};

float time_once(Attention& attn, const Inputs& in) {
  runtime::Event start, stop;
  start.record();
  attn.forward(in.tq, in.tk, in.tv, in.to);
  stop.record();
  stop.synchronize();
  return stop.elapsed_ms_since(start);
}

float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

test::CommandResult spattn(const fs::path& cache, const std::string& args) {
  return test::run_command("env SPATTN_CACHE_DIR='" + cache.string() + "' '" + test::cli_path() + "' " + args);
}

void tuned_pick_is_at_least_as_fast(const std::string& pattern_json) {
  SPATTN_REQUIRE_GPU();
  test::TempDir dir("gpu-tune");
  test::ScopedEnv env("SPATTN_CACHE_DIR", dir.path().string());
  constexpr int64_t kSeq = 16384, kHeads = 16, kDim = 128;

  const auto r = spattn(dir.path(), "--json autotune --budget-seconds 400 --pattern '" + pattern_json + "' --seq 16384 --heads 16");
  ASSERT_EQ(r.status, 0) << r.err << r.out;
  const json report = json::parse(r.out);
  ASSERT_TRUE(report.contains("best")) << r.out;
  ASSERT_TRUE(report["saved"].get<bool>());
  EXPECT_TRUE(fs::exists(report["db_file"].get<std::string>()));
  size_t ok = 0;
  for (const json& c : report["candidates"]) {
    EXPECT_NE(c["status"], "wrong") << c.dump();
    EXPECT_NE(c["status"], "fault") << c.dump();
    EXPECT_NE(c["status"], "timeout") << c.dump();
    ok += c["status"] == "ok";
    if (c["heuristic"].get<bool>()) {
      EXPECT_EQ(c["status"], "ok") << "the baseline must be timed: " << c.dump();
    }
  }
  EXPECT_GE(ok, 2u);
  const std::string best = report["best"];
  std::cout << "autotune: best " << best << " heuristic " << report["heuristic"] << " speedup "
            << report.value("speedup", 0.0) << " (" << report["device"] << ")\n";

  // Independently of the tuner: the database's pick against the heuristic, interleaved.
  const Pattern pattern = Pattern::parse(pattern_json);
  Inputs in(kSeq, kHeads, kDim, DType::kBFloat16, 7);
  Attention tuned(pattern);
  AttentionOptions off;
  off.use_tuning_db = false;
  Attention heuristic(pattern, off);
  tuned.forward(in.tq, in.tk, in.tv, in.to);
  heuristic.forward(in.tq, in.tk, in.tv, in.to);
  runtime::synchronize();
  EXPECT_EQ(tuned.explanation().config.to_string(), best);
  EXPECT_EQ(tuned.explanation().config_source.rfind("tuning database (", 0), 0u) << tuned.explain();
  EXPECT_EQ(heuristic.explanation().config_source.rfind("heuristic (", 0), 0u) << heuristic.explain();
  for (int w = 0; w < 5; ++w) {
    time_once(tuned, in);
    time_once(heuristic, in);
  }
  std::vector<float> t_tuned, t_heur;
  for (int rep = 0; rep < 30; ++rep) {
    t_tuned.push_back(time_once(tuned, in));
    t_heur.push_back(time_once(heuristic, in));
  }
  const float mt = median(t_tuned), mh = median(t_heur);
  std::cout << "tuned " << best << " " << mt << " ms, heuristic " << heuristic.explanation().config.to_string() << " "
            << mh << " ms (median of 30, interleaved)\n";
  EXPECT_LE(mt, 1.03f * mh) << "tuned " << best << " vs heuristic " << heuristic.explanation().config.to_string();
}

TEST(AutotuneGpu, PickAtLeastAsFastAsHeuristicWindow16k) {
  tuned_pick_is_at_least_as_fast(R"({"type":"local_window","window":1024})");
}

TEST(AutotuneGpu, PickAtLeastAsFastAsHeuristicLongNet16k) {
  tuned_pick_is_at_least_as_fast(R"({"type":"longnet","segments":[2048,4096,8192],"rates":[1,2,4]})");
}

TEST(AutotuneGpu, PrewarmedRunCompilesNothing) {
  SPATTN_REQUIRE_GPU();
  test::TempDir dir("gpu-prewarm");
  test::ScopedEnv env("SPATTN_CACHE_DIR", dir.path().string());
  const std::string arch = runtime::device_info(0).arch();
  const fs::path manifest = dir.path() / "manifest.json";
  std::ofstream(manifest) << json{{"archs", {arch}},
                                  {"dtypes", {"bf16", "fp16"}},
                                  {"head_dims", {128}},
                                  {"entries",
                                   {{{"pattern", {{"type", "local_window"}, {"window", 1024}}}, {"seq", {4096}}, {"heads", 4}},
                                    {{"pattern", {{"type", "longnet"}, {"segments", {2048, 4096}}, {"rates", {1, 2}}}},
                                     {"seq", {8192}},
                                     {"heads", 4}}}}}
                                 .dump();
  const auto r = spattn(dir.path(), "--json prewarm --load-all " + manifest.string());
  ASSERT_EQ(r.status, 0) << r.err << r.out;
  const json report = json::parse(r.out);
  EXPECT_EQ(report["failed"], 0);
  EXPECT_EQ(report["loaded"], report["kernels"].size()) << "every kernel is for this GPU's arch";

  const CacheCounters before = KernelCache::global_counters();
  for (const auto& [json_pattern, seq] : {std::pair<std::string, int64_t>{R"({"type":"local_window","window":1024})", 4096},
                                          {R"({"type":"longnet","segments":[2048,4096],"rates":[1,2]})", 8192}}) {
    for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
      Inputs in(seq, 4, 128, dtype, 3);
      Attention attn(Pattern::parse(json_pattern));
      attn.forward(in.tq, in.tk, in.tv, in.to);
      runtime::synchronize();
      EXPECT_TRUE(attn.explanation().cache_hit) << attn.explain();
    }
  }
  const CacheCounters after = KernelCache::global_counters();
  EXPECT_EQ(after.compiles - before.compiles, 0u) << "a prewarmed cache serves every kernel";
  EXPECT_EQ(after.misses - before.misses, 0u);
  EXPECT_GT(after.hits - before.hits, 0u);
}

TEST(AutotuneGpu, InProcessFallbackWhenCudaIsAlreadyLoaded) {
  SPATTN_REQUIRE_GPU();  // loads the driver here: the tuner must notice and run in-process
  test::TempDir dir("gpu-inproc");
  test::ScopedEnv env("SPATTN_CACHE_DIR", dir.path().string());
  AutotuneOptions o;
  o.save = false;
  o.budget_seconds = 120;
  TuneProblem p;
  p.nq = 2048;
  p.heads = 2;
  const AutotuneReport report = Autotuner(o).tune(Pattern::parse(R"({"type":"local_window","window":256})"), p);
  EXPECT_FALSE(report.isolated);
  ASSERT_GE(report.best, 0) << report.to_table();
  for (const CandidateReport& c : report.candidates) EXPECT_NE(c.status, "wrong") << c.config.to_string() << c.detail;
  EXPECT_FALSE(report.saved);
  EXPECT_FALSE(fs::exists(dir.path() / "tuning"));
}

// The backward pass's tuning on the GPU: every candidate's gradients pass the fp64 check,
// the winner is saved under a bwd| key, and the backward selection then reads it.
TEST(AutotuneGpu, BackwardTuningChecksTimesAndSavesForBackward) {
  SPATTN_REQUIRE_GPU();
  test::TempDir dir("gpu-tune-bwd");
  const auto r = spattn(dir.path(), "--json autotune --backward --pattern '{\"type\":\"local_window\",\"window\":512}' "
                                    "--seq 4096 --heads 4 --configs 64x64w4s2");
  ASSERT_EQ(r.status, 0) << r.err << r.out;
  const json report = json::parse(r.out);
  EXPECT_EQ(report["pass"], "backward");
  ASSERT_EQ(report["candidates"].size(), 2u) << r.out;  // the heuristic's and 64x64w4s2
  for (const json& c : report["candidates"]) {
    EXPECT_EQ(c["status"], "ok") << c.dump();
    EXPECT_LE(c["rel_l2_err"].get<double>(), 3e-2) << c.dump();
  }
  ASSERT_TRUE(report["saved"].get<bool>()) << r.out;
  EXPECT_EQ(report["bucket"].get<std::string>().rfind("bwd|local_window|", 0), 0u) << r.out;
}

}  // namespace
}  // namespace spattn
