// The deployment loop on a GPU, through the real binaries: a run recorded with
// SPATTN_RECORD (bench/first_output_bench: window 1024 at 16k tokens), bundled on a
// "build host" cache, imported into a fresh cache that is then read-only, reaches its
// first output in a fresh process with zero NVRTC compiles. Prints the time to first
// output before (cold cache) and after.
#include <gtest/gtest.h>

#include <cstdlib>
#include <regex>

#include "runtime/driver.hpp"
#include "tests/support/gpu.hpp"
#include "tests/support/test_support.hpp"

namespace spattn {
namespace {

struct FirstOutput {
  double ms = -1;
  long hits = -1, compiles = -1;
  std::string text;
};

FirstOutput first_output(const std::string& env) {
  const test::CommandResult r = test::run_command("env " + env + " '" + std::string(SPATTN_FIRST_OUTPUT_PATH) + "'");
  FirstOutput f;
  f.text = r.out + r.err;
  std::smatch m;
  if (std::regex_search(f.text, m, std::regex(R"(first_output: (\d+) ms .* (\d+) hits, (\d+) compiles)"))) {
    f.ms = std::stod(m[1]);
    f.hits = std::stol(m[2]);
    f.compiles = std::stol(m[3]);
  }
  return f;
}

TEST(DeployGpu, RecordedBundledImportedRunHasZeroCompiles) {
  SPATTN_REQUIRE_GPU();
  test::TempDir dir("deploy-gpu");
  const std::string d = dir.path().string();
  const FirstOutput cold = first_output("SPATTN_CACHE_DIR=" + d + "/staging SPATTN_RECORD=" + d + "/service.record");
  ASSERT_GE(cold.compiles, 1) << cold.text;
  const std::string cli = test::cli_path();
  const test::CommandResult b = test::run_command("env SPATTN_CACHE_DIR=" + d + "/build '" + cli +
                                                  "' bundle --from-record " + d + "/service.record -o " + d + "/s.spka");
  ASSERT_EQ(b.status, 0) << b.out << b.err;
  const test::CommandResult im =
      test::run_command("env SPATTN_CACHE_DIR=" + d + "/prod '" + cli + "' cache import " + d + "/s.spka");
  ASSERT_EQ(im.status, 0) << im.out << im.err;
  const FirstOutput warm = first_output("SPATTN_CACHE_DIR=" + d + "/prod SPATTN_CACHE_READONLY=1");
  EXPECT_EQ(warm.compiles, 0) << warm.text;
  EXPECT_GE(warm.hits, 1) << warm.text;
  std::printf("time to first output: %.0f ms with a cold cache (%ld compiles), %.0f ms after bundle + import (%ld "
              "compiles, %ld hits); %s",
              cold.ms, cold.compiles, warm.ms, warm.compiles, warm.hits, b.out.c_str());
}

}  // namespace
}  // namespace spattn
