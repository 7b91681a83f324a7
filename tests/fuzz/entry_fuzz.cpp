// The cache entry reader: decode_entry never throws and either gives a reason or an
// entry that encodes to a file that decodes to the same fields; parse_header agrees with
// it on every prefix length that holds the header.
#include <spattn/cache.hpp>

#include "cache/format.hpp"
#include "tests/fuzz/fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace spattn;
  const std::string_view bytes = fuzz::as_text(data, size);
  const cache::DecodedEntry d = cache::decode_entry(bytes);
  std::string header_error;
  const cache::EntryHeader h = cache::parse_header(bytes.substr(0, cache::kHeaderBytes), size, &header_error);
  if (!header_error.empty()) {
    FUZZ_CHECK(!d.ok());  // a bad header is a bad file
    return 0;
  }
  if (!d.ok()) return 0;
  FUZZ_CHECK(h.format_version == cache::kFormatVersion);
  FUZZ_CHECK(cache::kHeaderBytes + h.manifest_bytes + h.metadata_bytes + h.cubin_bytes + cache::kChecksumBytes == size);
  FUZZ_CHECK(d.manifest.size() == h.manifest_bytes && d.kernel.cubin.size() == h.cubin_bytes);
  const std::string re = cache::encode_entry(d.manifest, d.kernel, d.last_used_ns);
  const cache::DecodedEntry d2 = cache::decode_entry(re);
  FUZZ_CHECK(d2.ok());
  FUZZ_CHECK(d2.manifest == d.manifest && d2.kernel.cubin == d.kernel.cubin && d2.kernel.log == d.kernel.log);
  FUZZ_CHECK(d2.kernel.lowered_names == d.kernel.lowered_names && d2.kernel.registers == d.kernel.registers);
  FUZZ_CHECK(d2.last_used_ns == d.last_used_ns);
  return 0;
}
