// Internals of KernelCache shared by its source files: the directory layout, counters,
// entry loading and eviction.
//
// Directory layout:
//   <dir>/kernels/<key>.spk          one kernel file per key (format.hpp)
//   <dir>/kernels/.<key>.spk.*.tmp   files being written (renamed into place when complete)
//   <dir>/locks/<key>.lock           per-key compile locks (exist only while held)
#pragma once

#include <spattn/cache.hpp>

#include <array>
#include <atomic>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cache/files.hpp"

namespace spattn {

enum class CacheCounter { kHits, kMisses, kCompiles, kRecovered, kEvictions, kCount };

struct KernelCache::Impl {
  explicit Impl(CacheConfig c);

  CacheConfig config;
  std::filesystem::path kernels_dir;
  std::filesystem::path locks_dir;
  std::array<std::atomic<std::uint64_t>, static_cast<std::size_t>(CacheCounter::kCount)> counters{};
  std::atomic<bool> warned_unwritable{false};
  std::atomic<bool> warned_refused{false};

  void bump(CacheCounter which, std::uint64_t n = 1);
  CacheCounters snapshot() const;

  std::filesystem::path entry_path(const std::string& key) const;
  std::filesystem::path lock_path(const std::string& key) const;

  // Creates the directories and takes the key's lock. nullopt (warned once per cache) if
  // the directory is not writable: the caller then works without persisting. After
  // waiting config.lock_timeout_s for another holder, nullopt with *timed_out set.
  std::optional<cache::FileLock> lock(const std::string& key, bool* timed_out = nullptr);

  // Why the directory must not be used (empty if it may): the directory or its kernels/
  // or locks/ is not a directory, belongs to another user or is writable by others
  // (unless config.allow_shared_dir). Missing directories are fine.
  std::string dir_problem() const;
  // Throws kIo when dir_problem() is not empty (maintenance commands).
  void require_usable_dir() const;
  // Creates the cache directory and its kernels/ and locks/ (mode 0755); errno or 0.
  int make_dirs() const;

  enum class Load { kGood, kAbsent, kBad };
  // Reads and fully checks the entry at `path` against the expected manifest text.
  Load load(const std::filesystem::path& path, std::string_view manifest, CompiledKernel* out,
            std::string* reason) const;

  // Full check of a file against the key its name claims; empty when good.
  std::string check_file(const std::filesystem::path& path, const std::string& key) const;

  // Deletes a bad entry (under its lock when the lock can be had), logging the reason.
  // Returns whether a file was deleted; counts it as recovered.
  bool delete_bad(const std::string& key, const std::filesystem::path& path, const std::string& reason);

  struct FileInfo {
    std::filesystem::path path;
    std::string key;  // file name without ".spk"
    std::uint64_t size = 0;
    bool regular = true;  // false: a directory, FIFO, link... in place of an entry
  };
  // Everything named *.spk in kernels/ (none if the directory does not exist). Throws
  // kIo if it exists but cannot be read (or a path component is not a directory).
  std::vector<FileInfo> scan() const;

  // Evicts least recently used entries (never `protect`) until at most max_bytes remain.
  PruneReport enforce_limit(std::uint64_t max_bytes, const std::string& protect);

  // Removes temp files older than `min_age_s` seconds (0: all); returns how many.
  std::size_t remove_temp_files(double min_age_s) const;
};

namespace cache {
// Whether `key` looks like a cache key (64 lower-case hex digits).
bool is_key(std::string_view key);
}  // namespace cache

}  // namespace spattn
