// The tuning database: buckets, round trip, merging writers, fingerprint mismatch, corrupt
// files, and runtime selection through it (api::choose) with a clean fallback.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "api/select.hpp"
#include "autotune/tuning_db.hpp"
#include "tests/support/test_support.hpp"

namespace spattn::autotune {
namespace {

namespace fs = std::filesystem;

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

engine::Problem problem_of(int64_t seq, int64_t heads = 16, int64_t kv_heads = 16) {
  engine::Problem p;
  p.nq = p.nk = seq;
  p.heads = heads;
  p.kv_heads = kv_heads;
  return p;
}

TunedEntry entry(const std::string& config, double ms = 1.0) {
  TunedEntry e;
  e.config = KernelConfig::parse(config);
  e.median_ms = ms;
  e.p20_ms = ms * 0.99;
  e.p80_ms = ms * 1.01;
  e.tflops = 100;
  e.heuristic_config = "128x64w4s1:longest";
  e.heuristic_ms = ms * 1.1;
  e.candidates = 12;
  e.problem = "B=1 Nq=16384";
  e.tuned_at = utc_now();
  return e;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

const Pattern& window() {
  static const Pattern p = Pattern::parse(R"({"type":"local_window","window":1024})");
  return p;
}

TEST(TuningDbBuckets, KeysAreCoarseAndReadable) {
  EXPECT_EQ(pattern_class(window()), "local_window");
  EXPECT_EQ(pattern_class(Pattern::parse(R"({"type":"dense","causal":true})")), "dense+causal");
  EXPECT_EQ(pattern_class(Pattern::parse(
                R"({"union":[{"type":"strided","stride":64,"mode":"relative"},{"type":"local_window","window":128}]})")),
            "union[local_window,strided]");
  EXPECT_EQ(density_bucket(1.0), 0);
  EXPECT_EQ(density_bucket(0.5), -1);
  EXPECT_EQ(density_bucket(0.0625), -4);
  EXPECT_EQ(density_bucket(0.06), -4);
  EXPECT_EQ(density_bucket(0.07), -3);
  EXPECT_EQ(density_bucket(0), -24);
  EXPECT_EQ(power_of_two_at_least(16384), 16384);
  EXPECT_EQ(power_of_two_at_least(10000), 16384);
  EXPECT_EQ(power_of_two_at_least(1), 1);

  const ProblemBucket b = bucket_of(window(), problem_of(16384, 16, 4), 0.0617);
  EXPECT_EQ(b.key(), "local_window|d2^-4|n16384|hd128|bf16|gqa4");
  EXPECT_EQ(b.key_without_density(), "local_window|d*|n16384|hd128|bf16|gqa4");
  // Nearby lengths share a bucket; cross-attention names both lengths.
  EXPECT_EQ(bucket_of(window(), problem_of(12000), 0.06).key(), bucket_of(window(), problem_of(16384), 0.06).key());
  engine::Problem cross = problem_of(4096);
  cross.nk = 65536;
  EXPECT_NE(bucket_of(window(), cross, 0.01).key().find("n4096:k65536"), std::string::npos);
  // The density of a window of 1024 at 16k is about 1/16.
  EXPECT_NEAR(pattern_density(window(), problem_of(16384, 2)), 1025.0 / 16384, 0.005);
}

TEST(TuningDbFingerprint, CanonicalAndRoundTrips) {
  const Fingerprint f = Fingerprint::of(h200());
  EXPECT_EQ(f.cc_major, 9);
  EXPECT_EQ(f.driver, "13.0");
  EXPECT_EQ(f.spattn, SPATTN_VERSION_STRING);
  EXPECT_EQ(f.arch(), "sm_90a");
  EXPECT_EQ(Fingerprint::from_json(f.to_json()), f);
  EXPECT_EQ(f.hash().size(), 16u);
  Fingerprint g = f;
  g.driver = "12.8";
  EXPECT_NE(g.hash(), f.hash());
  nlohmann::json bad = f.to_json();
  bad["cc"] = "nine";
  try {
    Fingerprint::from_json(bad);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
    EXPECT_NE(std::string(e.what()).find("fingerprint.cc"), std::string::npos) << e.what();
  }
}

TEST(TuningDbFile, RoundTripAndMerge) {
  test::TempDir dir("tdb");
  const Fingerprint f = Fingerprint::of(h200());
  const fs::path file = TuningDb::store(dir.path(), f, "a|d2^-4|n16384|hd128|bf16|gqa1", entry("64x64w4s1:hilbert", 1.5));
  EXPECT_EQ(file, TuningDb::file_for(dir.path(), f));
  EXPECT_EQ(file.filename().string(), f.hash() + ".json");
  TuningDb::store(dir.path(), f, "b|d2^-2|n65536|hd128|bf16|gqa1", entry("128x64w4s2", 9.0));
  TuningDb::store(dir.path(), f, "a|d2^-4|n16384|hd128|bf16|gqa1", entry("128x32w4s1", 1.25));  // replaces

  const TuningDb db = TuningDb::load(file, &f);
  ASSERT_EQ(db.state, DbState::kLoaded) << db.problem;
  ASSERT_EQ(db.entries.size(), 2u);
  const TunedEntry* a = db.find("a|d2^-4|n16384|hd128|bf16|gqa1");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->config.to_string(), "128x32w4s1");
  EXPECT_DOUBLE_EQ(a->median_ms, 1.25);
  EXPECT_DOUBLE_EQ(a->heuristic_ms, 1.25 * 1.1);
  EXPECT_EQ(a->heuristic_config, "128x64w4s1:longest");
  EXPECT_EQ(db.find("b|d2^-2|n65536|hd128|bf16|gqa1")->config.to_string(), "128x64w4s2");
  EXPECT_EQ(*db.fingerprint, f);
  // The file is plain, readable JSON with the fingerprint in it; no temp or lock files left.
  const nlohmann::json j = nlohmann::json::parse(slurp(file));
  EXPECT_EQ(j["format"], kTuningDbFormat);
  EXPECT_EQ(j["fingerprint"]["name"], "NVIDIA H200");
  EXPECT_EQ(j["entries"]["a|d2^-4|n16384|hd128|bf16|gqa1"]["config"], "128x32w4s1");
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1u);
  EXPECT_EQ(TuningDb::load_all(dir.path()).size(), 1u);
}

TEST(TuningDbFile, ConcurrentWritersLoseNothing) {
  test::TempDir dir("tdb");
  const Fingerprint f = Fingerprint::of(h200());
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      for (int k = 0; k < 5; ++k) TuningDb::store(dir.path(), f, fmt::format("b{}-{}", t, k), entry("64x64w4s1"));
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(TuningDb::load(TuningDb::file_for(dir.path(), f), &f).entries.size(), 40u);
}

TEST(TuningDbFile, MismatchedFingerprintIsIgnored) {
  test::TempDir dir("tdb");
  const Fingerprint f = Fingerprint::of(h200());
  const fs::path file = TuningDb::store(dir.path(), f, "k", entry("64x64w4s1"));
  Fingerprint other = f;
  other.driver = "12.8";
  const TuningDb db = TuningDb::load(file, &other);
  EXPECT_EQ(db.state, DbState::kMismatch);
  EXPECT_TRUE(db.entries.empty());
  EXPECT_NE(db.problem.find("driver 13.0"), std::string::npos) << db.problem;

  // Another driver: another file, so nothing applies and the heuristic decides.
  runtime::DeviceInfo newer = h200();
  newer.driver_version = 13010;
  TuningDb::store(dir.path(), f, bucket_of(window(), problem_of(16384), 0.0626).key(), entry("64x64w4s1"));
  const DbLookup miss = lookup_in(dir.path(), window(), problem_of(16384), newer);
  EXPECT_FALSE(miss.config);
  EXPECT_NE(miss.source.find("no tuning database for this GPU"), std::string::npos) << miss.source;

  // A file copied under this GPU's name but written for another: ignored, not used.
  fs::copy_file(file, TuningDb::file_for(dir.path(), Fingerprint::of(newer)));
  const DbLookup copied = lookup_in(dir.path(), window(), problem_of(16384), newer);
  EXPECT_FALSE(copied.config);
  EXPECT_NE(copied.source.find("ignored"), std::string::npos) << copied.source;
}

// Optional fields of the wrong type are corrupt files too (kCorrupt naming the entry and
// the field), never another exception out of load() or parse().
TEST(TuningDbFile, OptionalFieldsOfTheWrongTypeAreCorrupt) {
  test::TempDir dir("tdb");
  const Fingerprint f = Fingerprint::of(h200());
  const fs::path file = TuningDb::file_for(dir.path(), f);
  const std::pair<const char*, nlohmann::json> cases[] = {
      {"candidates", {{"config", "64x64w4s1"}, {"median_ms", 1}, {"candidates", "many"}}},
      {"p20_ms", {{"config", "64x64w4s1"}, {"median_ms", 1}, {"p20_ms", "fast"}}},
      {"heuristic.config", {{"config", "64x64w4s1"}, {"median_ms", 1}, {"heuristic", {{"config", 3}}}}},
      {"tuned_at", {{"config", "64x64w4s1"}, {"median_ms", 1}, {"tuned_at", 5}}},
      {"bucket", {{"config", "64x64w4s1"}, {"median_ms", 1}, {"bucket", 7}}},
      {"median_ms", {{"config", "64x64w4s1"}, {"median_ms", -1}}},
  };
  for (const auto& [field, value] : cases) {
    SCOPED_TRACE(field);
    for (const char* key : {"a|d2^-4|n16384|hd128|bf16|gqa1", "scan|k"}) {
      nlohmann::json entry = value;
      if (std::string(key).starts_with("scan|")) entry["config"] = "32x8";
      const std::string text =
          nlohmann::json{{"format", 1}, {"fingerprint", f.to_json()}, {"entries", {{key, entry}}}}.dump();
      { std::ofstream(file) << text; }
      const TuningDb db = TuningDb::load(file, &f);
      EXPECT_EQ(db.state, DbState::kCorrupt) << key;
      EXPECT_NE(db.problem.find(field), std::string::npos) << db.problem;
      try {
        TuningDb::parse(text, "archived");
        ADD_FAILURE() << "parsed " << text;
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::kCorrupt) << e.what();
      }
    }
  }
}

TEST(TuningDbFile, CorruptFileIsIgnoredThenKeptAside) {
  test::TempDir dir("tdb");
  const Fingerprint f = Fingerprint::of(h200());
  const fs::path file = TuningDb::file_for(dir.path(), f);
  for (const std::string& garbage : {std::string("{\"format\": 1, \"entr"), std::string("[1, 2]"),
                                    std::string(R"({"format": 1, "fingerprint": {}, "entries": {}})"),
                                    std::string(R"({"format": 99, "fingerprint": {}, "entries": {}})")}) {
    SCOPED_TRACE(garbage);
    { std::ofstream(file) << garbage; }
    const TuningDb db = TuningDb::load(file, &f);
    EXPECT_EQ(db.state, DbState::kCorrupt);
    EXPECT_FALSE(db.problem.empty());
    const DbLookup l = lookup_in(dir.path(), window(), problem_of(16384), h200());
    EXPECT_FALSE(l.config);
    EXPECT_NE(l.source.find("ignored"), std::string::npos) << l.source;
  }
  // An entry with a config that does not parse makes the file corrupt too, naming the entry.
  { std::ofstream(file) << nlohmann::json{{"format", 1}, {"fingerprint", f.to_json()},
                                          {"entries", {{"k", {{"config", "12x3"}, {"median_ms", 1}}}}}}.dump(); }
  const TuningDb bad_entry = TuningDb::load(file, &f);
  EXPECT_EQ(bad_entry.state, DbState::kCorrupt);
  EXPECT_NE(bad_entry.problem.find("entries[\"k\"]"), std::string::npos) << bad_entry.problem;

  // The next write keeps the damaged file as .corrupt and starts afresh.
  const std::string damaged = slurp(file);
  TuningDb::store(dir.path(), f, "k2", entry("64x64w4s1"));
  EXPECT_EQ(slurp(file.string() + ".corrupt"), damaged);
  const TuningDb fresh = TuningDb::load(file, &f);
  EXPECT_EQ(fresh.state, DbState::kLoaded);
  EXPECT_EQ(fresh.entries.size(), 1u);
}

TEST(TuningDbLookup, FindsTheBucketAndSaysSo) {
  test::TempDir dir("tdb");
  const runtime::DeviceInfo dev = h200();
  const engine::Problem p = problem_of(16384);
  const std::string key = bucket_of(window(), p, pattern_density(window(), p)).key();
  TuningDb::store(dir.path(), Fingerprint::of(dev), key, entry("64x64w4s1:hilbert", 1.0));

  const DbLookup hit = lookup_in(dir.path(), window(), p, dev);
  ASSERT_TRUE(hit.config) << hit.source;
  EXPECT_EQ(hit.config->to_string(), "64x64w4s1:hilbert");
  EXPECT_EQ(hit.bucket, key);
  EXPECT_EQ(hit.source.rfind("tuning database (", 0), 0u) << hit.source;
  EXPECT_NE(hit.source.find(key), std::string::npos) << hit.source;
  EXPECT_NE(hit.source.find("1.10x"), std::string::npos) << hit.source;

  // A shorter sequence in the same length band: its density (1025 / 15000) crosses into
  // the next density band, and the nearest band's entry serves it, saying so.
  const DbLookup near = lookup_in(dir.path(), window(), problem_of(15000), dev);
  ASSERT_TRUE(near.config) << near.source;
  EXPECT_NE(near.source.find("nearest to"), std::string::npos) << near.source;
  // Two bands away is another problem.
  EXPECT_FALSE(lookup_in(dir.path(), Pattern::parse(R"({"type":"local_window","window":4096})"), p, dev).config);
  // Other buckets: another dtype, another band, another pattern class.
  engine::Problem fp16 = p;
  fp16.dtype = DType::kFloat16;
  const DbLookup other = lookup_in(dir.path(), window(), fp16, dev);
  EXPECT_FALSE(other.config);
  EXPECT_NE(other.source.find("no entry for bucket"), std::string::npos) << other.source;
  EXPECT_FALSE(lookup_in(dir.path(), window(), problem_of(65536), dev).config);
  EXPECT_FALSE(lookup_in(dir.path(), Pattern::parse("dense"), p, dev).config);

  // A new entry written meanwhile is seen (the file changed on disk).
  TuningDb::store(dir.path(), Fingerprint::of(dev), bucket_of(window(), fp16, pattern_density(window(), fp16)).key(),
                  entry("128x32w4s2"));
  const DbLookup later = lookup_in(dir.path(), window(), fp16, dev);
  ASSERT_TRUE(later.config) << later.source;
  EXPECT_EQ(later.config->to_string(), "128x32w4s2");
}

TEST(TuningDbLookup, EntryTheDeviceCannotRunFallsBack) {
  test::TempDir dir("tdb");
  runtime::DeviceInfo dev = h200();
  dev.smem_per_block_optin = 64 * 1024;  // a smaller part of the same fingerprint, hypothetically
  const engine::Problem p = problem_of(16384);
  TuningDb::store(dir.path(), Fingerprint::of(dev), bucket_of(window(), p, pattern_density(window(), p)).key(),
                  entry("128x64w4s2"));
  const DbLookup l = lookup_in(dir.path(), window(), p, dev);
  EXPECT_FALSE(l.config);
  EXPECT_NE(l.source.find("not usable here"), std::string::npos) << l.source;
}

// Backward entries live beside the forward ones under "bwd|" keys: each pass finds only
// its own, and a backward entry must pass the backward config check.
TEST(TuningDbLookup, BackwardEntriesAreSeparateFromForwardOnes) {
  test::TempDir dir("tdb");
  const runtime::DeviceInfo dev = h200();
  const engine::Problem p = problem_of(16384);
  const double density = pattern_density(window(), p);
  const std::string fwd_key = bucket_of(window(), p, density).key();
  const std::string bwd_key = bucket_of(window(), p, density, TunePass::kBackward).key();
  EXPECT_EQ(bwd_key, "bwd|" + fwd_key);
  EXPECT_EQ(bucket_of(window(), p, density, TunePass::kBackward).to_json()["pass"], "backward");
  TuningDb::store(dir.path(), Fingerprint::of(dev), bwd_key, entry("64x64w4s2", 1.0));
  EXPECT_FALSE(lookup_in(dir.path(), window(), p, dev).config) << "a forward lookup never takes a backward entry";
  const DbLookup b = lookup_in(dir.path(), window(), p, dev, TunePass::kBackward);
  ASSERT_TRUE(b.config) << b.source;
  EXPECT_EQ(b.config->to_string(), "64x64w4s2");
  EXPECT_EQ(b.bucket, bwd_key);
  // The nearest density band works for backward keys too.
  EXPECT_TRUE(lookup_in(dir.path(), window(), problem_of(15000), dev, TunePass::kBackward).config);
  // A forward-only config stored under a backward key is refused with the reason.
  TuningDb::store(dir.path(), Fingerprint::of(dev), bwd_key, entry("sm90:128x128s2", 1.0));
  const DbLookup bad = lookup_in(dir.path(), window(), p, dev, TunePass::kBackward);
  EXPECT_FALSE(bad.config);
  EXPECT_NE(bad.source.find("not usable here"), std::string::npos) << bad.source;
}

TEST(Selection, ChooseUsesTheDatabaseElseTheHeuristicAndSaysWhich) {
  test::TempDir dir("tdb");
  test::ScopedEnv env("SPATTN_CACHE_DIR", dir.path().string());
  const runtime::DeviceInfo dev = h200();
  const engine::Problem p = problem_of(16384);

  // No database: the heuristic, cleanly, saying why.
  const api::Choice none = api::choose(window(), p, dev, true);
  EXPECT_EQ(none.config, api::heuristic(window(), p, dev).config);
  EXPECT_EQ(none.source.rfind("heuristic (", 0), 0u) << none.source;
  EXPECT_NE(none.source.find("no tuning database for this GPU"), std::string::npos) << none.source;
  EXPECT_EQ(none.source.back(), ')');

  TuningDb::store(TuningDb::default_dir(), Fingerprint::of(dev),
                  bucket_of(window(), p, pattern_density(window(), p)).key(), entry("64x128w4s1:hilbert"));
  EXPECT_EQ(TuningDb::default_dir(), dir.path() / "tuning");
  const api::Choice tuned = api::choose(window(), p, dev, true);
  EXPECT_EQ(tuned.config.to_string(), "64x128w4s1:hilbert");
  EXPECT_EQ(tuned.source.rfind("tuning database (", 0), 0u) << tuned.source;

  const api::Choice off = api::choose(window(), p, dev, false);
  EXPECT_EQ(off.config, api::heuristic(window(), p, dev).config);
  EXPECT_NE(off.source.find("not consulted"), std::string::npos) << off.source;

  // Another pattern class falls back, naming the bucket it looked for.
  const api::Choice dense = api::choose(Pattern::parse("dense"), p, dev, true);
  EXPECT_EQ(dense.source.rfind("heuristic (", 0), 0u) << dense.source;
  EXPECT_NE(dense.source.find("dense|d*|n16384|hd128|bf16|gqa1"), std::string::npos) << dense.source;

  // The backward pass: its heuristic until a backward entry exists, then the entry.
  const api::Choice bwd = api::choose_backward(window(), p, dev, true);
  EXPECT_EQ(bwd.config, engine::backward_heuristic(window(), p, dev).config);
  EXPECT_NE(bwd.source.find("bwd|local_window|d*"), std::string::npos) << bwd.source;
  TuningDb::store(TuningDb::default_dir(), Fingerprint::of(dev),
                  bucket_of(window(), p, pattern_density(window(), p), TunePass::kBackward).key(),
                  entry("32x128w8s2"));
  const api::Choice bwd_tuned = api::choose_backward(window(), p, dev, true);
  EXPECT_EQ(bwd_tuned.config.to_string(), "32x128w8s2");
  EXPECT_EQ(bwd_tuned.source.rfind("tuning database (", 0), 0u) << bwd_tuned.source;
  EXPECT_EQ(api::choose(window(), p, dev, true).config.to_string(), "64x128w4s1:hilbert") << "forward unchanged";
  EXPECT_EQ(api::choose_backward(window(), p, dev, false).config, engine::backward_heuristic(window(), p, dev).config);
}

}  // namespace
}  // namespace spattn::autotune
