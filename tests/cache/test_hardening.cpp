// Trustworthy cache files (issue 15, items 7-12): what is found at an entry's path is
// checked before it is read, a cache that cannot be changed says so, locks survive
// `clear`, and archives can be authenticated.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/sinks/ringbuffer_sink.h>

#include <chrono>
#include <future>
#include <sstream>
#include <thread>

#include "cache/files.hpp"
#include "cache/format.hpp"
#include "cache/sha256.hpp"
#include "cache/sign.hpp"
#include "common/log.hpp"
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

// Runs fn on a thread and waits at most `seconds`; false if it did not finish (the
// thread is then left to `unblock`, which must make it finish).
template <class Fn>
bool finishes_within(double seconds, Fn fn, const std::function<void()>& unblock) {
  auto done = std::async(std::launch::async, fn);
  if (done.wait_for(std::chrono::duration<double>(seconds)) == std::future_status::ready) {
    done.get();
    return true;
  }
  unblock();
  done.wait();
  return false;
}

// Item 7: a FIFO at an entry's path hung every lookup forever, and ls/verify skipped it.
TEST(CacheHardening, AFifoAtAnEntryIsABadEntryNotAHang) {
  TempDir dir("hard");
  KernelCache cache(config_in(dir.path()));
  const KernelManifest m = fake_manifest("k");
  cache.get_or_compile(fake_manifest("other"), [] { return fake_kernel(100, 2); });  // creates kernels/
  const fs::path path = cache.path_for(m.key());
  ASSERT_EQ(::mkfifo(path.c_str(), 0644), 0);
  // A blocked reader is released by opening the FIFO for writing and closing it.
  auto release = [&] {
    const int fd = ::open(path.c_str(), O_WRONLY | O_NONBLOCK);
    if (fd >= 0) ::close(fd);
  };

  bool listed = false;
  EXPECT_TRUE(finishes_within(5, [&] {
    for (const CacheEntry& e : cache.list()) listed = listed || (e.key == m.key() && !e.problem.empty());
  }, release)) << "ls hangs on a FIFO";
  EXPECT_TRUE(listed) << "ls must show the FIFO as a bad entry";

  CacheLookup r;
  EXPECT_TRUE(finishes_within(5, [&] { r = cache.get_or_compile(m, [] { return fake_kernel(100, 1); }); }, release))
      << "a lookup hangs on a FIFO";
  EXPECT_FALSE(r.hit);
  EXPECT_TRUE(r.stored) << "the FIFO is replaced by the entry";
  struct stat st {};
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_TRUE(cache.get_or_compile(m, [] { return fake_kernel(100, 1); }).hit);

  // verify reports (and removes) one too.
  const KernelManifest m2 = fake_manifest("k2");
  ASSERT_EQ(::mkfifo(cache.path_for(m2.key()).c_str(), 0644), 0);
  VerifyReport v;
  EXPECT_TRUE(finishes_within(5, [&] { v = cache.verify(true); }, release));
  ASSERT_EQ(v.bad.size(), 1u);
  EXPECT_EQ(v.bad[0].key, m2.key());
  EXPECT_NE(v.bad[0].reason.find("FIFO"), std::string::npos) << v.bad[0].reason;
  EXPECT_TRUE(v.bad[0].removed);
  EXPECT_FALSE(fs::exists(fs::symlink_status(cache.path_for(m2.key()))));
}

// A link at an entry's path is not followed (it could point anywhere).
TEST(CacheHardening, ALinkAtAnEntryIsNotFollowed) {
  TempDir dir("hard");
  KernelCache cache(config_in(dir.path() / "cache"));
  const KernelManifest m = fake_manifest("k");
  // A good entry, moved elsewhere and linked back: it must not be served.
  cache.get_or_compile(m, [] { return fake_kernel(100, 1); });
  const fs::path path = cache.path_for(m.key()), elsewhere = dir.path() / "planted.spk";
  fs::rename(path, elsewhere);
  fs::create_symlink(elsewhere, path);
  CountingCompiler compiler;
  compiler.payload = fake_kernel(100, 1);
  const CacheLookup r = cache.get_or_compile(m, compiler.fn());
  EXPECT_FALSE(r.hit);
  EXPECT_EQ(compiler.calls, 1);
  EXPECT_FALSE(fs::is_symlink(path));
  EXPECT_TRUE(fs::exists(elsewhere)) << "the link's target is not touched";
}

// Item 8: a (non-empty) directory in place of an entry was never cleaned up: every
// compile warned, recompiled and could not store, and verify said all was well.
TEST(CacheHardening, ADirectoryInPlaceOfAnEntryIsRemoved) {
  TempDir dir("hard");
  KernelCache cache(config_in(dir.path()));
  const KernelManifest m = fake_manifest("k");
  fs::create_directories(cache.path_for(m.key()) / "sub");
  spit(cache.path_for(m.key()) / "sub" / "file", "x");
  const CacheLookup first = cache.get_or_compile(m, [] { return fake_kernel(100, 1); });
  EXPECT_FALSE(first.hit);
  EXPECT_TRUE(first.stored);
  EXPECT_TRUE(cache.get_or_compile(m, [] { return fake_kernel(100, 1); }).hit);

  const KernelManifest m2 = fake_manifest("k2");
  fs::create_directories(cache.path_for(m2.key()) / "sub");
  const VerifyReport v = cache.verify(true);
  EXPECT_EQ(v.checked, 2u);
  ASSERT_EQ(v.bad.size(), 1u);
  EXPECT_NE(v.bad[0].reason.find("directory"), std::string::npos) << v.bad[0].reason;
  EXPECT_TRUE(v.bad[0].removed);
  EXPECT_FALSE(fs::exists(cache.path_for(m2.key())));
  EXPECT_TRUE(cache.verify(true).bad.empty());
}

// Item 9: export renamed a temp file over its target: a link was replaced by a file,
// and devices (as root) too.
TEST(CacheHardening, ExportWritesThroughLinksAndRefusesDevices) {
  TempDir dir("hard");
  KernelCache cache(config_in(dir.path() / "cache"));
  cache.get_or_compile(fake_manifest("k"), [] { return fake_kernel(1000, 1); });
  const fs::path real = dir.path() / "real.spka", link = dir.path() / "link.spka";
  spit(real, "old contents");
  fs::create_symlink(real, link);
  EXPECT_EQ(cache.export_archive(link).exported, 1u);
  EXPECT_TRUE(fs::is_symlink(link)) << "the link stays a link";
  EXPECT_EQ(slurp(real).substr(0, 8), "SPATTNKA") << "the archive is written where the link points";
  // A dangling link names a new file.
  const fs::path dangling = dir.path() / "dangling.spka";
  fs::create_symlink(dir.path() / "new.spka", dangling);
  cache.export_archive(dangling);
  EXPECT_TRUE(fs::is_symlink(dangling));
  EXPECT_TRUE(fs::is_regular_file(dir.path() / "new.spka"));

  for (const char* device : {"/dev/full", "/dev/null"}) {
    struct stat before {};
    ASSERT_EQ(::stat(device, &before), 0);
    try {
      cache.export_archive(device);
      ADD_FAILURE() << "export to " << device << " should be refused";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find("character device"), std::string::npos) << e.what();
    }
    struct stat after {};
    ASSERT_EQ(::stat(device, &after), 0);
    EXPECT_TRUE(S_ISCHR(after.st_mode)) << device << " must stay a device";
  }
  EXPECT_THROW(cache.export_archive(dir.path()), Error) << "a directory is refused";

  // A stream (stdout in the CLI): the same bytes as the file.
  std::ostringstream out;
  ExportOptions options;
  const ExportReport r = cache.export_archive(out, options);
  EXPECT_EQ(r.exported, 1u);
  EXPECT_EQ(out.str().size(), r.bytes);
  EXPECT_EQ(out.str(), slurp(real)) << "the same archive as the file export";
  std::ostringstream failing;
  failing.setstate(std::ios::badbit);
  EXPECT_THROW(cache.export_archive(failing, options), Error);
  spit(dir.path() / "stream.spka", out.str());
  KernelCache other(config_in(dir.path() / "other"));
  EXPECT_EQ(other.import_archive(dir.path() / "stream.spka").count(ImportStatus::kAdded), 1u);
}

// Item 10: an unwritable cache was reported as success.
TEST(CacheHardening, AStoreThatFailsIsReported) {
  TempDir dir("hard");
  spit(dir.path() / "file", "x");
  KernelCache below_a_file(config_in(dir.path() / "file" / "cache"));
  const CacheLookup r = below_a_file.get_or_compile(fake_manifest("k"), [] { return fake_kernel(100, 1); });
  EXPECT_FALSE(r.stored);
  EXPECT_THROW(below_a_file.ensure_writable(), Error);
  EXPECT_THROW(below_a_file.clear(), Error) << "clear of a cache it cannot read must not say 'removed 0'";
  EXPECT_THROW(below_a_file.verify(), Error);
  EXPECT_THROW(below_a_file.prune(0), Error);

  CacheConfig disabled = config_in(dir.path() / "off");
  disabled.disabled = true;
  KernelCache off(disabled);
  EXPECT_FALSE(off.get_or_compile(fake_manifest("k"), [] { return fake_kernel(100, 1); }).stored);
  EXPECT_THROW(off.ensure_writable(), Error);

  KernelCache good(config_in(dir.path() / "good"));
  EXPECT_NO_THROW(good.ensure_writable());
  const CacheLookup stored = good.get_or_compile(fake_manifest("k"), [] { return fake_kernel(100, 1); });
  EXPECT_TRUE(stored.stored);
  EXPECT_TRUE(good.contains(stored.key));
  EXPECT_TRUE(good.get_or_compile(fake_manifest("k"), [] { return fake_kernel(100, 1); }).stored);
  EXPECT_FALSE(good.contains(fake_manifest("absent").key()));
}

TEST(CacheHardening, PermissionDeniedIsReported) {
  if (::geteuid() == 0) GTEST_SKIP() << "running as root: permissions are not enforced";
  TempDir dir("hard");
  KernelCache cache(config_in(dir.path() / "cache"));
  const KernelManifest m = fake_manifest("k");
  cache.get_or_compile(m, [] { return fake_kernel(100, 1); });
  std::string bytes = slurp(cache.path_for(m.key()));
  bytes[bytes.size() / 2] ^= 1;
  spit(cache.path_for(m.key()), bytes);
  const fs::path kernels = dir.path() / "cache" / "kernels";
  fs::permissions(kernels, fs::perms::owner_read | fs::perms::owner_exec);
  EXPECT_THROW(cache.clear(), Error) << "entries that cannot be removed are an error, not 'removed 0'";
  const VerifyReport v = cache.verify(true);
  ASSERT_EQ(v.bad.size(), 1u);
  EXPECT_FALSE(v.bad[0].removed) << "verify must not say it removed what it could not";
  EXPECT_NE(v.bad[0].reason.find("could not be removed"), std::string::npos) << v.bad[0].reason;
  EXPECT_FALSE(cache.get_or_compile(fake_manifest("k2"), [] { return fake_kernel(100, 1); }).stored);
  fs::permissions(kernels, fs::perms::owner_all);
}

// Item 11: `cache clear` during a compile deleted the held lock file, so another
// process compiled the same key again; waiters blocked silently with no timeout.
TEST(CacheHardening, ClearLeavesHeldLocksAndRemovesStaleOnes) {
  TempDir dir("hard");
  KernelCache cache(config_in(dir.path()));
  cache.get_or_compile(fake_manifest("a"), [] { return fake_kernel(100, 1); });
  const KernelManifest m = fake_manifest("k");
  const fs::path lock_path = dir.path() / "locks" / (m.key() + ".lock");
  const fs::path stale = dir.path() / "locks" / (fake_manifest("dead").key() + ".lock");
  spit(stale, "");  // left by a process that died holding it
  std::optional<cache::FileLock> held = cache::FileLock::acquire(lock_path);  // "a compile in progress"
  ASSERT_TRUE(held);
  EXPECT_EQ(cache.clear(), 1u);
  EXPECT_TRUE(fs::exists(lock_path)) << "a held lock must survive clear";
  EXPECT_FALSE(fs::exists(stale)) << "a stale lock is removed";

  // Another process missing on the key now waits for the holder instead of compiling.
  CountingCompiler compiler;
  compiler.payload = fake_kernel(100, 1);
  KernelCache second(config_in(dir.path()));
  auto waiter = std::async(std::launch::async, [&] { return second.get_or_compile(m, compiler.fn()); });
  EXPECT_EQ(waiter.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout);
  // The holder stores the entry and releases the lock: the waiter hits.
  cache::write_atomic(second.path_for(m.key()),
                      cache::encode_entry(m.canonical(), fake_kernel(100, 1), cache::now_ns()));
  held.reset();
  const CacheLookup r = waiter.get();
  EXPECT_TRUE(r.hit);
  EXPECT_EQ(compiler.calls, 0);
}

TEST(CacheHardening, LockWaitersSayWhatTheyWaitForAndGiveUp) {
  TempDir dir("hard");
  CacheConfig c = config_in(dir.path());
  c.lock_timeout_s = 1.5;
  KernelCache cache(c);
  cache.get_or_compile(fake_manifest("a"), [] { return fake_kernel(100, 1); });
  const KernelManifest m = fake_manifest("k");
  std::optional<cache::FileLock> held = cache::FileLock::acquire(dir.path() / "locks" / (m.key() + ".lock"));
  ASSERT_TRUE(held);

  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(64);
  spdlog::logger& logger = log::logger();
  const auto old_level = logger.level();
  logger.sinks().push_back(sink);
  logger.set_level(spdlog::level::info);
  CountingCompiler compiler;
  compiler.payload = fake_kernel(100, 1);
  CacheLookup r;
  const bool finished = finishes_within(10, [&] { r = cache.get_or_compile(m, compiler.fn()); }, [&] { held.reset(); });
  logger.sinks().pop_back();
  logger.set_level(old_level);
  ASSERT_TRUE(finished) << "a waiter must give up after lock_timeout_s";
  EXPECT_EQ(compiler.calls, 1) << "after the timeout it compiles itself";
  EXPECT_TRUE(r.stored) << "and stores atomically";
  bool waiting = false, gave_up = false;
  for (const std::string& line : sink->last_formatted()) {
    waiting = waiting || line.find("waiting for another process") != std::string::npos;
    gave_up = gave_up || line.find("gave up waiting") != std::string::npos;
  }
  EXPECT_TRUE(waiting) << "an info line after a second of waiting";
  EXPECT_TRUE(gave_up);
}

// --- item 12: shared directories, signed archives, validated manifests -------------------

TEST(CacheHardening, ADirectoryOthersCanWriteToIsRefused) {
  TempDir dir("hard");
  const KernelManifest m = fake_manifest("k");
  {
    KernelCache cache(config_in(dir.path() / "cache"));
    cache.get_or_compile(m, [] { return fake_kernel(100, 1); });
  }
  fs::permissions(dir.path() / "cache", fs::perms::others_write | fs::perms::group_write, fs::perm_options::add);
  KernelCache cache(config_in(dir.path() / "cache"));
  CountingCompiler compiler;
  compiler.payload = fake_kernel(100, 1);
  const CacheLookup r = cache.get_or_compile(m, compiler.fn());
  EXPECT_FALSE(r.hit) << "an entry in a world-writable directory could be anyone's";
  EXPECT_FALSE(r.stored);
  EXPECT_EQ(compiler.calls, 1);
  try {
    cache.list();
    ADD_FAILURE() << "list of a shared directory should be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("writable by other users"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("SPATTN_CACHE_ALLOW_SHARED"), std::string::npos) << e.what();
  }
  EXPECT_NE(cache.stat().problem.find("writable by other users"), std::string::npos);

  CacheConfig shared = config_in(dir.path() / "cache");
  shared.allow_shared_dir = true;
  EXPECT_TRUE(KernelCache(shared).get_or_compile(m, compiler.fn()).hit);
  {
    test::ScopedEnv env("SPATTN_CACHE_ALLOW_SHARED", "1");
    EXPECT_TRUE(CacheConfig::from_env().allow_shared_dir);
  }
  fs::permissions(dir.path() / "cache", fs::perms::others_write | fs::perms::group_write, fs::perm_options::remove);
  EXPECT_TRUE(KernelCache(config_in(dir.path() / "cache")).get_or_compile(m, compiler.fn()).hit);

  // An entry others can write to, or another user's, is a bad entry.
  fs::permissions(cache.path_for(m.key()), fs::perms::others_write, fs::perm_options::add);
  EXPECT_FALSE(KernelCache(config_in(dir.path() / "cache")).get_or_compile(m, compiler.fn()).hit);
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown(cache.path_for(m.key()).c_str(), 12345, 12345), 0);
    KernelCache again(config_in(dir.path() / "cache"));
    const VerifyReport v = again.verify(false);
    ASSERT_EQ(v.bad.size(), 1u);
    EXPECT_NE(v.bad[0].reason.find("another user"), std::string::npos) << v.bad[0].reason;
  }
}

// Entries the archive tests build archives from.
std::string entry_for(const KernelManifest& m, unsigned seed) {
  return cache::encode_entry(m.canonical(), fake_kernel(2000, seed), 1);
}

// An archive as an attacker writes one: any entries, correct checksums.
std::string forged_archive(const std::vector<std::string>& entries) {
  std::string a(cache::kArchiveMagic);
  cache::put_u32(a, 1);
  cache::put_u32(a, 0);
  for (const std::string& e : entries) {
    cache::put_u64(a, e.size());
    a += e;
  }
  cache::put_u64(a, entries.size());
  cache::Sha256 h;
  h.update(a);
  const auto d = h.finish();
  a.append(reinterpret_cast<const char*>(d.data()), d.size());
  return a;
}

// An entry with the manifest text replaced (checksum recomputed).
std::string entry_with_manifest(const std::string& manifest_text, unsigned seed) {
  return cache::encode_entry(manifest_text, fake_kernel(2000, seed), 1);
}

TEST(CacheHardening, SignedArchivesAndTrustedKeys) {
  TempDir dir("hard");
  const fs::path key = dir.path() / "k.pem", pub = dir.path() / "k.pem.pub";
  generate_signing_key(key, pub);
  EXPECT_EQ(fs::status(key).permissions() & fs::perms::mask, fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_THROW(generate_signing_key(key, pub), Error) << "never overwrites a key";
  const fs::path other_key = dir.path() / "o.pem", other_pub = dir.path() / "o.pem.pub";
  generate_signing_key(other_key, other_pub);
  EXPECT_NE(key_fingerprint(pub), key_fingerprint(other_pub));

  KernelCache source(config_in(dir.path() / "source"));
  const KernelManifest m = fake_manifest("genuine");
  source.get_or_compile(m, [] { return fake_kernel(2000, 7); });
  ExportOptions sign;
  sign.signing_key = key;
  const fs::path signed_archive = dir.path() / "signed.spka", unsigned_archive = dir.path() / "unsigned.spka";
  EXPECT_EQ(source.export_archive(signed_archive, sign).signer, key_fingerprint(pub));
  source.export_archive(unsigned_archive);

  ImportOptions trust;
  trust.trusted_keys = {pub};
  {
    KernelCache target(config_in(dir.path() / "t1"));
    const ImportReport r = target.import_archive(signed_archive, trust);
    EXPECT_EQ(r.count(ImportStatus::kAdded), 1u);
    EXPECT_TRUE(r.signer_trusted);
    EXPECT_EQ(r.signer, key_fingerprint(pub));
  }
  auto refused = [&](const fs::path& archive, const ImportOptions& options, const std::string& why) {
    KernelCache target(config_in(dir.path() / ("t-" + archive.filename().string())));
    try {
      target.import_archive(archive, options);
      ADD_FAILURE() << archive << ": expected a refusal (" << why << ")";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorrupt) << e.what();
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
    EXPECT_TRUE(target.list().empty()) << "nothing is imported from a refused archive";
  };
  refused(unsigned_archive, trust, "not signed");
  ImportOptions other_trust;
  other_trust.trusted_keys = {other_pub};
  refused(signed_archive, other_trust, "untrusted key");
  {
    test::ScopedEnv env("SPATTN_CACHE_TRUSTED_KEYS", pub.string());
    KernelCache target(CacheConfig::from_env());
    EXPECT_EQ(target.config().trusted_keys.size(), 1u);
  }

  // The attack of the issue: a tampered CUBIN under the genuine manifest, every
  // checksum recomputed. Unsigned it passes every integrity check, so a configured trust
  // key must refuse it; re-signing is impossible without the private key, and a
  // signature copied from the genuine archive does not verify.
  std::string tampered_entry = slurp(source.path_for(m.key()));
  {
    cache::DecodedEntry d = cache::decode_entry(tampered_entry);
    ASSERT_TRUE(d.ok());
    d.kernel.cubin[100] ^= 0x5a;
    tampered_entry = cache::encode_entry(d.manifest, d.kernel, 1);
  }
  const fs::path forged = dir.path() / "forged.spka";
  spit(forged, forged_archive({tampered_entry}));
  refused(forged, trust, "not signed");
  std::string resigned = slurp(signed_archive);
  const std::size_t tail = cache::kPublicKeyBytes + cache::kSignatureBytes;
  {
    std::string body = forged_archive({tampered_entry});
    body[8] = 2;   // version 2
    body[12] = 1;  // the signed flag
    body.resize(body.size() - 32);
    cache::Sha256 h;
    h.update(body);
    const auto d = h.finish();
    body.append(reinterpret_cast<const char*>(d.data()), d.size());
    body += resigned.substr(resigned.size() - tail);  // the genuine key and signature
    resigned = body;
  }
  const fs::path copied = dir.path() / "copied.spka";
  spit(copied, resigned);
  refused(copied, {}, "signature does not verify");
  std::string flipped = slurp(signed_archive);
  flipped[flipped.size() - 1] ^= 1;
  const fs::path flipped_path = dir.path() / "flipped.spka";
  spit(flipped_path, flipped);
  refused(flipped_path, {}, "signature does not verify");
  // Cutting the signature off changes the flags, which the checksum covers.
  std::string cut = slurp(signed_archive);
  cut.resize(cut.size() - tail);
  const fs::path cut_path = dir.path() / "cut.spka";
  spit(cut_path, cut);
  refused(cut_path, {}, "damaged");

  // A bad trust key file is an error of its own, not an untrusted archive.
  ImportOptions missing;
  missing.trusted_keys = {dir.path() / "nope.pub"};
  KernelCache target(config_in(dir.path() / "t2"));
  EXPECT_THROW(target.import_archive(signed_archive, missing), Error);
  ImportOptions not_a_key;
  spit(dir.path() / "junk.pub", "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n");
  not_a_key.trusted_keys = {dir.path() / "junk.pub"};
  EXPECT_THROW(target.import_archive(signed_archive, not_a_key), Error);
}

// Item 12: kernel_name, arch and the other manifest fields were stored unchecked.
TEST(CacheHardening, ImportValidatesEveryManifestField) {
  TempDir dir("hard");
  const std::string good = fake_manifest("good").canonical();
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const auto at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    s.replace(at, from.size(), to);
    return s;
  };
  const std::vector<std::pair<std::string, std::string>> bad = {
      {replaced(R"("kernel_name":"good")", R"("kernel_name":"good; rm -rf /")"), "manifest.kernel_name"},
      {replaced(R"("arch":"sm_90a")", R"("arch":"sm_90a\n")"), "manifest.arch"},
      {replaced(R"("arch":"sm_90a")", R"("arch":"sm_12")"), "arch sm_12"},
      {replaced(R"("arch":"sm_90a")", R"("arch":"sm_90a","extra":1)"), "manifest.extra"},
      {replaced(R"("format":1)", R"("format":2)"), "manifest.format"},
      {replaced(R"("options":[)", R"("options":["\u0007",)"), "manifest.options"},
      {replaced(std::string(64, 'a'), std::string(63, 'a') + "Z"), "manifest.template_hashes"},
      {replaced(R"("kernel_name":"good")", R"("kernel_name" : "good")"), "canonical"},
      {replaced(R"("arch":"sm_90a")", R"("arch":"sm_90a","arch":"sm_80")"), "duplicate key"},
      {"[1,2,3]", "not a JSON object"},
  };
  std::vector<std::string> entries{entry_for(fake_manifest("good"), 1)};
  for (const auto& [manifest, why] : bad) entries.push_back(entry_with_manifest(manifest, 2));
  spit(dir.path() / "a.spka", forged_archive(entries));
  KernelCache cache(config_in(dir.path() / "cache"));
  const ImportReport r = cache.import_archive(dir.path() / "a.spka");
  ASSERT_EQ(r.entries.size(), bad.size() + 1);
  EXPECT_EQ(r.entries[0].status, ImportStatus::kAdded) << r.entries[0].reason;
  for (size_t k = 0; k < bad.size(); ++k) {
    EXPECT_EQ(r.entries[k + 1].status, ImportStatus::kRejected) << bad[k].second;
    EXPECT_NE(r.entries[k + 1].reason.find(bad[k].second), std::string::npos)
        << bad[k].second << " in: " << r.entries[k + 1].reason;
  }
  EXPECT_EQ(cache.list().size(), 1u);
  // And a planted entry with a bad field fails verify.
  const std::string planted = entry_with_manifest(bad[0].first, 3);
  spit(cache.path_for(cache::sha256_hex(bad[0].first)), planted);
  ::chmod(cache.path_for(cache::sha256_hex(bad[0].first)).c_str(), 0644);
  const VerifyReport v = cache.verify(false);
  ASSERT_EQ(v.bad.size(), 1u);
  EXPECT_NE(v.bad[0].reason.find("manifest.kernel_name"), std::string::npos) << v.bad[0].reason;
}

TEST(CacheHardening, ManifestsThisBuildWritesParse) {
  for (const char* arch : {"sm_80", "sm_90a", "sm_100a", "sm_120"}) {
    KernelManifest m = fake_manifest("spattn_fwd", arch);
    m.template_hashes = {{"spattn/forward.cuh", std::string(64, 'c')}, {"spattn/params.cuh", std::string(64, 'd')}};
    m.options.push_back("--include-path=/usr/local/cuda 12/include");
    const KernelManifest back = cache::parse_manifest(m.canonical());
    EXPECT_EQ(back.canonical(), m.canonical()) << arch;
  }
}

// Item 15: importing a directory, a FIFO or /dev/zero said "does not exist".
TEST(CacheHardening, ImportSaysWhatAFileIs) {
  TempDir dir("hard");
  KernelCache cache(config_in(dir.path() / "cache"));
  ASSERT_EQ(::mkfifo((dir.path() / "fifo").c_str(), 0644), 0);
  for (const auto& [path, what] : std::vector<std::pair<fs::path, std::string>>{
           {dir.path(), "a directory"}, {dir.path() / "fifo", "a FIFO"}, {"/dev/zero", "a character device"}}) {
    try {
      cache.import_archive(path);
      ADD_FAILURE() << path;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kIo);
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace spattn
