// The cache manifest parser: parse_manifest either refuses the text (kCorrupt) or gives
// a manifest whose canonical text is exactly the input, and that parses again.
#include <spattn/cache.hpp>

#include "cache/format.hpp"
#include "tests/fuzz/fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace spattn;
  const std::string_view text = fuzz::as_text(data, size);
  KernelManifest m;
  try {
    m = cache::parse_manifest(text);
  } catch (const Error& e) {
    FUZZ_CHECK(e.code() == ErrorCode::kCorrupt);
    return 0;
  }
  const std::string canonical = cache::canonical_manifest(m, cache::kFormatVersion);
  FUZZ_CHECK(canonical == text);
  const KernelManifest again = cache::parse_manifest(canonical);
  FUZZ_CHECK(cache::canonical_manifest(again, cache::kFormatVersion) == canonical);
  const cache::ManifestSummary s = cache::summarize_manifest(text);
  FUZZ_CHECK(s.arch == m.arch && s.kernel_name == m.kernel_name);
  return 0;
}
