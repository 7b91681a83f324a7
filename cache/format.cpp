#include "cache/format.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "cache/sha256.hpp"
#include "common/check.hpp"
#include "common/json.hpp"
#include "common/text.hpp"
#include "common/text.hpp"

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

namespace {

bool all_of_chars(std::string_view s, bool (*ok)(char)) {
  for (char c : s) {
    if (!ok(c)) return false;
  }
  return true;
}
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_ident(char c) { return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f'); }
bool is_file_char(char c) { return is_ident(c) || c == '.' || c == '-' || c == '/'; }
// A relative template path like "spattn/forward.cuh": no leading '/', no "..".
bool is_template_name(std::string_view n) {
  return !n.empty() && n.size() <= 128 && n.front() != '/' && n.find("..") == std::string_view::npos &&
         all_of_chars(n, is_file_char);
}
bool no_control(char c) { return static_cast<unsigned char>(c) >= 0x20 && c != 0x7f; }

// "12", "12.4", "12.4.1": digits separated by dots; `suffix` allows "-rc1" / "+git" after.
bool is_version(std::string_view v, bool suffix) {
  if (v.empty() || v.size() > 64) return false;
  std::size_t at = 0;
  for (int part = 0;; ++part) {
    const std::size_t start = at;
    while (at < v.size() && is_digit(v[at])) ++at;
    if (at == start || part > 3) return false;
    if (at == v.size()) return true;
    if (v[at] == '.') {
      ++at;
      continue;
    }
    if (suffix && (v[at] == '-' || v[at] == '+') && at + 1 < v.size()) {
      return all_of_chars(v.substr(at + 1), [](char c) { return is_ident(c) || c == '.' || c == '-' || c == '+'; });
    }
    return false;
  }
}

bool is_arch(std::string_view a) {
  if (!a.starts_with("sm_") || a.size() < 5 || a.size() > 7) return false;
  std::string_view rest = a.substr(3);
  if (rest.back() == 'a' || rest.back() == 'f') rest.remove_suffix(1);
  return rest.size() >= 2 && rest.size() <= 3 && all_of_chars(rest, is_digit);
}

[[noreturn]] void bad_field(const char* field, const std::string& why) {
  SPATTN_FAIL(ErrorCode::kCorrupt, "manifest.{}: {}", field, why);
}

const json& field(const json& doc, const char* name, json::value_t type) {
  const auto it = doc.find(name);
  if (it == doc.end()) bad_field(name, "missing");
  if (it->type() != type && !(type == json::value_t::number_unsigned && it->is_number_integer())) {
    bad_field(name, fmt::format("must be a {} (got {})", type == json::value_t::string  ? "string"
                                                           : type == json::value_t::array ? "array"
                                                                                          : "number",
                                detail::describe_json(*it)));
  }
  return *it;
}

std::string text_field(const json& doc, const char* name, bool (*valid)(std::string_view), const char* form) {
  const std::string v = field(doc, name, json::value_t::string).get<std::string>();
  if (!valid(v)) bad_field(name, fmt::format("'{}' is not {}", detail::printable(v, 80), form));
  return v;
}

}  // namespace

KernelManifest parse_manifest(std::string_view text) {
  constexpr std::size_t kMaxSource = std::size_t{64} << 20;
  json doc;
  try {
    doc = detail::parse_json_strict(text, "manifest", {8, kMaxSource + (std::size_t{1} << 20)});
  } catch (const Error& e) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "{}", e.what());
  }
  if (!doc.is_object()) SPATTN_FAIL(ErrorCode::kCorrupt, "manifest: not a JSON object");
  static constexpr const char* kFields[] = {"arch",   "format",         "kernel_name",    "nvrtc_version",
                                            "options", "source",        "spattn_version", "template_hashes"};
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    if (std::find(std::begin(kFields), std::end(kFields), it.key()) == std::end(kFields)) {
      SPATTN_FAIL(ErrorCode::kCorrupt, "manifest.{}: not a manifest field", detail::printable(it.key(), 60));
    }
  }
  const json& format = field(doc, "format", json::value_t::number_unsigned);
  if (!format.is_number_unsigned() || format.get<std::uint64_t>() != kFormatVersion) {
    bad_field("format", fmt::format("{} (this build writes version {})", detail::describe_json(format), kFormatVersion));
  }
  KernelManifest m;
  m.arch = text_field(doc, "arch", is_arch, "an arch like sm_90a");
  m.kernel_name = text_field(
      doc, "kernel_name",
      [](std::string_view v) { return !v.empty() && v.size() <= 256 && !is_digit(v[0]) && all_of_chars(v, is_ident); },
      "a C identifier");
  m.nvrtc_version = text_field(
      doc, "nvrtc_version", [](std::string_view v) { return is_version(v, false); }, "a version like 12.4");
  m.spattn_version = text_field(
      doc, "spattn_version", [](std::string_view v) { return is_version(v, true); }, "a version like 0.1.0");
  m.source = field(doc, "source", json::value_t::string).get<std::string>();
  if (m.source.size() > kMaxSource) bad_field("source", fmt::format("{} bytes; at most {}", m.source.size(), kMaxSource));
  const json& options = field(doc, "options", json::value_t::array);
  if (options.size() > 1024) bad_field("options", fmt::format("{} options; at most 1024", options.size()));
  for (std::size_t k = 0; k < options.size(); ++k) {
    if (!options[k].is_string()) bad_field("options", fmt::format("[{}] is not a string", k));
    const std::string o = options[k].get<std::string>();
    if (o.empty() || o.size() > 4096 || !all_of_chars(o, no_control)) {
      bad_field("options", fmt::format("[{}] '{}' is not an NVRTC option", k, detail::printable(o, 80)));
    }
    m.options.push_back(o);
  }
  const json& hashes = field(doc, "template_hashes", json::value_t::array);
  if (hashes.size() > 1024) bad_field("template_hashes", fmt::format("{} entries; at most 1024", hashes.size()));
  for (std::size_t k = 0; k < hashes.size(); ++k) {
    const json& h = hashes[k];
    if (!h.is_array() || h.size() != 2 || !h[0].is_string() || !h[1].is_string()) {
      bad_field("template_hashes", fmt::format("[{}] is not a [name, sha256] pair", k));
    }
    const std::string name = h[0].get<std::string>(), hash = h[1].get<std::string>();
    if (!is_template_name(name)) {
      bad_field("template_hashes", fmt::format("[{}] '{}' is not a template file name", k, detail::printable(name, 80)));
    }
    if (hash.size() != 64 || !all_of_chars(hash, is_hex)) {
      bad_field("template_hashes", fmt::format("[{}] '{}' is not a SHA-256 (64 hex digits)", k, detail::printable(hash, 80)));
    }
    m.template_hashes.emplace_back(name, hash);
  }
  // Field by field it is well formed; as a whole it must be what this build would write.
  if (canonical_manifest(m, kFormatVersion) != text) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "manifest: not in canonical form (key order, spacing or escapes differ from "
                                     "what spattn writes)");
  }
  return m;
}

ManifestSummary summarize_manifest(std::string_view text) {
  const KernelManifest m = parse_manifest(text);
  return ManifestSummary{m.kernel_name, m.arch, m.nvrtc_version, m.spattn_version};
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
    const json meta = detail::parse_json_strict(metadata, "metadata", {8, h.metadata_bytes + 1});
    if (!meta.is_object() || meta.size() != 6) {
      d.error = "metadata is not readable: not an object of the six metadata fields";
      return d;
    }
    d.kernel.compile_ms = static_cast<double>(meta.at("compile_us").get<std::int64_t>()) / 1000.0;
    d.kernel.local_bytes = meta.at("local_bytes").get<int>();
    d.kernel.log = meta.at("log").get<std::string>();
    d.kernel.lowered_names = meta.at("lowered_names").get<std::map<std::string, std::string>>();
    d.kernel.registers = meta.at("registers").get<int>();
    d.kernel.shared_bytes = meta.at("shared_bytes").get<int>();
  } catch (const json::exception& e) {
    d.error = fmt::format("metadata is not readable: {}", e.what());
  } catch (const Error& e) {
    d.error = fmt::format("metadata is not readable: {}", e.what());
  }
  return d;
}

ArchiveLayout read_archive_layout(std::uint64_t size, const ReadAt& read, const std::string& name) {
  constexpr std::size_t kChunk = 1 << 20;
  const std::string shown = detail::printable(name);
  std::string buf;
  ArchiveLayout a;
  if (size < kArchiveHeaderBytes + kArchiveTrailerBytes) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is not a spattn cache archive (only {} bytes)", shown, size);
  }
  read(0, kArchiveHeaderBytes, buf);
  if (buf.compare(0, 8, kArchiveMagic) != 0) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is not a spattn cache archive (bad magic)", shown);
  }
  a.version = get_u32(buf.data() + 8);
  if (a.version < kOldestArchiveVersion || a.version > kArchiveVersion) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is a cache archive of version {}; this spattn reads versions {} to {}", shown,
                a.version, kOldestArchiveVersion, kArchiveVersion);
  }
  const std::uint32_t flags = get_u32(buf.data() + 12);
  if ((flags & ~kArchiveSigned) != 0 || (a.version == 1 && flags != 0)) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is damaged: unknown archive flags {:#x}", shown, flags);
  }
  a.is_signed = (flags & kArchiveSigned) != 0;
  const std::uint64_t tail = a.is_signed ? kPublicKeyBytes + kSignatureBytes : 0;
  if (size < kArchiveHeaderBytes + kArchiveTrailerBytes + tail) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is damaged: too short for its signature", shown);
  }
  const std::uint64_t end = size - tail;  // T in the layout above
  const std::uint64_t body_end = end - 32;
  Sha256 hash;
  for (std::uint64_t at = 0; at < body_end;) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, body_end - at));
    read(at, n, buf);
    hash.update(buf);
    at += n;
  }
  const Sha256Digest digest = hash.finish();
  read(body_end, 32, a.digest);
  if (std::memcmp(a.digest.data(), digest.data(), digest.size()) != 0) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is damaged: archive checksum mismatch", shown);
  }
  if (a.is_signed) {
    read(end, kPublicKeyBytes, a.public_key);
    read(end + kPublicKeyBytes, kSignatureBytes, a.signature);
  }
  read(end - kArchiveTrailerBytes, 8, buf);
  const std::uint64_t count = get_u64(buf.data());
  if (count > kMaxArchiveEntries) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' claims {} entries; at most {} are read", shown, count, kMaxArchiveEntries);
  }
  // Entry boundaries, checked before anything is used.
  const std::uint64_t entries_end = end - kArchiveTrailerBytes;
  for (std::uint64_t at = kArchiveHeaderBytes; at < entries_end;) {
    if (entries_end - at < 8) SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is damaged: entry table runs past its end", shown);
    if (a.entries.size() == count) {
      SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is damaged: it holds more entries than the {} it says", shown, count);
    }
    read(at, 8, buf);
    const std::uint64_t length = get_u64(buf.data());
    at += 8;
    if (length > entries_end - at) {
      SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is damaged: entry {} runs past the end", shown, a.entries.size());
    }
    a.entries.emplace_back(at, length);
    at += length;
  }
  if (a.entries.size() != count) {
    SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' is damaged: it holds {} entries but says {}", shown, a.entries.size(), count);
  }
  return a;
}

ArchiveLayout read_archive_layout(std::string_view bytes, const std::string& name) {
  return read_archive_layout(
      bytes.size(),
      [&](std::uint64_t offset, std::size_t count, std::string& out) {
        if (offset > bytes.size() || count > bytes.size() - offset) {
          SPATTN_FAIL(ErrorCode::kCorrupt, "'{}' ends before byte {}", detail::printable(name), offset + count);
        }
        out.assign(bytes.substr(offset, count));
      },
      name);
}

std::string encode_attachment(const std::string& name, std::string_view payload) {
  const bool printable = std::all_of(name.begin(), name.end(), [](char c) { return c > 0x20 && c < 0x7f; });
  if (name.empty() || name.size() > kMaxAttachmentName || !printable)
    SPATTN_FAIL(ErrorCode::kInvalidArgument, "attachment name '{}' must be 1 to {} printable ASCII characters",
                detail::printable(name), kMaxAttachmentName);
  std::string out(kAttachmentMagic);
  put_u32(out, static_cast<std::uint32_t>(name.size()));
  out += name;
  out.append(payload);
  return out;
}

std::optional<std::pair<std::string, std::string>> decode_attachment(std::string_view bytes) {
  if (bytes.size() < kAttachmentMagic.size() || bytes.compare(0, kAttachmentMagic.size(), kAttachmentMagic) != 0)
    return std::nullopt;
  if (bytes.size() < kAttachmentMagic.size() + 4) SPATTN_FAIL(ErrorCode::kCorrupt, "attachment is truncated");
  std::uint32_t n = 0;
  for (int b = 0; b < 4; ++b)
    n |= static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[kAttachmentMagic.size() + b])) << (8 * b);
  const std::size_t at = kAttachmentMagic.size() + 4;
  if (n == 0 || n > kMaxAttachmentName || bytes.size() - at < n)
    SPATTN_FAIL(ErrorCode::kCorrupt, "attachment name length {} is out of range", n);
  std::string name(bytes.substr(at, n));
  if (!std::all_of(name.begin(), name.end(), [](char c) { return c > 0x20 && c < 0x7f; }))
    SPATTN_FAIL(ErrorCode::kCorrupt, "attachment name is not printable ASCII");
  return std::pair{std::move(name), std::string(bytes.substr(at + n))};
}

}  // namespace spattn::cache
