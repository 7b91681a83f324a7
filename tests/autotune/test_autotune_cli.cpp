// spattn autotune / spattn prewarm through the real binary: dry runs, exit codes, usage
// errors that name the field.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <fstream>

#include "runtime/driver.hpp"
#include "tests/support/test_support.hpp"

namespace spattn {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class AutotuneCli : public ::testing::Test {
 protected:
  test::CommandResult spattn(const std::string& args) const {
    return test::run_command("env SPATTN_CACHE_DIR='" + dir_.path().string() + "' '" + test::cli_path() + "' " + args);
  }
  test::TempDir dir_{"cli-tune"};
};

TEST_F(AutotuneCli, DryRunListsCandidatesAnywhere) {
  auto r = spattn("--json autotune --dry-run --pattern '{\"type\":\"local_window\",\"window\":1024}' --seq 16384 "
                  "--arch sm_90a");
  ASSERT_EQ(r.status, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["arch"], "sm_90a");
  ASSERT_GT(j["candidates"].size(), 10u);
  EXPECT_TRUE(j["candidates"][0]["heuristic"].get<bool>());
  for (const auto& c : j["candidates"]) {
    EXPECT_EQ(c["status"], "candidate") << c.dump();
    EXPECT_GT(c["smem_bytes"].get<int>(), 0);
  }
  // The text form: a table with the heuristic marked, and the count.
  r = spattn("autotune --dry-run --pattern local_window --seq 4096 --head-dim 256 --arch sm_86");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("(h)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("pruned"), std::string::npos) << "99 KiB cannot hold every D=256 tile\n" << r.out;
  EXPECT_NE(r.out.find("candidates,"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::is_empty(dir_.path()) || !fs::exists(dir_.path() / "tuning")) << "a dry run writes nothing";
}

TEST_F(AutotuneCli, BackwardDryRunListsBackwardConfigs) {
  auto r = spattn("--json autotune --backward --dry-run --pattern '{\"type\":\"local_window\",\"window\":1024}' "
                  "--seq 16384 --arch sm_86");
  ASSERT_EQ(r.status, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["pass"], "backward");
  ASSERT_GT(j["candidates"].size(), 3u);
  EXPECT_TRUE(j["candidates"][0]["heuristic"].get<bool>());
  size_t viable = 0;
  for (const auto& c : j["candidates"]) {
    EXPECT_EQ(c["config"].get<std::string>().rfind("sm90:", 0), std::string::npos) << c.dump();
    viable += c["status"] == "candidate";
  }
  EXPECT_GT(viable, 0u);
  EXPECT_EQ(j["candidates"][0]["status"], "candidate") << "the heuristic fits the 99 KiB part";
  // --configs names backward configs: a forward-only one is a usage error naming why.
  r = spattn("autotune --backward --dry-run --pattern local_window --seq 4096 --configs sm90:128x128s2");
  EXPECT_EQ(r.status, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("sm90 family compiles for sm_90a"), std::string::npos) << r.err;
}

TEST_F(AutotuneCli, DryRunOverAManifest) {
  const fs::path m = dir_.path() / "m.json";
  std::ofstream(m) << R"({"archs":["sm_80"],"dtypes":["bf16","fp16"],"head_dims":[64],
                          "entries":[{"pattern":"local_window","seq":[4096,8192],"heads":8}]})";
  auto r = spattn("--json autotune --dry-run --manifest " + m.string());
  ASSERT_EQ(r.status, 0) << r.err;
  const json j = json::parse(r.out);
  ASSERT_EQ(j["runs"].size(), 4u) << "seq x dtypes x head dims";
  for (const json& run : j["runs"]) EXPECT_EQ(run["arch"], "sm_80") << "the manifest's first arch without a GPU";
  r = spattn("autotune --dry-run --manifest " + m.string() + " --seq 4096");
  EXPECT_EQ(r.status, 2) << r.err;
  std::ofstream(m) << R"({"archs":["sm_80"],"dtypes":["bf16"],"head_dims":[64],"entries":[{"pattern":"local_window"}]})";
  r = spattn("autotune --dry-run --manifest " + m.string());
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("manifest.entries[0].seq"), std::string::npos) << r.err;
}

TEST_F(AutotuneCli, NeedsAGpuExceptForDryRuns) {
  if (runtime::has_gpu()) GTEST_SKIP() << "this host has a GPU";
  const auto r = spattn("autotune --pattern local_window --seq 4096");
  EXPECT_EQ(r.status, 3) << r.out << r.err;
  EXPECT_NE(r.err.find("GPU"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST_F(AutotuneCli, UsageErrorsExitTwo) {
  auto r = spattn("autotune --pattern local_window --seq 4096 --reps 5");
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("--reps"), std::string::npos) << r.err;
  r = spattn("autotune --pattern '{\"type\":\"local_window\",\"window\":-1}' --seq 4096 --dry-run");
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("window"), std::string::npos) << r.err;
  r = spattn("autotune --pattern dense --seq 4096 --head-dim 80 --dry-run");
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("head dim"), std::string::npos) << r.err;
  r = spattn("autotune --pattern dense --seq 4096 --heads 16 --kv-heads 3 --dry-run");
  EXPECT_EQ(r.status, 2) << r.err;
  r = spattn("autotune --pattern dense --dry-run");
  EXPECT_EQ(r.status, 2) << "--seq is required";
  r = spattn("autotune --pattern dense --seq 4096 --dry-run --arch sm_75");
  EXPECT_EQ(r.status, 2) << r.err;
}

TEST_F(AutotuneCli, PrewarmManifestErrorsExitTwoNamingTheField) {
  const fs::path m = dir_.path() / "m.json";
  std::ofstream(m) << R"({"archs":["sm_90a"],"dtypes":["bf16"],"head_dims":[128],
                          "entries":[{"pattern":"local_window","seq":[4096, 0]}]})";
  auto r = spattn("prewarm " + m.string());
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("manifest.entries[0].seq[1]"), std::string::npos) << r.err;
  r = spattn("prewarm " + (dir_.path() / "missing.json").string());
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("cannot read"), std::string::npos) << r.err;
  std::ofstream(m) << R"({"archs":["sm_90a"],"dtypes":["bf16"],"head_dims":[128],"entries":[{"pattern":"dense","seq":64}]})";
  r = spattn("prewarm --arch sm_80 " + m.string());
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("not in the manifest"), std::string::npos) << r.err;
}

TEST_F(AutotuneCli, PrewarmLoadAllNeedsAGpu) {
  if (runtime::has_gpu()) GTEST_SKIP() << "this host has a GPU";
  const fs::path m = dir_.path() / "m.json";
  std::ofstream(m) << R"({"archs":["sm_90a"],"dtypes":["bf16"],"head_dims":[128],"entries":[{"pattern":"dense","seq":64}]})";
  const auto r = spattn("prewarm --load-all " + m.string());
  EXPECT_EQ(r.status, 3) << r.err;
  EXPECT_NE(r.err.find("--load-all"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace spattn
