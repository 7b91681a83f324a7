#include "cache/format.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "cache/sha256.hpp"
#include "common/check.hpp"

namespace spattn::cache {

using nlohmann::json;

void put_u32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void put_u64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::uint32_t get_u32(const char* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

std::uint64_t get_u64(const char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

std::string canonical_manifest(const KernelManifest& m, std::uint32_t format_version) {
  // nlohmann's objects are ordered maps, so the keys come out sorted; template hashes
  // are a set, so they are sorted too. Option order is meaningful to NVRTC and kept.
  auto hashes = m.template_hashes;
  std::sort(hashes.begin(), hashes.end());
  json pairs = json::array();
  for (const auto& [name, hash] : hashes) pairs.push_back(json::array({name, hash}));
  const json doc = {
      {"arch", m.arch},
      {"format", format_version},
      {"kernel_name", m.kernel_name},
      {"nvrtc_version", m.nvrtc_version},
      {"options", m.options},
      {"source", m.source},
      {"spattn_version", m.spattn_version},
      {"template_hashes", std::move(pairs)},
  };
  try {
    return doc.dump();
  } catch (const json::exception& e) {
    SPATTN_FAIL(ErrorCode::kInvalidArgument,
                "kernel manifest for '{}' cannot be encoded (fields must be UTF-8): {}",
                m.kernel_name, e.what());
  }
}

ManifestSummary summarize_manifest(std::string_view text) {
  try {
    const json doc = json::parse(text);
    ManifestSummary s;
    s.kernel_name = doc.at("kernel_name").get<std::string>();
    s.arch = doc.at("arch").get<std::string>();
    s.nvrtc_version = doc.at("nvrtc_version").get<std::string>();
    s.spattn_version = doc.at("spattn_version").get<std::string>();
    return s;
  } catch (const json::exception& e) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "manifest is not readable: {}", e.what());
  }
}

namespace {

std::string encode_metadata(const CompiledKernel& k) {
  // Integers only (compile time in whole microseconds), so the bytes do not depend on
  // how a JSON library prints floating point.
  const double us = std::isfinite(k.compile_ms) ? std::max(0.0, k.compile_ms * 1000.0) : 0.0;
  const json doc = {
      {"compile_us", static_cast<std::int64_t>(std::llround(std::min(us, 1e15)))},
      {"local_bytes", k.local_bytes},
      {"log", k.log},
      {"lowered_names", k.lowered_names},
      {"registers", k.registers},
      {"shared_bytes", k.shared_bytes},
  };
  // A compiler log is diagnostics, not identity: replace invalid UTF-8 rather than fail.
  return doc.dump(-1, ' ', false, json::error_handler_t::replace);
}

void hash_checked_parts(Sha256& hash, std::string_view file_without_trailer) {
  hash.update(file_without_trailer.substr(0, kStampOffset));
  hash.update(file_without_trailer.substr(kStampOffset + 8));
}

}  // namespace

std::string encode_entry(std::string_view manifest_text, const CompiledKernel& kernel,
                         std::uint64_t last_used_ns, std::uint32_t format_version) {
  const std::string metadata = encode_metadata(kernel);
  std::string out;
  out.reserve(kHeaderBytes + manifest_text.size() + metadata.size() + kernel.cubin.size() +
              kChecksumBytes);
  out.append(kEntryMagic);
  put_u32(out, format_version);
  put_u32(out, 0);
  put_u64(out, last_used_ns);
  put_u64(out, manifest_text.size());
  put_u64(out, metadata.size());
  put_u64(out, kernel.cubin.size());
  out.append(manifest_text);
  out.append(metadata);
  out.append(kernel.cubin.data(), kernel.cubin.size());
  Sha256 hash;
  hash_checked_parts(hash, out);
  const Sha256Digest digest = hash.finish();
  out.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  return out;
}

EntryHeader parse_header(std::string_view head, std::uint64_t file_size, std::string* error) {
  EntryHeader h;
  auto fail = [&](std::string why) {
    if (error) *error = std::move(why);
    return h;
  };
  const std::size_t magic_seen = std::min(head.size(), kEntryMagic.size());
  if (head.substr(0, magic_seen) != kEntryMagic.substr(0, magic_seen)) {
    return fail("not a spattn kernel file (bad magic)");
  }
  if (file_size < kHeaderBytes + kChecksumBytes || head.size() < kHeaderBytes) {
    return fail(fmt::format("truncated: {} bytes, shorter than the fixed header and checksum", file_size));
  }
  h.format_version = get_u32(head.data() + 8);
  h.last_used_ns = get_u64(head.data() + kStampOffset);
  if (h.format_version != kFormatVersion) {
    return fail(fmt::format("format version {} (this build reads version {})", h.format_version,
                            kFormatVersion));
  }
  h.manifest_bytes = get_u64(head.data() + 24);
  h.metadata_bytes = get_u64(head.data() + 32);
  h.cubin_bytes = get_u64(head.data() + 40);
  // Compare without overflow: each length must fit in what is left of the file.
  std::uint64_t left = file_size - kHeaderBytes - kChecksumBytes;
  for (std::uint64_t part : {h.manifest_bytes, h.metadata_bytes, h.cubin_bytes}) {
    if (part > left) {
      return fail(fmt::format("truncated: the header describes more data than the {} bytes present",
                              file_size));
    }
    left -= part;
  }
  if (left != 0) return fail(fmt::format("{} unexpected bytes after the CUBIN", left));
  if (error) error->clear();
  return h;
}

DecodedEntry decode_entry(std::string_view bytes) {
  DecodedEntry d;
  const EntryHeader h = parse_header(bytes, bytes.size(), &d.error);
  d.format_version = h.format_version;
  d.last_used_ns = h.last_used_ns;
  if (!d.ok()) return d;

  const std::size_t body_end = bytes.size() - kChecksumBytes;
  Sha256 hash;
  hash_checked_parts(hash, bytes.substr(0, body_end));
  const Sha256Digest digest = hash.finish();
  if (std::memcmp(digest.data(), bytes.data() + body_end, kChecksumBytes) != 0) {
    d.error = "checksum mismatch (the file is damaged)";
    return d;
  }

  std::size_t at = kHeaderBytes;
  d.manifest.assign(bytes.substr(at, h.manifest_bytes));
  at += h.manifest_bytes;
  const std::string_view metadata = bytes.substr(at, h.metadata_bytes);
  at += h.metadata_bytes;
  d.kernel.cubin.assign(bytes.data() + at, bytes.data() + at + h.cubin_bytes);

  try {
    const json meta = json::parse(metadata);
    d.kernel.compile_ms = static_cast<double>(meta.at("compile_us").get<std::int64_t>()) / 1000.0;
    d.kernel.local_bytes = meta.at("local_bytes").get<int>();
    d.kernel.log = meta.at("log").get<std::string>();
    d.kernel.lowered_names = meta.at("lowered_names").get<std::map<std::string, std::string>>();
    d.kernel.registers = meta.at("registers").get<int>();
    d.kernel.shared_bytes = meta.at("shared_bytes").get<int>();
  } catch (const json::exception& e) {
    d.error = fmt::format("metadata is not readable: {}", e.what());
  }
  return d;
}

}  // namespace spattn::cache
