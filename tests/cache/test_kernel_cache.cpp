// KernelCache in one process: round trips and counters, recovery from bad files,
// eviction, maintenance, threads, and the disabled cache.
#include <gtest/gtest.h>

#include <unistd.h>

#include <thread>

#include "cache/format.hpp"
#include "tests/cache/cache_test_util.hpp"

namespace spattn {
namespace {

namespace fs = std::filesystem;
using test::config_in;
using test::CountingCompiler;
using test::fake_kernel;
using test::fake_manifest;
using test::slurp;
using test::spit;
using test::TempDir;

void expect_same(const CompiledKernel& a, const CompiledKernel& b) {
  EXPECT_EQ(a.cubin, b.cubin);
  EXPECT_EQ(a.log, b.log);
  EXPECT_EQ(a.lowered_names, b.lowered_names);
  EXPECT_EQ(a.registers, b.registers);
  EXPECT_EQ(a.shared_bytes, b.shared_bytes);
  EXPECT_EQ(a.local_bytes, b.local_bytes);
  EXPECT_DOUBLE_EQ(a.compile_ms, b.compile_ms);
}

TEST(KernelCache, MissThenHit) {
  TempDir dir("cache");
  KernelCache cache(config_in(dir.path()));
  CountingCompiler compiler;
  compiler.payload = fake_kernel(200 * 1024, 1);
  const KernelManifest m = fake_manifest("spattn_fwd_a");
  const CacheCounters global_before = KernelCache::global_counters();

  const CacheLookup first = cache.get_or_compile(m, compiler.fn());
  EXPECT_FALSE(first.hit);
  EXPECT_EQ(first.key, m.key());
  expect_same(first.kernel, compiler.payload);
  EXPECT_TRUE(fs::exists(cache.path_for(first.key)));

  const CacheLookup second = cache.get_or_compile(m, compiler.fn());
  EXPECT_TRUE(second.hit);
  EXPECT_EQ(second.key, first.key);
  expect_same(second.kernel, compiler.payload);

  EXPECT_EQ(compiler.calls, 1);
  const CacheCounters c = cache.counters();
  EXPECT_EQ(c.hits, 1u);
  EXPECT_EQ(c.misses, 1u);
  EXPECT_EQ(c.compiles, 1u);
  EXPECT_EQ(c.recovered, 0u);
  EXPECT_EQ(c.evictions, 0u);
  const CacheCounters global = KernelCache::global_counters();
  EXPECT_EQ(global.hits - global_before.hits, 1u);
  EXPECT_EQ(global.compiles - global_before.compiles, 1u);
  // Locks exist only while held; nothing but the entry is left behind.
  EXPECT_TRUE(fs::is_empty(dir.path() / "locks"));
}

TEST(KernelCache, PrewarmedCacheNeedsZeroCompiles) {
  TempDir dir("cache");
  std::vector<KernelManifest> manifests;
  for (int i = 0; i < 5; ++i) manifests.push_back(fake_manifest("k" + std::to_string(i)));
  {
    KernelCache prewarm(config_in(dir.path()));
    for (std::size_t i = 0; i < manifests.size(); ++i) {
      prewarm.get_or_compile(manifests[i], [&] { return fake_kernel(1000, static_cast<unsigned>(i)); });
    }
  }
  // A later process (here: a fresh instance) on the same directory.
  const CacheCounters before = KernelCache::global_counters();
  KernelCache cache(config_in(dir.path()));
  for (const KernelManifest& m : manifests) {
    const CacheLookup r = cache.get_or_compile(m, []() -> CompiledKernel {
      ADD_FAILURE() << "compiled although the cache was prewarmed";
      return {};
    });
    EXPECT_TRUE(r.hit);
  }
  const CacheCounters after = KernelCache::global_counters();
  EXPECT_EQ(after.compiles - before.compiles, 0u);
  EXPECT_EQ(after.hits - before.hits, manifests.size());
}

TEST(KernelCache, DistinctManifestsAreDistinctEntries) {
  TempDir dir("cache");
  KernelCache cache(config_in(dir.path()));
  const CacheLookup a = cache.get_or_compile(fake_manifest("k", "sm_90a"), [] { return fake_kernel(100, 1); });
  const CacheLookup b = cache.get_or_compile(fake_manifest("k", "sm_80"), [] { return fake_kernel(100, 2); });
  EXPECT_NE(a.key, b.key);
  EXPECT_FALSE(b.hit);
  EXPECT_EQ(cache.list().size(), 2u);
  EXPECT_EQ(cache.get_or_compile(fake_manifest("k", "sm_80"), [] { return fake_kernel(100, 3); }).kernel.cubin,
            fake_kernel(100, 2).cubin);
}

TEST(KernelCache, IncompleteManifestIsRejected) {
  TempDir dir("cache");
  KernelCache cache(config_in(dir.path()));
  for (auto field : {&KernelManifest::arch, &KernelManifest::nvrtc_version, &KernelManifest::spattn_version,
                     &KernelManifest::kernel_name}) {
    KernelManifest m = fake_manifest("k");
    m.*field = "";
    try {
      cache.get_or_compile(m, [] { return CompiledKernel{}; });
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    }
  }
}

TEST(KernelCache, CompileErrorPropagatesAndStoresNothing) {
  TempDir dir("cache");
  KernelCache cache(config_in(dir.path()));
  const KernelManifest m = fake_manifest("k");
  EXPECT_THROW(cache.get_or_compile(m, []() -> CompiledKernel { throw Error(ErrorCode::kCompile, "boom"); }),
               Error);
  EXPECT_FALSE(fs::exists(cache.path_for(m.key())));
  // The lock was released: the next request compiles.
  CountingCompiler compiler;
  EXPECT_FALSE(cache.get_or_compile(m, compiler.fn()).hit);
  EXPECT_EQ(compiler.calls, 1);
}

TEST(KernelCache, DisabledCacheCompilesEveryTimeAndWritesNothing) {
  TempDir dir("cache");
  test::ScopedEnv cache_dir("SPATTN_CACHE_DIR", (dir.path() / "c").string());
  test::ScopedEnv off("SPATTN_DISABLE_CACHE", "1");
  KernelCache cache(CacheConfig::from_env());
  ASSERT_TRUE(cache.config().disabled);
  CountingCompiler compiler;
  compiler.payload = fake_kernel(100, 1);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(cache.get_or_compile(fake_manifest("k"), compiler.fn()).hit);
  EXPECT_EQ(compiler.calls, 3);
  EXPECT_EQ(cache.counters().compiles, 3u);
  EXPECT_EQ(cache.counters().hits, 0u);
  EXPECT_FALSE(fs::exists(dir.path() / "c"));
}

TEST(KernelCache, RemoveDeletesAndCountsAsRecovered) {
  TempDir dir("cache");
  KernelCache cache(config_in(dir.path()));
  const KernelManifest m = fake_manifest("k");
  cache.get_or_compile(m, [] { return fake_kernel(100, 1); });
  EXPECT_TRUE(cache.remove(m.key(), "driver rejected the CUBIN"));
  EXPECT_FALSE(cache.remove(m.key(), "again"));
  EXPECT_EQ(cache.counters().recovered, 1u);
  EXPECT_FALSE(cache.get_or_compile(m, [] { return fake_kernel(100, 1); }).hit);
  EXPECT_THROW(cache.remove("not-a-key", "x"), Error);
}

// --- recovery from bad files --------------------------------------------------------

struct Corruption {
  const char* name;
  std::function<std::string(const std::string& good, const std::string& other_entry)> make;
};

std::string flip(std::string s, std::size_t at) {
  s[at] = static_cast<char>(s[at] ^ 0x10);
  return s;
}

class Recovery : public ::testing::TestWithParam<Corruption> {};

TEST_P(Recovery, BadFileIsAMissThatIsDeletedAndRecompiled) {
  TempDir dir("cache");
  const KernelManifest m = fake_manifest("k");
  const CompiledKernel payload = fake_kernel(4096, 9);
  std::string good, other;
  {
    KernelCache writer(config_in(dir.path()));
    writer.get_or_compile(m, [&] { return payload; });
    writer.get_or_compile(fake_manifest("other"), [] { return fake_kernel(4096, 10); });
    good = slurp(writer.path_for(m.key()));
    other = slurp(writer.path_for(fake_manifest("other").key()));
  }
  KernelCache cache(config_in(dir.path()));
  const fs::path path = cache.path_for(m.key());
  spit(path, GetParam().make(good, other));

  CountingCompiler compiler;
  compiler.payload = payload;
  const CacheLookup r = cache.get_or_compile(m, compiler.fn());
  EXPECT_FALSE(r.hit);
  expect_same(r.kernel, payload);
  EXPECT_EQ(compiler.calls, 1);
  const CacheCounters c = cache.counters();
  EXPECT_EQ(c.misses, 1u);
  EXPECT_EQ(c.compiles, 1u);
  EXPECT_EQ(c.recovered, 1u);
  EXPECT_EQ(c.hits, 0u);

  // The bad file was replaced by a good one.
  EXPECT_TRUE(cache.get_or_compile(m, compiler.fn()).hit);
  EXPECT_EQ(compiler.calls, 1);
}

INSTANTIATE_TEST_SUITE_P(
    BadFiles, Recovery,
    ::testing::Values(
        Corruption{"empty", [](const std::string&, const std::string&) { return std::string(); }},
        Corruption{"truncated_header", [](const std::string& g, const std::string&) { return g.substr(0, 20); }},
        Corruption{"truncated_half", [](const std::string& g, const std::string&) { return g.substr(0, g.size() / 2); }},
        Corruption{"truncated_last_byte",
                   [](const std::string& g, const std::string&) { return g.substr(0, g.size() - 1); }},
        Corruption{"bit_flip_manifest", [](const std::string& g, const std::string&) { return flip(g, 60); }},
        Corruption{"bit_flip_cubin", [](const std::string& g, const std::string&) { return flip(g, g.size() - 100); }},
        Corruption{"bit_flip_checksum", [](const std::string& g, const std::string&) { return flip(g, g.size() - 1); }},
        Corruption{"bit_flip_length", [](const std::string& g, const std::string&) { return flip(g, 40); }},
        Corruption{"wrong_format_version",
                   [](const std::string& g, const std::string&) {
                     // A well-formed file of another format version, checksum and all.
                     const cache::DecodedEntry d = cache::decode_entry(g);
                     return cache::encode_entry(d.manifest, d.kernel, 1, cache::kFormatVersion + 1);
                   }},
        Corruption{"wrong_manifest", [](const std::string&, const std::string& other) { return other; }},
        Corruption{"foreign_random_bytes",
                   [](const std::string& g, const std::string&) {
                     std::string s = g;
                     std::mt19937 rng(5);
                     for (char& c : s) c = static_cast<char>(rng());
                     return s;
                   }},
        Corruption{"foreign_text", [](const std::string&, const std::string&) { return std::string("hello\n"); }}),
    [](const ::testing::TestParamInfo<Corruption>& info) { return std::string(info.param.name); });

TEST(KernelCache, GarbageInTheStampIsHarmless) {
  TempDir dir("cache");
  KernelCache cache(config_in(dir.path()));
  const KernelManifest m = fake_manifest("k");
  cache.get_or_compile(m, [] { return fake_kernel(100, 1); });
  std::string bytes = slurp(cache.path_for(m.key()));
  for (std::size_t i = cache::kStampOffset; i < cache::kStampOffset + 8; ++i) bytes[i] = '\xff';
  spit(cache.path_for(m.key()), bytes);
  EXPECT_TRUE(cache.get_or_compile(m, [] { return fake_kernel(100, 1); }).hit);
  EXPECT_EQ(cache.counters().recovered, 0u);
}

TEST(KernelCache, ADirectoryInPlaceOfAnEntryDoesNotCrash) {
  TempDir dir("cache");
  KernelCache cache(config_in(dir.path()));
  const KernelManifest m = fake_manifest("k");
  fs::create_directories(cache.path_for(m.key()));
  const CacheLookup r = cache.get_or_compile(m, [] { return fake_kernel(100, 1); });
  EXPECT_FALSE(r.hit);
  EXPECT_EQ(r.kernel.cubin, fake_kernel(100, 1).cubin);
  EXPECT_TRUE(cache.get_or_compile(m, [] { return fake_kernel(100, 1); }).hit);
}

TEST(KernelCache, AnImplausiblyLargeFileIsNotReadIntoMemory) {
  TempDir dir("cache");
  KernelCache cache(config_in(dir.path()));
  const KernelManifest m = fake_manifest("k");
  cache.get_or_compile(m, [] { return fake_kernel(100, 1); });
  fs::resize_file(cache.path_for(m.key()), cache::kMaxEntryBytes + 1);  // sparse: no real disk use
  const CacheLookup r = cache.get_or_compile(m, [] { return fake_kernel(100, 1); });
  EXPECT_FALSE(r.hit);
  EXPECT_EQ(cache.counters().recovered, 1u);
  EXPECT_LT(fs::file_size(cache.path_for(m.key())), 10000u);
}

TEST(KernelCache, UnwritableDirectoryStillCompiles) {
  if (::geteuid() == 0) GTEST_SKIP() << "running as root: permissions are not enforced";
  TempDir dir("cache");
  fs::create_directories(dir.path() / "ro");
  fs::permissions(dir.path() / "ro", fs::perms::owner_read | fs::perms::owner_exec);
  KernelCache cache(config_in(dir.path() / "ro" / "cache"));
  CountingCompiler compiler;
  EXPECT_FALSE(cache.get_or_compile(fake_manifest("k"), compiler.fn()).hit);
  EXPECT_FALSE(cache.get_or_compile(fake_manifest("k"), compiler.fn()).hit);
  EXPECT_EQ(compiler.calls, 2);
  fs::permissions(dir.path() / "ro", fs::perms::owner_all);
}

TEST(KernelCache, PathInsideAFileStillCompiles) {
  // Works as root too: the cache "directory" is below a regular file.
  TempDir dir("cache");
  spit(dir.path() / "file", "x");
  KernelCache cache(config_in(dir.path() / "file" / "cache"));
  CountingCompiler compiler;
  const CacheLookup r = cache.get_or_compile(fake_manifest("k"), compiler.fn());
  EXPECT_FALSE(r.hit);
  EXPECT_FALSE(r.stored) << "nothing can be stored below a file";
  EXPECT_EQ(compiler.calls, 1);
  // Maintenance says why the directory cannot be used instead of listing nothing.
  try {
    cache.list();
    ADD_FAILURE() << "list() of a cache below a file should fail";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_NE(std::string(e.what()).find("Not a directory"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(cache.stat().problem.empty());
  EXPECT_THROW(cache.ensure_writable(), Error);
}

// --- eviction --------------------------------------------------------------------------

TEST(KernelCache, EvictionKeepsUnderTheLimitInLruOrder) {
  TempDir dir("cache");
  constexpr std::size_t kPayload = 10000;
  // Measure one entry's size, then allow three and a half.
  std::uint64_t entry_size;
  {
    TempDir probe("probe");
    KernelCache c(config_in(probe.path()));
    c.get_or_compile(fake_manifest("a"), [] { return fake_kernel(kPayload, 0); });
    entry_size = c.stat().bytes;
  }
  const std::uint64_t limit = entry_size * 7 / 2;
  KernelCache cache(config_in(dir.path(), limit));
  auto put = [&](const char* name) {
    return cache.get_or_compile(fake_manifest(name), [] { return fake_kernel(kPayload, 0); });
  };
  put("a");
  put("b");
  put("c");
  EXPECT_TRUE(put("a").hit);  // a is now more recent than b and c
  put("d");                   // over the limit: b, the least recently used, goes
  EXPECT_EQ(cache.counters().evictions, 1u);
  EXPECT_LE(cache.stat().bytes, limit);
  EXPECT_FALSE(fs::exists(cache.path_for(fake_manifest("b").key())));
  for (const char* kept : {"a", "c", "d"}) EXPECT_TRUE(fs::exists(cache.path_for(fake_manifest(kept).key()))) << kept;

  put("e");  // then c
  EXPECT_FALSE(fs::exists(cache.path_for(fake_manifest("c").key())));
  EXPECT_LE(cache.stat().bytes, limit);
  EXPECT_EQ(cache.counters().evictions, 2u);

  const std::vector<CacheEntry> entries = cache.list();
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[0].kernel_name, "e");  // most recently used first
  EXPECT_EQ(entries[2].kernel_name, "a");
}

TEST(KernelCache, AStampFromTheFutureDoesNotProtectAnEntry) {
  TempDir dir("cache");
  KernelCache unlimited(config_in(dir.path()));
  unlimited.get_or_compile(fake_manifest("old"), [] { return fake_kernel(1000, 0); });
  const std::string future = unlimited.get_or_compile(fake_manifest("future"), [] { return fake_kernel(1000, 0); }).key;
  std::string bytes = slurp(unlimited.path_for(future));
  for (std::size_t i = cache::kStampOffset; i < cache::kStampOffset + 8; ++i) bytes[i] = '\x7f';
  spit(unlimited.path_for(future), bytes);

  KernelCache cache(config_in(dir.path(), unlimited.stat().bytes + 100));
  cache.get_or_compile(fake_manifest("new"), [] { return fake_kernel(1000, 0); });
  EXPECT_FALSE(fs::exists(cache.path_for(future)));
  EXPECT_TRUE(fs::exists(cache.path_for(fake_manifest("old").key())));
}

TEST(KernelCache, AnEntryLargerThanTheLimitIsKept) {
  TempDir dir("cache");
  KernelCache cache(config_in(dir.path(), 1000));
  cache.get_or_compile(fake_manifest("small"), [] { return fake_kernel(10, 0); });
  const CacheLookup big = cache.get_or_compile(fake_manifest("big"), [] { return fake_kernel(5000, 0); });
  EXPECT_TRUE(fs::exists(cache.path_for(big.key)));
  EXPECT_FALSE(fs::exists(cache.path_for(fake_manifest("small").key())));
  EXPECT_TRUE(cache.get_or_compile(fake_manifest("big"), [] { return fake_kernel(5000, 0); }).hit);
}

TEST(KernelCache, PruneAndClear) {
  TempDir dir("cache");
  KernelCache cache(config_in(dir.path()));
  for (int i = 0; i < 6; ++i) {
    cache.get_or_compile(fake_manifest("k" + std::to_string(i)), [] { return fake_kernel(1000, 0); });
  }
  const CacheStats before = cache.stat();
  EXPECT_EQ(before.entries, 6u);
  const PruneReport p = cache.prune(before.bytes / 2);
  EXPECT_EQ(p.removed, 3u);
  EXPECT_LE(p.remaining_bytes, before.bytes / 2);
  EXPECT_EQ(p.remaining_entries, 3u);
  EXPECT_EQ(cache.stat().entries, 3u);
  for (int i = 3; i < 6; ++i) EXPECT_TRUE(fs::exists(cache.path_for(fake_manifest("k" + std::to_string(i)).key())));

  EXPECT_EQ(cache.prune(0).removed, 0u) << "0 means no limit";
  spit(dir.path() / "kernels" / ".stray.spk.1.0.tmp", "partial");
  EXPECT_EQ(cache.clear(), 3u);
  EXPECT_EQ(cache.stat().entries, 0u);
  EXPECT_TRUE(fs::is_empty(dir.path() / "kernels"));
}

// --- listing and verification -----------------------------------------------------------

TEST(KernelCache, ListShowsWhatEachEntryIs) {
  TempDir dir("cache");
  KernelCache cache(config_in(dir.path()));
  const auto before = std::chrono::system_clock::now();
  cache.get_or_compile(fake_manifest("spattn_fwd", "sm_80"), [] { return fake_kernel(1000, 0); });
  spit(dir.path() / "kernels" / (std::string(64, 'f') + ".spk"), "junk");
  const std::vector<CacheEntry> entries = cache.list();
  ASSERT_EQ(entries.size(), 2u);
  const CacheEntry& e = entries[0];
  EXPECT_EQ(e.key, fake_manifest("spattn_fwd", "sm_80").key());
  EXPECT_EQ(e.kernel_name, "spattn_fwd");
  EXPECT_EQ(e.arch, "sm_80");
  EXPECT_EQ(e.nvrtc_version, runtime::nvrtc_version());
  EXPECT_EQ(e.spattn_version, SPATTN_VERSION_STRING);
  EXPECT_EQ(e.format_version, cache::kFormatVersion);
  EXPECT_EQ(e.size_bytes, fs::file_size(e.path));
  EXPECT_GE(e.last_used, before - std::chrono::seconds(1));
  EXPECT_TRUE(e.problem.empty()) << e.problem;
  EXPECT_FALSE(entries[1].problem.empty());
}

TEST(KernelCache, VerifyFindsAndRemovesBadEntries) {
  TempDir dir("cache");
  KernelCache cache(config_in(dir.path()));
  std::vector<std::string> keys;
  for (int i = 0; i < 4; ++i) {
    keys.push_back(cache.get_or_compile(fake_manifest("k" + std::to_string(i)), [] { return fake_kernel(500, 0); }).key);
  }
  spit(cache.path_for(keys[1]), flip(slurp(cache.path_for(keys[1])), 200));
  // A good file under the wrong name.
  fs::copy_file(cache.path_for(keys[2]), dir.path() / "kernels" / (std::string(64, 'e') + ".spk"));
  // A temp file of a writer that died long ago.
  const fs::path stale = dir.path() / "kernels" / ".dead.spk.1.1.tmp";
  spit(stale, "partial");
  fs::last_write_time(stale, fs::file_time_type::clock::now() - std::chrono::hours(2));

  std::size_t last_done = 0, last_total = 0;
  const VerifyReport r = cache.verify(true, [&](std::size_t done, std::size_t total) {
    EXPECT_GE(done, last_done);
    last_done = done;
    last_total = total;
  });
  EXPECT_EQ(r.checked, 5u);
  EXPECT_EQ(r.good, 3u);
  ASSERT_EQ(r.bad.size(), 2u);
  EXPECT_EQ(last_done, 5u);
  EXPECT_EQ(last_total, 5u);
  EXPECT_EQ(r.stale_temp_files, 1u);
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_FALSE(fs::exists(cache.path_for(keys[1])));
  EXPECT_EQ(cache.counters().recovered, 2u);
  const VerifyReport again = cache.verify();
  EXPECT_EQ(again.checked, 3u);
  EXPECT_TRUE(again.bad.empty());
}

TEST(KernelCache, VerifyWithoutRemovalOnlyReports) {
  TempDir dir("cache");
  KernelCache cache(config_in(dir.path()));
  const std::string key = cache.get_or_compile(fake_manifest("k"), [] { return fake_kernel(500, 0); }).key;
  spit(cache.path_for(key), "garbage");
  const VerifyReport r = cache.verify(false);
  ASSERT_EQ(r.bad.size(), 1u);
  EXPECT_NE(r.bad[0].reason.find("magic"), std::string::npos) << r.bad[0].reason;
  EXPECT_TRUE(fs::exists(cache.path_for(key)));
}

// --- threads ---------------------------------------------------------------------------

TEST(KernelCache, ThreadsMissingOnOneKeyCompileOnce) {
  TempDir dir("cache");
  KernelCache cache(config_in(dir.path()));
  CountingCompiler compiler;
  compiler.payload = fake_kernel(50000, 3);
  auto slow = [&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return compiler.fn()();
  };
  std::vector<std::thread> threads;
  std::atomic<int> good{0}, hits{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      const CacheLookup r = cache.get_or_compile(fake_manifest("shared"), slow);
      if (r.kernel.cubin == compiler.payload.cubin) ++good;
      if (r.hit) ++hits;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(compiler.calls, 1);
  EXPECT_EQ(good, 8);
  EXPECT_EQ(hits, 7);
  EXPECT_EQ(cache.counters().compiles, 1u);
}

TEST(KernelCache, ThreadsOnDistinctKeysDoNotWaitForEachOther) {
  TempDir dir("cache");
  KernelCache cache(config_in(dir.path()));
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      cache.get_or_compile(fake_manifest("k" + std::to_string(t)), [] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        return fake_kernel(1000, 0);
      });
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(cache.counters().compiles, 8u);
  EXPECT_LT(seconds, 8 * 0.3 * 0.5) << "per-key locks should let different keys compile in parallel";
}

}  // namespace
}  // namespace spattn
