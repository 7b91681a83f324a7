// The archive reader: read_archive_layout either refuses the bytes (kCorrupt) or gives
// entry spans inside the archive, in order, as many as it says; signatures are checked
// and every entry goes through the attachment decoder (an attachment re-encodes to its
// bytes), else the entry reader and the manifest parser.
#include <spattn/cache.hpp>

#include "cache/format.hpp"
#include "cache/sign.hpp"
#include "tests/fuzz/fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace spattn;
  const std::string_view bytes = fuzz::as_text(data, size);
  cache::ArchiveLayout a;
  try {
    a = cache::read_archive_layout(bytes, "fuzz.spka");
  } catch (const Error& e) {
    FUZZ_CHECK(e.code() == ErrorCode::kCorrupt);
    return 0;
  }
  FUZZ_CHECK(a.version >= cache::kOldestArchiveVersion && a.version <= cache::kArchiveVersion);
  FUZZ_CHECK(a.digest.size() == 32);
  uint64_t at = cache::kArchiveHeaderBytes;
  for (const auto& [offset, length] : a.entries) {
    FUZZ_CHECK(offset == at + 8 && offset + length <= size);
    at = offset + length;
    const std::string_view entry = bytes.substr(offset, length);
    try {
      if (const auto attachment = cache::decode_attachment(entry)) {
        FUZZ_CHECK(cache::encode_attachment(attachment->first, attachment->second) == entry);
        continue;
      }
    } catch (const Error& e) {
      FUZZ_CHECK(e.code() == ErrorCode::kCorrupt);
      continue;
    }
    const cache::DecodedEntry d = cache::decode_entry(entry);
    if (!d.ok()) continue;
    try {
      cache::parse_manifest(d.manifest);
    } catch (const Error& e) {
      FUZZ_CHECK(e.code() == ErrorCode::kCorrupt);
    }
  }
  if (a.is_signed) {
    FUZZ_CHECK(a.public_key.size() == cache::kPublicKeyBytes && a.signature.size() == cache::kSignatureBytes);
    (void)cache::verify_signature(a.public_key, a.digest, a.signature);
  }
  return 0;
}
