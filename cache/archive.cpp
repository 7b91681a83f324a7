// KernelCache export and import: moving cache entries between machines (prewarm on a
// build host, ship the archive) in one file, optionally signed (Ed25519).
#include <algorithm>
#include <cstring>
#include <ostream>
#include <system_error>
#include <utility>

#include "cache/format.hpp"
#include "cache/sha256.hpp"
#include "cache/sign.hpp"
#include "cache/store.hpp"
#include "common/check.hpp"
#include "common/log.hpp"
#include "common/text.hpp"
#include "runtime/nvrtc.hpp"

namespace spattn {

namespace fs = std::filesystem;

namespace {

// Writes the archive to a sink: the header, the good selected entries, the trailer and,
// with a key, the signature. The sink gets the bytes in order, once.
template <class Sink>
ExportReport write_archive(const KernelCache& cache, const ExportOptions& options, Sink&& sink) {
  std::optional<cache::SigningKey> key;
  if (!options.signing_key.empty()) key.emplace(options.signing_key);

  std::vector<CacheEntry> selected;
  ExportReport report;
  for (CacheEntry& e : cache.list()) {
    if (!e.problem.empty()) {
      report.skipped.push_back({e.key, e.path, e.problem, false});
      continue;
    }
    if (!options.filter || options.filter(e)) selected.push_back(std::move(e));
  }
  // Oldest first, so that an import into a cache that fills up evicts the oldest.
  std::reverse(selected.begin(), selected.end());

  cache::Sha256 hash;
  std::string chunk;
  auto emit = [&](std::string_view bytes) {
    hash.update(bytes);
    sink(bytes);
    report.bytes += bytes.size();
  };
  chunk.append(cache::kArchiveMagic);
  cache::put_u32(chunk, cache::kArchiveVersion);
  cache::put_u32(chunk, key ? cache::kArchiveSigned : 0);
  emit(chunk);

  const CacheProgress& progress = options.progress;
  if (progress) progress(0, selected.size());
  for (std::size_t i = 0; i < selected.size(); ++i) {
    const CacheEntry& e = selected[i];
    cache::ReadResult file = cache::read_file(e.path, cache::kMaxEntryBytes);
    std::string reason;
    if (!file.ok()) {
      reason = file.reason();
    } else if (cache::DecodedEntry d = cache::decode_entry(file.bytes); !d.ok()) {
      reason = d.error;
    } else if (cache::sha256_hex(d.manifest) != e.key) {
      reason = "stored manifest does not hash to the file's key";
    }
    if (reason.empty()) {
      chunk.clear();
      cache::put_u64(chunk, file.bytes.size());
      emit(chunk);
      emit(file.bytes);
      ++report.exported;
    } else {
      report.skipped.push_back({e.key, e.path, std::move(reason), false});
    }
    if (progress) progress(i + 1, selected.size());
  }

  for (const auto& [name, payload] : options.attachments) {
    const std::string bytes = cache::encode_attachment(name, payload);
    chunk.clear();
    cache::put_u64(chunk, bytes.size());
    emit(chunk);
    emit(bytes);
    ++report.attachments;
  }

  chunk.clear();
  cache::put_u64(chunk, report.exported + report.attachments);
  emit(chunk);
  const cache::Sha256Digest digest = hash.finish();
  const std::string_view digest_bytes(reinterpret_cast<const char*>(digest.data()), digest.size());
  sink(digest_bytes);
  report.bytes += digest.size();
  if (key) {
    const std::string signature = key->sign(digest_bytes);
    sink(key->public_key());
    sink(signature);
    report.bytes += key->public_key().size() + signature.size();
    report.signer = cache::fingerprint(key->public_key());
  }
  return report;
}

}  // namespace

ExportReport KernelCache::export_archive(const fs::path& archive, const ExportOptions& options) const {
  // Through links to the file they name; never over a device, FIFO or directory.
  const fs::path target = cache::output_target(archive);
  fs::path parent = target.parent_path();
  if (parent.empty()) parent = ".";
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) {
    SPATTN_FAIL(ErrorCode::kIo, "cannot write '{}': directory '{}' does not exist", detail::printable(archive.string()),
                detail::printable(parent.string()));
  }
  cache::AtomicFile out(parent / target.filename());
  ExportReport report = write_archive(*this, options, [&](std::string_view bytes) { out.append(bytes); });
  out.commit();
  return report;
}

ExportReport KernelCache::export_archive(const fs::path& archive, const CacheFilter& filter,
                                         const CacheProgress& progress) const {
  ExportOptions options;
  options.filter = filter;
  options.progress = progress;
  return export_archive(archive, options);
}

ExportReport KernelCache::export_archive(std::ostream& out, const ExportOptions& options) const {
  ExportReport report = write_archive(*this, options, [&](std::string_view bytes) {
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) SPATTN_FAIL(ErrorCode::kIo, "cannot write the archive: the output stream failed");
  });
  out.flush();
  if (!out) SPATTN_FAIL(ErrorCode::kIo, "cannot write the archive: the output stream failed");
  return report;
}

ImportReport KernelCache::import_archive(const fs::path& archive, const CacheProgress& progress) {
  ImportOptions options;
  options.progress = progress;
  return import_archive(archive, options);
}

ImportReport KernelCache::import_archive(const fs::path& archive, const ImportOptions& options) {
  Impl& s = *impl_;
  const std::string name = archive.string();
  const std::string shown = detail::printable(name);
  // Trusted keys are read first: a typo in a key path must not look like an untrusted archive.
  std::vector<std::string> trusted;
  for (const std::vector<fs::path>* keys : {&std::as_const(s.config.trusted_keys), &options.trusted_keys}) {
    for (const fs::path& k : *keys) trusted.push_back(cache::load_public_key(k));
  }
  s.require_usable_dir();
  if (s.config.read_only)
    SPATTN_FAIL(ErrorCode::kIo, "cannot import into '{}': the kernel cache is read-only (SPATTN_CACHE_READONLY)",
                detail::printable(s.config.dir.string()));

  const cache::InputFile in(archive);
  // The archive as a whole first: its magic, version, checksum, entry table and
  // signature. Nothing is imported from an archive that fails here.
  const cache::ArchiveLayout layout = cache::read_archive_layout(
      in.size(), [&](std::uint64_t offset, std::size_t count, std::string& out) { in.read(offset, count, out); }, name);
  ImportReport report;
  if (layout.is_signed) {
    if (!cache::verify_signature(layout.public_key, layout.digest, layout.signature)) {
      SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is damaged or tampered with: its signature does not verify", shown);
    }
    report.signer = cache::fingerprint(layout.public_key);
    report.signer_trusted = std::find(trusted.begin(), trusted.end(), layout.public_key) != trusted.end();
  }
  if (!trusted.empty() && !report.signer_trusted) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' refused: {}; only archives signed by a trusted key are imported ({} "
                "trusted key{} configured)",
                shown, layout.is_signed ? "it is signed by an untrusted key " + report.signer : "it is not signed",
                trusted.size(), trusted.size() == 1 ? "" : "s");
  }

  std::string nvrtc_here;  // asked for once, when the first entry needs it
  std::vector<std::string> archs_here;
  const auto& spans = layout.entries;
  if (options.progress) options.progress(0, spans.size());
  for (std::size_t i = 0; i < spans.size(); ++i) {
    ImportResult r;
    std::string bytes;
    in.read(spans[i].first, static_cast<std::size_t>(spans[i].second), bytes);
    std::optional<std::pair<std::string, std::string>> attachment;
    try {
      attachment = cache::decode_attachment(bytes);
    } catch (const Error& e) {
      r.reason = fmt::format("damaged attachment: {}", e.what());
      report.entries.push_back(std::move(r));
      continue;
    }
    if (attachment) {
      report.attachments.push_back(std::move(*attachment));
      if (options.progress) options.progress(i + 1, spans.size());
      continue;
    }
    cache::DecodedEntry d = cache::decode_entry(bytes);
    if (!d.ok()) {
      r.reason = d.format_version != 0 && d.format_version != cache::kFormatVersion
                     ? fmt::format("cache format version {}; this spattn reads version {}", d.format_version,
                                   cache::kFormatVersion)
                     : d.error;
    } else {
      r.key = cache::sha256_hex(d.manifest);
      try {
        // Every field as this build would write it: nothing unchecked reaches the cache.
        const KernelManifest m = cache::parse_manifest(d.manifest);
        r.kernel_name = m.kernel_name;
        r.arch = m.arch;
        if (nvrtc_here.empty()) {
          nvrtc_here = runtime::nvrtc_version();
          archs_here = runtime::supported_archs();
        }
        if (m.nvrtc_version != nvrtc_here) {
          r.reason = fmt::format("compiled with NVRTC {}; this host has NVRTC {}", m.nvrtc_version, nvrtc_here);
        } else if (m.spattn_version != SPATTN_VERSION_STRING) {
          r.reason = fmt::format("written by spattn {}; this is spattn {}", m.spattn_version, SPATTN_VERSION_STRING);
        } else if (std::find(archs_here.begin(), archs_here.end(), m.arch) == archs_here.end()) {
          r.reason = fmt::format("arch {} is not a target of this NVRTC", m.arch);
        }
      } catch (const Error& e) {
        if (e.code() != ErrorCode::kCorrupt) throw;
        r.reason = e.what();
      }
    }

    if (r.reason.empty()) {
      const fs::path path = s.entry_path(r.key);
      CompiledKernel existing;
      std::string why;
      if (s.load(path, d.manifest, &existing, &why) == Impl::Load::kGood) {
        r.status = ImportStatus::kPresent;
      } else {
        std::optional<cache::FileLock> held = s.lock(r.key);
        if (!held) SPATTN_FAIL(ErrorCode::kIo, "kernel cache '{}' is not writable", detail::printable(s.config.dir.string()));
        // Whatever is in the way (a bad file, a directory) goes first.
        if (const int err = cache::remove_path(path); err != 0) {
          SPATTN_FAIL(ErrorCode::kIo, "cannot replace '{}': {}", detail::printable(path.string()), std::strerror(err));
        }
        // Freshly stamped, as if just used: an import is a request to have these kernels.
        const std::uint64_t now = cache::now_ns();
        for (int b = 0; b < 8; ++b) bytes[cache::kStampOffset + b] = static_cast<char>((now >> (8 * b)) & 0xff);
        cache::write_atomic(path, bytes);
        r.status = ImportStatus::kAdded;
      }
    } else {
      r.status = ImportStatus::kRejected;
      log::info("cache import: rejected entry {} of '{}': {}", i, shown, r.reason);
    }
    report.entries.push_back(std::move(r));
    if (options.progress) options.progress(i + 1, spans.size());
  }
  if (report.count(ImportStatus::kAdded) > 0) {
    report.evictions = s.enforce_limit(s.config.max_bytes, {}).removed;
  }
  return report;
}

}  // namespace spattn
