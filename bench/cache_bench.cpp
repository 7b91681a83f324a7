// Kernel cache costs on the CPU: a hit (the target is <= 5 ms to a launchable function,
// of which this load is one part), a miss that stores a kernel, and computing a key.
//
//   build/bench/cache_bench --benchmark_filter=Cache
#include <benchmark/benchmark.h>

#include <spattn/cache.hpp>

#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

namespace {

namespace fs = std::filesystem;

// A scratch cache directory under $TMPDIR, removed at the end of the benchmark.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (fs::temp_directory_path() / "spattn-cache-bench-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) std::abort();
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// A realistic manifest: generated attention kernels are tens of KB of source.
spattn::KernelManifest manifest(int variant) {
  spattn::KernelManifest m;
  std::string source;
  for (int line = 0; source.size() < 48 * 1024; ++line) {
    source += "  acc[" + std::to_string(line % 64) + "] = fmaf(q[" + std::to_string(line) + "], k, acc);\n";
  }
  m.source = "// variant " + std::to_string(variant) + "\n" + source;
  m.template_hashes = {{"forward.cuh", std::string(64, 'a')}, {"params.cuh", std::string(64, 'b')}};
  m.options = {"--gpu-architecture=sm_90a", "-std=c++17", "-DSPATTN_TILE_M=128", "-DSPATTN_TILE_N=64"};
  m.arch = "sm_90a";
  m.nvrtc_version = "13.0";
  m.spattn_version = SPATTN_VERSION_STRING;
  m.kernel_name = "spattn_fwd_bench";
  return m;
}

spattn::CompiledKernel payload(std::size_t bytes) {
  spattn::CompiledKernel k;
  std::mt19937 rng(1);
  k.cubin.resize(bytes);
  for (char& c : k.cubin) c = static_cast<char>(rng());
  k.lowered_names = {{"spattn_fwd<128, 64>", "_Z10spattn_fwdILi128ELi64EEvv"}};
  k.registers = 168;
  k.shared_bytes = 98304;
  k.compile_ms = 900;
  return k;
}

spattn::CacheConfig config(const fs::path& dir) {
  spattn::CacheConfig c;
  c.dir = dir;
  c.max_bytes = 0;
  return c;
}

void BM_CacheHit(benchmark::State& state) {
  ScratchDir dir;
  spattn::KernelCache cache(config(dir.path()));
  const spattn::KernelManifest m = manifest(0);
  const spattn::CompiledKernel k = payload(static_cast<std::size_t>(state.range(0)));
  cache.get_or_compile(m, [&] { return k; });
  for (auto _ : state) {
    spattn::CacheLookup r = cache.get_or_compile(m, [&] { return k; });
    if (!r.hit) state.SkipWithError("expected a cache hit");
    benchmark::DoNotOptimize(r.kernel.cubin.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));
  state.counters["hits"] = static_cast<double>(cache.counters().hits);
}
BENCHMARK(BM_CacheHit)->Arg(100 << 10)->Arg(300 << 10)->Unit(benchmark::kMicrosecond);

void BM_CacheMissStore(benchmark::State& state) {
  ScratchDir dir;
  spattn::KernelCache cache(config(dir.path()));
  const spattn::CompiledKernel k = payload(static_cast<std::size_t>(state.range(0)));
  int variant = 0;
  for (auto _ : state) {
    state.PauseTiming();
    const spattn::KernelManifest m = manifest(++variant);
    state.ResumeTiming();
    // Instant "compile": what is timed is hashing, the lock, the write, fsync and rename.
    benchmark::DoNotOptimize(cache.get_or_compile(m, [&] { return k; }).hit);
  }
}
BENCHMARK(BM_CacheMissStore)->Arg(300 << 10)->Unit(benchmark::kMicrosecond);

void BM_CacheKey(benchmark::State& state) {
  const spattn::KernelManifest m = manifest(0);
  for (auto _ : state) benchmark::DoNotOptimize(m.key());
}
BENCHMARK(BM_CacheKey)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
