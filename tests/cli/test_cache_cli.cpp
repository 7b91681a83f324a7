// spattn cache ...: exit codes, --json output, and the export/import round trip through
// the real binary.
#include <gtest/gtest.h>

#include <spattn/cache.hpp>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <fstream>
#include <set>
#include <random>

#include "runtime/nvrtc.hpp"
#include "tests/support/test_support.hpp"

namespace spattn {
namespace {

namespace fs = std::filesystem;
using test::CommandResult;
using test::TempDir;

KernelManifest manifest(const std::string& name, const std::string& arch) {
  KernelManifest m;
  m.source = "extern \"C\" __global__ void " + name + "() {}\n";
  m.options = {"--gpu-architecture=" + arch};
  m.arch = arch;
  m.nvrtc_version = runtime::nvrtc_version();
  m.spattn_version = SPATTN_VERSION_STRING;
  m.kernel_name = name;
  return m;
}

CompiledKernel payload(unsigned seed) {
  CompiledKernel k;
  std::mt19937 rng(seed);
  k.cubin.resize(20000);
  for (char& c : k.cubin) c = static_cast<char>(rng());
  return k;
}

class CacheCli : public ::testing::Test {
 protected:
  void SetUp() override {
    CacheConfig c;
    c.dir = dir_.path() / "cache";
    c.max_bytes = 0;
    KernelCache cache(c);
    keys_.push_back(cache.get_or_compile(manifest("fwd_a", "sm_90a"), [] { return payload(1); }).key);
    keys_.push_back(cache.get_or_compile(manifest("fwd_b", "sm_80"), [] { return payload(2); }).key);
    keys_.push_back(cache.get_or_compile(manifest("fwd_c", "sm_90a"), [] { return payload(3); }).key);
  }

  // Runs `spattn <args>` with this test's cache directory.
  CommandResult spattn(const std::string& args, const std::string& env = "") const {
    return test::run_command("env SPATTN_CACHE_DIR='" + (dir_.path() / "cache").string() +
                             "' SPATTN_CACHE_MAX_BYTES=10M " + env + " '" + test::cli_path() + "' " + args);
  }

  static nlohmann::json json_of(const CommandResult& r) {
    try {
      return nlohmann::json::parse(r.out);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not JSON: " << e.what() << "\n" << r.out << r.err;
      return {};
    }
  }

  fs::path entry_path(const std::string& key) const { return dir_.path() / "cache" / "kernels" / (key + ".spk"); }

  TempDir dir_{"cli-cache"};
  std::vector<std::string> keys_;
};

TEST_F(CacheCli, HelpEverywhere) {
  for (const char* sub : {"", " ls", " stat", " verify", " prune", " clear", " export", " import"}) {
    const CommandResult r = spattn(std::string("cache") + sub + " --help");
    EXPECT_EQ(r.status, 0) << sub << "\n" << r.err;
    EXPECT_FALSE(r.out.empty()) << sub;
  }
  EXPECT_NE(spattn("cache --help").out.find("import"), std::string::npos);
}

TEST_F(CacheCli, BadUsageExitsTwoWithAOneLineReason) {
  for (const char* args : {"cache", "cache bogus", "cache prune --max-bytes lots", "cache export",
                           "cache import /nonexistent/archive.spka", "cache ls --no-such-flag"}) {
    const CommandResult r = spattn(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.out << r.err;
    EXPECT_FALSE(r.err.empty()) << args;
  }
  const CommandResult bad_env = spattn("cache stat", "SPATTN_CACHE_MAX_BYTES=lots");
  EXPECT_EQ(bad_env.status, 2);
  EXPECT_NE(bad_env.err.find("SPATTN_CACHE_MAX_BYTES"), std::string::npos) << bad_env.err;
}

TEST_F(CacheCli, LsAndStat) {
  const CommandResult ls = spattn("cache ls --json");
  ASSERT_EQ(ls.status, 0) << ls.err;
  const nlohmann::json entries = json_of(ls);
  ASSERT_TRUE(entries.is_array());
  ASSERT_EQ(entries.size(), 3u);
  std::set<std::string> kernels;
  for (const auto& e : entries) {
    kernels.insert(e.at("kernel").get<std::string>());
    EXPECT_EQ(e.at("nvrtc_version"), runtime::nvrtc_version());
    EXPECT_GT(e.at("size_bytes").get<std::uint64_t>(), 20000u);
    EXPECT_EQ(e.at("key").get<std::string>().size(), 64u);
  }
  EXPECT_EQ(kernels, (std::set<std::string>{"fwd_a", "fwd_b", "fwd_c"}));

  const CommandResult table = spattn("cache ls");
  ASSERT_EQ(table.status, 0) << table.err;
  EXPECT_NE(table.out.find("fwd_b"), std::string::npos);
  EXPECT_NE(table.out.find("sm_80"), std::string::npos);
  EXPECT_NE(table.out.find(keys_[0].substr(0, 12)), std::string::npos);

  // --json also works before the subcommand.
  const CommandResult stat = spattn("--json cache stat");
  ASSERT_EQ(stat.status, 0) << stat.err;
  const nlohmann::json s = json_of(stat);
  EXPECT_EQ(s.at("entries"), 3);
  EXPECT_EQ(s.at("max_bytes"), 10u << 20);
  EXPECT_EQ(s.at("dir"), (dir_.path() / "cache").string());
}

TEST_F(CacheCli, DirOptionOverridesTheEnvironment) {
  TempDir other("cli-cache-other");
  const CommandResult r = spattn("cache --dir '" + other.path().string() + "' stat --json");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json_of(r).at("entries"), 0);
}

TEST_F(CacheCli, VerifyExitsOneWhenItRemovedBadEntries) {
  EXPECT_EQ(spattn("cache verify").status, 0);
  {
    std::fstream f(entry_path(keys_[1]), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(1000);
    f.put('\x42');
  }
  const CommandResult r = spattn("cache verify --json");
  EXPECT_EQ(r.status, 1) << r.out << r.err;
  const nlohmann::json j = json_of(r);
  ASSERT_EQ(j.at("bad").size(), 1u);
  EXPECT_EQ(j.at("bad")[0].at("key"), keys_[1]);
  EXPECT_NE(j.at("bad")[0].at("reason").get<std::string>().find("checksum"), std::string::npos);
  EXPECT_FALSE(fs::exists(entry_path(keys_[1])));
  EXPECT_EQ(spattn("cache verify").status, 0);
}

TEST_F(CacheCli, PruneAndClear) {
  const CommandResult prune = spattn("cache prune --max-bytes 30K --json");
  ASSERT_EQ(prune.status, 0) << prune.err;
  EXPECT_EQ(json_of(prune).at("removed"), 2);
  EXPECT_EQ(json_of(spattn("cache stat --json")).at("entries"), 1);

  const CommandResult clear = spattn("cache clear --json");
  ASSERT_EQ(clear.status, 0) << clear.err;
  EXPECT_EQ(json_of(clear).at("removed"), 1);
  EXPECT_EQ(json_of(spattn("cache ls --json")).size(), 0u);
}

TEST_F(CacheCli, ExportClearImportRoundTrip) {
  const std::string archive = (dir_.path() / "hopper.spka").string();
  const CommandResult ex = spattn("cache export '" + archive + "' --arch sm_90a --json");
  ASSERT_EQ(ex.status, 0) << ex.err;
  EXPECT_EQ(json_of(ex).at("exported"), 2);
  ASSERT_EQ(spattn("cache clear").status, 0);

  const CommandResult im = spattn("cache import '" + archive + "' --json");
  ASSERT_EQ(im.status, 0) << im.err;
  const nlohmann::json j = json_of(im);
  EXPECT_EQ(j.at("added"), 2);
  EXPECT_EQ(j.at("rejected"), 0);
  for (const auto& e : j.at("entries")) EXPECT_EQ(e.at("arch"), "sm_90a");

  const CommandResult again = spattn("cache import '" + archive + "'");
  EXPECT_EQ(again.status, 0) << again.err;
  EXPECT_NE(again.out.find("2 already present"), std::string::npos) << again.out;
}

TEST_F(CacheCli, DamagedArchiveExitsOne) {
  const std::string archive = (dir_.path() / "all.spka").string();
  ASSERT_EQ(spattn("cache export '" + archive + "'").status, 0);
  {
    std::fstream f(archive, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(500);
    f.put('\x01');
  }
  const CommandResult r = spattn("cache import '" + archive + "'");
  EXPECT_EQ(r.status, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("checksum"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
}

}  // namespace
}  // namespace spattn
