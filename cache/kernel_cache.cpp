// KernelCache: configuration, lookups, and directory maintenance.
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <system_error>

#include "cache/format.hpp"
#include "cache/sha256.hpp"
#include "cache/store.hpp"
#include "common/check.hpp"
#include "common/log.hpp"
#include "common/text.hpp"

namespace spattn {

namespace fs = std::filesystem;
using cache::kEntrySuffix;

namespace {

std::array<std::atomic<std::uint64_t>, static_cast<std::size_t>(CacheCounter::kCount)> g_counters{};

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t\n\r");
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(" \t\n\r");
  return std::string(s.substr(first, last - first + 1));
}

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

bool env_flag(const char* name) {
  const std::string v = lower(trim(env_or_empty(name)));
  if (v.empty() || v == "0" || v == "false" || v == "no" || v == "off") return false;
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  SPATTN_FAIL(ErrorCode::kInvalidArgument, "{}='{}' is not a boolean: use 1/true/yes/on or 0/false/no/off", name,
              detail::printable(env_or_empty(name)));
}

fs::path home_dir() {
  if (std::string home = env_or_empty("HOME"); !home.empty()) return home;
  // No HOME (some service managers): ask the password database.
  struct passwd pw {};
  struct passwd* result = nullptr;
  std::vector<char> buffer(16384);
  if (::getpwuid_r(::getuid(), &pw, buffer.data(), buffer.size(), &result) == 0 && result &&
      result->pw_dir && *result->pw_dir) {
    return result->pw_dir;
  }
  return {};
}

}  // namespace

// --- configuration -------------------------------------------------------------------

std::optional<std::uint64_t> parse_byte_size(std::string_view text) { return detail::parse_byte_size(text); }

CacheConfig CacheConfig::from_env() {
  CacheConfig c;
  if (std::string dir = env_or_empty("SPATTN_CACHE_DIR"); !dir.empty()) {
    c.dir = dir;
  } else if (std::string xdg = env_or_empty("XDG_CACHE_HOME"); !xdg.empty() && xdg.front() == '/') {
    // The XDG spec says relative values are to be ignored.
    c.dir = fs::path(xdg) / "spattn";
  } else if (fs::path home = home_dir(); !home.empty()) {
    c.dir = home / ".cache" / "spattn";
  } else {
    SPATTN_FAIL(ErrorCode::kInvalidArgument,
                "cannot place the kernel cache: HOME is not set; set SPATTN_CACHE_DIR");
  }

  if (std::string max = env_or_empty("SPATTN_CACHE_MAX_BYTES"); !trim(max).empty()) {
    const auto bytes = parse_byte_size(max);
    if (!bytes) {
      SPATTN_FAIL(ErrorCode::kInvalidArgument,
                  "SPATTN_CACHE_MAX_BYTES='{}' is not a size: use bytes or a K/M/G/T suffix "
                  "(e.g. 2G), or 0 for no limit",
                  max);
    }
    c.max_bytes = *bytes;
  }

  c.disabled = env_flag("SPATTN_DISABLE_CACHE");
  c.read_only = env_flag("SPATTN_CACHE_READONLY");
  c.allow_shared_dir = env_flag("SPATTN_CACHE_ALLOW_SHARED");
  if (std::string keys = env_or_empty("SPATTN_CACHE_TRUSTED_KEYS"); !trim(keys).empty()) {
    for (std::size_t at = 0; at <= keys.size();) {
      const std::size_t end = std::min(keys.find(':', at), keys.size());
      if (const std::string k = trim(std::string_view(keys).substr(at, end - at)); !k.empty()) c.trusted_keys.push_back(k);
      at = end + 1;
    }
  }
  return c;
}

// --- manifest ------------------------------------------------------------------------

std::string KernelManifest::canonical() const { return cache::canonical_manifest(*this, cache::kFormatVersion); }

std::string KernelManifest::key() const { return cache::sha256_hex(canonical()); }

const char* import_status_name(ImportStatus status) noexcept {
  switch (status) {
    case ImportStatus::kAdded: return "added";
    case ImportStatus::kPresent: return "present";
    case ImportStatus::kRejected: return "rejected";
  }
  return "unknown";
}

std::size_t ImportReport::count(ImportStatus status) const {
  return static_cast<std::size_t>(std::count_if(entries.begin(), entries.end(),
                                                [&](const ImportResult& r) { return r.status == status; }));
}

bool cache::is_key(std::string_view key) {
  return key.size() == 64 && std::all_of(key.begin(), key.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// --- Impl ----------------------------------------------------------------------------

KernelCache::Impl::Impl(CacheConfig c)
    : config(std::move(c)), kernels_dir(config.dir / "kernels"), locks_dir(config.dir / "locks") {}

void KernelCache::Impl::bump(CacheCounter which, std::uint64_t n) {
  counters[static_cast<std::size_t>(which)] += n;
  g_counters[static_cast<std::size_t>(which)] += n;
}

namespace {
CacheCounters to_counters(
    const std::array<std::atomic<std::uint64_t>, static_cast<std::size_t>(CacheCounter::kCount)>& a) {
  CacheCounters c;
  c.hits = a[static_cast<std::size_t>(CacheCounter::kHits)].load();
  c.misses = a[static_cast<std::size_t>(CacheCounter::kMisses)].load();
  c.compiles = a[static_cast<std::size_t>(CacheCounter::kCompiles)].load();
  c.recovered = a[static_cast<std::size_t>(CacheCounter::kRecovered)].load();
  c.evictions = a[static_cast<std::size_t>(CacheCounter::kEvictions)].load();
  return c;
}
}  // namespace

CacheCounters KernelCache::Impl::snapshot() const { return to_counters(counters); }

fs::path KernelCache::Impl::entry_path(const std::string& key) const {
  return kernels_dir / (key + std::string(kEntrySuffix));
}

fs::path KernelCache::Impl::lock_path(const std::string& key) const { return locks_dir / (key + ".lock"); }

int KernelCache::Impl::make_dirs() const {
  for (const fs::path& d : {config.dir, kernels_dir, locks_dir}) {
    if (const int err = cache::make_directory(d); err != 0) return err;
  }
  return 0;
}

std::string KernelCache::Impl::dir_problem() const {
  for (const fs::path& d : {config.dir, kernels_dir, locks_dir}) {
    struct stat st {};
    // The cache directory may be reached through a link; its own subdirectories may not.
    const int rc = d == config.dir ? ::stat(d.c_str(), &st) : ::lstat(d.c_str(), &st);
    if (rc != 0) {
      if (errno == ENOENT) return {};  // created (safely) on first write
      return fmt::format("'{}': {}", detail::printable(d.string()), std::strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) {
      return fmt::format("'{}' is {}, not a directory", detail::printable(d.string()), cache::file_kind(st.st_mode));
    }
    if (config.allow_shared_dir) continue;
    if (std::string why = cache::ownership_problem(st.st_uid, st.st_mode); !why.empty()) {
      return fmt::format("'{}' is {}: other users could plant kernels that this process would run (fix it with "
                         "'chmod go-w', or set SPATTN_CACHE_ALLOW_SHARED=1 if the directory is shared on purpose)",
                         detail::printable(d.string()), why);
    }
  }
  return {};
}

void KernelCache::Impl::require_usable_dir() const {
  if (std::string why = dir_problem(); !why.empty()) {
    SPATTN_FAIL(ErrorCode::kIo, "kernel cache refused: {}", why);
  }
}

std::optional<cache::FileLock> KernelCache::Impl::lock(const std::string& key, bool* timed_out) {
  int err = 0;
  if (timed_out) *timed_out = false;
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (auto held = cache::FileLock::acquire(lock_path(key), &err, config.lock_timeout_s)) return held;
    if (err == ETIMEDOUT) {
      if (timed_out) *timed_out = true;
      return std::nullopt;
    }
    // First use, or `cache clear` removed the directories meanwhile.
    if (const int mk = make_dirs(); mk != 0) err = mk;
  }
  if (!warned_unwritable.exchange(true)) {
    log::warn("kernel cache '{}' is not writable ({}); kernels are compiled but not stored",
              detail::printable(config.dir.string()), std::strerror(err));
  }
  return std::nullopt;
}

KernelCache::Impl::Load KernelCache::Impl::load(const fs::path& path, std::string_view manifest,
                                                CompiledKernel* out, std::string* reason) const {
  cache::ReadResult file = cache::read_file(path, cache::kMaxEntryBytes);
  if (!file.ok()) {
    if (file.error == ENOENT && file.problem.empty()) return Load::kAbsent;
    *reason = file.reason();
    return Load::kBad;
  }
  if (!config.allow_shared_dir) {
    if (std::string why = cache::ownership_problem(file.uid, file.mode); !why.empty()) {
      *reason = "the entry is " + why;
      return Load::kBad;
    }
  }
  cache::DecodedEntry d = cache::decode_entry(file.bytes);
  if (!d.ok()) {
    *reason = std::move(d.error);
    return Load::kBad;
  }
  if (d.manifest != manifest) {
    *reason = "stored manifest differs from the requested one (file renamed or key collision)";
    return Load::kBad;
  }
  *out = std::move(d.kernel);
  return Load::kGood;
}

std::string KernelCache::Impl::check_file(const fs::path& path, const std::string& key) const {
  cache::ReadResult file = cache::read_file(path, cache::kMaxEntryBytes);
  if (!file.ok()) return file.error == ENOENT && file.problem.empty() ? std::string() : file.reason();
  if (!config.allow_shared_dir) {
    if (std::string why = cache::ownership_problem(file.uid, file.mode); !why.empty()) return "the entry is " + why;
  }
  cache::DecodedEntry d = cache::decode_entry(file.bytes);
  if (!d.ok()) return d.error;
  if (cache::sha256_hex(d.manifest) != key) return "stored manifest does not hash to the file's key";
  try {
    cache::parse_manifest(d.manifest);
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}

bool KernelCache::Impl::delete_bad(const std::string& key, const fs::path& path, const std::string& reason) {
  // Under the lock a writer cannot be replacing the file, so what is deleted is the file
  // that was judged bad, not a good one renamed into place a moment ago.
  std::optional<cache::FileLock> held = cache::is_key(key) ? lock(key) : std::nullopt;
  if (held && check_file(path, key).empty()) return false;
  bool removed = false;
  if (const int err = cache::remove_path(path, &removed); err != 0 || !removed) {
    if (err != 0) {
      log::warn("cannot delete bad kernel cache entry '{}' ({}): {}", path.string(), reason, std::strerror(err));
    }
    return false;
  }
  log::warn("deleted bad kernel cache entry '{}': {}", path.string(), reason);
  bump(CacheCounter::kRecovered);
  return true;
}

std::vector<KernelCache::Impl::FileInfo> KernelCache::Impl::scan() const {
  std::vector<FileInfo> files;
  std::error_code ec;
  fs::directory_iterator it(kernels_dir, ec), end;
  if (ec) {
    if (ec.value() == ENOENT) return files;  // nothing written yet
    SPATTN_FAIL(ErrorCode::kIo, "cannot read the kernel cache directory '{}': {}",
                detail::printable(kernels_dir.string()), ec.message());
  }
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.ends_with(kEntrySuffix) || name.front() == '.') continue;
    std::error_code type_ec;
    const fs::file_status st = it->symlink_status(type_ec);
    if (type_ec) continue;  // deleted meanwhile
    FileInfo f{it->path(), name.substr(0, name.size() - kEntrySuffix.size()), 0, fs::is_regular_file(st)};
    if (f.regular) {
      std::error_code size_ec;
      f.size = it->file_size(size_ec);
      if (size_ec) continue;
    }
    files.push_back(std::move(f));
  }
  if (ec) {
    SPATTN_FAIL(ErrorCode::kIo, "cannot read the kernel cache directory '{}': {}",
                detail::printable(kernels_dir.string()), ec.message());
  }
  std::sort(files.begin(), files.end(), [](const FileInfo& a, const FileInfo& b) { return a.key < b.key; });
  return files;
}

PruneReport KernelCache::Impl::enforce_limit(std::uint64_t max_bytes, const std::string& protect) {
  std::vector<FileInfo> files = scan();
  PruneReport report;
  std::uint64_t total = 0;
  for (const FileInfo& f : files) total += f.size;
  if (max_bytes != 0 && total > max_bytes) {
    // Oldest stamp first. A file whose header cannot be read, or whose stamp lies more
    // than a day in the future (damage, a wrong clock), counts as stamp 0 and goes first.
    const std::uint64_t latest_plausible = cache::now_ns() + std::uint64_t{86400} * 1000000000;
    std::vector<std::pair<std::uint64_t, const FileInfo*>> order;
    for (const FileInfo& f : files) {
      if (!f.regular) continue;  // no size; verify removes it
      const cache::PrefixResult head = cache::read_prefix(f.path, cache::kStampOffset + 8);
      std::uint64_t stamp = 0;
      if (head.error == 0 && head.bytes.size() == cache::kStampOffset + 8 &&
          head.bytes.compare(0, 8, cache::kEntryMagic) == 0) {
        stamp = cache::get_u64(head.bytes.data() + cache::kStampOffset);
        if (stamp > latest_plausible) stamp = 0;
      }
      order.emplace_back(stamp, &f);
    }
    std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first < b.first : a.second->key < b.second->key;
    });
    for (const auto& [stamp, f] : order) {
      if (total <= max_bytes) break;
      if (f->key == protect) continue;
      std::error_code ec;
      const bool removed = fs::remove(f->path, ec);
      if (ec) {
        log::warn("cannot evict kernel cache entry '{}': {}", f->path.string(), ec.message());
        continue;
      }
      total -= f->size;  // removed now, or by another process a moment ago
      if (removed) {
        ++report.removed;
        report.freed_bytes += f->size;
        bump(CacheCounter::kEvictions);
        log::debug("kernel cache: evicted {} ({} bytes) to stay under {} bytes", f->key, f->size, max_bytes);
      }
    }
  }
  report.remaining_bytes = total;
  report.remaining_entries = files.size() - report.removed;
  return report;
}

std::size_t KernelCache::Impl::remove_temp_files(double min_age_s) const {
  std::size_t removed = 0;
  const auto now = fs::file_time_type::clock::now();
  std::error_code ec;
  fs::directory_iterator it(kernels_dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    if (!cache::is_temp_name(it->path().filename().string())) continue;
    std::error_code time_ec;
    const auto mtime = it->last_write_time(time_ec);
    if (time_ec) continue;
    if (min_age_s > 0 && std::chrono::duration<double>(now - mtime).count() < min_age_s) continue;
    std::error_code rm_ec;
    if (fs::remove(it->path(), rm_ec)) ++removed;
  }
  return removed;
}

// --- KernelCache ---------------------------------------------------------------------

KernelCache::KernelCache(CacheConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {
  SPATTN_REQUIRE(!impl_->config.dir.empty(), "kernel cache: the cache directory is empty");
}

KernelCache::~KernelCache() = default;

KernelCache& KernelCache::instance() {
  static KernelCache cache(CacheConfig::from_env());
  return cache;
}

CacheCounters KernelCache::global_counters() { return to_counters(g_counters); }

const CacheConfig& KernelCache::config() const { return impl_->config; }

CacheCounters KernelCache::counters() const { return impl_->snapshot(); }

fs::path KernelCache::path_for(const std::string& key) const {
  SPATTN_REQUIRE(cache::is_key(key), "'{}' is not a kernel cache key (64 lower-case hex digits)", key);
  return impl_->entry_path(key);
}

CacheLookup KernelCache::get_or_compile(const KernelManifest& manifest,
                                        const std::function<CompiledKernel()>& compile) {
  SPATTN_REQUIRE(!manifest.kernel_name.empty(), "kernel manifest: kernel_name is empty");
  SPATTN_REQUIRE(!manifest.arch.empty(), "kernel manifest for '{}': arch is empty", manifest.kernel_name);
  SPATTN_REQUIRE(!manifest.nvrtc_version.empty(), "kernel manifest for '{}': nvrtc_version is empty",
                 manifest.kernel_name);
  SPATTN_REQUIRE(!manifest.spattn_version.empty(), "kernel manifest for '{}': spattn_version is empty",
                 manifest.kernel_name);
  SPATTN_REQUIRE(static_cast<bool>(compile), "kernel cache: no compile function given");

  Impl& s = *impl_;
  const auto start = std::chrono::steady_clock::now();
  const std::string text = manifest.canonical();
  CacheLookup out;
  out.key = cache::sha256_hex(text);

  auto run_compile = [&] {
    s.bump(CacheCounter::kMisses);
    s.bump(CacheCounter::kCompiles);
    const auto compile_start = std::chrono::steady_clock::now();
    out.kernel = compile();
    log::debug("kernel cache: miss {} {} {}: compiled in {:.1f} ms", out.key.substr(0, 12),
               manifest.kernel_name, manifest.arch, ms_since(compile_start));
  };
  auto hit = [&](const fs::path& path) {
    // Our own last-used stamp (not atime, which many mounts do not keep).
    if (!s.config.read_only) cache::write_u64_at(path, cache::kStampOffset, cache::now_ns());
    s.bump(CacheCounter::kHits);
    out.hit = true;
    out.stored = true;
    log::debug("kernel cache: hit {} {} {}: loaded in {:.2f} ms", out.key.substr(0, 12),
               manifest.kernel_name, manifest.arch, ms_since(start));
  };

  if (s.config.disabled) {
    run_compile();
    return out;
  }
  // A directory others can write to is not read from: its entries could be anyone's.
  if (std::string why = s.dir_problem(); !why.empty()) {
    if (!s.warned_refused.exchange(true)) {
      log::warn("kernel cache not used: {}; kernels are compiled but not stored", why);
    }
    run_compile();
    return out;
  }

  const fs::path path = s.entry_path(out.key);
  std::string reason;
  if (s.load(path, text, &out.kernel, &reason) == Impl::Load::kGood) {
    hit(path);
    return out;
  }
  if (s.config.read_only) {  // a miss (or a bad entry, left as it is): compiled, not stored
    log::debug("kernel cache (read-only): miss {} {} {}{}", out.key.substr(0, 12), manifest.kernel_name, manifest.arch,
               reason.empty() ? "" : ": " + reason);
    run_compile();
    return out;
  }

  // Miss (or a bad file). Whoever holds the key's lock compiles; the others wait and then
  // find the entry it wrote. A waiter that gives up compiles too and stores atomically.
  bool timed_out = false;
  std::optional<cache::FileLock> held = s.lock(out.key, &timed_out);
  if (!held && !timed_out) {
    run_compile();
    return out;
  }
  reason.clear();
  switch (s.load(path, text, &out.kernel, &reason)) {
    case Impl::Load::kGood:
      hit(path);
      return out;
    case Impl::Load::kBad: {
      bool removed = false;
      const int err = cache::remove_path(path, &removed);
      if (removed) {
        log::warn("deleted bad kernel cache entry '{}' ({}): {}; recompiling", path.string(),
                  manifest.kernel_name, reason);
        s.bump(CacheCounter::kRecovered);
      } else {
        log::warn("bad kernel cache entry '{}' ({}) cannot be deleted: {}", path.string(), reason,
                  err != 0 ? std::strerror(err) : "already gone");
      }
      break;
    }
    case Impl::Load::kAbsent: break;
  }

  run_compile();
  try {
    cache::write_atomic(path, cache::encode_entry(text, out.kernel, cache::now_ns()));
    out.stored = true;
  } catch (const Error& e) {
    log::warn("kernel cache: cannot store {}: {}", manifest.kernel_name, e.what());
  }
  held.reset();  // others waiting on this key may now load it
  if (out.stored) s.enforce_limit(s.config.max_bytes, out.key);
  return out;
}

bool KernelCache::remove(const std::string& key, const std::string& reason) {
  const fs::path path = path_for(key);
  std::optional<cache::FileLock> held = impl_->lock(key);
  bool removed = false;
  if (const int err = cache::remove_path(path, &removed); err != 0 || !removed) {
    if (err != 0) log::warn("cannot delete kernel cache entry '{}' ({}): {}", path.string(), reason, std::strerror(err));
    return false;
  }
  log::warn("deleted kernel cache entry '{}': {}", path.string(), reason);
  impl_->bump(CacheCounter::kRecovered);
  return true;
}

bool KernelCache::contains(const std::string& key) const {
  if (!cache::is_key(key) || !impl_->dir_problem().empty()) return false;
  const fs::path path = impl_->entry_path(key);
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && impl_->check_file(path, key).empty();
}

void KernelCache::ensure_writable() {
  Impl& s = *impl_;
  const std::string dir = detail::printable(s.config.dir.string());
  if (s.config.disabled) {
    SPATTN_FAIL(ErrorCode::kIo, "the kernel cache is disabled (SPATTN_DISABLE_CACHE): nothing can be stored in '{}'",
                dir);
  }
  if (s.config.read_only) {
    SPATTN_FAIL(ErrorCode::kIo, "the kernel cache '{}' is read-only (SPATTN_CACHE_READONLY): nothing can be stored in it",
                dir);
  }
  s.require_usable_dir();
  if (const int err = s.make_dirs(); err != 0) {
    SPATTN_FAIL(ErrorCode::kIo, "kernel cache '{}' cannot be created: {}", dir, std::strerror(err));
  }
  s.require_usable_dir();  // what was there before may have been a link or shared
  try {
    cache::AtomicFile probe(s.kernels_dir / ".write-probe");
  } catch (const Error& e) {
    SPATTN_FAIL(ErrorCode::kIo, "kernel cache '{}' is not writable: {}", dir, e.what());
  }
}

std::vector<CacheEntry> KernelCache::list() const {
  // Headers and manifests only: the manifest (which carries the source) usually fits in
  // the first read.
  constexpr std::size_t kFirstRead = 64 * 1024;
  impl_->require_usable_dir();
  std::vector<CacheEntry> entries;
  for (const Impl::FileInfo& f : impl_->scan()) {
    CacheEntry e;
    e.key = f.key;
    e.path = f.path;
    e.size_bytes = f.size;
    cache::PrefixResult head = cache::read_prefix(f.path, kFirstRead);
    if (head.error != 0) {
      if (head.error == ENOENT && head.problem.empty()) continue;  // evicted meanwhile
      e.problem = head.reason();
      entries.push_back(std::move(e));
      continue;
    }
    e.size_bytes = head.file_size;
    const cache::EntryHeader h = cache::parse_header(head.bytes, head.file_size, &e.problem);
    e.format_version = h.format_version;
    e.last_used = std::chrono::system_clock::time_point(
        std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::nanoseconds(h.last_used_ns)));
    if (e.problem.empty()) {
      std::string manifest;
      if (cache::kHeaderBytes + h.manifest_bytes <= head.bytes.size()) {
        manifest = head.bytes.substr(cache::kHeaderBytes, h.manifest_bytes);
      } else {
        cache::ReadResult r = cache::read_range(f.path, cache::kHeaderBytes, h.manifest_bytes);
        if (!r.ok()) e.problem = std::strerror(r.error);
        manifest = std::move(r.bytes);
      }
      if (e.problem.empty()) {
        try {
          const cache::ManifestSummary m = cache::summarize_manifest(manifest);  // the fields shown
          e.kernel_name = m.kernel_name;
          e.arch = m.arch;
          e.nvrtc_version = m.nvrtc_version;
          e.spattn_version = m.spattn_version;
        } catch (const Error& err) {
          e.problem = err.what();
        }
      }
    }
    entries.push_back(std::move(e));
  }
  std::stable_sort(entries.begin(), entries.end(),
                   [](const CacheEntry& a, const CacheEntry& b) { return a.last_used > b.last_used; });
  return entries;
}

CacheStats KernelCache::stat() const {
  CacheStats s;
  s.dir = impl_->config.dir;
  s.max_bytes = impl_->config.max_bytes;
  s.disabled = impl_->config.disabled;
  s.counters = impl_->snapshot();
  s.problem = impl_->dir_problem();
  if (!s.problem.empty()) return s;
  try {
    for (const Impl::FileInfo& f : impl_->scan()) {
      ++s.entries;
      s.bytes += f.size;
    }
  } catch (const Error& e) {
    s.problem = e.what();
  }
  return s;
}

VerifyReport KernelCache::verify(bool remove_bad, const CacheProgress& progress) {
  // A writer that died (or a power cut) can leave a temp file; one an hour old is not
  // being written any more.
  constexpr double kStaleTempAgeS = 3600;
  VerifyReport report;
  impl_->require_usable_dir();
  const std::vector<Impl::FileInfo> files = impl_->scan();
  if (progress) progress(0, files.size());
  for (std::size_t i = 0; i < files.size(); ++i) {
    const Impl::FileInfo& f = files[i];
    std::string reason = cache::is_key(f.key) ? impl_->check_file(f.path, f.key)
                                              : std::string("file name is not a cache key");
    ++report.checked;
    if (reason.empty()) {
      ++report.good;
    } else {
      CacheProblem p{f.key, f.path, std::move(reason), false};
      if (remove_bad) {
        p.removed = impl_->delete_bad(f.key, f.path, p.reason);
        struct stat st {};
        // Gone now (deleted, or by another process): removed. Still there: say why.
        if (!p.removed && ::lstat(f.path.c_str(), &st) != 0 && errno == ENOENT) p.removed = true;
        if (!p.removed) p.reason += "; could not be removed (see the log)";
      }
      report.bad.push_back(std::move(p));
    }
    if (progress) progress(i + 1, files.size());
  }
  if (remove_bad) report.stale_temp_files = impl_->remove_temp_files(kStaleTempAgeS);
  return report;
}

PruneReport KernelCache::prune(std::uint64_t max_bytes) {
  impl_->require_usable_dir();
  impl_->remove_temp_files(3600);
  return impl_->enforce_limit(max_bytes, {});
}

std::size_t KernelCache::clear() {
  impl_->require_usable_dir();
  std::size_t removed = 0, failed = 0;
  std::string first_failure;
  for (const Impl::FileInfo& f : impl_->scan()) {
    bool gone = false;
    if (const int err = cache::remove_path(f.path, &gone); err != 0) {
      if (failed++ == 0) first_failure = fmt::format("'{}': {}", detail::printable(f.path.string()), std::strerror(err));
    } else if (gone) {
      ++removed;
    }
  }
  // Temp files of writers that are still at work are removed too: their rename then
  // fails and the entry is compiled again next time, which is what clear asks for.
  impl_->remove_temp_files(0);
  // Lock files exist while a compile holds them: deleting one would let a second process
  // compile the same key at once. Only locks nobody holds (left by a process that died)
  // are removed, by taking them (a FileLock unlinks its file when released).
  std::error_code ec;
  fs::directory_iterator it(impl_->locks_dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() == ".lock") cache::FileLock::try_acquire(it->path());
  }
  if (failed > 0) {
    SPATTN_FAIL(ErrorCode::kIo, "cache clear: removed {} entries, but {} could not be removed (first: {})", removed,
                failed, first_failure);
  }
  return removed;
}

}  // namespace spattn
