// On the GPU: `spattn autotune --op scan|performer` tunes a small problem (every candidate
// checked against the fp64 reference, none wrong), saves the winner under its linear key,
// and SelectiveScan / Performer then run the stored configuration, saying that the tuning
// database decided. Skips without a GPU (and, for Performer, without cuBLAS).
//
// The tuner runs through the CLI so that its worker processes start from a process that
// has not touched CUDA (this test process has).
#include <gtest/gtest.h>

#include <spattn/linear.hpp>

#include <nlohmann/json.hpp>

#include "engine/reference.hpp"
#include "runtime/blas.hpp"
#include "runtime/device.hpp"
#include "tests/support/gpu.hpp"
#include "tests/support/test_support.hpp"

namespace spattn {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json tune(const fs::path& cache, const std::string& args) {
  const auto r = test::run_command("env SPATTN_CACHE_DIR='" + cache.string() + "' '" + test::cli_path() +
                                   "' --json autotune " + args);
  EXPECT_EQ(r.status, 0) << r.err << r.out;
  if (r.status != 0) return json();
  json report = json::parse(r.out);
  EXPECT_TRUE(report["saved"].get<bool>()) << r.out;
  EXPECT_TRUE(fs::exists(report["db_file"].get<std::string>())) << r.out;
  size_t ok = 0;
  for (const json& c : report["candidates"]) {
    EXPECT_NE(c["status"], "wrong") << c.dump();
    ok += c["status"] == "ok";
  }
  EXPECT_GT(ok, 1u) << r.out;
  EXPECT_TRUE(report.contains("best")) << r.out;
  EXPECT_GT(report.value("speedup", 0.0), 0.0) << "the report says winner vs heuristic\n" << r.out;
  return report;
}

TEST(LinearAutotuneGpu, ScanPlanPicksTheStoredConfig) {
  SPATTN_REQUIRE_GPU();
  test::TempDir dir("gpu-tune-scan");
  test::ScopedEnv env("SPATTN_CACHE_DIR", dir.path().string());
  const json report = tune(dir.path(), "--op scan --batch 1 --length 2048 --channels 128 --state 16 --warmup 2");
  ASSERT_TRUE(report.contains("best"));
  EXPECT_EQ(report["bucket"], "scan|bc128|l2048|n16|bf16");

  SelectiveScan scan;
  const ScanExplanation ex = scan.prepare(ScanShape{1, 2048, 128, 16, DType::kBFloat16});
  EXPECT_EQ(ex.config.to_string(), report["best"].get<std::string>()) << ex.to_string();
  EXPECT_EQ(ex.config_source.rfind("tuning database (", 0), 0u) << ex.to_string();
  EXPECT_NE(ex.config_source.find("scan|bc128|l2048|n16|bf16"), std::string::npos) << ex.to_string();
  // Without the database: the heuristic, saying so.
  SelectiveScanOptions off;
  off.use_tuning_db = false;
  const ScanExplanation h = SelectiveScan(off).prepare(ScanShape{1, 2048, 128, 16, DType::kBFloat16});
  EXPECT_EQ(h.config.to_string(), report["heuristic"].get<std::string>()) << h.to_string();
  EXPECT_EQ(h.config_source.rfind("heuristic (", 0), 0u) << h.to_string();
}

TEST(LinearAutotuneGpu, CausalPerformerPicksTheStoredConfig) {
  SPATTN_REQUIRE_GPU();
  runtime::make_current(0);
  if (!runtime::blas::available()) GTEST_SKIP() << "performer needs cuBLAS: " << runtime::blas::unavailable_reason();
  test::TempDir dir("gpu-tune-performer");
  test::ScopedEnv env("SPATTN_CACHE_DIR", dir.path().string());
  const json report =
      tune(dir.path(), "--op performer --batch 1 --length 1024 --heads 2 --head-dim 64 --features 64 --warmup 2");
  ASSERT_TRUE(report.contains("best"));
  EXPECT_EQ(report["bucket"], "performer|causal|bh2|n1024|m64|dv64|bf16");

  const int64_t n = 1024, heads = 2, d = 64, elems = n * heads * d;
  runtime::DeviceBuffer q(elems * 2), k(elems * 2), v(elems * 2), o(elems * 2);
  engine::fill_random(q.data(), elems, DType::kBFloat16, 1);
  engine::fill_random(k.data(), elems, DType::kBFloat16, 2);
  engine::fill_random(v.data(), elems, DType::kBFloat16, 3);
  auto view = [&](const runtime::DeviceBuffer& b) {
    return TensorView::contiguous(b.data(), DType::kBFloat16, {1, n, heads, d});
  };
  PerformerOptions opts;
  opts.features = 64;
  opts.causal = true;
  Performer perf(d, opts);
  perf.forward(view(q), view(k), view(v), view(o));
  runtime::synchronize();
  const std::string ex = perf.explain();
  EXPECT_NE(ex.find("config    " + report["best"].get<std::string>() + " (chunk x slice) — tuning database ("),
            std::string::npos)
      << ex;
}

}  // namespace
}  // namespace spattn
