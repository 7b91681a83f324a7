// spattn autotune --op scan|performer through the real binary, without a GPU: dry runs
// list the candidates, and bad options or shapes are usage errors (exit 2) naming the
// option; tuning without a GPU exits 3.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "runtime/driver.hpp"
#include "tests/support/test_support.hpp"

namespace spattn {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class LinearAutotuneCli : public ::testing::Test {
 protected:
  test::CommandResult spattn(const std::string& args) const {
    return test::run_command("env SPATTN_CACHE_DIR='" + dir_.path().string() + "' '" + test::cli_path() + "' " + args);
  }
  test::TempDir dir_{"cli-linear-tune"};
};

TEST_F(LinearAutotuneCli, DryRunsListTheCandidates) {
  auto r = spattn("--json autotune --op scan --batch 1 --length 4096 --channels 1536 --state 16 --dry-run");
  ASSERT_EQ(r.status, 0) << r.err;
  json j = json::parse(r.out);
  EXPECT_EQ(j["op"], "scan");
  ASSERT_GE(j["candidates"].size(), 10u);
  EXPECT_TRUE(j["candidates"][0]["heuristic"].get<bool>());
  for (const auto& c : j["candidates"]) EXPECT_EQ(c["status"], "candidate") << c.dump();

  r = spattn("--json autotune --op performer --length 2048 --heads 8 --head-dim 64 --features 512 --dry-run");
  ASSERT_EQ(r.status, 0) << r.err;
  j = json::parse(r.out);
  EXPECT_EQ(j["op"], "performer");
  EXPECT_EQ(j["candidates"].size(), 6u);
  EXPECT_TRUE(j["candidates"][0]["heuristic"].get<bool>());

  // The text form, and --seq as the length; --configs narrows the list.
  r = spattn("autotune --op scan --seq 1000 --channels 64 --configs 64x8x16 --dry-run");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("(h)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("64x8x16"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("2 candidates"), std::string::npos) << r.out;
  EXPECT_TRUE(!fs::exists(dir_.path() / "tuning")) << "a dry run writes nothing";
}

TEST_F(LinearAutotuneCli, BadOptionsAndShapesAreUsageErrors) {
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases = {
      {"--op mamba --length 16", "--op: unknown op 'mamba'; supported: attention, scan, performer"},
      {"--op scan --channels 64", "--length is required with --op scan"},
      {"--op scan --length 64", "--channels is required with --op scan"},
      {"--op scan --length 0 --channels 64", "--length must be >= 1"},
      {"--op scan --length 64 --channels -3", "--channels must be >= 1"},
      {"--op scan --length 64 --channels 64 --state 0", "--state must be >= 1"},
      {"--op scan --length 64 --channels 64 --state 12", "state size 12 is not supported"},
      {"--op scan --length 64 --channels 64 --dtype int8", "unknown dtype 'int8'"},
      {"--op scan --length 64 --channels 64 --batch 0", "--batch must be >= 1"},
      {"--op scan --length 64 --seq 32 --channels 64", "--length and --seq both given"},
      {"--op scan --length 64 --channels 64 --heads 4", "--heads does not apply to --op scan"},
      {"--op scan --length 64 --channels 64 -p dense", "--pattern does not apply to --op scan"},
      {"--op scan --length 64 --channels 64 --backward", "--backward does not apply to --op scan"},
      {"--op scan --length 64 --channels 64 --configs 32x3x16", "--configs: scan config 32x3x16: segments must be"},
      {"--op scan --length 64 --channels 64 --reps 5", "--reps must be at least 20"},
      {"--op performer --length 64 --channels 64", "--channels does not apply to --op performer"},
      {"--op performer --heads 4", "--length is required with --op performer"},
      {"--op performer --length 64 --features 100", "100 random features"},
      {"--op performer --length 64 --head-dim 12", "head dim 12 is not supported"},
      {"--op performer --length 64 --heads 6 --kv-heads 4", "not a multiple"},
      {"--op performer --length 64 --configs 48x32", "--configs: performer config 48x32: chunk must be"},
      {"-p dense --seq 64 --channels 64", "--channels applies to --op scan or performer"},
  };
  for (const Case& c : cases) {
    const auto r = spattn("autotune " + c.args + " --dry-run");
    EXPECT_EQ(r.status, 2) << c.args << "\n" << r.out << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << ": expected '" << c.message << "' in: " << r.err;
  }
}

TEST_F(LinearAutotuneCli, TuningNeedsAGpu) {
  if (runtime::has_gpu()) GTEST_SKIP() << "this host has a GPU";
  const auto r = spattn("autotune --op scan --length 256 --channels 64");
  EXPECT_EQ(r.status, 3) << r.out << r.err;
  EXPECT_NE(r.err.find("needs a GPU"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace spattn
