// The deployment loop through the real binary: tuning databases shipped in cache
// archives (export --tuning, import merges them, selection then reads them; another GPU
// model ignores them and says so), and `spattn bundle` from a record of a service into
// an archive that leaves a fresh cache with nothing to compile.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <fstream>

#include "api/select.hpp"
#include "autotune/record.hpp"
#include "autotune/tuning_db.hpp"
#include "tests/support/test_support.hpp"

namespace spattn {
namespace {

namespace fs = std::filesystem;
using test::CommandResult;
using test::TempDir;

runtime::DeviceInfo gpu(const char* name) {
  runtime::DeviceInfo d;
  d.name = name;
  d.cc_major = 9;
  d.cc_minor = 0;
  d.sm_count = 132;
  d.l2_bytes = 60 << 20;
  d.driver_version = 13000;
  d.smem_per_block_optin = 227 * 1024;
  return d;
}

class DeployCli : public ::testing::Test {
 protected:
  CommandResult spattn(const fs::path& cache, const std::string& args) const {
    return test::run_command("env SPATTN_CACHE_DIR='" + cache.string() + "' '" + test::cli_path() + "' " + args);
  }
  static nlohmann::json json_of(const CommandResult& r) {
    const nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out << r.err;
    return j;
  }
  engine::Problem problem() const {
    engine::Problem p;
    p.nq = p.nk = 16384;
    p.heads = p.kv_heads = 16;
    return p;
  }
  autotune::TunedEntry entry(const char* config, const char* when) const {
    autotune::TunedEntry e;
    e.config = KernelConfig::parse(config);
    e.median_ms = 1.0;
    e.heuristic_ms = 1.2;
    e.tuned_at = when;
    return e;
  }
  std::string key() const {
    return autotune::bucket_of(window_, problem(), autotune::pattern_density(window_, problem())).key();
  }

  TempDir dir_{"deploy"};
  Pattern window_ = Pattern::parse(R"({"type":"local_window","window":1024})");
};

TEST_F(DeployCli, TuningTravelsInTheArchiveAndSelectionUsesIt) {
  const fs::path build = dir_.path() / "build", prod = dir_.path() / "prod";
  const runtime::DeviceInfo h200 = gpu("NVIDIA H200");
  autotune::TuningDb::store(build / "tuning", autotune::Fingerprint::of(h200), key(),
                            entry("64x64w4s2:hilbert", "2026-11-30T10:00:00Z"));
  ASSERT_EQ(spattn(build, "compile --pattern local_window --seq 1024 --arch sm_80").status, 0);

  CommandResult ex = spattn(build, "--json cache export " + (dir_.path() / "a.spka").string() + " --tuning all");
  ASSERT_EQ(ex.status, 0) << ex.err;
  EXPECT_EQ(json_of(ex)["tuning_databases"], 1);
  // A selector that names no database says which there are.
  const CommandResult none = spattn(build, "cache export " + (dir_.path() / "b.spka").string() + " --tuning H100");
  EXPECT_EQ(none.status, 2) << none.err;
  EXPECT_NE(none.err.find("NVIDIA H200"), std::string::npos) << none.err;

  CommandResult im = spattn(prod, "--json cache import " + (dir_.path() / "a.spka").string());
  ASSERT_EQ(im.status, 0) << im.err;
  nlohmann::json j = json_of(im);
  ASSERT_EQ(j["tuning"].size(), 1u) << j.dump(2);
  EXPECT_EQ(j["tuning"][0]["added"], 1);
  EXPECT_EQ(j["tuning"][0]["error"], "");

  {
    test::ScopedEnv env("SPATTN_CACHE_DIR", prod.string());
    const api::Choice c = api::choose(window_, problem(), h200, true);
    EXPECT_EQ(c.config.to_string(), "64x64w4s2:hilbert");
    EXPECT_EQ(c.source.rfind("tuning database (" + (prod / "tuning").string(), 0), 0u) << c.source;
    // Another GPU model ignores the imported database and says so.
    const api::Choice other = api::choose(window_, problem(), gpu("NVIDIA H100 80GB HBM3"), true);
    EXPECT_EQ(other.source.rfind("heuristic (", 0), 0u) << other.source;
    EXPECT_NE(other.source.find("for other GPUs"), std::string::npos) << other.source;
    EXPECT_NE(other.source.find("NVIDIA H200"), std::string::npos) << other.source;
  }

  // Importing again changes nothing; a newer local measurement is kept over an older
  // incoming one, and the conflict is reported.
  j = json_of(spattn(prod, "--json cache import " + (dir_.path() / "a.spka").string()));
  EXPECT_EQ(j["tuning"][0]["same"], 1) << j.dump(2);
  autotune::TuningDb::store(prod / "tuning", autotune::Fingerprint::of(h200), key(),
                            entry("128x64w4s1", "2026-12-01T10:00:00Z"));
  j = json_of(spattn(prod, "--json cache import " + (dir_.path() / "a.spka").string()));
  EXPECT_EQ(j["tuning"][0]["kept"], 1) << j.dump(2);
  ASSERT_EQ(j["tuning"][0]["conflicts"].size(), 1u);
  EXPECT_NE(j["tuning"][0]["conflicts"][0].get<std::string>().find("128x64w4s1"), std::string::npos);
  const CommandResult text = spattn(prod, "cache import " + (dir_.path() / "a.spka").string());
  EXPECT_NE(text.out.find("tuning database for NVIDIA H200"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("conflict"), std::string::npos) << text.out;
}

TEST_F(DeployCli, BundleFromARecordLeavesNothingToCompile) {
  const fs::path build = dir_.path() / "build", prod = dir_.path() / "prod";
  const fs::path record = dir_.path() / "service.record";
  auto add = [&](const char* pattern, int64_t seq, TunePass pass, const char* config, const char* arch) {
    autotune::RecordedProblem r;
    r.pass = pass;
    r.arch = arch;
    r.pattern = Pattern::parse(pattern);
    r.problem.nq = r.problem.nk = seq;
    r.problem.heads = r.problem.kv_heads = 4;
    r.problem.head_dim = 64;
    r.config = KernelConfig::parse(config);
    autotune::record_problem(record.string(), r);
  };
  add(R"({"type":"local_window","window":256})", 4096, TunePass::kForward, "64x64w4s2", "sm_80");
  add(R"({"type":"local_window","window":256})", 4096, TunePass::kBackward, "64x128w8s2", "sm_80");
  add(R"({"type":"dense","causal":true})", 2048, TunePass::kForward, "sm90:128x128s2", "sm_90a");

  const fs::path archive = dir_.path() / "service.spka";
  const CommandResult b = spattn(build, "--json bundle --from-record " + record.string() + " --arch sm_80 -o " +
                                            archive.string());
  ASSERT_EQ(b.status, 0) << b.err;
  const nlohmann::json j = json_of(b);
  EXPECT_EQ(j["kernels"], 3) << "support, the forward and the backward kernel of sm_80; " << j.dump(2);
  EXPECT_EQ(j["archs"], nlohmann::json::array({"sm_80"}));
  EXPECT_GT(j["bytes"].get<int64_t>(), 0);

  ASSERT_EQ(spattn(prod, "cache import " + archive.string()).status, 0);
  const CommandResult warm = spattn(prod, "--json prewarm " + record.string() + " --arch sm_80");
  ASSERT_EQ(warm.status, 0) << warm.err;
  const nlohmann::json w = json_of(warm);
  EXPECT_EQ(w["compiled"], 0) << w.dump(2);
  EXPECT_EQ(w["cached"], 3);

  // Usage errors say what is wrong.
  const CommandResult missing = spattn(build, "bundle --from-record /nonexistent -o x.spka");
  EXPECT_EQ(missing.status, 2) << missing.err;
  const CommandResult bad_arch = spattn(build, "bundle --from-record " + record.string() + " --arch sm_75 -o x.spka");
  EXPECT_NE(bad_arch.status, 0);
  EXPECT_NE(bad_arch.err.find("sm_75"), std::string::npos) << bad_arch.err;
}

}  // namespace
}  // namespace spattn
