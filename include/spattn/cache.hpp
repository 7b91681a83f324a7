// The on-disk kernel cache (DESIGN.md §5).
//
// Compiled kernels are stored one file per kernel under a cache directory, keyed by the
// SHA-256 of a canonical manifest (everything that determines the CUBIN: rendered
// source, template hashes, options, exact arch, NVRTC and spattn versions, the cache
// format version). Readers take no lock; a per-key lock file makes N processes (or
// threads) that miss on the same key compile it once. A file that fails to load for any
// reason is a miss: it is logged, deleted and recompiled, never a crash. The directory is
// kept under a byte limit by evicting the least recently used entries, judged by a stamp
// the cache itself writes into each entry on every hit.
//
// The cache only uses a directory that no other user can write to (like ssh and
// ~/.ssh): the directory, its kernels/ and locks/, and every entry must belong to this
// user (or root) and not be group- or world-writable. Archives can be signed (Ed25519)
// and imports restricted to trusted signers.
//
// Environment (read by CacheConfig::from_env):
//   SPATTN_CACHE_DIR           cache directory; else $XDG_CACHE_HOME/spattn; else ~/.cache/spattn
//   SPATTN_CACHE_MAX_BYTES     size limit: bytes, or with a K/M/G/T suffix (binary); 0 = no limit
//   SPATTN_DISABLE_CACHE       1/true/yes/on: no disk cache, every request compiles, nothing written
//   SPATTN_CACHE_READONLY      1/true/yes/on: serve hits, never write (no last-used stamp, no lock
//                              files, misses compile in memory and are not stored): a deployed
//                              cache on a read-only mount
//   SPATTN_CACHE_ALLOW_SHARED  1/true/yes/on: accept a directory (and entries) others can write to
//   SPATTN_CACHE_TRUSTED_KEYS  ':'-separated Ed25519 public keys (PEM files): import only archives
//                              signed by one of them
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <spattn/error.hpp>

namespace spattn {

// Everything that determines a compiled kernel. Every field is part of the cache key; the
// canonical text is stored in the cache file and compared byte for byte on load.
struct KernelManifest {
  std::string source;                                               // rendered CUDA source
  std::vector<std::pair<std::string, std::string>> template_hashes;  // template name -> content hash
  std::vector<std::string> options;                                 // full NVRTC option list, in order
  std::string arch;                                                 // exact target, e.g. "sm_90a"
  std::string nvrtc_version;                                        // runtime::nvrtc_version()
  std::string spattn_version;                                       // SPATTN_VERSION_STRING of the writer
  std::string kernel_name;                                          // entry point (for listings)

  // Canonical JSON text: keys sorted, template hashes sorted by name, options in order,
  // plus the cache format version. Throws kInvalidArgument if a field is not UTF-8.
  std::string canonical() const;
  // Lower-case hex SHA-256 of canonical(): the cache key.
  std::string key() const;
};

// A compiled kernel as the cache stores it (mirror of runtime::CompiledProgram).
struct CompiledKernel {
  std::vector<char> cubin;
  std::string log;                                   // NVRTC log, may be empty
  std::map<std::string, std::string> lowered_names;  // name expression -> mangled name
  int registers = -1;     // per thread (-1 if unknown)
  int shared_bytes = -1;  // static shared memory per block
  int local_bytes = -1;   // stack frame / spills
  double compile_ms = 0;  // stored with microsecond resolution
};

// Parses a byte size: "1048576", "512K", "64M", "2G", "1T", also "64MiB", "64MB" (all
// binary multiples, case-insensitive, surrounding spaces allowed). nullopt if malformed
// or out of range.
std::optional<std::uint64_t> parse_byte_size(std::string_view text);

struct CacheConfig {
  static constexpr std::uint64_t kDefaultMaxBytes = std::uint64_t{2} << 30;  // 2 GiB

  std::filesystem::path dir;                  // the cache directory (created on first write)
  std::uint64_t max_bytes = kDefaultMaxBytes;  // 0 = no limit
  bool disabled = false;                       // get_or_compile always compiles, writes nothing
  bool read_only = false;                      // get_or_compile reads, never writes
  bool allow_shared_dir = false;               // accept a directory other users can write to
  double lock_timeout_s = 300;                 // give up waiting for another compile of a key
  std::vector<std::filesystem::path> trusted_keys;  // import only archives signed by one of these

  // Reads the environment variables above. Throws kInvalidArgument naming the variable on
  // a malformed value, or when no directory can be determined (no HOME).
  static CacheConfig from_env();
};

struct CacheCounters {
  std::uint64_t hits = 0;       // get_or_compile answered from disk
  std::uint64_t misses = 0;     // get_or_compile had to compile
  std::uint64_t compiles = 0;   // calls of the compile function (misses + disabled-cache requests)
  std::uint64_t recovered = 0;  // bad entries found, logged and deleted (incl. remove())
  std::uint64_t evictions = 0;  // entries deleted to stay under the byte limit
};

struct CacheLookup {
  std::string key;
  CompiledKernel kernel;
  bool hit = false;
  // The entry is in the cache directory after the call (a hit, or written). False when
  // the cache is disabled, not writable, refused (see CacheConfig) or the write failed:
  // commands whose job is to fill the cache fail on it.
  bool stored = false;
};

// One cache file, as listed (list() reads headers and manifests, not the whole file;
// verify() checks everything).
struct CacheEntry {
  std::string key;
  std::filesystem::path path;
  std::string kernel_name;
  std::string arch;
  std::string nvrtc_version;
  std::string spattn_version;
  std::uint32_t format_version = 0;
  std::uint64_t size_bytes = 0;
  std::chrono::system_clock::time_point last_used;
  std::string problem;  // non-empty if the header or manifest could not be read
};

struct CacheStats {
  std::filesystem::path dir;
  std::size_t entries = 0;
  std::uint64_t bytes = 0;
  std::uint64_t max_bytes = 0;
  bool disabled = false;
  CacheCounters counters;  // of this instance
  std::string problem;     // why the directory cannot be used (empty when it can)
};

// A cache file (or archive entry) that is not usable, and why.
struct CacheProblem {
  std::string key;  // from the file name (may be empty for foreign names)
  std::filesystem::path path;
  std::string reason;
  bool removed = false;  // verify(): deleted (false: kept, or the deletion failed: see reason)
};

struct VerifyReport {
  std::size_t checked = 0;
  std::size_t good = 0;
  std::vector<CacheProblem> bad;  // removed when verify() was asked to remove them
  std::size_t stale_temp_files = 0;
};

struct PruneReport {
  std::size_t removed = 0;
  std::uint64_t freed_bytes = 0;
  std::size_t remaining_entries = 0;
  std::uint64_t remaining_bytes = 0;
};

struct ExportReport {
  std::size_t exported = 0;             // kernel entries
  std::size_t attachments = 0;
  std::uint64_t bytes = 0;             // archive size
  std::vector<CacheProblem> skipped;   // bad entries left out
  std::string signer;                  // fingerprint of the signing key ("" if unsigned)
};

// Called with (done, total) as a long operation goes; may be empty.
using CacheProgress = std::function<void(std::size_t done, std::size_t total)>;

struct ExportOptions {
  std::function<bool(const CacheEntry&)> filter;  // entries to export (all if empty)
  // Named files carried in the archive beside the kernels (covered by its checksum and
  // signature), e.g. "tuning/<fingerprint>.json"; importers hand them back.
  std::vector<std::pair<std::string, std::string>> attachments;
  std::filesystem::path signing_key;  // Ed25519 private key (PEM) to sign the archive with
  CacheProgress progress;
};

struct ImportOptions {
  // Import only archives signed by one of these Ed25519 public keys (PEM), in addition
  // to CacheConfig::trusted_keys; with none configured anywhere, unsigned archives are
  // accepted (a signature, if present, is still checked).
  std::vector<std::filesystem::path> trusted_keys;
  CacheProgress progress;
};

// Writes a new Ed25519 key pair for signing archives: the private key (PEM, mode 0600)
// and the public key (PEM) that importers trust. Throws kIo; refuses to overwrite.
void generate_signing_key(const std::filesystem::path& private_key, const std::filesystem::path& public_key);
// "SHA256:<16 hex digits>" of a public key file (PEM), as reports show signers.
std::string key_fingerprint(const std::filesystem::path& public_key);

enum class ImportStatus {
  kAdded,    // written to the cache
  kPresent,  // an identical entry was already there
  kRejected  // not usable by this build (reason says why)
};
const char* import_status_name(ImportStatus status) noexcept;

struct ImportResult {
  std::string key;
  std::string kernel_name;
  std::string arch;
  ImportStatus status = ImportStatus::kRejected;
  std::string reason;
};

struct ImportReport {
  std::vector<ImportResult> entries;
  std::vector<std::pair<std::string, std::string>> attachments;  // (name, bytes), for the caller
  std::uint64_t evictions = 0;  // entries evicted afterwards to respect the byte limit
  std::string signer;           // fingerprint of the key that signed the archive ("" if unsigned)
  bool signer_trusted = false;  // the signer is one of the trusted keys
  std::size_t count(ImportStatus status) const;
};

using CacheFilter = std::function<bool(const CacheEntry&)>;

class KernelCache {
 public:
  explicit KernelCache(CacheConfig config);
  ~KernelCache();
  KernelCache(const KernelCache&) = delete;
  KernelCache& operator=(const KernelCache&) = delete;

  // The process-wide cache, configured from the environment on first use (thread-safe).
  // Later changes to the environment do not affect it.
  static KernelCache& instance();
  // Totals over every KernelCache of this process (e.g. "a prewarmed cache served this
  // run with zero compiles").
  static CacheCounters global_counters();

  const CacheConfig& config() const;
  CacheCounters counters() const;
  // Path of the file that holds (or would hold) `key`.
  std::filesystem::path path_for(const std::string& key) const;

  // Returns the kernel for `manifest`, from disk if a good entry exists, else by calling
  // `compile` (at most once across threads and processes sharing the directory) and
  // storing the result. Safe to call from many threads. Errors from `compile` propagate;
  // failures of the cache itself (unwritable directory, full disk) are logged and the
  // compiled kernel is returned anyway. Throws kInvalidArgument if the manifest lacks
  // arch, kernel_name, nvrtc_version or spattn_version.
  CacheLookup get_or_compile(const KernelManifest& manifest,
                             const std::function<CompiledKernel()>& compile);

  // Deletes an entry that turned out to be unusable (e.g. the driver rejected its CUBIN),
  // logging `reason`; the next get_or_compile recompiles it. Returns whether a file was
  // deleted. Counts as recovered.
  bool remove(const std::string& key, const std::string& reason);

  // Whether a good entry for `key` is in the directory (full check).
  bool contains(const std::string& key) const;
  // Creates the directories and checks that an entry can be written there; throws kIo
  // saying why not (not writable, refused as shared, disabled).
  void ensure_writable();

  // Maintenance. These work on the directory whether or not the cache is disabled, and
  // throw kIo when it cannot be read (a missing directory is an empty cache) or is
  // refused because other users can write to it.
  std::vector<CacheEntry> list() const;  // most recently used first
  CacheStats stat() const;               // never throws for the directory: see problem
  // Reads every entry completely (type, magic, format version, sizes, checksum, manifest
  // fields vs key); bad ones are reported and, if remove_bad, deleted (a directory or
  // FIFO in place of an entry too). Stale temp files (from a writer that died) are removed.
  VerifyReport verify(bool remove_bad = true, const CacheProgress& progress = {});
  // Evicts least recently used entries until the directory holds at most max_bytes.
  PruneReport prune(std::uint64_t max_bytes);
  // Deletes every entry, temp file and stale lock file (locks held by a compile in
  // progress stay); returns the number of entries deleted. Throws kIo if any could not be.
  std::size_t clear();

  // Writes the good entries accepted by the filter (all if none) into one archive file,
  // atomically (a link is followed and stays a link; a target that is not a regular
  // file is refused with kInvalidArgument). Bad entries are skipped and reported.
  ExportReport export_archive(const std::filesystem::path& archive, const ExportOptions& options) const;
  ExportReport export_archive(const std::filesystem::path& archive, const CacheFilter& filter = {},
                              const CacheProgress& progress = {}) const;
  // The same archive onto a stream (e.g. standard output); throws kIo if writing fails.
  ExportReport export_archive(std::ostream& out, const ExportOptions& options) const;
  // Verifies the archive as a whole (throws kCorrupt if it is not a valid archive, its
  // signature does not verify, or trusted keys are configured and it is not signed by
  // one; kIo if it cannot be read), then adds each entry that this build can use.
  // Entries written by another NVRTC, spattn or format version, with a manifest field
  // this build would not write, or that fail their own checks, are rejected with a reason.
  ImportReport import_archive(const std::filesystem::path& archive, const ImportOptions& options);
  ImportReport import_archive(const std::filesystem::path& archive, const CacheProgress& progress = {});

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace spattn
