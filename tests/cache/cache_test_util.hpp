// Helpers for the cache tests: fake manifests and payloads, and a cache in a temp dir.
#pragma once

#include <spattn/cache.hpp>

#include <atomic>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

#include "runtime/nvrtc.hpp"
#include "tests/support/test_support.hpp"

namespace spattn::test {

// A manifest this build would produce (current NVRTC and spattn versions).
inline KernelManifest fake_manifest(const std::string& name, const std::string& arch = "sm_90a") {
  KernelManifest m;
  m.source = "// generated for " + name + "\nextern \"C\" __global__ void " + name + "() {}\n";
  m.template_hashes = {{"forward.cuh", std::string(64, 'a')}, {"params.cuh", std::string(64, 'b')}};
  m.options = {"--gpu-architecture=" + arch, "-std=c++17", "-DSPATTN_TILE_M=128"};
  m.arch = arch;
  m.nvrtc_version = runtime::nvrtc_version();
  m.spattn_version = SPATTN_VERSION_STRING;
  m.kernel_name = name;
  return m;
}

// A CUBIN-sized blob of pseudo-random bytes (deterministic per seed).
inline CompiledKernel fake_kernel(std::size_t cubin_bytes, unsigned seed) {
  CompiledKernel k;
  std::mt19937 rng(seed);
  k.cubin.resize(cubin_bytes);
  for (char& c : k.cubin) c = static_cast<char>(rng() & 0xff);
  k.log = "ptxas info: fake kernel " + std::to_string(seed);
  k.lowered_names = {{"fwd<128>", "_Z3fwdILi128EEvv"}};
  k.registers = 128;
  k.shared_bytes = 49152;
  k.local_bytes = 0;
  k.compile_ms = 812.5;
  return k;
}

inline CacheConfig config_in(const std::filesystem::path& dir, std::uint64_t max_bytes = 0) {
  CacheConfig c;
  c.dir = dir;
  c.max_bytes = max_bytes;
  return c;
}

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void spit(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A compile function that counts its calls.
struct CountingCompiler {
  std::atomic<int> calls{0};
  CompiledKernel payload;
  std::function<CompiledKernel()> fn() {
    return [this] {
      ++calls;
      return payload;
    };
  }
};

}  // namespace spattn::test
