// The linear-time kernels in the autotuner, without a GPU: their tuning-database records
// (round trip beside attention records, merge, corrupt and foreign records), bucket keys,
// the candidate lists, and the selection the scan and Performer plans make from the
// database (entry, else the heuristic, with the source saying which decided and why).
#include <gtest/gtest.h>

#include <spattn/autotune.hpp>
#include <spattn/linear.hpp>

#include <fstream>
#include <sstream>

#include "autotune/search_space.hpp"
#include "autotune/tuning_db.hpp"
#include "linear/kernels.hpp"
#include "tests/support/test_support.hpp"

namespace spattn {
namespace {

namespace fs = std::filesystem;
using autotune::DbState;
using autotune::Fingerprint;
using autotune::LinearEntry;
using autotune::TuningDb;

runtime::DeviceInfo h200() {
  runtime::DeviceInfo d;
  d.name = "NVIDIA H200";
  d.cc_major = 9;
  d.cc_minor = 0;
  d.sm_count = 132;
  d.l2_bytes = 60 << 20;
  d.driver_version = 13000;
  d.smem_per_block_optin = 227 * 1024;
  return d;
}

LinearEntry linear_entry(const std::string& config, double ms = 1.0, const std::string& heuristic = "32x1x16") {
  LinearEntry e;
  e.config = config;
  e.median_ms = ms;
  e.p20_ms = ms * 0.99;
  e.p80_ms = ms * 1.01;
  e.heuristic_config = heuristic;
  e.heuristic_ms = ms * 1.25;
  e.candidates = 10;
  e.problem = "scan B=1 L=4096 channels=1536 state=16 bf16";
  e.tuned_at = autotune::utc_now();
  return e;
}

autotune::TunedEntry attention_entry(const std::string& config) {
  autotune::TunedEntry e;
  e.config = KernelConfig::parse(config);
  e.median_ms = 1.0;
  e.heuristic_config = "128x64w4s1";
  e.heuristic_ms = 1.1;
  e.tuned_at = autotune::utc_now();
  return e;
}

ScanShape scan_shape(int64_t batch, int64_t length, int64_t channels, int64_t state = 16) {
  return ScanShape{batch, length, channels, state, DType::kBFloat16};
}

PerformerShape performer_shape(int64_t batch, int64_t n, int64_t heads, int64_t dv = 64) {
  PerformerShape s;
  s.batch = batch;
  s.nq = s.nk = n;
  s.heads = s.kv_heads = heads;
  s.head_dim = 64;
  s.v_dim = dv;
  return s;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(LinearTuning, BucketKeys) {
  EXPECT_EQ(linear::scan_bucket(scan_shape(1, 4096, 1536)), "scan|bc2048|l4096|n16|bf16");
  // Nearby problems share a bucket: batch x channels and length round up to powers of two.
  EXPECT_EQ(linear::scan_bucket(scan_shape(2, 3000, 768)), linear::scan_bucket(scan_shape(1, 4096, 1536)));
  EXPECT_NE(linear::scan_bucket(scan_shape(1, 4096, 1536, 8)), linear::scan_bucket(scan_shape(1, 4096, 1536, 16)));
  ScanShape fp16 = scan_shape(1, 4096, 1536);
  fp16.dtype = DType::kFloat16;
  EXPECT_EQ(linear::scan_bucket(fp16), "scan|bc2048|l4096|n16|fp16");
  EXPECT_EQ(linear::performer_bucket(performer_shape(1, 4096, 16), 256), "performer|causal|bh16|n4096|m256|dv64|bf16");
  EXPECT_EQ(linear::performer_bucket(performer_shape(2, 3000, 6), 256), "performer|causal|bh16|n4096|m256|dv64|bf16");
  EXPECT_NE(linear::performer_bucket(performer_shape(1, 4096, 16), 128),
            linear::performer_bucket(performer_shape(1, 4096, 16), 256));
  EXPECT_TRUE(autotune::is_linear_key(linear::scan_bucket(scan_shape(1, 8, 8))));
  EXPECT_TRUE(autotune::is_linear_key(linear::performer_bucket(performer_shape(1, 8, 1), 16)));
  EXPECT_FALSE(autotune::is_linear_key("local_window|d2^-4|n16384|hd128|bf16|gqa1"));
  EXPECT_FALSE(autotune::is_linear_key("bwd|local_window|d2^-4|n16384|hd128|bf16|gqa1"));
}

TEST(LinearTuning, CandidatesAreTheTablesHeuristicFirst) {
  AutotuneOptions o;
  o.arch = "sm_90a";
  LinearProblem scan;
  scan.op = LinearOp::kScan;
  scan.length = 4096;
  scan.channels = 1536;
  const std::vector<LinearCandidateReport> sc = Autotuner(o).linear_candidates(scan);
  ASSERT_FALSE(sc.empty());
  EXPECT_TRUE(sc[0].heuristic);
  std::string why;
  EXPECT_EQ(sc[0].config, linear::scan_heuristic(ScanShape{1, 4096, 1536, 16, DType::kBFloat16},
                                                 autotune::typical_device("sm_90a"), &why)
                              .to_string());
  for (const ScanConfig& c : scan_configs())
    EXPECT_EQ(std::count_if(sc.begin(), sc.end(), [&](const auto& r) { return r.config == c.to_string(); }), 1)
        << c.to_string() << ": every table row once";
  for (const LinearCandidateReport& c : sc) {
    EXPECT_EQ(c.status, "candidate") << c.config << ": " << c.detail;
    EXPECT_EQ(c.smem_bytes, ScanConfig::parse(c.config).smem_bytes(16));
  }

  // Performer at 1024 features: only the small tiles fit 227 KiB; the rest are pruned, with why.
  LinearProblem perf;
  perf.op = LinearOp::kPerformer;
  perf.length = 4096;
  perf.features = 1024;
  const std::vector<LinearCandidateReport> pc = Autotuner(o).linear_candidates(perf);
  ASSERT_EQ(pc.size(), performer_configs().size());
  EXPECT_TRUE(pc[0].heuristic);
  EXPECT_EQ(pc[0].status, "candidate");
  size_t pruned = 0;
  for (const LinearCandidateReport& c : pc) {
    if (c.status != "pruned") continue;
    ++pruned;
    EXPECT_GT(c.smem_bytes, 227 * 1024) << c.config;
    EXPECT_NE(c.detail.find("shared memory"), std::string::npos) << c.detail;
  }
  EXPECT_GT(pruned, 0u);

  // Only the named configurations, plus the heuristic's.
  o.linear_configs = {"64x8x16"};
  const std::vector<LinearCandidateReport> only = Autotuner(o).linear_candidates(scan);
  ASSERT_EQ(only.size(), 2u);
  EXPECT_TRUE(only[0].heuristic);
  EXPECT_EQ(only[1].config, "64x8x16");

  // Problems the kernels do not take are refused by name.
  scan.state = 7;
  try {
    Autotuner(o).linear_candidates(scan);
    FAIL() << "state 7";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("state size 7"), std::string::npos) << e.what();
  }
  scan.state = 16;
  scan.channels = 0;
  EXPECT_THROW(Autotuner(o).linear_candidates(scan), Error);
  perf.features = 100;
  try {
    Autotuner(o).linear_candidates(perf);
    FAIL() << "100 features";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("100 random features"), std::string::npos) << e.what();
  }
}

TEST(LinearTuning, RecordsRoundTripBesideAttentionRecords) {
  test::TempDir dir("ltdb");
  const Fingerprint f = Fingerprint::of(h200());
  const std::string scan_key = linear::scan_bucket(scan_shape(1, 4096, 1536));
  const std::string perf_key = linear::performer_bucket(performer_shape(1, 4096, 16), 256);
  const std::string attn_key = "local_window|d2^-4|n16384|hd128|bf16|gqa1";
  TuningDb::store(dir.path(), f, attn_key, attention_entry("64x64w4s1:hilbert"));
  const fs::path file = TuningDb::store_linear(dir.path(), f, scan_key, linear_entry("32x8x16", 0.5));
  TuningDb::store_linear(dir.path(), f, perf_key, linear_entry("16x32", 2.0, "32x32"));
  TuningDb::store_linear(dir.path(), f, scan_key, linear_entry("64x4x16", 0.4));  // replaces

  const TuningDb db = TuningDb::load(file, &f);
  ASSERT_EQ(db.state, DbState::kLoaded) << db.problem;
  ASSERT_EQ(db.entries.size(), 1u);
  ASSERT_EQ(db.linear.size(), 2u);
  EXPECT_EQ(db.find(attn_key)->config.to_string(), "64x64w4s1:hilbert");
  const LinearEntry* s = db.find_linear(scan_key);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->config, "64x4x16");
  EXPECT_DOUBLE_EQ(s->median_ms, 0.4);
  EXPECT_DOUBLE_EQ(s->heuristic_ms, 0.5);
  EXPECT_EQ(s->heuristic_config, "32x1x16");
  EXPECT_EQ(db.find_linear(perf_key)->config, "16x32");
  EXPECT_EQ(db.find(scan_key), nullptr) << "linear records are not attention records";
  const nlohmann::json j = nlohmann::json::parse(slurp(file));
  EXPECT_EQ(j["entries"][scan_key]["config"], "64x4x16");
  EXPECT_DOUBLE_EQ(j["entries"][scan_key]["speedup"].get<double>(), 1.25);

  // Each kind of record has its own store.
  EXPECT_THROW(TuningDb::store(dir.path(), f, scan_key, attention_entry("128x64w4s1")), Error);
  EXPECT_THROW(TuningDb::store_linear(dir.path(), f, attn_key, linear_entry("32x8x16")), Error);

  // Merging another database (cache import): the later measurement wins, conflicts are named.
  TuningDb incoming = TuningDb::parse(slurp(file), "incoming");
  LinearEntry later = linear_entry("32x4x32", 0.3);
  later.tuned_at = "2999-01-01T00:00:00Z";
  incoming.linear[scan_key] = later;
  incoming.linear["scan|bc64|l64|n4|fp32"] = linear_entry("32x1x16");
  test::TempDir other("ltdb-merge");
  TuningDb::store_linear(other.path(), f, scan_key, linear_entry("64x4x16", 0.4));
  const auto outcomes = TuningDb::merge(other.path(), incoming);
  size_t added = 0, updated = 0;
  for (const autotune::MergeOutcome& m : outcomes) {
    added += m.status == "added";
    if (m.key == scan_key) {
      EXPECT_EQ(m.status, "updated");
      EXPECT_NE(m.detail.find("conflict: 32x4x32"), std::string::npos) << m.detail;
      ++updated;
    }
  }
  EXPECT_EQ(updated, 1u);
  EXPECT_EQ(added, 3u) << "the attention record, the performer record and the new scan bucket";
  const TuningDb merged = TuningDb::load(TuningDb::file_for(other.path(), f), &f);
  EXPECT_EQ(merged.find_linear(scan_key)->config, "32x4x32");
  EXPECT_EQ(merged.linear.size(), 3u);
  EXPECT_EQ(merged.entries.size(), 1u);
}

TEST(LinearTuning, CorruptLinearRecordMakesTheFileUnusableLikeAnAttentionRecord) {
  test::TempDir dir("ltdb-bad");
  const Fingerprint f = Fingerprint::of(h200());
  const fs::path file = TuningDb::store_linear(dir.path(), f, "scan|bc2048|l4096|n16|bf16", linear_entry("32x8x16"));
  for (const auto& [bad, why] : std::vector<std::pair<nlohmann::json, std::string>>{
           {{{"median_ms", 1.0}}, "entry.config is missing"},
           {{{"config", 32}, {"median_ms", 1.0}}, "entry.config has the wrong type"},
           {{{"config", "32x8x16"}}, "entry.median_ms is missing"},
           {{{"config", "fast"}, {"median_ms", 1.0}}, "is not a linear kernel configuration"},
           {{{"config", "32xx16"}, {"median_ms", 1.0}}, "is not a linear kernel configuration"}}) {
    nlohmann::json j = nlohmann::json::parse(slurp(file));
    j["entries"]["performer|causal|bh16|n4096|m256|dv64|bf16"] = bad;
    std::ofstream(file) << j.dump();
    const TuningDb db = TuningDb::load(file, &f);
    EXPECT_EQ(db.state, DbState::kCorrupt) << bad.dump();
    EXPECT_NE(db.problem.find("entries[\"performer|causal|bh16|n4096|m256|dv64|bf16\"]"), std::string::npos)
        << db.problem;
    EXPECT_NE(db.problem.find(why), std::string::npos) << why << " in: " << db.problem;
    EXPECT_TRUE(db.entries.empty() && db.linear.empty());
  }
  // The next write keeps the damaged file aside and starts afresh.
  TuningDb::store_linear(dir.path(), f, "scan|bc2048|l4096|n16|bf16", linear_entry("32x4x16"));
  EXPECT_TRUE(fs::exists(file.string() + ".corrupt"));
  EXPECT_EQ(TuningDb::load(file, &f).find_linear("scan|bc2048|l4096|n16|bf16")->config, "32x4x16");
}

TEST(LinearTuning, PlansReadTheDatabaseThenFallBackToTheHeuristic) {
  test::TempDir dir("ltdb-select");
  test::ScopedEnv env("SPATTN_CACHE_DIR", dir.path().string());
  const runtime::DeviceInfo gpu = h200();
  const ScanShape shape = scan_shape(1, 4096, 1536);
  std::string heuristic_why;
  const ScanConfig heuristic = linear::scan_heuristic(shape, gpu, &heuristic_why);

  // No database: the heuristic, and why the database did not decide.
  std::string source;
  EXPECT_EQ(linear::choose_scan(shape, gpu, true, &source), heuristic);
  EXPECT_EQ(source.rfind("heuristic (", 0), 0u) << source;
  EXPECT_NE(source.find("no tuning database for this GPU"), std::string::npos) << source;

  // An entry for the bucket decides.
  const Fingerprint f = Fingerprint::of(gpu);
  const fs::path tuning = dir.path() / "tuning";
  TuningDb::store_linear(tuning, f, linear::scan_bucket(shape), linear_entry("64x4x16", 0.4, heuristic.to_string()));
  EXPECT_EQ(linear::choose_scan(shape, gpu, true, &source).to_string(), "64x4x16");
  EXPECT_EQ(source.rfind("tuning database (", 0), 0u) << source;
  EXPECT_NE(source.find(linear::scan_bucket(shape)), std::string::npos) << source;
  EXPECT_NE(source.find("1.25x the heuristic's " + heuristic.to_string()), std::string::npos) << source;
  // ... for every problem of the bucket, and not for another bucket.
  EXPECT_EQ(linear::choose_scan(scan_shape(2, 3000, 768), gpu, true, &source).to_string(), "64x4x16");
  EXPECT_EQ(linear::choose_scan(scan_shape(1, 4096, 1536, 8), gpu, true, &source),
            linear::scan_heuristic(scan_shape(1, 4096, 1536, 8), gpu));
  EXPECT_NE(source.find("no entry for bucket scan|bc2048|l4096|n8|bf16"), std::string::npos) << source;
  // use_tuning_db = false: the heuristic, saying so.
  EXPECT_EQ(linear::choose_scan(shape, gpu, false, &source), heuristic);
  EXPECT_NE(source.find("not consulted"), std::string::npos) << source;

  // Another GPU (or driver, or build) does not read this GPU's entries.
  runtime::DeviceInfo other = gpu;
  other.driver_version = 12080;
  EXPECT_EQ(linear::choose_scan(shape, other, true, &source), linear::scan_heuristic(shape, other));
  EXPECT_NE(source.find("other GPUs or builds"), std::string::npos) << source;

  // A foreign record (a configuration the scan does not have, or one this GPU cannot
  // hold) is ignored with the reason, and the heuristic runs.
  TuningDb::store_linear(tuning, f, linear::scan_bucket(shape), linear_entry("32x3x16"));
  EXPECT_EQ(linear::choose_scan(shape, gpu, true, &source), heuristic);
  EXPECT_NE(source.find("not usable here"), std::string::npos) << source;
  EXPECT_NE(source.find("segments must be"), std::string::npos) << source;
  TuningDb::store_linear(tuning, f, linear::scan_bucket(shape), linear_entry("32x8x16"));
  EXPECT_EQ(linear::choose_scan(shape, gpu, true, &source).to_string(), "32x8x16");
  runtime::DeviceInfo small = gpu;  // the same fingerprint with less shared memory: the entry does not fit
  small.smem_per_block_optin = 16 * 1024;
  EXPECT_NE(linear::choose_scan(shape, small, true, &source).to_string(), "32x8x16");
  EXPECT_NE(source.find("shared memory"), std::string::npos) << source;

  // Performer, causal: the same rules.
  const PerformerShape ps = performer_shape(1, 4096, 16);
  EXPECT_EQ(linear::choose_performer(ps, 256, gpu, true, &source), linear::performer_heuristic(256, gpu));
  EXPECT_NE(source.find("no entry for bucket performer|causal|bh16|n4096|m256|dv64|bf16"), std::string::npos) << source;
  TuningDb::store_linear(tuning, f, linear::performer_bucket(ps, 256), linear_entry("16x16", 2.0, "32x32"));
  EXPECT_EQ(linear::choose_performer(ps, 256, gpu, true, &source).to_string(), "16x16");
  EXPECT_EQ(source.rfind("tuning database (", 0), 0u) << source;
  // A scan configuration under a Performer key is foreign there.
  TuningDb::store_linear(tuning, f, linear::performer_bucket(ps, 256), linear_entry("32x8x16"));
  EXPECT_EQ(linear::choose_performer(ps, 256, gpu, true, &source), linear::performer_heuristic(256, gpu));
  EXPECT_NE(source.find("invalid performer config"), std::string::npos) << source;
  // Attention records in the same file are unaffected by the linear ones.
  TuningDb::store(tuning, f, "local_window|d2^-4|n16384|hd128|bf16|gqa1", attention_entry("64x64w4s1"));
  EXPECT_EQ(TuningDb::load(TuningDb::file_for(tuning, f), &f).state, DbState::kLoaded);
}

TEST(LinearTuning, TolerancesAndCheck) {
  const linear::LinearTolerance t = linear::scan_tolerance(DType::kBFloat16);
  EXPECT_DOUBLE_EQ(t.rtol, 1.0 / 256);
  const std::vector<double> ref = {1.0, -2.0, 0.5};
  EXPECT_TRUE(linear::check_output({1.0f, -2.0f, 0.5f}, ref, t).ok());
  const linear::LinearCheck bad = linear::check_output({1.0f, -2.5f, NAN}, ref, t);
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.bad, 1);
  EXPECT_EQ(bad.first_bad, 1);
  EXPECT_EQ(bad.nonfinite, 1);
  EXPECT_GT(bad.worst, 1.0);
  EXPECT_NE(bad.to_string().find("1 of 3 elements out of tolerance"), std::string::npos) << bad.to_string();
}

}  // namespace
}  // namespace spattn
