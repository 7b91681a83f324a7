// KernelCache export and import: moving cache entries between machines (prewarm on a
// build host, ship the archive) in one file.
#include <algorithm>
#include <cstring>
#include <system_error>

#include "cache/format.hpp"
#include "cache/sha256.hpp"
#include "cache/store.hpp"
#include "common/check.hpp"
#include "common/log.hpp"
#include "runtime/nvrtc.hpp"

namespace spattn {

namespace fs = std::filesystem;

ExportReport KernelCache::export_archive(const fs::path& archive, const CacheFilter& filter,
                                         const CacheProgress& progress) const {
  std::vector<CacheEntry> selected;
  ExportReport report;
  for (CacheEntry& e : list()) {
    if (!e.problem.empty()) {
      report.skipped.push_back({e.key, e.path, e.problem});
      continue;
    }
    if (!filter || filter(e)) selected.push_back(std::move(e));
  }
  // Oldest first, so that an import into a cache that fills up evicts the oldest.
  std::reverse(selected.begin(), selected.end());

  fs::path parent = archive.parent_path();
  if (parent.empty()) parent = ".";
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) {
    SPATTN_FAIL(ErrorCode::kIo, "cannot write '{}': directory '{}' does not exist", archive.string(),
                parent.string());
  }

  cache::AtomicFile out(parent / archive.filename());
  cache::Sha256 hash;
  std::string chunk;
  auto emit = [&](std::string_view bytes) {
    hash.update(bytes);
    out.append(bytes);
    report.bytes += bytes.size();
  };
  chunk.append(cache::kArchiveMagic);
  cache::put_u32(chunk, cache::kArchiveVersion);
  cache::put_u32(chunk, 0);
  emit(chunk);

  if (progress) progress(0, selected.size());
  for (std::size_t i = 0; i < selected.size(); ++i) {
    const CacheEntry& e = selected[i];
    cache::ReadResult file = cache::read_file(e.path, cache::kMaxEntryBytes);
    std::string reason;
    if (!file.ok()) {
      reason = std::strerror(file.error);
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
      report.skipped.push_back({e.key, e.path, std::move(reason)});
    }
    if (progress) progress(i + 1, selected.size());
  }

  chunk.clear();
  cache::put_u64(chunk, report.exported);
  emit(chunk);
  const cache::Sha256Digest digest = hash.finish();
  out.append(std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()));
  report.bytes += digest.size();
  out.commit();
  return report;
}

ImportReport KernelCache::import_archive(const fs::path& archive, const CacheProgress& progress) {
  constexpr std::size_t kChunk = 1 << 20;
  const cache::InputFile in(archive);
  const std::uint64_t size = in.size();
  const std::string name = archive.string();
  std::string buf;

  // The archive as a whole first: its magic, version and checksum. Nothing is imported
  // from an archive that fails here.
  if (size < cache::kArchiveHeaderBytes + cache::kArchiveTrailerBytes) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is not a spattn cache archive (only {} bytes)", name, size);
  }
  in.read(0, cache::kArchiveHeaderBytes, buf);
  if (buf.compare(0, 8, cache::kArchiveMagic) != 0) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is not a spattn cache archive (bad magic)", name);
  }
  if (const std::uint32_t v = cache::get_u32(buf.data() + 8); v != cache::kArchiveVersion) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is a cache archive of version {}; this spattn reads version {}",
                name, v, cache::kArchiveVersion);
  }
  const std::uint64_t body_end = size - 32;
  cache::Sha256 hash;
  for (std::uint64_t at = 0; at < body_end;) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, body_end - at));
    in.read(at, n, buf);
    hash.update(buf);
    at += n;
  }
  const cache::Sha256Digest digest = hash.finish();
  in.read(body_end, 32, buf);
  if (std::memcmp(buf.data(), digest.data(), digest.size()) != 0) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is damaged: archive checksum mismatch", name);
  }
  in.read(size - cache::kArchiveTrailerBytes, 8, buf);
  const std::uint64_t count = cache::get_u64(buf.data());

  // Entry boundaries, checked before anything is written.
  const std::uint64_t entries_end = size - cache::kArchiveTrailerBytes;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> spans;  // offset, length
  for (std::uint64_t at = cache::kArchiveHeaderBytes; at < entries_end;) {
    if (entries_end - at < 8) SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is damaged: entry table runs past its end", name);
    in.read(at, 8, buf);
    const std::uint64_t length = cache::get_u64(buf.data());
    at += 8;
    if (length > entries_end - at) {
      SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is damaged: entry {} runs past the end", name, spans.size());
    }
    spans.emplace_back(at, length);
    at += length;
  }
  if (spans.size() != count) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is damaged: it holds {} entries but says {}", name, spans.size(), count);
  }

  Impl& s = *impl_;
  ImportReport report;
  std::string nvrtc_here;  // asked for once, when the first entry needs it
  if (progress) progress(0, spans.size());
  for (std::size_t i = 0; i < spans.size(); ++i) {
    ImportResult r;
    std::string bytes;
    in.read(spans[i].first, static_cast<std::size_t>(spans[i].second), bytes);
    cache::DecodedEntry d = cache::decode_entry(bytes);
    if (!d.ok()) {
      r.reason = d.format_version != 0 && d.format_version != cache::kFormatVersion
                     ? fmt::format("cache format version {}; this spattn reads version {}", d.format_version,
                                   cache::kFormatVersion)
                     : d.error;
    } else {
      r.key = cache::sha256_hex(d.manifest);
      try {
        const cache::ManifestSummary m = cache::summarize_manifest(d.manifest);
        r.kernel_name = m.kernel_name;
        r.arch = m.arch;
        if (nvrtc_here.empty()) nvrtc_here = runtime::nvrtc_version();
        if (m.nvrtc_version != nvrtc_here) {
          r.reason = fmt::format("compiled with NVRTC {}; this host has NVRTC {}", m.nvrtc_version, nvrtc_here);
        } else if (m.spattn_version != SPATTN_VERSION_STRING) {
          r.reason = fmt::format("written by spattn {}; this is spattn {}", m.spattn_version, SPATTN_VERSION_STRING);
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
        if (!held) SPATTN_FAIL(ErrorCode::kIo, "kernel cache '{}' is not writable", s.config.dir.string());
        // Freshly stamped, as if just used: an import is a request to have these kernels.
        const std::uint64_t now = cache::now_ns();
        for (int b = 0; b < 8; ++b) bytes[cache::kStampOffset + b] = static_cast<char>((now >> (8 * b)) & 0xff);
        cache::write_atomic(path, bytes);
        r.status = ImportStatus::kAdded;
      }
    } else {
      r.status = ImportStatus::kRejected;
      log::info("cache import: rejected entry {} of '{}': {}", i, name, r.reason);
    }
    report.entries.push_back(std::move(r));
    if (progress) progress(i + 1, spans.size());
  }
  if (report.count(ImportStatus::kAdded) > 0) {
    report.evictions = s.enforce_limit(s.config.max_bytes, {}).removed;
  }
  return report;
}

}  // namespace spattn
