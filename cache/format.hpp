// The cache file format and the export archive format (pure functions: bytes in, bytes
// out; no file system). Integers are little-endian.
//
// Kernel file, format version 1 ("<key>.spk"):
//
//   offset  size  field
//        0     8  magic "SPATTNKC"
//        8     4  format version (u32)
//       12     4  reserved, 0
//       16     8  last-used stamp (u64, ns since the Unix epoch); rewritten in place on
//                 every hit, so it is NOT covered by the checksum
//       24     8  manifest length M (u64)
//       32     8  metadata length D (u64)
//       40     8  CUBIN length C (u64)
//       48     M  manifest: KernelManifest::canonical() (its SHA-256 is the key)
//     48+M     D  metadata: compact JSON {compile_us, local_bytes, log, lowered_names,
//                 registers, shared_bytes}
//   48+M+D     C  CUBIN
//   48+M+D+C  32  SHA-256 of bytes [0, 16) and [24, 48+M+D+C)
//
// The first 24 bytes (magic, version, reserved, stamp) keep this layout in every future
// version, so eviction can read the stamp of any entry. Any other change to the layout or
// to the manifest or metadata encoding must bump kFormatVersion (the golden-file test in
// tests/cache fails until it is bumped and the golden file regenerated).
//
// Archive ("spattn cache export"), archive version 2:
//
//        0     8  magic "SPATTNKA"
//        8     4  archive version (u32)
//       12     4  flags (u32): bit 0 = signed; the other bits are 0
//       16        N times: u64 length L, then L bytes of a kernel file exactly as cached,
//                 or of an attachment: magic "SPATTNAT", u32 name length, the name (1 to
//                 256 printable ASCII bytes), the payload (e.g. a tuning database); an
//                 importer that does not know attachments rejects them as entries
//      T-40     8  entry count N (u64)                T = end, or end - 96 when signed
//      T-32    32  SHA-256 of every byte before it
//        T     32  (signed) Ed25519 public key of the signer (raw)
//     T+32     64  (signed) Ed25519 signature of the 32 SHA-256 bytes
//
// The count sits at the end so an archive is written in one pass. The SHA-256 covers the
// flags, so a signature cannot be cut off without the archive becoming one that says it
// is unsigned (which importers that trust keys refuse). Version 1 is version 2 without
// flags (bytes 12-15 zero) and is still read.
#pragma once

#include <spattn/cache.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace spattn::cache {

inline constexpr std::uint32_t kFormatVersion = 1;
inline constexpr std::string_view kEntryMagic = "SPATTNKC";
inline constexpr std::size_t kHeaderBytes = 48;
inline constexpr std::size_t kStampOffset = 16;
inline constexpr std::size_t kChecksumBytes = 32;
inline constexpr std::string_view kEntrySuffix = ".spk";
// No kernel comes near this; a larger file in the cache is not one of ours.
inline constexpr std::uint64_t kMaxEntryBytes = std::uint64_t{1} << 30;

inline constexpr std::uint32_t kArchiveVersion = 2;
inline constexpr std::uint32_t kOldestArchiveVersion = 1;
inline constexpr std::uint32_t kArchiveSigned = 1;  // flag bit
inline constexpr std::string_view kArchiveMagic = "SPATTNKA";
inline constexpr std::string_view kAttachmentMagic = "SPATTNAT";
inline constexpr std::size_t kMaxAttachmentName = 256;
// An attachment entry's bytes, and back (nullopt: not an attachment; throws kCorrupt for
// a damaged one).
std::string encode_attachment(const std::string& name, std::string_view payload);
std::optional<std::pair<std::string, std::string>> decode_attachment(std::string_view bytes);
inline constexpr std::size_t kArchiveHeaderBytes = 16;
inline constexpr std::size_t kArchiveTrailerBytes = 8 + 32;
inline constexpr std::size_t kPublicKeyBytes = 32;
inline constexpr std::size_t kSignatureBytes = 64;
// Entries per archive: far more than any cache holds, few enough that the entry table
// of a hostile archive fits in memory.
inline constexpr std::uint64_t kMaxArchiveEntries = std::uint64_t{1} << 20;

// Canonical manifest text for a given format version (tests use other versions to make
// "wrong version" files).
std::string canonical_manifest(const KernelManifest& manifest, std::uint32_t format_version);

// The fields of a canonical manifest that listings show.
struct ManifestSummary {
  std::string kernel_name, arch, nvrtc_version, spattn_version;
};
// Throws kCorrupt if the text is not a manifest (parse_manifest).
ManifestSummary summarize_manifest(std::string_view manifest_text);

// Reads a manifest exactly as this build writes one: every field present, of its type
// and form (arch "sm_NN[a]", kernel_name a C identifier, versions like "12.4", options
// and template hashes without control characters, hashes of 64 hex digits, format this
// version), no other field, and the text byte for byte canonical_manifest() of the
// result. Throws kCorrupt naming the first bad field.
KernelManifest parse_manifest(std::string_view manifest_text);

// Encodes a kernel file. `format_version` other than kFormatVersion only writes a header
// with that number (for tests); the body layout is always this version's.
std::string encode_entry(std::string_view manifest_text, const CompiledKernel& kernel,
                         std::uint64_t last_used_ns, std::uint32_t format_version = kFormatVersion);

// A decoded kernel file.
struct DecodedEntry {
  std::string error;  // empty when the file is good
  std::uint32_t format_version = 0;
  std::uint64_t last_used_ns = 0;
  std::string manifest;
  CompiledKernel kernel;
  bool ok() const { return error.empty(); }
};
// Checks everything (size, magic, version, lengths, checksum, metadata) and decodes.
// Never throws on bad input: the reason is in `error`.
DecodedEntry decode_entry(std::string_view bytes);

// The fixed header of a kernel file, enough for listings and eviction.
struct EntryHeader {
  std::uint32_t format_version = 0;
  std::uint64_t last_used_ns = 0;
  std::uint64_t manifest_bytes = 0, metadata_bytes = 0, cubin_bytes = 0;
};
// Parses the first kHeaderBytes of a file of `file_size` bytes. Without an error the
// magic and version are right and the lengths add up to the file size; with one, the
// version and stamp are still filled in when the magic was right.
EntryHeader parse_header(std::string_view head, std::uint64_t file_size, std::string* error);

// The checked frame of an archive: magic, version, flags, SHA-256, count and entry
// boundaries (not the entries themselves, nor the signature: see sign.hpp).
struct ArchiveLayout {
  std::uint32_t version = 0;
  bool is_signed = false;
  std::string digest;      // the 32 SHA-256 bytes
  std::string public_key;  // signed: the signer's raw Ed25519 key
  std::string signature;   // signed: 64 bytes
  std::vector<std::pair<std::uint64_t, std::uint64_t>> entries;  // offset, length
};
// Reads `count` bytes at `offset` into `out` (throws if it cannot).
using ReadAt = std::function<void(std::uint64_t offset, std::size_t count, std::string& out)>;
// Checks an archive of `size` bytes read through `read`; `name` names it in messages.
// Throws kCorrupt for anything that is not a whole, intact archive of a known version.
ArchiveLayout read_archive_layout(std::uint64_t size, const ReadAt& read, const std::string& name);
// The same for an archive in memory.
ArchiveLayout read_archive_layout(std::string_view bytes, const std::string& name);

// Little-endian integer helpers shared with the archive code.
void put_u32(std::string& out, std::uint32_t v);
void put_u64(std::string& out, std::uint64_t v);
std::uint32_t get_u32(const char* p);
std::uint64_t get_u64(const char* p);

// Nanoseconds since the Unix epoch, now.
std::uint64_t now_ns();

}  // namespace spattn::cache
