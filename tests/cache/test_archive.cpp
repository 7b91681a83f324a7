// Export and import of cache archives.
#include <gtest/gtest.h>

#include "cache/format.hpp"
#include "cache/sha256.hpp"
#include "tests/cache/cache_test_util.hpp"

namespace spattn {
namespace {

namespace fs = std::filesystem;
using test::config_in;
using test::fake_kernel;
using test::fake_manifest;
using test::slurp;
using test::spit;
using test::TempDir;

// An archive built by hand from raw entry files, following the documented layout.
std::string make_archive(const std::vector<std::string>& entries) {
  std::string a(cache::kArchiveMagic);
  cache::put_u32(a, cache::kArchiveVersion);
  cache::put_u32(a, 0);
  for (const std::string& e : entries) {
    cache::put_u64(a, e.size());
    a += e;
  }
  cache::put_u64(a, entries.size());
  cache::Sha256 hash;
  hash.update(a);
  const cache::Sha256Digest d = hash.finish();
  a.append(reinterpret_cast<const char*>(d.data()), d.size());
  return a;
}

std::string entry_for(const KernelManifest& m, unsigned seed,
                      std::uint32_t version = cache::kFormatVersion) {
  return cache::encode_entry(cache::canonical_manifest(m, version), fake_kernel(2000, seed), 1, version);
}

TEST(CacheArchive, ExportClearImportRoundTrip) {
  TempDir dir("archive");
  KernelCache cache(config_in(dir.path() / "cache"));
  std::vector<KernelManifest> manifests = {fake_manifest("a"), fake_manifest("b", "sm_80"), fake_manifest("c")};
  for (std::size_t i = 0; i < manifests.size(); ++i) {
    cache.get_or_compile(manifests[i], [&] { return fake_kernel(3000, static_cast<unsigned>(i)); });
  }
  const fs::path archive = dir.path() / "kernels.spka";
  std::size_t progress_calls = 0;
  const ExportReport ex = cache.export_archive(archive, {}, [&](std::size_t, std::size_t) { ++progress_calls; });
  EXPECT_EQ(ex.exported, 3u);
  EXPECT_TRUE(ex.skipped.empty());
  EXPECT_EQ(ex.bytes, fs::file_size(archive));
  EXPECT_EQ(progress_calls, 4u);

  EXPECT_EQ(cache.clear(), 3u);
  const ImportReport im = cache.import_archive(archive);
  ASSERT_EQ(im.entries.size(), 3u);
  EXPECT_EQ(im.count(ImportStatus::kAdded), 3u);
  for (const ImportResult& r : im.entries) EXPECT_TRUE(r.reason.empty()) << r.reason;

  // Everything is a hit again: zero compiles.
  const CacheCounters before = cache.counters();
  for (std::size_t i = 0; i < manifests.size(); ++i) {
    const CacheLookup r = cache.get_or_compile(manifests[i], []() -> CompiledKernel {
      ADD_FAILURE() << "compiled after import";
      return {};
    });
    EXPECT_TRUE(r.hit);
    EXPECT_EQ(r.kernel.cubin, fake_kernel(3000, static_cast<unsigned>(i)).cubin);
  }
  EXPECT_EQ(cache.counters().compiles, before.compiles);

  const ImportReport again = cache.import_archive(archive);
  EXPECT_EQ(again.count(ImportStatus::kPresent), 3u);
}

TEST(CacheArchive, ExportFilterAndSkipsBadEntries) {
  TempDir dir("archive");
  KernelCache cache(config_in(dir.path() / "cache"));
  cache.get_or_compile(fake_manifest("a", "sm_90a"), [] { return fake_kernel(100, 1); });
  cache.get_or_compile(fake_manifest("b", "sm_80"), [] { return fake_kernel(100, 2); });
  const std::string bad_key = cache.get_or_compile(fake_manifest("c", "sm_90a"), [] { return fake_kernel(100, 3); }).key;
  std::string bytes = slurp(cache.path_for(bad_key));
  bytes[bytes.size() - 5] ^= 1;
  spit(cache.path_for(bad_key), bytes);

  const fs::path archive = dir.path() / "hopper.spka";
  const ExportReport ex =
      cache.export_archive(archive, [](const CacheEntry& e) { return e.arch == "sm_90a"; });
  EXPECT_EQ(ex.exported, 1u);
  ASSERT_EQ(ex.skipped.size(), 1u);
  EXPECT_EQ(ex.skipped[0].key, bad_key);

  KernelCache other(config_in(dir.path() / "other"));
  const ImportReport im = other.import_archive(archive);
  ASSERT_EQ(im.entries.size(), 1u);
  EXPECT_EQ(im.entries[0].kernel_name, "a");
  EXPECT_EQ(im.entries[0].arch, "sm_90a");
}

TEST(CacheArchive, ImportRejectsEntriesThisBuildCannotUse) {
  TempDir dir("archive");
  KernelManifest other_nvrtc = fake_manifest("other_nvrtc");
  other_nvrtc.nvrtc_version = "0.1";
  KernelManifest other_spattn = fake_manifest("other_spattn");
  other_spattn.spattn_version = "99.0.0";
  std::string damaged = entry_for(fake_manifest("damaged"), 4);
  damaged[damaged.size() / 2] ^= 1;
  const fs::path archive = dir.path() / "mixed.spka";
  spit(archive, make_archive({entry_for(fake_manifest("good"), 1), entry_for(other_nvrtc, 2),
                              entry_for(other_spattn, 3), entry_for(fake_manifest("future"), 5, cache::kFormatVersion + 1),
                              damaged, "not a kernel file"}));

  KernelCache cache(config_in(dir.path() / "cache"));
  const ImportReport im = cache.import_archive(archive);
  ASSERT_EQ(im.entries.size(), 6u);
  EXPECT_EQ(im.entries[0].status, ImportStatus::kAdded);
  EXPECT_EQ(im.entries[0].kernel_name, "good");
  auto expect_rejected = [&](std::size_t i, const std::string& because) {
    EXPECT_EQ(im.entries[i].status, ImportStatus::kRejected) << i;
    EXPECT_NE(im.entries[i].reason.find(because), std::string::npos) << i << ": " << im.entries[i].reason;
  };
  expect_rejected(1, "NVRTC 0.1");
  expect_rejected(2, "spattn 99.0.0");
  expect_rejected(3, "format version " + std::to_string(cache::kFormatVersion + 1));
  expect_rejected(4, "checksum");
  expect_rejected(5, "magic");
  EXPECT_EQ(cache.list().size(), 1u);
}

TEST(CacheArchive, BadArchivesAreErrorsAndImportNothing) {
  TempDir dir("archive");
  KernelCache cache(config_in(dir.path() / "cache"));
  const std::string good = make_archive({entry_for(fake_manifest("a"), 1), entry_for(fake_manifest("b"), 2)});

  std::string flipped = good;
  flipped[flipped.size() / 2] ^= 4;
  std::string wrong_version = good;
  wrong_version[8] = 9;
  std::string wrong_count = good.substr(0, good.size() - 40);  // recount and rehash: 3 claimed, 2 present
  cache::put_u64(wrong_count, 3);
  {
    cache::Sha256 h;
    h.update(wrong_count);
    const auto d = h.finish();
    wrong_count.append(reinterpret_cast<const char*>(d.data()), d.size());
  }
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"empty", ""},
      {"text", "hello, this is not an archive at all, just some text that is long enough"},
      {"truncated", good.substr(0, good.size() - 7)},
      {"flipped", flipped},
      {"wrong_version", wrong_version},
      {"wrong_count", wrong_count},
  };
  for (const auto& [name, bytes] : bad) {
    const fs::path path = dir.path() / (name + ".spka");
    spit(path, bytes);
    try {
      cache.import_archive(path);
      ADD_FAILURE() << name << ": expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorrupt) << name << ": " << e.what();
    }
  }
  EXPECT_TRUE(cache.list().empty());

  try {
    cache.import_archive(dir.path() / "missing.spka");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
  }
}

TEST(CacheArchive, EmptyCacheExportsAnEmptyArchive) {
  TempDir dir("archive");
  KernelCache cache(config_in(dir.path() / "cache"));
  const fs::path archive = dir.path() / "empty.spka";
  EXPECT_EQ(cache.export_archive(archive).exported, 0u);
  EXPECT_TRUE(cache.import_archive(archive).entries.empty());
}

TEST(CacheArchive, ImportRespectsTheByteLimit) {
  TempDir dir("archive");
  KernelCache source(config_in(dir.path() / "source"));
  for (int i = 0; i < 6; ++i) source.get_or_compile(fake_manifest("k" + std::to_string(i)), [] { return fake_kernel(4000, 0); });
  const std::uint64_t total = source.stat().bytes;
  const fs::path archive = dir.path() / "all.spka";
  source.export_archive(archive);

  KernelCache small(config_in(dir.path() / "small", total / 2));
  const ImportReport im = small.import_archive(archive);
  EXPECT_EQ(im.count(ImportStatus::kAdded), 6u);
  EXPECT_EQ(im.evictions, 3u);
  EXPECT_LE(small.stat().bytes, total / 2);
}

// Attachments (tuning databases, for instance) travel with the kernels: covered by the
// checksum, handed back by import in order, never written into the cache as entries; a
// damaged one is rejected alone; names are checked on export.
TEST(CacheArchive, AttachmentsTravelWithTheKernels) {
  TempDir dir("archive-attach");
  KernelCache cache(config_in(dir.path() / "cache"));
  cache.get_or_compile(fake_manifest("a"), [] { return fake_kernel(1000, 1); });
  ExportOptions o;
  o.attachments = {{"tuning/0123456789abcdef.json", "{\"format\": 1}"}, {"notes/readme", std::string("x\0y", 3)}};
  const fs::path archive = dir.path() / "with.spka";
  const ExportReport ex = cache.export_archive(archive, o);
  EXPECT_EQ(ex.exported, 1u);
  EXPECT_EQ(ex.attachments, 2u);

  KernelCache fresh(config_in(dir.path() / "fresh"));
  const ImportReport im = fresh.import_archive(archive);
  EXPECT_EQ(im.entries.size(), 1u) << "attachments are not cache entries";
  EXPECT_EQ(im.count(ImportStatus::kAdded), 1u);
  ASSERT_EQ(im.attachments.size(), 2u);
  EXPECT_EQ(im.attachments[0].first, "tuning/0123456789abcdef.json");
  EXPECT_EQ(im.attachments[0].second, "{\"format\": 1}");
  EXPECT_EQ(im.attachments[1].second, std::string("x\0y", 3));
  EXPECT_EQ(fresh.list().size(), 1u);

  // A flipped byte in an attachment fails the archive's checksum: nothing is imported.
  std::string bytes = slurp(archive);
  bytes[bytes.find("format")] ^= 1;
  spit(dir.path() / "tampered.spka", bytes);
  KernelCache other(config_in(dir.path() / "other"));
  EXPECT_THROW((void)other.import_archive(dir.path() / "tampered.spka"), Error);
  EXPECT_TRUE(other.list().empty());

  // A damaged attachment in an otherwise intact archive is rejected by itself.
  std::string bad(cache::kAttachmentMagic);
  cache::put_u32(bad, 9999);
  spit(dir.path() / "bad.spka", make_archive({entry_for(fake_manifest("b"), 2), bad}));
  const ImportReport partial = other.import_archive(dir.path() / "bad.spka");
  EXPECT_EQ(partial.count(ImportStatus::kAdded), 1u);
  EXPECT_EQ(partial.count(ImportStatus::kRejected), 1u);
  EXPECT_TRUE(partial.attachments.empty());

  ExportOptions bad_name;
  bad_name.attachments = {{"has space", "x"}};
  EXPECT_THROW((void)cache.export_archive(dir.path() / "n.spka", bad_name), Error);
}

// A read-only cache (SPATTN_CACHE_READONLY) serves hits without touching the files (no
// last-used stamp, no locks), compiles misses without storing them, and refuses imports.
TEST(KernelCacheReadOnly, ServesHitsAndNeverWrites) {
  TempDir dir("readonly");
  {
    KernelCache writer(config_in(dir.path()));
    writer.get_or_compile(fake_manifest("a"), [] { return fake_kernel(1000, 1); });
  }
  CacheConfig c = config_in(dir.path());
  c.read_only = true;
  KernelCache cache(c);
  const fs::path entry = cache.path_for(cache.list().at(0).key);
  const std::string before = slurp(entry);
  const auto mtime = fs::last_write_time(entry);
  const CacheLookup hit = cache.get_or_compile(fake_manifest("a"), []() -> CompiledKernel {
    ADD_FAILURE() << "compiled a hit";
    return {};
  });
  EXPECT_TRUE(hit.hit);
  EXPECT_EQ(slurp(entry), before) << "no stamp written";
  EXPECT_EQ(fs::last_write_time(entry), mtime);
  const CacheLookup miss = cache.get_or_compile(fake_manifest("b"), [] { return fake_kernel(1000, 2); });
  EXPECT_FALSE(miss.hit);
  EXPECT_FALSE(miss.stored);
  EXPECT_EQ(cache.list().size(), 1u);
  std::size_t locks = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path() / "locks")) ++locks;
  EXPECT_EQ(locks, 0u);
  EXPECT_THROW(cache.ensure_writable(), Error);
  KernelCache writer(config_in(dir.path() / "w"));
  writer.get_or_compile(fake_manifest("c"), [] { return fake_kernel(1000, 3); });
  writer.export_archive(dir.path() / "c.spka");
  try {
    (void)cache.import_archive(dir.path() / "c.spka");
    ADD_FAILURE() << "imported into a read-only cache";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("read-only"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace spattn
