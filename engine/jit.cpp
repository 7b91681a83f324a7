#include "engine/jit.hpp"

#include <chrono>
#include <map>
#include <mutex>

#include "common/check.hpp"
#include "common/log.hpp"
#include "runtime/nvrtc.hpp"

namespace spattn::engine {

namespace {

runtime::Program program_for(const codegen::RenderedKernel& r, const std::string& arch) {
  runtime::Program p;
  p.name = r.program_name;
  p.source = r.source;
  p.headers = r.headers;
  p.arch = arch;
  return p;
}

CompiledKernel to_cached(runtime::CompiledProgram c) {
  CompiledKernel k;
  k.cubin = std::move(c.cubin);
  k.log = std::move(c.log);
  k.lowered_names = std::move(c.lowered_names);
  k.registers = c.registers;
  k.shared_bytes = c.shared_bytes;
  k.local_bytes = c.local_bytes;
  k.compile_ms = c.compile_ms;
  return k;
}

}  // namespace

KernelManifest manifest_for(const codegen::RenderedKernel& rendered, const std::string& arch) {
  const runtime::Program program = program_for(rendered, arch);
  KernelManifest m;
  m.source = rendered.source;
  m.template_hashes = rendered.template_hashes;
  m.options = runtime::effective_options(program);
  m.arch = arch;
  m.nvrtc_version = runtime::nvrtc_version();
  m.spattn_version = SPATTN_VERSION_STRING;
  m.kernel_name = rendered.kernel_name;
  return m;
}

CacheLookup compile_cached(const codegen::RenderedKernel& rendered, const std::string& arch, KernelCache& cache) {
  const KernelManifest manifest = manifest_for(rendered, arch);
  return cache.get_or_compile(manifest, [&] { return to_cached(runtime::compile(program_for(rendered, arch))); });
}

const JitKernel& load_kernel(const codegen::RenderedKernel& rendered, int device, const std::string& entry,
                             KernelCache& cache) {
  static std::mutex mu;
  static std::map<std::pair<int, std::string>, std::unique_ptr<JitKernel>> loaded;

  const auto t0 = std::chrono::steady_clock::now();
  runtime::make_current(device);
  const std::string arch = runtime::device_info(device).arch();
  const std::string name = entry.empty() ? rendered.kernel_name : entry;
  const KernelManifest manifest = manifest_for(rendered, arch);
  const std::string key = manifest.key();
  {
    std::lock_guard<std::mutex> lock(mu);
    if (auto it = loaded.find({device, key + "/" + name}); it != loaded.end()) return *it->second;
  }

  auto compile = [&] { return to_cached(runtime::compile(program_for(rendered, arch))); };
  CacheLookup found = cache.get_or_compile(manifest, compile);
  auto jit = std::make_unique<JitKernel>();
  try {
    jit->kernel = runtime::Kernel::load(found.kernel.cubin, name);
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kNoGpu) throw;
    // A CUBIN the driver will not load (damaged in a way the checksum cannot see, or
    // built by a toolchain this driver is too old for) is a miss: drop it and rebuild.
    cache.remove(found.key, std::string("the driver rejected its CUBIN: ") + e.what());
    found = cache.get_or_compile(manifest, compile);
    jit->kernel = runtime::Kernel::load(found.kernel.cubin, name);
  }
  jit->cache_key = found.key;
  jit->cache_hit = found.hit;
  jit->registers = found.kernel.registers;
  jit->local_bytes = found.kernel.local_bytes;
  jit->compile_ms = found.hit ? 0 : found.kernel.compile_ms;
  jit->load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  log::debug("kernel {} ({}) on device {}: {} in {:.1f} ms", name, found.key.substr(0, 12), device,
             found.hit ? "cache hit" : "compiled", jit->load_ms);

  std::lock_guard<std::mutex> lock(mu);
  auto& slot = loaded[{device, key + "/" + name}];
  if (!slot) slot = std::move(jit);
  return *slot;
}

}  // namespace spattn::engine
