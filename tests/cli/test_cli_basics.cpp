// The spattn command as scripts see it: help, exit codes (DESIGN.md §8: 0 success,
// 1 runtime failure, 2 bad usage or input with a one-line reason, 3 needs a GPU),
// `info` and its JSON, `compile` into a fresh cache and the cache hit after it, and
// `bench` (patterns, the selective scan, Performer) and `demo` on a host without a GPU.
#include <gtest/gtest.h>

#include <fstream>

#include <filesystem>

#include <nlohmann/json.hpp>

#include <sstream>
#include <string>
#include <vector>

#include "runtime/driver.hpp"
#include "tests/support/test_support.hpp"

namespace spattn {
namespace {

using test::CommandResult;

class CliBasics : public ::testing::Test {
 protected:
  // Runs `spattn <args>` with this test's own (initially empty) kernel cache.
  CommandResult spattn(const std::string& args) const {
    return test::run_command("env SPATTN_CACHE_DIR='" + (dir_.path() / "cache").string() + "' '" + test::cli_path() +
                             "' " + args);
  }

  static nlohmann::json json_of(const CommandResult& r) {
    try {
      return nlohmann::json::parse(r.out);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "stdout is not JSON (" << e.what() << "):\n" << r.out << "\nstderr:\n" << r.err;
      return nlohmann::json::object();
    }
  }

  test::TempDir dir_{"cli-basics"};
};

std::string describe(const CommandResult& r) {
  return "exit " + std::to_string(r.status) + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

// The reason for a failure is one line of stderr that carries every one of `words`.
void expect_one_line_reason(const CommandResult& r, const std::vector<std::string>& words) {
  std::istringstream lines(r.err);
  std::string line;
  while (std::getline(lines, line)) {
    bool all = true;
    for (const auto& w : words) all = all && line.find(w) != std::string::npos;
    if (all) return;
  }
  std::string wanted;
  for (const auto& w : words) wanted += " '" + w + "'";
  ADD_FAILURE() << "no line of stderr names" << wanted << "\n" << describe(r);
}

constexpr const char* kWindow = R"('{"type":"local_window","window":256}')";

TEST_F(CliBasics, HelpExitsZeroAndListsTheSubcommands) {
  const CommandResult r = spattn("--help");
  ASSERT_EQ(r.status, 0) << describe(r);
  for (const char* sub : {"info", "pattern", "compile", "demo", "cache"})
    EXPECT_NE(r.out.find(sub), std::string::npos) << "--help does not list '" << sub << "':\n" << r.out;
}

TEST_F(CliBasics, EverySubcommandHasHelp) {
  std::vector<std::string> commands = {"info",  "pattern", "pattern show", "pattern stats", "pattern presets",
                                       "compile", "demo",  "cache",        "cache ls",      "cache stat",
                                       "cache verify", "cache prune", "cache clear", "cache export", "cache import"};
  // Commands that are listed by this build's --help (added as they land).
  const std::string top = spattn("--help").out;
  for (const char* later : {"prewarm", "autotune", "bench"})
    if (top.find(std::string("  ") + later + " ") != std::string::npos) commands.push_back(later);
  for (const auto& c : commands) {
    const CommandResult r = spattn(c + " --help");
    EXPECT_EQ(r.status, 0) << "spattn " << c << " --help\n" << describe(r);
    EXPECT_NE(r.out.find("Usage:"), std::string::npos) << "spattn " << c << " --help\n" << describe(r);
  }
}

TEST_F(CliBasics, VersionPrintsTheLibraryVersion) {
  const CommandResult r = spattn("--version");
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_NE(r.out.find(SPATTN_VERSION_STRING), std::string::npos) << describe(r);
}

TEST_F(CliBasics, UnknownSubcommandIsBadUsage) {
  const CommandResult r = spattn("frobnicate");
  EXPECT_EQ(r.status, 2) << describe(r);
  EXPECT_NE(r.err.find("error"), std::string::npos) << describe(r);
  EXPECT_TRUE(r.out.empty()) << "nothing belongs on stdout\n" << describe(r);
}

TEST_F(CliBasics, NoSubcommandIsBadUsage) {
  const CommandResult r = spattn("");
  EXPECT_EQ(r.status, 2) << describe(r);
  EXPECT_FALSE(r.err.empty()) << describe(r);
}

TEST_F(CliBasics, InfoReportsTheGpuOrItsAbsence) {
  const CommandResult r = spattn("info");
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_NE(r.out.find("NVRTC"), std::string::npos) << describe(r);
  if (runtime::has_gpu()) {
    EXPECT_EQ(r.out.find("no GPU"), std::string::npos) << "a GPU is present\n" << describe(r);
  } else {
    EXPECT_NE(r.out.find("no GPU"), std::string::npos) << describe(r);
  }
}

TEST_F(CliBasics, InfoJsonHasVersionsGpusAndCache) {
  const CommandResult r = spattn("--json info");
  ASSERT_EQ(r.status, 0) << describe(r);
  const nlohmann::json j = json_of(r);
  ASSERT_TRUE(j.is_object()) << describe(r);
  ASSERT_TRUE(j.contains("nvrtc_version") && j["nvrtc_version"].is_string()) << j.dump(2);
  EXPECT_FALSE(j["nvrtc_version"].get<std::string>().empty());
  ASSERT_TRUE(j.contains("gpus") && j["gpus"].is_array()) << j.dump(2);
  EXPECT_EQ(j["gpus"].empty(), !runtime::has_gpu()) << j.dump(2);
  ASSERT_TRUE(j.contains("cache") && j["cache"].is_object()) << j.dump(2);
  EXPECT_EQ(j["cache"].value("dir", ""), (dir_.path() / "cache").string()) << "SPATTN_CACHE_DIR not honoured\n"
                                                                              << j.dump(2);
}

// Two NVRTC compiles (the forward kernel and its support kernel), then none.
TEST_F(CliBasics, CompileFillsTheCacheThenHits) {
  const std::string args = std::string("--json compile --pattern ") + kWindow + " --arch sm_80";
  const CommandResult cold = spattn(args);
  ASSERT_EQ(cold.status, 0) << describe(cold);
  const nlohmann::json first = json_of(cold);
  EXPECT_EQ(first.value("arch", ""), "sm_80") << first.dump(2);
  ASSERT_TRUE(first.contains("kernels") && first["kernels"].is_array() && !first["kernels"].empty()) << first.dump(2);
  for (const auto& k : first["kernels"]) {
    EXPECT_FALSE(k.value("cache_hit", true)) << "a fresh cache cannot hit\n" << first.dump(2);
    EXPECT_GT(k.value("cubin_bytes", 0), 0) << first.dump(2);
  }

  const CommandResult warm = spattn(args);
  ASSERT_EQ(warm.status, 0) << describe(warm);
  const nlohmann::json second = json_of(warm);
  ASSERT_TRUE(second.contains("kernels") && second["kernels"].size() == first["kernels"].size()) << second.dump(2);
  for (size_t i = 0; i < second["kernels"].size(); ++i) {
    EXPECT_TRUE(second["kernels"][i].value("cache_hit", false)) << second.dump(2);
    EXPECT_EQ(second["kernels"][i].value("key", "a"), first["kernels"][i].value("key", "b")) << second.dump(2);
  }

  // And the entries are there for `cache ls`.
  const CommandResult ls = spattn("--json cache ls");
  ASSERT_EQ(ls.status, 0) << describe(ls);
  EXPECT_NE(ls.out.find(first["kernels"][0].value("key", "?")), std::string::npos) << describe(ls);
}

// `spattn compile` of an adaptive pattern: the forward kernel, the support kernels and
// the selection kernels, no GPU needed.
TEST_F(CliBasics, CompileAdaptivePatternBuildsItsSelectionKernels) {
  const CommandResult r =
      spattn(R"(compile --pattern '{"type":"adaptive","block":128,"top_k":8}' --seq 2048 --heads 2 --arch sm_80)");
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_NE(r.out.find("spattn_adaptive.cu"), std::string::npos) << describe(r);
  EXPECT_NE(r.out.find("spattn_fwd_"), std::string::npos) << describe(r);
  const CommandResult odd = spattn(R"(compile --pattern '{"type":"adaptive","block":48,"top_k":2}' --seq 2048)");
  EXPECT_NE(odd.status, 0);
  EXPECT_NE(odd.err.find("adaptive block 48 is not a multiple of 32"), std::string::npos) << describe(odd);
}

// --documents: the forward_varlen program (with the table builders where rows are key
// ranges), written out with --out so the source can be read.
TEST_F(CliBasics, CompileDocumentsBuildsTheVarlenProgram) {
  const auto out = dir_.path() / "docs";
  const CommandResult r = spattn(std::string(R"(compile --documents --pattern '{"type":"dense","causal":true}' )"
                                             "--seq 4096 --heads 2 --arch sm_90a --out ") + out.string());
  ASSERT_EQ(r.status, 0) << describe(r);
  std::string fwd;
  for (const auto& e : std::filesystem::directory_iterator(out))
    if (e.path().extension() == ".cu" && e.path().filename().string().rfind("spattn_fwd_", 0) == 0) {
      std::ifstream f(e.path());
      fwd.assign(std::istreambuf_iterator<char>(f), {});
    }
  EXPECT_NE(fwd.find("kVarlen = true"), std::string::npos);
  EXPECT_NE(fwd.find("spattn_varlen_tables"), std::string::npos);
  const CommandResult host =
      spattn(R"(compile --documents --pattern '{"type":"strided","stride":8}' --seq 2048 --heads 2 --arch sm_80)");
  EXPECT_EQ(host.status, 0) << describe(host);
  // --backward: the backward documents program (its builders include the transposition);
  // patterns whose document tables come from the host have none.
  const auto bwd_out = dir_.path() / "docs_bwd";
  const CommandResult bwd = spattn(std::string(R"(compile --documents --backward --pattern dense --seq 512 --arch sm_80 --out )") +
                                   bwd_out.string());
  ASSERT_EQ(bwd.status, 0) << describe(bwd);
  std::string bwd_src;
  for (const auto& e : std::filesystem::directory_iterator(bwd_out))
    if (e.path().extension() == ".cu" && e.path().filename().string().rfind("spattn_bwd_", 0) == 0) {
      std::ifstream f(e.path());
      bwd_src.assign(std::istreambuf_iterator<char>(f), {});
    }
  EXPECT_NE(bwd_src.find("spattn_varlen_transpose"), std::string::npos);
  const CommandResult host_bwd = spattn(
      R"(compile --documents --backward --pattern '{"type":"strided","stride":8}' --seq 2048 --heads 2 --arch sm_80)");
  EXPECT_NE(host_bwd.status, 0);
  EXPECT_NE(host_bwd.err.find("backward over documents of a 'strided' pattern is not supported yet"),
            std::string::npos)
      << describe(host_bwd);
  const CommandResult adaptive =
      spattn(R"(compile --documents --pattern '{"type":"adaptive","block":64,"top_k":2}' --seq 512)");
  EXPECT_NE(adaptive.status, 0);
  EXPECT_NE(adaptive.err.find("documents run static patterns"), std::string::npos) << describe(adaptive);
}

TEST_F(CliBasics, CompileOutWritesSourceCubinAndLogAndRefusesBadSizes) {
  const auto out = dir_.path() / "out";
  const CommandResult r = spattn(std::string("compile --pattern dense --seq 512 --heads 2 --arch sm_90a --config "
                                             "sm90:128x128s2 --out ") + out.string());
  ASSERT_EQ(r.status, 0) << describe(r);
  int cu = 0, cubin = 0, log = 0;
  for (const auto& e : std::filesystem::directory_iterator(out)) {
    const std::string ext = e.path().extension().string();
    const auto bytes = std::filesystem::file_size(e.path());
    cu += ext == ".cu" && bytes > 0;
    cubin += ext == ".cubin" && bytes > 0;
    log += ext == ".log";
  }
  EXPECT_EQ(cu, 2) << "the forward kernel and the support kernels";
  EXPECT_EQ(cubin, 2);
  EXPECT_EQ(log, 2);
  const CommandResult neg = spattn(std::string("compile --pattern ") + kWindow + " --seq -1");
  EXPECT_EQ(neg.status, 2) << describe(neg);
  expect_one_line_reason(neg, {"--seq"});
}

TEST_F(CliBasics, CompileBackwardUsesBackwardConfigsAndRefusesForwardOnes) {
  const auto out = dir_.path() / "bwd";
  const CommandResult r = spattn(std::string("--json compile --backward --pattern ") + kWindow +
                                 " --seq 1024 --heads 2 --arch sm_80 --out " + out.string());
  ASSERT_EQ(r.status, 0) << describe(r);
  const nlohmann::json j = json_of(r);
  EXPECT_NE(j.value("config_source", "").find("backward"), std::string::npos) << j.dump(2);
  ASSERT_FALSE(j["kernels"].empty()) << j.dump(2);
  EXPECT_EQ(j["kernels"][0].value("program", "").rfind("spattn_bwd_", 0), 0u) << j.dump(2);
  bool source = false;
  for (const auto& e : std::filesystem::directory_iterator(out))
    if (e.path().extension() == ".cu" && e.path().filename().string().rfind("spattn_bwd_", 0) == 0) source = true;
  EXPECT_TRUE(source);
  // A forward-only config (sm90, 128 queries) is refused with the reason.
  const CommandResult bad = spattn(std::string("compile --backward --pattern ") + kWindow +
                                   " --seq 1024 --arch sm_90a --config sm90:128x128s2");
  EXPECT_EQ(bad.status, 2) << describe(bad);
  expect_one_line_reason(bad, {"sm90:128x128s2", "tile_m (queries per step) must be 64"});
}

TEST_F(CliBasics, RingPlanPrintsTheScheduleAndRefusesBadShapes) {
  const CommandResult r = spattn(std::string("--json ring plan --pattern ") + kWindow + " --seq 65536 --world 4");
  ASSERT_EQ(r.status, 0) << describe(r);
  const nlohmann::json j = json_of(r);
  EXPECT_EQ(j["world"], 4);
  ASSERT_EQ(j["ranks"].size(), 4u);
  EXPECT_EQ(j["ranks"][0]["receives_from"], nlohmann::json::array({1}));
  EXPECT_LT(j["bytes_moved"].get<int64_t>(), j["dense_ring_bytes"].get<int64_t>());
  const CommandResult text = spattn("ring plan --pattern '{\"type\":\"dense\",\"causal\":true}' --seq 4096 --world 2 --zigzag");
  ASSERT_EQ(text.status, 0) << describe(text);
  EXPECT_NE(text.out.find("zigzag"), std::string::npos) << text.out;
  const CommandResult bad = spattn(std::string("ring plan --pattern ") + kWindow + " --seq 1000 --world 3");
  EXPECT_EQ(bad.status, 2) << describe(bad);
  expect_one_line_reason(bad, {"multiple of 3"});
  // The loopback benchmark checks the problem before it looks for a GPU.
  const CommandResult bad_bench = spattn(std::string("ring bench --pattern ") + kWindow + " --seq 1000 --world 3");
  EXPECT_EQ(bad_bench.status, 2) << describe(bad_bench);
  expect_one_line_reason(bad_bench, {"multiple of 3"});
  if (!runtime::has_gpu()) {
    const CommandResult no_gpu = spattn(std::string("ring bench --pattern ") + kWindow + " --seq 4096 --world 2");
    EXPECT_EQ(no_gpu.status, 3) << describe(no_gpu);
    expect_one_line_reason(no_gpu, {"needs a GPU"});
  }
}

TEST_F(CliBasics, CompileForAnUnsupportedArchNamesTheSupportedOnes) {
  const CommandResult r = spattn(std::string("compile --pattern ") + kWindow + " --arch sm_12");
  EXPECT_EQ(r.status, 2) << describe(r);
  expect_one_line_reason(r, {"sm_12", "sm_80", "sm_90a"});
}

TEST_F(CliBasics, CompileAnUnknownPatternTypeNamesTheKnownOnes) {
  const CommandResult r = spattn(R"(compile --pattern '{"type":"nope"}' --arch sm_80)");
  EXPECT_EQ(r.status, 2) << describe(r);
  expect_one_line_reason(r, {"nope", "local_window", "longnet", "dilated_sparse"});
}

TEST_F(CliBasics, CompileAnUnsupportedHeadDimNamesTheSupportedOnes) {
  const CommandResult r = spattn(std::string("compile --pattern ") + kWindow + " --arch sm_80 --head-dim 80");
  EXPECT_EQ(r.status, 2) << describe(r);
  expect_one_line_reason(r, {"80", "64", "128"});
}

TEST_F(CliBasics, CompileWithoutAPatternIsBadUsage) {
  const CommandResult r = spattn("compile --arch sm_80");
  EXPECT_EQ(r.status, 2) << describe(r);
  expect_one_line_reason(r, {"pattern"});
}

TEST_F(CliBasics, GpuOnlyCommandWithoutAGpuExitsThree) {
  if (runtime::has_gpu()) GTEST_SKIP() << "a GPU is present";
  if (spattn("--help").out.find("  bench ") == std::string::npos) GTEST_SKIP() << "this build has no 'spattn bench'";
  const CommandResult r = spattn(std::string("bench --pattern ") + kWindow + " --seq 1024");
  EXPECT_EQ(r.status, 3) << describe(r);
  expect_one_line_reason(r, {"GPU"});
}

// `bench scan` and `bench performer`: their options parse, a bad value is named (exit 2)
// before any GPU is looked for, and a valid problem without a GPU exits 3.
TEST_F(CliBasics, BenchScanAndPerformerParseAndNeedAGpu) {
  for (const char* sub : {"scan", "performer"}) {
    const CommandResult r = spattn(std::string("bench ") + sub + " --help");
    ASSERT_EQ(r.status, 0) << describe(r);
    EXPECT_NE(r.out.find("--seq INT=65536"), std::string::npos) << "64k tokens by default\n" << describe(r);
    EXPECT_NE(r.out.find("--against"), std::string::npos) << describe(r);
  }
  EXPECT_NE(spattn("bench scan --help").out.find("--peak-gbps"), std::string::npos);
  EXPECT_NE(spattn("bench performer --help").out.find("--features"), std::string::npos);

  struct Bad {
    std::string args;
    std::vector<std::string> words;
  };
  const std::vector<Bad> bad = {
      {"bench", {"--pattern is required", "scan, performer"}},
      {"bench scan --state 12", {"state size 12", "4, 8, 16, 32"}},
      {"bench scan --channels 0", {"x: ", ">= 1"}},
      {"bench scan --dtype fp32", {"--dtype", "bf16 or fp16"}},
      {"bench scan --dtype fp64", {"fp64"}},
      {"bench scan --config 32x3x16", {"segments"}},
      {"bench scan --peak-gbps 0", {"--peak-gbps", "positive"}},
      {"bench scan --against nope", {"nope"}},
      {"bench scan --against dense --against-head-dim 100", {"--against-head-dim 100", "--channels 1536"}},
      {"bench scan --reps 1", {"--reps"}},
      {"bench scan --frob", {"--frob"}},
      {"bench performer --features 17", {"17 random features", "multiples of 16"}},
      {"bench performer --head-dim 12", {"head dim 12"}},
      {"bench performer --causal --kv-seq 100", {"causal", "q has 65536, k has 100"}},
      {"bench performer --heads 6 --kv-heads 4", {"not a multiple"}},
      {"bench performer --config 24x32", {"chunk"}},
      {"bench performer --kv-heads 4 --against dense", {"--against", "--kv-heads"}},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.args);
    const CommandResult r = spattn(b.args);
    EXPECT_EQ(r.status, 2) << describe(r);
    expect_one_line_reason(r, b.words);
  }

  if (runtime::has_gpu()) GTEST_SKIP() << "a GPU is present (the benchmarks run for real)";
  for (const char* args : {"bench scan", "bench scan --seq 1 --batch 2 --channels 64 --state 4 --no-gate --dtype fp16",
                           "bench performer", "bench performer --causal --features 64 --head-dim 128 --json",
                           "bench scan --against standard --peak-gbps 4800"}) {
    SCOPED_TRACE(args);
    const CommandResult r = spattn(args);
    EXPECT_EQ(r.status, 3) << describe(r);
    expect_one_line_reason(r, {"needs a GPU"});
  }
}

TEST_F(CliBasics, DemoWithoutAGpuSaysItCouldNotRun) {
  if (runtime::has_gpu()) GTEST_SKIP() << "a GPU is present: the demo runs for real (scripts/gpu-check.sh covers it)";
  const CommandResult r = spattn("demo");
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_NE(r.out.find("no GPU"), std::string::npos) << describe(r);
  EXPECT_NE(r.out.find("skipped"), std::string::npos) << describe(r);
}

}  // namespace
}  // namespace spattn
