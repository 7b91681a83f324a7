// Prewarm manifests: validation errors name the field; planning picks the kernels the
// selector would use (heuristic, tuning databases); and the deployment flow — prewarm on
// this GPU-less host -> cache export -> import into an empty cache -> zero NVRTC compiles.
#include <gtest/gtest.h>

#include <spattn/cache.hpp>

#include <fstream>
#include <map>
#include <set>

#include "api/select.hpp"
#include "autotune/prewarm.hpp"
#include "autotune/tuning_db.hpp"
#include "engine/jit.hpp"
#include "tests/support/test_support.hpp"

namespace spattn::autotune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

Selection heuristic(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device) {
  const api::Choice c = api::heuristic(pattern, problem, device);
  return {c.config, c.source};
}

json valid_manifest() {
  return json::parse(R"({
    "archs": ["sm_90a", "sm_80"], "dtypes": ["bf16", "fp16"], "head_dims": [64],
    "entries": [
      {"pattern": {"type": "local_window", "window": 1024}, "seq": [4096, 16384], "heads": 16, "kv_heads": 16},
      {"pattern": {"type": "longnet", "segments": [2048, 4096], "rates": [1, 2]}, "seq": [4096, 16384], "heads": 8}
    ]})");
}

struct BadManifest {
  std::string edit;      // JSON merge patch applied to the valid manifest
  std::string where;     // the field the message must name
  std::string also = "";
};

TEST(PrewarmManifest, ParsesAndFillsDefaults) {
  const Manifest m = Manifest::parse(valid_manifest().dump());
  EXPECT_EQ(m.archs, (std::vector<std::string>{"sm_90a", "sm_80"}));
  EXPECT_EQ(m.dtypes, (std::vector<DType>{DType::kBFloat16, DType::kFloat16}));
  EXPECT_EQ(m.head_dims, (std::vector<int>{64}));
  ASSERT_EQ(m.entries.size(), 2u);
  EXPECT_EQ(m.entries[1].kv_heads, 8) << "kv_heads defaults to heads";
  EXPECT_EQ(m.entries[1].kv_seq, m.entries[1].seq);
  EXPECT_EQ(m.entries[0].batch, 1);
  // A preset name and a single length are accepted too.
  const Manifest p = Manifest::parse(
      R"({"archs":["sm_80"],"dtypes":["fp16"],"head_dims":[128],"entries":[{"pattern":"local_window","seq":8192}]})");
  EXPECT_EQ(p.entries[0].seq, (std::vector<int64_t>{8192}));
  EXPECT_EQ(p.entries[0].heads, 16);
}

TEST(PrewarmManifest, StrictJson) {
  auto message = [](const std::string& text) {
    try {
      Manifest::parse(text);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      return std::string(e.what());
    }
    ADD_FAILURE() << "accepted " << text;
    return std::string();
  };
  EXPECT_NE(message(R"({"archs": ["sm_80"], "archs": ["sm_90a"]})").find("manifest.archs"), std::string::npos);
  EXPECT_NE(message(R"({"head_dims": [1e400]})").find("manifest.head_dims"), std::string::npos);
  EXPECT_NE(message(std::string(200, '[') + std::string(200, ']')).find("manifest"), std::string::npos);
}

TEST(PrewarmManifest, ErrorsNameTheField) {
  const std::vector<BadManifest> cases = {
      {R"({"archs": null})", "manifest.archs", "is required"},
      {R"({"archs": []})", "manifest.archs", "non-empty"},
      {R"({"archs": ["sm_90a", 90]})", "manifest.archs[1]", "string"},
      {R"({"archs": ["sm_90a", "sm_75"]})", "manifest.archs[1]", "sm_75"},
      {R"({"dtypes": ["bf16", "fp32"]})", "manifest.dtypes[1]", "bf16"},
      {R"({"head_dims": [80]})", "manifest.head_dims[0]", "supported head dims"},
      {R"({"head_dims": [64.5]})", "manifest.head_dims[0]", "integer"},
      {R"({"entries": {}})", "manifest.entries", "array"},
      {R"({"arch": ["sm_80"]})", "manifest.arch", "unknown field"},
      {R"({"entries": [{"pattern": {"type": "local_window", "window": 64}, "seq": [4096, -5]}]})",
       "manifest.entries[0].seq[1]", "positive integer"},
      {R"({"entries": [{"pattern": {"type": "local_window", "window": 64}}]})", "manifest.entries[0].seq",
       "is required"},
      {R"({"entries": [{"pattern": {"type": "local_window", "window": 64}, "seq": 64, "heads": 16, "kv_heads": 3}]})",
       "manifest.entries[0].kv_heads", "divide"},
      {R"({"entries": [{"pattern": {"type": "local_window", "window": 64}, "seq": [64, 128], "kv_seq": [64]}]})",
       "manifest.entries[0].kv_seq", "one value per seq"},
      {R"({"entries": [{"pattern": {"type": "local_window", "window": -3}, "seq": 64}]})",
       "manifest.entries[0].pattern"},
      {R"({"entries": [{"pattern": 7, "seq": 64}]})", "manifest.entries[0].pattern", "pattern object"},
      {R"({"entries": [{"pattern": {"type": "neighborhood", "grid": [32, 32], "window": [7, 7]}, "seq": [1000]}]})",
       "manifest.entries[0].seq[0]"},
      {R"({"entries": [{"pattern": "dense", "seq": 64, "head": 4}]})", "manifest.entries[0].head", "unknown field"},
  };
  for (const BadManifest& c : cases) {
    SCOPED_TRACE(c.edit);
    json m = valid_manifest();
    m.merge_patch(json::parse(c.edit));
    try {
      Manifest::parse(m.dump());
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_TRUE(e.code() == ErrorCode::kInvalidArgument || e.code() == ErrorCode::kUnsupported) << what;
      EXPECT_EQ(what.rfind(c.where, 0), 0u) << what;
      if (!c.also.empty()) {
        EXPECT_NE(what.find(c.also), std::string::npos) << what;
      }
    }
  }
  EXPECT_THROW(Manifest::parse("{not json"), Error);
  EXPECT_THROW(Manifest::parse("[]"), Error);
}

TEST(PrewarmPlan, OneKernelPerDistinctConfigurationPlusSupportPerArch) {
  test::TempDir dir("pw");
  test::ScopedEnv env("SPATTN_CACHE_DIR", dir.path().string());  // no tuning databases here
  const Manifest m = Manifest::parse(valid_manifest().dump());
  const std::vector<PlannedKernel> plan = plan_prewarm(m, {}, heuristic);

  std::set<std::string> keys;
  size_t uses = 0, support = 0;
  std::set<std::string> combos;
  for (const PlannedKernel& k : plan) {
    EXPECT_TRUE(keys.insert(k.key).second) << "duplicate kernel " << k.rendered.program_name;
    EXPECT_EQ(k.key, engine::manifest_for(k.rendered, k.arch).key());
    if (k.config.empty()) {
      ++support;
      continue;
    }
    EXPECT_FALSE(k.uses.empty());
    EXPECT_EQ(k.source.rfind("heuristic (", 0), 0u) << k.source;
    uses += k.uses.size();
    for (const std::string& u : k.uses) combos.insert(u);
  }
  EXPECT_EQ(support, 2u) << "one support program per arch";
  EXPECT_EQ(uses, 2u * 2 * 2 * 2) << "entries x seq x dtypes x archs, each served once";
  EXPECT_EQ(combos.size(), uses);
  EXPECT_GE(plan.size(), 2u + 2 * 2 * 2) << "at least one kernel per pattern, dtype and arch";

  PrewarmOptions only80;
  only80.archs = {"sm_80"};
  for (const PlannedKernel& k : plan_prewarm(m, only80, heuristic)) EXPECT_EQ(k.arch, "sm_80");
  PrewarmOptions other;
  other.archs = {"sm_86"};
  EXPECT_THROW(plan_prewarm(m, other, heuristic), Error);
}

// An adaptive pattern prewarms its forward kernel (on tiles that divide its block) and
// the selection kernels of each arch, on a host without a GPU like every other pattern.
TEST(PrewarmPlan, AdaptivePatternsAddTheirSelectionKernels) {
  test::TempDir dir("pw");
  test::ScopedEnv env("SPATTN_CACHE_DIR", dir.path().string());
  const Manifest m = Manifest::parse(
      R"({"archs":["sm_80","sm_90a"],"dtypes":["bf16"],"head_dims":[128],
          "entries":[{"pattern":{"type":"adaptive","block":64,"top_k":8,"causal":true},"seq":[4096],"heads":4}]})");
  const std::vector<PlannedKernel> plan = plan_prewarm(m, {}, heuristic);
  std::map<std::string, int> per_arch_selection, per_arch_forward;
  for (const PlannedKernel& k : plan) {
    if (k.rendered.program_name == "spattn_adaptive.cu") ++per_arch_selection[k.arch];
    if (!k.config.empty()) {
      ++per_arch_forward[k.arch];
      const KernelConfig c = KernelConfig::parse(k.config);
      EXPECT_EQ(64 % c.tile_m, 0) << k.config;
      EXPECT_EQ(64 % c.tile_n, 0) << k.config;
    }
  }
  for (const char* arch : {"sm_80", "sm_90a"}) {
    EXPECT_EQ(per_arch_selection[arch], 1) << arch;
    EXPECT_GE(per_arch_forward[arch], 1) << arch;
  }
}

TEST(PrewarmPlan, TuningDatabasesOfTheArchAddTheirConfigurations) {
  test::TempDir dir("pw");
  test::ScopedEnv env("SPATTN_CACHE_DIR", dir.path().string());
  runtime::DeviceInfo h200;
  h200.name = "NVIDIA H200";
  h200.cc_major = 9;
  h200.sm_count = 132;
  h200.l2_bytes = 60 << 20;
  h200.driver_version = 13000;
  const Manifest m = Manifest::parse(
      R"({"archs":["sm_90a","sm_80"],"dtypes":["bf16"],"head_dims":[64],
          "entries":[{"pattern":{"type":"local_window","window":1024},"seq":[16384],"heads":16}]})");
  engine::Problem p;
  p.nq = p.nk = 16384;
  p.heads = p.kv_heads = 16;
  p.head_dim = 64;
  TunedEntry e;
  e.config = KernelConfig::parse("64x64w4s2:hilbert");
  e.median_ms = 1;
  TuningDb::store(TuningDb::default_dir(), Fingerprint::of(h200),
                  bucket_of(m.entries[0].pattern, p, pattern_density(m.entries[0].pattern, p)).key(), e);

  const auto plan = plan_prewarm(m, {}, heuristic);
  size_t tuned = 0;
  for (const PlannedKernel& k : plan) {
    if (k.config != "64x64w4s2:hilbert") continue;
    ++tuned;
    EXPECT_EQ(k.arch, "sm_90a") << "an H200's database serves sm_90a only";
    EXPECT_EQ(k.source.rfind("tuning database (", 0), 0u) << k.source;
  }
  EXPECT_EQ(tuned, 1u);
  EXPECT_EQ(plan.size(), 2u + 2 + 1) << "support x2, the heuristic's kernel per arch, the tuned one";
}

// $SPATTN_CLI, else the binary this test was built with.
std::string spattn(const fs::path& cache, const std::string& args) {
  return "env SPATTN_CACHE_DIR='" + cache.string() + "' SPATTN_CACHE_MAX_BYTES=0 '" + test::cli_path() + "' " + args;
}

json json_of(const test::CommandResult& r) {
  try {
    return json::parse(r.out);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not JSON: " << e.what() << "\n" << r.out << r.err;
    return json::object();
  }
}

TEST(PrewarmFlow, PrewarmExportImportThenZeroCompiles) {
  test::TempDir dir("pw");
  const fs::path a = dir.path() / "build-host", b = dir.path() / "deployment";
  const fs::path manifest = dir.path() / "manifest.json", archive = dir.path() / "kernels.spka";
  const std::string text =
      R"({"archs":["sm_90a"],"dtypes":["bf16"],"head_dims":[64],
          "entries":[{"pattern":{"type":"local_window","window":256},"seq":[2048],"heads":2}]})";
  std::ofstream(manifest) << text;

  // Build host: compile (the forward kernel and the support kernels).
  auto r = test::run_command(spattn(a, "--json prewarm " + manifest.string()));
  ASSERT_EQ(r.status, 0) << r.err;
  json j = json_of(r);
  EXPECT_EQ(j["compiled"], 2) << r.out;
  EXPECT_EQ(j["failed"], 0);
  ASSERT_EQ(j["kernels"].size(), 2u);
  // Again: all cached.
  r = test::run_command(spattn(a, "--json prewarm " + manifest.string()));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json_of(r)["compiled"], 0);
  EXPECT_EQ(json_of(r)["cached"], 2);

  // Ship: export, then import into an empty cache.
  r = test::run_command(spattn(a, "cache export " + archive.string()));
  ASSERT_EQ(r.status, 0) << r.err;
  r = test::run_command(spattn(b, "cache import " + archive.string()));
  ASSERT_EQ(r.status, 0) << r.err;

  // Deployment: the same kernels come from the imported cache, no NVRTC.
  r = test::run_command(spattn(b, "--json prewarm " + manifest.string()));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json_of(r)["compiled"], 0) << r.out;
  EXPECT_EQ(json_of(r)["cached"], 2);

  // And in this process, through the counters: every kernel is a hit, none compiles.
  CacheConfig config;
  config.dir = b;
  config.max_bytes = 0;
  KernelCache cache(config);
  const auto plan = plan_prewarm(Manifest::parse(text), {}, heuristic);
  ASSERT_EQ(plan.size(), 2u);
  const CacheCounters before = KernelCache::global_counters();
  for (const PlannedKernel& k : plan) {
    const CacheLookup found = engine::compile_cached(k.rendered, k.arch, cache);
    EXPECT_TRUE(found.hit) << k.rendered.program_name;
    EXPECT_FALSE(found.kernel.cubin.empty());
  }
  const CacheCounters after = KernelCache::global_counters();
  EXPECT_EQ(after.compiles - before.compiles, 0u);
  EXPECT_EQ(after.misses - before.misses, 0u);
  EXPECT_EQ(after.hits - before.hits, plan.size());
}

}  // namespace
}  // namespace spattn::autotune
