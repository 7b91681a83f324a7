// The JIT pipeline: rendered source -> kernel cache (NVRTC on a miss) -> module loaded
// on a device -> launchable kernel, with an in-memory map of loaded kernels per device.
#pragma once

#include <spattn/cache.hpp>

#include <string>

#include "codegen/kernel_spec.hpp"
#include "runtime/device.hpp"

namespace spattn::engine {

// The manifest (cache key input) of a rendered program for `arch`.
KernelManifest manifest_for(const codegen::RenderedKernel& rendered, const std::string& arch);

// Compiles through the cache (no GPU needed). NVRTC runs only on a miss.
CacheLookup compile_cached(const codegen::RenderedKernel& rendered, const std::string& arch,
                           KernelCache& cache = KernelCache::instance());

struct JitKernel {
  runtime::Kernel kernel;
  std::string cache_key;
  bool cache_hit = false;      // served from the disk cache when first loaded in this process
  int registers = -1;
  int local_bytes = -1;
  double compile_ms = 0;       // NVRTC time when it was compiled (0 on a hit)
  double load_ms = 0;          // cache lookup + module load, this process
};

// The kernel `rendered.kernel_name` (or `entry` if given) for the arch of `device`,
// loaded there. Loaded modules are kept for the life of the process, one per (device,
// cache key); a CUBIN the driver rejects is removed from the cache and compiled afresh.
const JitKernel& load_kernel(const codegen::RenderedKernel& rendered, int device, const std::string& entry = "",
                             KernelCache& cache = KernelCache::instance());

}  // namespace spattn::engine
