// JIT costs against the targets of PERFORMANCE.md §5: a cold NVRTC compile of a forward
// kernel (<= 1 s), a cache hit to a compiled kernel and, with a GPU, to a loaded launchable
// function (<= 5 ms), and a prewarm of 50 kernels on this host's cores (<= 60 s on the
// 2-core CPU machine).
//
//   build/bench/jit_bench                                   # all
//   build/bench/jit_bench --benchmark_filter=Prewarm        # the 50-kernel prewarm only
//   SPATTN_NVRTC_THREADS=2 build/bench/jit_bench ...        # pin the compile pool
#include <benchmark/benchmark.h>

#include <spattn/autotune.hpp>
#include <spattn/cache.hpp>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "api/select.hpp"
#include "autotune/tuning_db.hpp"
#include "engine/forward.hpp"
#include "engine/jit.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

namespace {

namespace fs = std::filesystem;
using namespace spattn;

class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (fs::temp_directory_path() / "spattn-jit-bench-XXXXXX").string();
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

constexpr const char* kArch = "sm_90a";

// The forward kernel the heuristic picks for a pattern at 16k tokens, 16 heads.
codegen::RenderedKernel forward_kernel(const char* pattern_json, int head_dim = 128) {
  const Pattern pattern = Pattern::parse(pattern_json);
  engine::Problem p;
  p.nq = p.nk = 16384;
  p.heads = p.kv_heads = 16;
  p.head_dim = head_dim;
  runtime::DeviceInfo h100;
  h100.cc_major = 9;
  h100.sm_count = 132;
  const KernelConfig config = api::heuristic(pattern, p, h100).config;
  const Layout layout = compile_layout(pattern, p.shape(), config.layout_options());
  return engine::render_kernel(layout, config, p, kArch);
}

const char* kWindow = R"({"type":"local_window","window":1024})";
const char* kLongNet = R"({"type":"longnet","segments":[2048,4096,8192],"rates":[1,2,4]})";

// NVRTC every time: a cache that is disabled compiles on each request.
void BM_ColdCompile(benchmark::State& state, const char* pattern) {
  const codegen::RenderedKernel r = forward_kernel(pattern);
  CacheConfig c;
  c.dir = "/nonexistent";
  c.disabled = true;
  KernelCache cache(c);
  double nvrtc_ms = 0;
  for (auto _ : state) nvrtc_ms = engine::compile_cached(r, kArch, cache).kernel.compile_ms;
  state.counters["nvrtc_ms"] = nvrtc_ms;
}
BENCHMARK_CAPTURE(BM_ColdCompile, window_hd128_sm90a, kWindow)->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_ColdCompile, longnet_hd128_sm90a, kLongNet)->Iterations(3)->Unit(benchmark::kMillisecond);

// A hit: manifest and key, the file read and checked, the kernel returned (no GPU).
void BM_CacheHitCompiled(benchmark::State& state) {
  ScratchDir dir;
  CacheConfig c;
  c.dir = dir.path();
  c.max_bytes = 0;
  KernelCache cache(c);
  const codegen::RenderedKernel r = forward_kernel(kWindow);
  engine::compile_cached(r, kArch, cache);
  for (auto _ : state) {
    const CacheLookup found = engine::compile_cached(r, kArch, cache);
    if (!found.hit) state.SkipWithError("expected a cache hit");
    benchmark::DoNotOptimize(found.kernel.cubin.data());
  }
}
BENCHMARK(BM_CacheHitCompiled)->Unit(benchmark::kMicrosecond);

// A hit to a launchable function: the cache hit plus the module load on the GPU.
void BM_CacheHitLaunchable(benchmark::State& state) {
  if (!runtime::has_gpu()) {
    state.SkipWithError("no GPU on this host");
    return;
  }
  runtime::make_current(0);
  const std::string arch = runtime::device_info(0).arch();
  ScratchDir dir;
  CacheConfig c;
  c.dir = dir.path();
  c.max_bytes = 0;
  KernelCache cache(c);
  const codegen::RenderedKernel r = forward_kernel(kWindow);
  engine::compile_cached(r, arch, cache);
  for (auto _ : state) {
    const CacheLookup found = engine::compile_cached(r, arch, cache);
    const runtime::Kernel k = runtime::Kernel::load(found.kernel.cubin, r.kernel_name);
    benchmark::DoNotOptimize(k.function());
  }
}
BENCHMARK(BM_CacheHitLaunchable)->Unit(benchmark::kMillisecond);

// Runtime selection as Attention::forward() does it on every call: with a tuning
// database that has an entry for the problem, and with none.
void BM_SelectWithDatabase(benchmark::State& state) {
  const bool with_entry = state.range(0) != 0;
  ScratchDir dir;
  const std::string saved = std::getenv("SPATTN_CACHE_DIR");  // set by main()
  setenv("SPATTN_CACHE_DIR", dir.path().c_str(), 1);
  const Pattern pattern = Pattern::parse(kWindow);
  engine::Problem p;
  p.nq = p.nk = 16384;
  p.heads = p.kv_heads = 16;
  runtime::DeviceInfo h100;
  h100.name = "NVIDIA H100 80GB HBM3";
  h100.cc_major = 9;
  h100.sm_count = 132;
  h100.l2_bytes = 50 << 20;
  h100.driver_version = 13000;
  h100.smem_per_block_optin = 227 * 1024;
  if (with_entry) {
    autotune::TunedEntry e;
    e.config = KernelConfig::parse("64x128w4s1:hilbert");
    e.median_ms = 1;
    autotune::TuningDb::store(autotune::TuningDb::default_dir(), autotune::Fingerprint::of(h100),
                              autotune::bucket_of(pattern, p, autotune::pattern_density(pattern, p)).key(), e);
  }
  for (auto _ : state) benchmark::DoNotOptimize(api::choose(pattern, p, h100, true));
  state.SetLabel(api::choose(pattern, p, h100, true).source.substr(0, 40));
  setenv("SPATTN_CACHE_DIR", saved.c_str(), 1);
}
BENCHMARK(BM_SelectWithDatabase)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

// 50 distinct forward kernels (5 patterns x 5 head dims x 2 dtypes, sm_90a) plus the
// support kernels, into an empty cache, with the bounded NVRTC pool.
void BM_Prewarm50(benchmark::State& state) {
  nlohmann::json entries = nlohmann::json::array();
  for (const char* p : {kWindow, kLongNet, R"({"type":"global_local","global":128,"window":512})",
                        R"({"type":"dilated_sparse","block":64,"rates":[1,2,4],"reach":1})",
                        R"({"union":[{"type":"strided","stride":64,"mode":"relative"},{"type":"local_window","window":128}]})"})
    entries.push_back({{"pattern", nlohmann::json::parse(p)}, {"seq", {16384}}, {"heads", 16}});
  const nlohmann::json manifest = {{"archs", {kArch}},
                                   {"dtypes", {"bf16", "fp16"}},
                                   {"head_dims", {32, 64, 96, 128, 256}},
                                   {"entries", entries}};
  PrewarmReport report;
  for (auto _ : state) {
    state.PauseTiming();
    KernelCache::instance().clear();
    state.ResumeTiming();
    report = prewarm(manifest.dump());
  }
  state.counters["kernels"] = static_cast<double>(report.kernels.size());
  state.counters["compiled"] = static_cast<double>(report.compiled);
  state.counters["failed"] = static_cast<double>(report.failed);
  state.counters["threads"] = report.threads;
  if (report.failed) state.SkipWithError("some kernels failed to compile");
}
BENCHMARK(BM_Prewarm50)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  // The prewarm goes through the process-wide cache: point it at a scratch directory
  // before anything touches it.
  ScratchDir cache_dir;
  setenv("SPATTN_CACHE_DIR", cache_dir.path().c_str(), 1);
  setenv("SPATTN_CACHE_MAX_BYTES", "0", 1);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
