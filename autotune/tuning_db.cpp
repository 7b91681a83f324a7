#include "autotune/tuning_db.hpp"

#include <sys/stat.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <spattn/cache.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>

#include "autotune/search_space.hpp"
#include "cache/files.hpp"
#include "cache/sha256.hpp"
#include "common/check.hpp"
#include "common/log.hpp"
#include "runtime/nvrtc.hpp"

namespace spattn::autotune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Reads a typed field, throwing kCorrupt with the field's path.
template <typename T>
T field(const json& j, const char* name, const std::string& where) {
  if (!j.is_object() || !j.contains(name))
    SPATTN_FAIL(ErrorCode::kCorrupt, "{}.{} is missing", where, name);
  try {
    return j.at(name).get<T>();
  } catch (const json::exception&) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "{}.{} has the wrong type ({})", where, name, j.at(name).dump());
  }
}

// An optional field: `fallback` when absent, else its value of type T (kCorrupt naming the
// field's path when it has another type).
template <typename T>
T optional_field(const json& j, const char* name, const std::string& where, T fallback) {
  if (!j.is_object() || !j.contains(name)) return fallback;
  return field<T>(j, name, where);
}

// A measured time: a finite number of milliseconds, > 0 (or >= 0 where 0 means "not measured").
double checked_ms(double ms, const char* name, const std::string& where, bool zero_ok) {
  if (!std::isfinite(ms) || ms < 0 || (!zero_ok && ms == 0))
    SPATTN_FAIL(ErrorCode::kCorrupt, "{}.{} must be a finite number of milliseconds {} 0 (got {})", where, name,
                zero_ok ? ">=" : ">", ms);
  return ms;
}

// The fields TunedEntry and LinearEntry share: times, the heuristic's, candidates, the
// problem's description, when, and the bucket.
template <typename Entry>
void read_common(const json& j, const std::string& where, Entry& e) {
  e.median_ms = checked_ms(field<double>(j, "median_ms", where), "median_ms", where, false);
  e.p20_ms = checked_ms(optional_field(j, "p20_ms", where, 0.0), "p20_ms", where, true);
  e.p80_ms = checked_ms(optional_field(j, "p80_ms", where, 0.0), "p80_ms", where, true);
  if (j.contains("heuristic") && j["heuristic"].is_object()) {
    const std::string h = where + ".heuristic";
    e.heuristic_config = optional_field<std::string>(j["heuristic"], "config", h, "");
    e.heuristic_ms = checked_ms(optional_field(j["heuristic"], "median_ms", h, 0.0), "median_ms", h, true);
  }
  e.candidates = optional_field(j, "candidates", where, 0);
  if (e.candidates < 0) SPATTN_FAIL(ErrorCode::kCorrupt, "{}.candidates must be >= 0 (got {})", where, e.candidates);
  e.problem = optional_field<std::string>(j, "problem", where, "");
  e.tuned_at = optional_field<std::string>(j, "tuned_at", where, "");
  e.bucket = optional_field(j, "bucket", where, json::object());  // null when the writer had none
  if (!e.bucket.is_null() && !e.bucket.is_object())
    SPATTN_FAIL(ErrorCode::kCorrupt, "{}.bucket is not an object ({})", where, e.bucket.dump());
}

}  // namespace

// --- fingerprint ---------------------------------------------------------------------

Fingerprint Fingerprint::of(const runtime::DeviceInfo& device) {
  Fingerprint f;
  f.name = device.name;
  f.cc_major = device.cc_major;
  f.cc_minor = device.cc_minor;
  f.sm_count = device.sm_count;
  f.l2_bytes = device.l2_bytes;
  f.driver = device.driver_version_string();
  f.nvrtc = runtime::nvrtc_version();
  f.spattn = SPATTN_VERSION_STRING;
  return f;
}

std::string Fingerprint::arch() const {
  runtime::DeviceInfo d;
  d.cc_major = cc_major;
  d.cc_minor = cc_minor;
  return d.arch();
}

json Fingerprint::to_json() const {
  // nlohmann::json objects keep keys sorted, so dump() is canonical.
  return json{{"name", name},   {"cc", fmt::format("{}.{}", cc_major, cc_minor)},
              {"sm_count", sm_count}, {"l2_bytes", l2_bytes},
              {"driver", driver}, {"nvrtc", nvrtc},
              {"spattn", spattn}};
}

Fingerprint Fingerprint::from_json(const json& j) {
  const std::string where = "fingerprint";
  Fingerprint f;
  f.name = field<std::string>(j, "name", where);
  const std::string cc = field<std::string>(j, "cc", where);
  char dot = 0;
  int consumed = 0;
  if (std::sscanf(cc.c_str(), "%d%c%d%n", &f.cc_major, &dot, &f.cc_minor, &consumed) != 3 || dot != '.' ||
      consumed != static_cast<int>(cc.size()))
    SPATTN_FAIL(ErrorCode::kCorrupt, "fingerprint.cc must look like \"9.0\" (got \"{}\")", cc);
  f.sm_count = field<int>(j, "sm_count", where);
  f.l2_bytes = field<int64_t>(j, "l2_bytes", where);
  f.driver = field<std::string>(j, "driver", where);
  f.nvrtc = field<std::string>(j, "nvrtc", where);
  f.spattn = field<std::string>(j, "spattn", where);
  return f;
}

std::string Fingerprint::hash() const { return cache::sha256_hex(to_json().dump()).substr(0, 16); }

std::string Fingerprint::describe() const {
  return fmt::format("{} (cc {}.{}, {} SMs, {} MiB L2), driver {}, NVRTC {}, spattn {}", name, cc_major, cc_minor,
                     sm_count, l2_bytes >> 20, driver, nvrtc, spattn);
}

// --- buckets -------------------------------------------------------------------------

std::string pattern_class(const Pattern& pattern) {
  std::string out(pattern.kind());
  auto members = [&](const std::vector<Pattern>& items) {
    std::vector<std::string> kinds;
    for (const Pattern& p : items) kinds.push_back(pattern_class(p));
    std::sort(kinds.begin(), kinds.end());
    kinds.erase(std::unique(kinds.begin(), kinds.end()), kinds.end());
    out += "[";
    for (size_t k = 0; k < kinds.size(); ++k) out += (k ? "," : "") + kinds[k];
    out += "]";
  };
  const PatternNode& node = pattern.node();
  if (const auto* u = std::get_if<Union>(&node)) members(u->items);
  else if (const auto* i = std::get_if<Intersect>(&node)) members(i->items);
  else if (const auto* b = std::get_if<Branches>(&node)) members(b->items);
  else if (const auto* h = std::get_if<HeadGroups>(&node)) {
    std::vector<Pattern> items;
    for (const HeadGroup& g : h->groups) items.push_back(*g.pattern);
    members(items);
  }
  if (pattern.causal()) out += "+causal";
  return out;
}

int density_bucket(double density) {
  if (!(density > 0)) return -24;
  const int b = static_cast<int>(std::ceil(std::log2(std::min(density, 1.0)) - 1e-12));
  return std::clamp(b, -24, 0);
}

int64_t power_of_two_at_least(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

ProblemBucket bucket_of(const Pattern& pattern, const engine::Problem& problem, double density, TunePass pass) {
  ProblemBucket b;
  b.pass = pass;
  b.pattern_class = pattern_class(pattern);
  b.density_log2 = density_bucket(density);
  b.seq = power_of_two_at_least(problem.nq);
  b.kv_seq = power_of_two_at_least(problem.nk);
  b.head_dim = static_cast<int>(problem.head_dim);
  b.dtype = problem.dtype;
  b.gqa = static_cast<int>(power_of_two_at_least(std::max<int64_t>(1, problem.heads / std::max<int64_t>(1, problem.kv_heads))));
  return b;
}

namespace {

std::string bucket_key(const ProblemBucket& b, const std::string& density) {
  const std::string seq = b.kv_seq == b.seq ? fmt::format("n{}", b.seq) : fmt::format("n{}:k{}", b.seq, b.kv_seq);
  return fmt::format("{}{}|{}|{}|hd{}|{}|gqa{}", b.pass == TunePass::kBackward ? "bwd|" : "", b.pattern_class, density,
                     seq, b.head_dim, to_string(b.dtype), b.gqa);
}

}  // namespace

std::string ProblemBucket::key() const { return bucket_key(*this, fmt::format("d2^{}", density_log2)); }

std::string ProblemBucket::key_without_density() const { return bucket_key(*this, "d*"); }

json ProblemBucket::to_json() const {
  return json{{"pass", to_string(pass)}, {"pattern_class", pattern_class}, {"density_log2", density_log2},
              {"seq", seq},              {"kv_seq", kv_seq},               {"head_dim", head_dim},
              {"dtype", to_string(dtype)}, {"gqa", gqa}};
}

double pattern_density(const Pattern& pattern, const engine::Problem& problem) {
  const Layout layout = compile_layout(pattern, problem.shape(), LayoutOptions{});
  return layout_stats(pattern, layout, problem.head_dim).density;
}

// --- entries -------------------------------------------------------------------------

json TunedEntry::to_json() const {
  return json{{"config", config.to_string()},
              {"median_ms", median_ms},
              {"p20_ms", p20_ms},
              {"p80_ms", p80_ms},
              {"tflops", tflops},
              {"heuristic", {{"config", heuristic_config}, {"median_ms", heuristic_ms}}},
              {"speedup", median_ms > 0 && heuristic_ms > 0 ? heuristic_ms / median_ms : 0.0},
              {"candidates", candidates},
              {"problem", problem},
              {"pattern", pattern},
              {"tuned_at", tuned_at},
              {"bucket", bucket}};
}

TunedEntry TunedEntry::from_json(const json& j) {
  const std::string where = "entry";
  TunedEntry e;
  try {
    e.config = KernelConfig::parse(field<std::string>(j, "config", where));
  } catch (const Error& err) {
    if (err.code() == ErrorCode::kCorrupt) throw;
    SPATTN_FAIL(ErrorCode::kCorrupt, "entry.config: {}", err.what());
  }
  read_common(j, where, e);
  e.tflops = optional_field(j, "tflops", where, 0.0);
  e.pattern = optional_field<std::string>(j, "pattern", where, "");
  return e;
}

bool is_linear_key(std::string_view key) {
  return key.starts_with(kScanKeyPrefix) || key.starts_with(kPerformerKeyPrefix);
}

json LinearEntry::to_json() const {
  return json{{"config", config},
              {"median_ms", median_ms},
              {"p20_ms", p20_ms},
              {"p80_ms", p80_ms},
              {"heuristic", {{"config", heuristic_config}, {"median_ms", heuristic_ms}}},
              {"speedup", median_ms > 0 && heuristic_ms > 0 ? heuristic_ms / median_ms : 0.0},
              {"candidates", candidates},
              {"problem", problem},
              {"tuned_at", tuned_at},
              {"bucket", bucket}};
}

LinearEntry LinearEntry::from_json(const json& j) {
  const std::string where = "entry";
  LinearEntry e;
  e.config = field<std::string>(j, "config", where);
  // Numbers joined by 'x' ("32x8x16"); what they mean is the kernel's business (linear/).
  bool digit = false, form = !e.config.empty();
  for (const char ch : e.config) {
    if (ch == 'x' && digit) digit = false;
    else if (ch >= '0' && ch <= '9') digit = true;
    else form = false;
  }
  if (!form || !digit)
    SPATTN_FAIL(ErrorCode::kCorrupt, "entry.config \"{}\" is not a linear kernel configuration (numbers joined by "
                "'x', such as 32x8x16)", e.config);
  read_common(j, where, e);
  return e;
}

// --- the file ------------------------------------------------------------------------

const char* db_state_name(DbState state) {
  switch (state) {
    case DbState::kMissing: return "missing";
    case DbState::kLoaded: return "loaded";
    case DbState::kCorrupt: return "corrupt";
    case DbState::kMismatch: return "mismatch";
  }
  return "?";
}

const TunedEntry* TuningDb::find(const std::string& bucket_key) const {
  const auto it = entries.find(bucket_key);
  return it == entries.end() ? nullptr : &it->second;
}

const LinearEntry* TuningDb::find_linear(const std::string& bucket_key) const {
  const auto it = linear.find(bucket_key);
  return it == linear.end() ? nullptr : &it->second;
}

namespace {

// The density band of a key with the coarse key's other fields, if it has them.
std::optional<int> band_if_coarse_match(const std::string& key, const std::string& coarse_key) {
  const size_t a = key.find("|d2^"), b = a == std::string::npos ? a : key.find('|', a + 1);
  if (b == std::string::npos || key.substr(0, a) + "|d*" + key.substr(b) != coarse_key) return std::nullopt;
  try {
    return std::stoi(key.substr(a + 4, b - a - 4));
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace

bool TuningDb::has_coarse(const ProblemBucket& bucket) const {
  const std::string coarse = bucket.key_without_density();
  return std::any_of(entries.begin(), entries.end(),
                     [&](const auto& kv) { return band_if_coarse_match(kv.first, coarse).has_value(); });
}

const TunedEntry* TuningDb::find_nearest(const ProblemBucket& bucket, std::string* key) const {
  if (const TunedEntry* e = find(bucket.key())) {
    if (key) *key = bucket.key();
    return e;
  }
  const std::string coarse = bucket.key_without_density();
  const TunedEntry* best = nullptr;
  int distance = 2;
  for (const auto& [k, e] : entries) {
    const std::optional<int> band = band_if_coarse_match(k, coarse);
    if (!band || std::abs(*band - bucket.density_log2) >= distance) continue;
    distance = std::abs(*band - bucket.density_log2);
    best = &e;
    if (key) *key = k;
  }
  return best;
}

fs::path TuningDb::default_dir() { return CacheConfig::from_env().dir / "tuning"; }

fs::path TuningDb::file_for(const fs::path& dir, const Fingerprint& fingerprint) {
  return dir / (fingerprint.hash() + ".json");
}

namespace {

constexpr std::uint64_t kMaxDbBytes = 64ull << 20;  // far beyond any real database

// Parses file contents into `db` (state kLoaded), or throws kCorrupt.
void parse_into(TuningDb& db, const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "not valid JSON ({})", e.what());
  }
  if (!j.is_object()) SPATTN_FAIL(ErrorCode::kCorrupt, "the top level is not a JSON object");
  const int format = field<int>(j, "format", "database");
  if (format != kTuningDbFormat)
    SPATTN_FAIL(ErrorCode::kCorrupt, "format {} is not the format this spattn reads ({})", format, kTuningDbFormat);
  db.fingerprint = Fingerprint::from_json(field<json>(j, "fingerprint", "database"));
  const json entries = field<json>(j, "entries", "database");
  if (!entries.is_object()) SPATTN_FAIL(ErrorCode::kCorrupt, "database.entries is not an object");
  for (const auto& [key, value] : entries.items()) {
    try {
      if (is_linear_key(key)) db.linear[key] = LinearEntry::from_json(value);
      else db.entries[key] = TunedEntry::from_json(value);
    } catch (const Error& e) {
      SPATTN_FAIL(ErrorCode::kCorrupt, "entries[\"{}\"]: {}", key, e.what());
    }
  }
  db.state = DbState::kLoaded;
}

}  // namespace

TuningDb TuningDb::load(const fs::path& file, const Fingerprint* expected) {
  TuningDb db;
  db.file = file;
  const cache::ReadResult read = cache::read_file(file, kMaxDbBytes);
  if (!read.ok()) {
    if (read.error == ENOENT) return db;
    db.state = DbState::kCorrupt;
    db.problem = fmt::format("cannot read it: {}", std::strerror(read.error));
    log::warn("tuning database {}: {}; ignoring it", file.string(), db.problem);
    return db;
  }
  try {
    parse_into(db, read.bytes);
  } catch (const Error& e) {
    db.entries.clear();
    db.linear.clear();
    db.fingerprint.reset();
    db.state = DbState::kCorrupt;
    db.problem = e.what();
    log::warn("tuning database {} is unusable ({}); ignoring it (it is kept as {}.corrupt on the next write)",
              file.string(), db.problem, file.filename().string());
    return db;
  }
  if (expected && !(*db.fingerprint == *expected)) {
    db.state = DbState::kMismatch;
    db.problem = fmt::format("it was written for {}, this is {}", db.fingerprint->describe(), expected->describe());
    db.entries.clear();
    db.linear.clear();
    log::debug("tuning database {}: {}; ignoring it", file.string(), db.problem);
  }
  return db;
}

std::vector<TuningDb> TuningDb::load_all(const fs::path& dir) {
  std::vector<TuningDb> out;
  std::error_code ec;
  std::vector<fs::path> files;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().extension() == ".json" && it->is_regular_file()) files.push_back(it->path());
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) {
    TuningDb db = load(f);
    if (db.state == DbState::kLoaded) out.push_back(std::move(db));
  }
  return out;
}

namespace {

// Takes the database file's lock, re-reads it (a corrupt or mismatched file is moved
// aside), lets `edit` change the entries, and writes it atomically. Returns the file.
fs::path update_db(const fs::path& dir, const Fingerprint& fingerprint, const std::function<void(TuningDb&)>& edit) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) SPATTN_FAIL(ErrorCode::kIo, "cannot create the tuning database directory {}: {}", dir.string(), ec.message());
  const fs::path file = TuningDb::file_for(dir, fingerprint);
  int lock_error = 0;
  auto lock = cache::FileLock::acquire(fs::path(file.string() + ".lock"), &lock_error);
  if (!lock)
    SPATTN_FAIL(ErrorCode::kIo, "cannot lock the tuning database {}: {}", file.string(), std::strerror(lock_error));

  TuningDb db = TuningDb::load(file, &fingerprint);
  if (db.state == DbState::kCorrupt || db.state == DbState::kMismatch) {
    const fs::path aside = file.string() + ".corrupt";
    fs::rename(file, aside, ec);
    log::warn("tuning database {}: {}; moved it to {} and starting a new one", file.string(), db.problem,
              aside.string());
    db.entries.clear();
    db.linear.clear();
  }
  edit(db);

  json entries = json::object();
  for (const auto& [key, e] : db.entries) entries[key] = e.to_json();
  for (const auto& [key, e] : db.linear) entries[key] = e.to_json();
  const json doc = {{"format", kTuningDbFormat}, {"fingerprint", fingerprint.to_json()}, {"entries", entries}};
  cache::write_atomic(file, doc.dump(2) + "\n");
  return file;
}

}  // namespace

fs::path TuningDb::store(const fs::path& dir, const Fingerprint& fingerprint, const std::string& bucket_key,
                         const TunedEntry& entry) {
  SPATTN_REQUIRE(!is_linear_key(bucket_key), "{} is a linear kernel's key: store it with store_linear", bucket_key);
  const fs::path file = update_db(dir, fingerprint, [&](TuningDb& db) { db.entries[bucket_key] = entry; });
  log::debug("tuning database {}: stored {} -> {}", file.string(), bucket_key, entry.config.to_string());
  return file;
}

fs::path TuningDb::store_linear(const fs::path& dir, const Fingerprint& fingerprint, const std::string& bucket_key,
                                const LinearEntry& entry) {
  SPATTN_REQUIRE(is_linear_key(bucket_key), "{} is not a linear kernel's key (it must start with {} or {})", bucket_key,
                 kScanKeyPrefix, kPerformerKeyPrefix);
  const fs::path file = update_db(dir, fingerprint, [&](TuningDb& db) { db.linear[bucket_key] = entry; });
  log::debug("tuning database {}: stored {} -> {}", file.string(), bucket_key, entry.config);
  return file;
}

TuningDb TuningDb::parse(const std::string& text, const std::string& name) {
  TuningDb db;
  db.file = name;
  try {
    parse_into(db, text);
  } catch (const Error& e) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "tuning database {}: {}", name, e.what());
  }
  return db;
}

namespace {

std::string config_text(const TunedEntry& e) { return e.config.to_string(); }
std::string config_text(const LinearEntry& e) { return e.config; }

// Merges one map of entries (attention or linear): the later measurement of a bucket wins.
template <class Entry>
void merge_entries(std::map<std::string, Entry>& entries, const std::map<std::string, Entry>& incoming,
                   std::vector<MergeOutcome>& out) {
  for (const auto& [key, e] : incoming) {
    MergeOutcome m;
    m.key = key;
    const auto it = entries.find(key);
    if (it == entries.end()) {
      m.status = "added";
      entries[key] = e;
    } else {
      const Entry& local = it->second;
      const bool same_config = config_text(local) == config_text(e);
      // ISO 8601 UTC timestamps order as strings.
      if (e.tuned_at > local.tuned_at) {
        m.status = "updated";
        if (!same_config)
          m.detail = fmt::format("conflict: {} (tuned {}) replaces {} (tuned {})", config_text(e), e.tuned_at,
                                 config_text(local), local.tuned_at);
        entries[key] = e;
      } else {
        m.status = same_config && e.tuned_at == local.tuned_at ? "same" : "kept";
        if (!same_config)
          m.detail = fmt::format("conflict: the local {} (tuned {}) is kept over {} (tuned {})", config_text(local),
                                 local.tuned_at, config_text(e), e.tuned_at);
      }
    }
    out.push_back(std::move(m));
  }
}

}  // namespace

std::vector<MergeOutcome> TuningDb::merge(const fs::path& dir, const TuningDb& incoming) {
  SPATTN_REQUIRE(incoming.fingerprint.has_value(), "a database to merge needs its fingerprint");
  std::vector<MergeOutcome> out;
  update_db(dir, *incoming.fingerprint, [&](TuningDb& db) {
    merge_entries(db.entries, incoming.entries, out);
    merge_entries(db.linear, incoming.linear, out);
  });
  return out;
}

// --- runtime lookup ------------------------------------------------------------------

namespace {

// Databases and densities already read by this process. A database is re-read when its
// file's size or modification time changes (e.g. `spattn autotune` ran meanwhile).
struct LookupMemo {
  struct CachedDb {
    struct timespec mtime {};
    off_t size = -1;
    bool exists = false;
    std::shared_ptr<const TuningDb> db;
  };
  std::mutex mu;
  std::map<std::string, CachedDb> dbs;
  std::map<std::string, double> densities;  // pattern JSON + shape -> density
  std::map<std::string, std::pair<Fingerprint, fs::path>> files;  // dir + device -> fingerprint, file
  std::map<std::string, std::pair<timespec, std::string>> others;  // dir -> (its mtime, its databases described)
};

LookupMemo& memo() {
  static LookupMemo m;
  return m;
}

std::shared_ptr<const TuningDb> cached_db(const fs::path& file, const Fingerprint& fingerprint) {
  struct stat st {};
  const bool exists = ::stat(file.c_str(), &st) == 0;
  LookupMemo& m = memo();
  {
    std::lock_guard<std::mutex> lock(m.mu);
    auto it = m.dbs.find(file.string());
    if (it != m.dbs.end() && it->second.exists == exists &&
        (!exists || (it->second.size == st.st_size && it->second.mtime.tv_sec == st.st_mtim.tv_sec &&
                     it->second.mtime.tv_nsec == st.st_mtim.tv_nsec)))
      return it->second.db;
  }
  auto db = std::make_shared<const TuningDb>(exists ? TuningDb::load(file, &fingerprint) : TuningDb{file});
  std::lock_guard<std::mutex> lock(m.mu);
  auto& slot = m.dbs[file.string()];
  slot.exists = exists;
  slot.size = exists ? st.st_size : -1;
  slot.mtime = exists ? st.st_mtim : timespec{};
  slot.db = db;
  return db;
}

double cached_density(const Pattern& pattern, const engine::Problem& problem) {
  const std::string key = pattern.to_json() + fmt::format("|{}x{}x{}", problem.nq, problem.nk, problem.heads);
  LookupMemo& m = memo();
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (auto it = m.densities.find(key); it != m.densities.end()) return it->second;
  }
  const double d = pattern_density(pattern, problem);
  std::lock_guard<std::mutex> lock(m.mu);
  m.densities[key] = d;
  return d;
}

// The databases in `dir`, described ("; "-separated), re-read only when the directory
// changes (a database written, moved or removed), since selection asks on every miss.
std::string other_databases(const fs::path& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return "";
  LookupMemo& m = memo();
  {
    std::lock_guard<std::mutex> lock(m.mu);
    auto it = m.others.find(dir.string());
    if (it != m.others.end() && it->second.first.tv_sec == st.st_mtim.tv_sec &&
        it->second.first.tv_nsec == st.st_mtim.tv_nsec)
      return it->second.second;
  }
  std::vector<std::string> described;
  for (const TuningDb& db : TuningDb::load_all(dir))
    if (db.fingerprint) described.push_back(db.fingerprint->describe());
  std::string text = fmt::format("{}", fmt::join(described, "; "));
  std::lock_guard<std::mutex> lock(m.mu);
  m.others[dir.string()] = {st.st_mtim, text};
  return text;
}

// The fingerprint and database file of a device (hashing is the costly part of a lookup).
std::pair<Fingerprint, fs::path> database_of(const fs::path& dir, const runtime::DeviceInfo& device) {
  const std::string key = fmt::format("{}|{}|{}.{}|{}|{}|{}", dir.string(), device.name, device.cc_major,
                                      device.cc_minor, device.sm_count, device.l2_bytes, device.driver_version);
  LookupMemo& m = memo();
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (auto it = m.files.find(key); it != m.files.end()) return it->second;
  }
  const Fingerprint fp = Fingerprint::of(device);
  std::pair<Fingerprint, fs::path> value{fp, TuningDb::file_for(dir, fp)};
  std::lock_guard<std::mutex> lock(m.mu);
  m.files.emplace(key, value);
  return value;
}

// This device's database in `dir` (memoised), and why it cannot serve ("" when it can).
std::pair<std::shared_ptr<const TuningDb>, std::string> usable_db(const fs::path& dir,
                                                                 const runtime::DeviceInfo& device) {
  const auto [fp, file] = database_of(dir, device);
  std::shared_ptr<const TuningDb> db = cached_db(file, fp);
  switch (db->state) {
    case DbState::kMissing: {
      std::string why = fmt::format("no tuning database for this GPU ({})", file.string());
      // Databases of other GPUs (e.g. imported with a cache archive) do not apply: say so.
      if (const std::string others = other_databases(dir); !others.empty())
        why += "; the databases there are for other GPUs or builds and do not apply: " + others;
      return {db, why};
    }
    case DbState::kCorrupt:
    case DbState::kMismatch: return {db, fmt::format("tuning database {} ignored: {}", file.string(), db->problem)};
    case DbState::kLoaded: break;
  }
  return {db, ""};
}

// The source string of a configuration the database decided.
template <class Entry>
std::string tuned_source(const fs::path& file, const std::string& key, const Entry& e) {
  return fmt::format("tuning database ({}, bucket {}: {:.2f}x the heuristic's {} when tuned{})", file.string(), key,
                     e.heuristic_ms > 0 && e.median_ms > 0 ? e.heuristic_ms / e.median_ms : 1.0,
                     e.heuristic_config.empty() ? "config" : e.heuristic_config,
                     e.tuned_at.empty() ? "" : " at " + e.tuned_at);
}

}  // namespace

DbLookup lookup_in(const fs::path& dir, const Pattern& pattern, const engine::Problem& problem,
                   const runtime::DeviceInfo& device, TunePass pass) {
  DbLookup out;
  const auto [db, unusable] = usable_db(dir, device);
  const fs::path& file = db->file;
  if (!unusable.empty()) {
    out.source = unusable;
    return out;
  }
  // Only compute the density (a layout build) when some entry could match.
  const ProblemBucket coarse = bucket_of(pattern, problem, 1.0, pass);
  if (!db->has_coarse(coarse)) {
    out.bucket = coarse.key_without_density();
    out.source = fmt::format("no entry for bucket {} in {}", out.bucket, file.filename().string());
    return out;
  }
  double density = 1.0;
  try {
    density = cached_density(pattern, problem);
  } catch (const Error& e) {
    out.source = fmt::format("tuning database not used: the pattern's density is unknown ({})", e.what());
    return out;
  }
  const ProblemBucket bucket = bucket_of(pattern, problem, density, pass);
  out.bucket = bucket.key();
  std::string key;
  const TunedEntry* entry = db->find_nearest(bucket, &key);
  if (!entry) {
    out.source = fmt::format("no entry for bucket {} (or a neighbouring density band) in {}", out.bucket,
                             file.filename().string());
    return out;
  }
  const std::string used = key == out.bucket ? key : key + " (nearest to " + out.bucket + ")";
  try {
    check_config(pass, entry->config, static_cast<int>(problem.head_dim), problem.dtype, device.arch(),
                 device.smem_per_block_optin);
  } catch (const Error& e) {
    out.source = fmt::format("tuning database entry {} ({}) not usable here: {}", used, entry->config.to_string(),
                             e.what());
    return out;
  }
  out.config = entry->config;
  out.source = tuned_source(file, used, *entry);
  return out;
}

LinearLookup lookup_linear_in(const fs::path& dir, const std::string& bucket_key, const runtime::DeviceInfo& device) {
  LinearLookup out;
  const auto [db, unusable] = usable_db(dir, device);
  if (!unusable.empty()) {
    out.source = unusable;
    return out;
  }
  const LinearEntry* entry = db->find_linear(bucket_key);
  if (!entry) {
    out.source = fmt::format("no entry for bucket {} in {}", bucket_key, db->file.filename().string());
    return out;
  }
  out.entry = *entry;
  out.source = tuned_source(db->file, bucket_key, *entry);
  return out;
}

LinearLookup lookup_linear(const std::string& bucket_key, const runtime::DeviceInfo& device) {
  fs::path dir;
  try {
    dir = TuningDb::default_dir();
  } catch (const Error& e) {
    return LinearLookup{std::nullopt, fmt::format("no tuning database: {}", e.what())};
  }
  return lookup_linear_in(dir, bucket_key, device);
}

DbLookup lookup(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device,
                TunePass pass) {
  fs::path dir;
  try {
    dir = TuningDb::default_dir();
  } catch (const Error& e) {
    return DbLookup{std::nullopt, fmt::format("no tuning database: {}", e.what()), ""};
  }
  return lookup_in(dir, pattern, problem, device, pass);
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace spattn::autotune
