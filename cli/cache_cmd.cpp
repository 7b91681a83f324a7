// spattn cache ls|stat|verify|prune|clear|export|import: the on-disk kernel cache.
//
// Exit codes follow DESIGN.md §8, plus: `cache verify` exits 1 when it found bad entries
// (they are removed unless --keep; a second run then exits 0), and `cache import` exits 1
// when the archive itself is damaged, or refused for want of a trusted signature
// (entries it merely cannot use are reported as rejected, with exit 0). Every command
// that changes the cache exits 1 when it could not (an unwritable or refused directory).
#include <spattn/cache.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <memory>

#include "cli/cli.hpp"
#include "common/text.hpp"
#include "api/tools.hpp"

namespace spattn::cli {

namespace {

namespace fs = std::filesystem;

struct CacheArgs {
  std::string dir;  // --dir overrides the environment
};

CacheArgs& cache_args() {
  static CacheArgs args;
  return args;
}

CacheConfig cli_config() {
  CacheConfig c = CacheConfig::from_env();
  if (!cache_args().dir.empty()) c.dir = cache_args().dir;
  return c;
}

std::string human_bytes(std::uint64_t bytes) { return detail::human_bytes(bytes); }
std::string shown(const fs::path& p) { return detail::printable(p.string()); }

std::string iso_utc(std::chrono::system_clock::time_point t) {
  const std::time_t s = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&s, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string local_time(std::chrono::system_clock::time_point t) {
  if (t.time_since_epoch().count() == 0) return "-";
  const std::time_t s = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  localtime_r(&s, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M", &tm);
  return buf;
}

std::string limit_text(std::uint64_t max_bytes) {
  return max_bytes == 0 ? std::string("no limit") : human_bytes(max_bytes);
}

// Feeds the library's (done, total) callbacks to a progress bar created on first use.
nlohmann::json problem_json(const CacheProblem& p) {
  return {{"key", p.key}, {"path", p.path.string()}, {"reason", p.reason}, {"removed", p.removed}};
}

// Options of `cache` (--dir) may also come after the subcommand: they fall through.
CLI::App* add_cache_subcommand(CLI::App* parent, const std::string& name, const std::string& description) {
  CLI::App* cmd = parent->add_subcommand(name, description);
  cmd->fallthrough();
  return cmd;
}

void cmd_ls() {
  const KernelCache cache(cli_config());
  const std::vector<CacheEntry> entries = cache.list();
  if (globals().json) {
    nlohmann::json out = nlohmann::json::array();
    for (const CacheEntry& e : entries) {
      nlohmann::json j = {{"key", e.key},
                          {"path", e.path.string()},
                          {"kernel", e.kernel_name},
                          {"arch", e.arch},
                          {"nvrtc_version", e.nvrtc_version},
                          {"spattn_version", e.spattn_version},
                          {"format_version", e.format_version},
                          {"size_bytes", e.size_bytes},
                          {"last_used", iso_utc(e.last_used)}};
      if (!e.problem.empty()) j["problem"] = e.problem;
      out.push_back(std::move(j));
    }
    print_json(out);
    return;
  }
  if (entries.empty()) {
    std::cout << "kernel cache " << cache.config().dir.string() << " is empty\n";
    return;
  }
  std::size_t kernel_width = 6;
  for (const CacheEntry& e : entries) kernel_width = std::max(kernel_width, e.kernel_name.size());
  std::cout << fmt::format("{:<12}  {:<{}}  {:<8}  {:>10}  {:<16}  {}\n", "KEY", "KERNEL", kernel_width, "ARCH",
                           "SIZE", "LAST USED", "NVRTC");
  std::uint64_t total = 0;
  for (const CacheEntry& e : entries) {
    total += e.size_bytes;
    if (!e.problem.empty()) {
      std::cout << fmt::format("{:<12}  {:<{}}  {:<8}  {:>10}  {:<16}  unreadable: {}\n", e.key.substr(0, 12), "?",
                               kernel_width, "?", human_bytes(e.size_bytes), local_time(e.last_used), e.problem);
      continue;
    }
    std::cout << fmt::format("{:<12}  {:<{}}  {:<8}  {:>10}  {:<16}  {}\n", e.key.substr(0, 12), e.kernel_name,
                             kernel_width, e.arch, human_bytes(e.size_bytes), local_time(e.last_used),
                             e.nvrtc_version);
  }
  std::cout << fmt::format("{} entries, {} in {}\n", entries.size(), human_bytes(total),
                           cache.config().dir.string());
}

void cmd_stat() {
  const KernelCache cache(cli_config());
  const CacheStats s = cache.stat();
  if (globals().json) {
    nlohmann::json j = {{"dir", s.dir.string()},
                        {"entries", s.entries},
                        {"bytes", s.bytes},
                        {"max_bytes", s.max_bytes},
                        {"disabled", s.disabled}};
    if (!s.problem.empty()) j["problem"] = s.problem;
    print_json(j);
  } else {
    std::cout << fmt::format("directory: {}\nentries:   {}\nsize:      {} ({} bytes)\nlimit:     {}\n", shown(s.dir),
                             s.entries, human_bytes(s.bytes), s.bytes, limit_text(s.max_bytes));
    if (s.disabled) std::cout << "disabled:  yes (SPATTN_DISABLE_CACHE): lookups compile and store nothing\n";
  }
  if (!s.problem.empty()) throw Error(ErrorCode::kIo, "the kernel cache cannot be used: " + s.problem);
}

void cmd_verify(bool keep) {
  KernelCache cache(cli_config());
  ProgressFeed feed("verifying");
  const VerifyReport r = cache.verify(!keep, feed.callback());
  feed.finish();
  if (globals().json) {
    nlohmann::json bad = nlohmann::json::array();
    for (const CacheProblem& p : r.bad) bad.push_back(problem_json(p));
    print_json({{"checked", r.checked},
                {"good", r.good},
                {"bad", std::move(bad)},
                {"removed", !keep},
                {"stale_temp_files", r.stale_temp_files}});
  } else {
    for (const CacheProblem& p : r.bad) {
      std::cout << fmt::format("bad: {} ({}){}\n", p.key.empty() ? shown(p.path) : p.key, p.reason,
                               p.removed ? ": removed" : "");
    }
    std::cout << fmt::format("{} entries checked: {} good, {} bad", r.checked, r.good, r.bad.size());
    if (r.stale_temp_files > 0) std::cout << fmt::format(", {} stale temp files removed", r.stale_temp_files);
    std::cout << "\n";
  }
  if (!r.bad.empty()) {
    std::size_t removed = 0;
    for (const CacheProblem& p : r.bad) removed += p.removed ? 1 : 0;
    throw Error(ErrorCode::kCorrupt,
                fmt::format("cache verify: {} bad entr{} {}", r.bad.size(), r.bad.size() == 1 ? "y" : "ies",
                            keep                        ? std::string("found (kept: --keep)")
                            : removed == r.bad.size() ? std::string("found and removed")
                                                      : fmt::format("found, {} of them could not be removed",
                                                                    r.bad.size() - removed)));
  }
}

std::uint64_t parse_size_arg(const std::string& option, const std::string& text) {
  const auto bytes = parse_byte_size(text);
  if (!bytes) throw UsageError(fmt::format("{} '{}' is not a size (bytes, or with a K/M/G/T suffix)", option, text));
  return *bytes;
}

void cmd_prune(const std::string& max_bytes_arg) {
  KernelCache cache(cli_config());
  const std::uint64_t limit =
      max_bytes_arg.empty() ? cache.config().max_bytes : parse_size_arg("--max-bytes", max_bytes_arg);
  const PruneReport r = cache.prune(limit);
  if (globals().json) {
    print_json({{"removed", r.removed},
                {"freed_bytes", r.freed_bytes},
                {"remaining_entries", r.remaining_entries},
                {"remaining_bytes", r.remaining_bytes},
                {"max_bytes", limit}});
    return;
  }
  std::cout << fmt::format("removed {} entries ({}); {} entries, {} remain (limit {})\n", r.removed,
                           human_bytes(r.freed_bytes), r.remaining_entries, human_bytes(r.remaining_bytes),
                           limit_text(limit));
}

void cmd_clear() {
  KernelCache cache(cli_config());
  const std::size_t removed = cache.clear();
  if (globals().json) {
    print_json({{"removed", removed}, {"dir", cache.config().dir.string()}});
    return;
  }
  std::cout << fmt::format("removed {} entries from {}\n", removed, cache.config().dir.string());
}

struct ExportArgs {
  std::string file;
  std::vector<std::string> archs;
  std::string sign;
  std::string tuning = "none";
};

void cmd_export(const ExportArgs& a) {
  // An arch that is no target at all is a typo, not an empty selection.
  for (const std::string& arch : a.archs) tools::check_arch(arch);
  const KernelCache cache(cli_config());
  ExportOptions options;
  if (!a.archs.empty()) {
    // Nothing for the requested archs is an error too: an empty archive shipped to a
    // fleet would prewarm nothing, silently.
    std::vector<std::string> present;
    bool any = false;
    for (const CacheEntry& e : cache.list()) {
      if (!e.problem.empty()) continue;
      any = any || std::find(a.archs.begin(), a.archs.end(), e.arch) != a.archs.end();
      if (std::find(present.begin(), present.end(), e.arch) == present.end()) present.push_back(e.arch);
    }
    if (!any) {
      std::sort(present.begin(), present.end());
      throw Error(ErrorCode::kIo,
                  fmt::format("cache export: no entry in {} is for {}; the cache has entries for: {}", shown(cache.config().dir),
                              fmt::join(a.archs, ", "), present.empty() ? "nothing (it is empty)" : fmt::format("{}", fmt::join(present, ", "))));
    }
    options.filter = [&a](const CacheEntry& e) { return std::find(a.archs.begin(), a.archs.end(), e.arch) != a.archs.end(); };
  }
  options.signing_key = a.sign;
  options.attachments = tools::tuning_attachments(cache.config().dir, a.tuning);
  ProgressFeed feed("exporting");
  options.progress = feed.callback();
  const bool to_stdout = a.file == "-";
  const ExportReport r = to_stdout ? cache.export_archive(std::cout, options) : cache.export_archive(a.file, options);
  feed.finish();
  // With the archive on stdout, the report goes to stderr.
  std::ostream& report = to_stdout ? std::cerr : std::cout;
  if (globals().json) {
    nlohmann::json skipped = nlohmann::json::array();
    for (const CacheProblem& p : r.skipped) skipped.push_back(problem_json(p));
    report << nlohmann::json({{"archive", a.file},
                              {"exported", r.exported},
                              {"tuning_databases", r.attachments},
                              {"bytes", r.bytes},
                              {"signer", r.signer},
                              {"skipped", std::move(skipped)}})
                  .dump(2)
           << std::endl;
    return;
  }
  for (const CacheProblem& p : r.skipped) report << fmt::format("skipped {}: {}\n", p.key, p.reason);
  report << fmt::format("exported {} entries{} to {} ({}){}\n", r.exported,
                        r.attachments ? fmt::format(" and {} tuning database{}", r.attachments, r.attachments == 1 ? "" : "s")
                                      : "",
                        to_stdout ? "standard output" : shown(a.file), human_bytes(r.bytes),
                        r.signer.empty() ? "" : ", signed by " + r.signer);
}

void cmd_import(const std::string& file, const std::vector<std::string>& trust) {
  // Say what the file is when it is not an archive file at all.
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) {
    throw UsageError(fmt::format("archive '{}': {}", shown(file), std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    throw UsageError(fmt::format("archive '{}' is {}, not an archive file",
                                 shown(file), S_ISDIR(st.st_mode)    ? "a directory"
                                              : S_ISFIFO(st.st_mode) ? "a FIFO"
                                              : S_ISCHR(st.st_mode)  ? "a character device"
                                              : S_ISBLK(st.st_mode)  ? "a block device"
                                                                     : "a socket"));
  }
  KernelCache cache(cli_config());
  ProgressFeed feed("importing");
  ImportOptions options;
  options.progress = feed.callback();
  for (const std::string& k : trust) options.trusted_keys.emplace_back(k);
  const ImportReport r = cache.import_archive(file, options);
  feed.finish();
  const std::vector<tools::TuningImport> tuning = tools::import_tuning(cache.config().dir, r.attachments);
  if (globals().json) {
    nlohmann::json dbs = nlohmann::json::array();
    for (const tools::TuningImport& t : tuning)
      dbs.push_back({{"attachment", t.attachment}, {"gpu", t.gpu}, {"file", t.file}, {"added", t.added},
                     {"updated", t.updated}, {"kept", t.kept}, {"same", t.same}, {"conflicts", t.conflicts},
                     {"error", t.error}});
    nlohmann::json entries = nlohmann::json::array();
    for (const ImportResult& e : r.entries) {
      entries.push_back({{"key", e.key},
                         {"kernel", e.kernel_name},
                         {"arch", e.arch},
                         {"status", import_status_name(e.status)},
                         {"reason", e.reason}});
    }
    print_json({{"archive", file},
                {"signer", r.signer},
                {"signer_trusted", r.signer_trusted},
                {"entries", std::move(entries)},
                {"added", r.count(ImportStatus::kAdded)},
                {"present", r.count(ImportStatus::kPresent)},
                {"rejected", r.count(ImportStatus::kRejected)},
                {"evictions", r.evictions},
                {"tuning", std::move(dbs)}});
    return;
  }
  if (!r.signer.empty()) {
    std::cout << fmt::format("signed by {}{}\n", r.signer, r.signer_trusted ? " (trusted)" : " (no trusted keys configured)");
  }
  for (const ImportResult& e : r.entries) {
    std::cout << fmt::format("{:<8}  {:<12}  {:<24}  {:<8}  {}\n", import_status_name(e.status),
                             e.key.empty() ? "-" : e.key.substr(0, 12), e.kernel_name.empty() ? "-" : e.kernel_name,
                             e.arch.empty() ? "-" : e.arch, e.reason);
  }
  std::cout << fmt::format("{} added, {} already present, {} rejected", r.count(ImportStatus::kAdded),
                           r.count(ImportStatus::kPresent), r.count(ImportStatus::kRejected));
  if (r.evictions > 0) std::cout << fmt::format("; {} entries evicted to stay under the limit", r.evictions);
  std::cout << "\n";
  for (const tools::TuningImport& t : tuning) {
    if (!t.error.empty()) {
      std::cout << fmt::format("tuning database {} not merged: {}\n", t.attachment, t.error);
      continue;
    }
    std::cout << fmt::format("tuning database for {}: {} added, {} updated, {} kept (local newer), {} unchanged -> {}\n",
                             t.gpu, t.added, t.updated, t.kept, t.same, shown(t.file));
    for (const std::string& c : t.conflicts) std::cout << "  " << c << "\n";
  }
}

}  // namespace

void register_cache(CLI::App& app) {
  CLI::App* cache = app.add_subcommand(
      "cache",
      "inspect and maintain the on-disk kernel cache ($SPATTN_CACHE_DIR, else $XDG_CACHE_HOME/spattn, "
      "else ~/.cache/spattn)");
  cache->require_subcommand(1);
  cache->fallthrough();
  cache->add_option("--dir", cache_args().dir, "cache directory (overrides the environment)");

  add_cache_subcommand(cache, "ls", "list entries, most recently used first: key, kernel, arch, size, last use")
      ->callback(cmd_ls);
  add_cache_subcommand(cache, "stat", "cache directory, entry count, total size and size limit")->callback(cmd_stat);

  {
    auto keep = std::make_shared<bool>(false);
    CLI::App* cmd = add_cache_subcommand(
        cache, "verify",
        "check every entry completely (magic, version, checksum, manifest); remove bad ones. "
        "Exits 1 if any were bad");
    cmd->add_flag("--keep", *keep, "report bad entries but do not remove them");
    cmd->callback([keep] { cmd_verify(*keep); });
  }
  {
    auto max_bytes = std::make_shared<std::string>();
    CLI::App* cmd = add_cache_subcommand(cache, "prune",
                                         "evict least recently used entries until the cache fits the limit");
    cmd->add_option("--max-bytes", *max_bytes,
                    "limit to prune to, e.g. 500M or 2G (default: $SPATTN_CACHE_MAX_BYTES, else 2G)");
    cmd->callback([max_bytes] { cmd_prune(*max_bytes); });
  }
  add_cache_subcommand(cache, "clear", "delete every entry (compiles in progress keep their locks)")
      ->callback(cmd_clear);
  {
    auto args = std::make_shared<ExportArgs>();
    CLI::App* cmd = add_cache_subcommand(cache, "export",
                                         "write cache entries into one archive file (e.g. to prewarm other hosts)");
    cmd->add_option("FILE", args->file, "archive to write (a regular file, written atomically), or - for stdout")
        ->required();
    cmd->add_option("--arch", args->archs, "only entries for this target (repeatable), e.g. --arch sm_90a");
    cmd->add_option("--sign", args->sign, "sign the archive with this Ed25519 private key (PEM; see 'cache keygen')");
    cmd->add_option("--tuning", args->tuning,
                    "also carry tuning databases: all, none, or one GPU's (fingerprint hash or GPU name); "
                    "'cache import' merges them")
        ->capture_default_str();
    cmd->callback([args] { cmd_export(*args); });
  }
  {
    auto file = std::make_shared<std::string>();
    auto trust = std::make_shared<std::vector<std::string>>();
    CLI::App* cmd = add_cache_subcommand(
        cache, "import",
        "add the entries of an archive; entries for another NVRTC, spattn or format version are rejected "
        "with a reason. Exits 1 if the archive itself is damaged or not signed by a trusted key");
    cmd->add_option("FILE", *file, "archive to read")->required();
    cmd->add_option("--trust", *trust,
                    "import only if signed by this Ed25519 public key (PEM, repeatable; also "
                    "$SPATTN_CACHE_TRUSTED_KEYS)");
    cmd->callback([file, trust] { cmd_import(*file, *trust); });
  }
  {
    auto file = std::make_shared<std::string>();
    CLI::App* cmd = add_cache_subcommand(
        cache, "keygen", "make an Ed25519 key pair for signing archives: KEY (private, mode 0600) and KEY.pub");
    cmd->add_option("KEY", *file, "private key file to create")->required();
    cmd->callback([file] {
      const std::string pub = *file + ".pub";
      generate_signing_key(*file, pub);
      const std::string fp = key_fingerprint(pub);
      if (globals().json) {
        print_json({{"private_key", *file}, {"public_key", pub}, {"fingerprint", fp}});
        return;
      }
      std::cout << fmt::format("wrote {} (keep it secret) and {} ({}); sign with 'spattn cache export --sign {}', "
                               "trust with 'spattn cache import --trust {}'\n",
                               shown(*file), shown(pub), fp, shown(*file), shown(pub));
    });
  }
}

}  // namespace spattn::cli
