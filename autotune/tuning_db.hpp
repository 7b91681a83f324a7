// The tuning database (DESIGN.md §6): what `spattn autotune` measured, per GPU.
//
// One JSON file per device fingerprint, <cache dir>/tuning/<fingerprint hash>.json:
//
//   {"format": 1,
//    "fingerprint": {"name": "NVIDIA H200", "cc": "9.0", "sm_count": 132, "l2_bytes": 62914560,
//                    "driver": "13.0", "nvrtc": "13.0", "spattn": "0.1.0"},
//    "entries": {"local_window|d2^-4|n16384|hd128|bf16|gqa1":
//                  {"config": "128x64w4s1:hilbert", "median_ms": 1.41, "p20_ms": 1.40, "p80_ms": 1.43,
//                   "tflops": 97.5, "heuristic": {"config": "128x64w4s1", "median_ms": 1.47},
//                   "speedup": 1.04, "candidates": 21, "problem": "B=1 Nq=16384 ...",
//                   "pattern": "{...}", "tuned_at": "2025-01-01T00:00:00Z", "bucket": {...}}}}
//
// Backward-pass entries (`spattn autotune --backward`) have keys that start with "bwd|"
// and hold backward configurations; forward keys are as above. The linear-time kernels'
// entries (`spattn autotune --op scan|performer`) have keys that start with "scan|" or
// "performer|" and hold their own configurations (LinearEntry): the database keeps them
// apart from the attention entries and leaves their configurations to linear/ to parse.
// Entries are keyed by a bucketed problem (ProblemBucket::key()), so one tuning run
// serves every problem of the same pattern class, density band, sequence band, head
// dim, dtype and GQA ratio. Writers take a lock file, re-read, merge and replace the file
// atomically, so concurrent `spattn autotune` runs lose nothing. A file whose
// fingerprint is not this GPU's is ignored (debug log); an unreadable one is ignored with
// a warning and, on the next write, kept aside as <file>.corrupt — never silently lost.
#pragma once

#include <spattn/autotune.hpp>
#include <spattn/config.hpp>
#include <spattn/pattern.hpp>
#include <spattn/tensor.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/forward.hpp"
#include "runtime/device.hpp"

namespace spattn::autotune {

inline constexpr int kTuningDbFormat = 1;

// What makes timings comparable: the GPU model and everything that changes the code
// that runs on it.
struct Fingerprint {
  std::string name;      // "NVIDIA H200"
  int cc_major = 0;
  int cc_minor = 0;
  int sm_count = 0;
  int64_t l2_bytes = 0;
  std::string driver;    // "13.0"
  std::string nvrtc;     // "13.0"
  std::string spattn;    // "0.1.0"

  // The fingerprint of a device with this process's NVRTC and spattn.
  static Fingerprint of(const runtime::DeviceInfo& device);
  std::string arch() const;                  // NVRTC target, as DeviceInfo::arch()
  nlohmann::json to_json() const;
  static Fingerprint from_json(const nlohmann::json& j);  // throws kCorrupt naming the field
  std::string hash() const;                  // 16 hex digits of SHA-256 over to_json().dump()
  std::string describe() const;              // one line for people
  bool operator==(const Fingerprint&) const = default;
};

// The problem as the database sees it.
struct ProblemBucket {
  TunePass pass = TunePass::kForward;
  std::string pattern_class;  // pattern_class(): "local_window", "longnet+causal", "union[...]"
  int density_log2 = 0;       // ceil(log2(density)): density in (2^(b-1), 2^b], clamped to [-24, 0]
  int64_t seq = 0;            // Nq rounded up to a power of two
  int64_t kv_seq = 0;         // Nk rounded up to a power of two
  int head_dim = 0;
  DType dtype = DType::kBFloat16;
  int gqa = 1;                // Hq / Hkv rounded up to a power of two

  // "local_window|d2^-4|n16384|hd128|bf16|gqa1" ("n16384:k65536" when Nk's band differs;
  // "bwd|local_window|..." for the backward pass).
  std::string key() const;
  // The key with the density field left out ("local_window|d*|..."), to decide cheaply
  // whether the density needs computing at all.
  std::string key_without_density() const;
  nlohmann::json to_json() const;
};

// Kind of the pattern's root, with the kinds of its members for compositions and
// "+causal": e.g. "local_window", "union[global_local,strided]", "dense+causal".
std::string pattern_class(const Pattern& pattern);
int density_bucket(double density);
int64_t power_of_two_at_least(int64_t n);
ProblemBucket bucket_of(const Pattern& pattern, const engine::Problem& problem, double density,
                        TunePass pass = TunePass::kForward);
// Exact density of the pattern at the problem (pairs counted from a layout with the
// default tile; tile-independent). Throws for patterns without host layouts (adaptive).
double pattern_density(const Pattern& pattern, const engine::Problem& problem);

// One tuned bucket.
struct TunedEntry {
  KernelConfig config;
  double median_ms = 0, p20_ms = 0, p80_ms = 0;
  double tflops = 0;                 // useful TFLOP/s of the winner on the tuned problem
  std::string heuristic_config;      // what the heuristic would have run
  double heuristic_ms = 0;           // its median in the same run (0 if not measured)
  int candidates = 0;                // candidates timed successfully
  std::string problem;               // the tuned problem (engine::Problem::to_string())
  std::string pattern;               // its pattern (canonical JSON)
  std::string tuned_at;              // UTC, ISO 8601
  nlohmann::json bucket;             // ProblemBucket::to_json() of the key

  nlohmann::json to_json() const;
  static TunedEntry from_json(const nlohmann::json& j);  // throws kCorrupt naming the field
};

// Keys of the linear-time kernels' entries start with one of these.
inline constexpr std::string_view kScanKeyPrefix = "scan|";
inline constexpr std::string_view kPerformerKeyPrefix = "performer|";
bool is_linear_key(std::string_view key);

// One tuned bucket of a linear-time kernel. `config` is the configuration's to_string()
// (ScanConfig "32x8x16", PerformerConfig "32x32"); the database checks only its form
// (numbers joined by 'x'), linear/ parses and validates it when it reads the entry.
struct LinearEntry {
  std::string config;
  double median_ms = 0, p20_ms = 0, p80_ms = 0;
  std::string heuristic_config;      // what the heuristic would have run
  double heuristic_ms = 0;           // its median in the same run (0 if not measured)
  int candidates = 0;                // candidates timed successfully
  std::string problem;               // the tuned problem, for people
  std::string tuned_at;              // UTC, ISO 8601
  nlohmann::json bucket;             // the key's fields

  nlohmann::json to_json() const;
  static LinearEntry from_json(const nlohmann::json& j);  // throws kCorrupt naming the field
};

// What merging one entry of another database did: "added", "updated" (the incoming one
// was tuned later), "kept" (the local one was), "same"; detail names a conflict (the
// two configurations differ).
struct MergeOutcome {
  std::string key, status, detail;
};

enum class DbState {
  kMissing,   // no file
  kLoaded,    // read, fingerprint matches (or was not checked)
  kCorrupt,   // unreadable or invalid JSON / fields (problem says what)
  kMismatch,  // valid, but for another fingerprint or format
};
const char* db_state_name(DbState state);

struct TuningDb {
  std::filesystem::path file;
  DbState state = DbState::kMissing;
  std::string problem;                       // why kCorrupt / kMismatch
  std::optional<Fingerprint> fingerprint;    // as read from the file
  std::map<std::string, TunedEntry> entries;  // attention, by bucket key
  std::map<std::string, LinearEntry> linear;  // linear-time kernels, by bucket key ("scan|...", "performer|...")

  const TunedEntry* find(const std::string& bucket_key) const;
  const LinearEntry* find_linear(const std::string& bucket_key) const;
  // Whether some entry has the bucket's fields other than the density.
  bool has_coarse(const ProblemBucket& bucket) const;
  // The entry for the bucket, else for the nearest neighbouring density band (one band
  // away at most), so that a density near a band edge (a 1024 window at 15k vs 16k tokens)
  // does not lose the tuning. `key` receives the key used.
  const TunedEntry* find_nearest(const ProblemBucket& bucket, std::string* key = nullptr) const;

  // <cache dir>/tuning, from the environment (SPATTN_CACHE_DIR, XDG_CACHE_HOME, HOME).
  static std::filesystem::path default_dir();
  static std::filesystem::path file_for(const std::filesystem::path& dir, const Fingerprint& fingerprint);
  // Reads a database file. Never throws for what is in the file: a missing, corrupt or
  // mismatched file comes back empty with its state (mismatched: when `expected` is
  // given and differs). Logs corrupt files at warn, mismatches at debug.
  static TuningDb load(const std::filesystem::path& file, const Fingerprint* expected = nullptr);
  // Every database file in `dir` that reads (any fingerprint).
  static std::vector<TuningDb> load_all(const std::filesystem::path& dir);
  // Sets the entry for `bucket_key` in the database of `fingerprint` under `dir`: takes
  // the file's lock, re-reads it, merges, writes it atomically. A corrupt or mismatched
  // file found there is renamed to <file>.corrupt first (warning). Returns the file.
  // Throws kIo when the directory or file cannot be written.
  static std::filesystem::path store(const std::filesystem::path& dir, const Fingerprint& fingerprint,
                                     const std::string& bucket_key, const TunedEntry& entry);
  // The same for a linear-time kernel's entry (`bucket_key` must start with one of the
  // linear prefixes).
  static std::filesystem::path store_linear(const std::filesystem::path& dir, const Fingerprint& fingerprint,
                                            const std::string& bucket_key, const LinearEntry& entry);
  // A database from its text (e.g. carried in a cache archive); throws kCorrupt naming
  // `name` and the problem.
  static TuningDb parse(const std::string& text, const std::string& name);
  // Merges `incoming` into the database of its fingerprint under `dir` (locked, atomic
  // like store): the later measurement of a bucket wins.
  static std::vector<MergeOutcome> merge(const std::filesystem::path& dir, const TuningDb& incoming);
};

// What the database says for a problem on a device, for runtime selection. `config` is
// set when an entry applies (and still passes validate() — check_backward_config() for the
// backward pass — and the device's shared memory limit); `source` is "tuning database (<file>, bucket <key>)" then, else why not
// ("no tuning database for this GPU (<file>)", "no entry for bucket <key> in <file>", ...).
// Results are memoised per process; a database file that changes on disk is re-read.
struct DbLookup {
  std::optional<KernelConfig> config;
  std::string source;
  std::string bucket;
};
DbLookup lookup(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device,
                TunePass pass = TunePass::kForward);
// Same, against an explicit directory (tests, prewarm).
DbLookup lookup_in(const std::filesystem::path& dir, const Pattern& pattern, const engine::Problem& problem,
                   const runtime::DeviceInfo& device, TunePass pass = TunePass::kForward);

// What the database says for a linear-time kernel's bucket key on a device: `entry` is
// set when this GPU's database (the same fingerprint rules as for attention) holds the
// key; `source` then names the file, the key and the gain when tuned, else says why not
// (no database, a corrupt or mismatched one, no entry). Memoised like lookup().
struct LinearLookup {
  std::optional<LinearEntry> entry;
  std::string source;
};
LinearLookup lookup_linear(const std::string& bucket_key, const runtime::DeviceInfo& device);
LinearLookup lookup_linear_in(const std::filesystem::path& dir, const std::string& bucket_key,
                              const runtime::DeviceInfo& device);

// UTC now as "2025-01-31T12:00:00Z".
std::string utc_now();

}  // namespace spattn::autotune
