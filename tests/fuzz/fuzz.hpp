// Shared pieces of the fuzz harnesses (tests/fuzz/README.md). Every harness defines
// LLVMFuzzerTestOneInput: libFuzzer drives it in the clang build, replay_main.cpp feeds
// it the seed corpus in the ordinary build. A harness returns normally for any input
// that spattn rejects with spattn::Error; anything else -- another exception, a crash, a
// sanitizer report, a failed FUZZ_CHECK -- is a finding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include <spattn/error.hpp>

#define FUZZ_CHECK(cond)                                                                   \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "fuzz check failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

namespace spattn::fuzz {

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// A deterministic 64-bit hash of the input (FNV-1a), for choosing shapes and options.
inline uint64_t hash(const uint8_t* data, size_t size) {
  uint64_t h = 1469598103934665603ull;
  for (size_t k = 0; k < size; ++k) h = (h ^ data[k]) * 1099511628211ull;
  return h;
}

}  // namespace spattn::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
