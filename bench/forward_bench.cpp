// Forward attention on the GPU, bf16, head dim 128, B=1, H=16 (issue 4 §6 cases).
// Reports median time (CUDA events around each launch sequence, inputs rotated over
// three buffer sets so repeated runs do not measure the L2) and useful TFLOP/s =
// 4 * D * allowed pairs / time. Skips cleanly without a GPU.
//
//   bench/forward_bench [--benchmark_filter=window/16384] [--config=128x64w4s1]
#include <benchmark/benchmark.h>

#include <spattn/attention.hpp>

#include <cstring>
#include <string>
#include <vector>

#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

namespace {

std::string g_config;  // --config=...: force a kernel configuration

struct NamedPattern {
  const char* name;
  const char* json;
};

const NamedPattern kCases[] = {
    {"dense", R"({"type":"dense"})"},
    {"causal", R"({"type":"dense","causal":true})"},
    {"window1024", R"({"type":"local_window","window":1024})"},
    {"global_local", R"({"type":"global_local","global":128,"window":512})"},
    {"longnet", R"({"type":"longnet","segments":[2048,4096,8192],"rates":[1,2,4]})"},
    {"strided64", R"({"type":"strided","stride":64,"mode":"relative"})"},
    {"hierarchy3", R"({"preset":"standard"})"},
};

void BM_Forward(benchmark::State& state, const NamedPattern& c) {
  if (!spattn::runtime::has_gpu()) {
    state.SkipWithError(("no GPU: " + spattn::runtime::no_gpu_reason()).c_str());
    return;
  }
  const int64_t n = state.range(0), H = 16, D = 128;
  const int64_t elems = n * H * D;
  constexpr int kSets = 3;
  std::vector<spattn::runtime::DeviceBuffer> q, k, v;
  for (int s = 0; s < kSets; ++s) {
    q.emplace_back(elems * 2);
    k.emplace_back(elems * 2);
    v.emplace_back(elems * 2);
    spattn::engine::fill_random(q.back().data(), elems, spattn::DType::kBFloat16, 10 * s + 1);
    spattn::engine::fill_random(k.back().data(), elems, spattn::DType::kBFloat16, 10 * s + 2);
    spattn::engine::fill_random(v.back().data(), elems, spattn::DType::kBFloat16, 10 * s + 3);
  }
  spattn::runtime::DeviceBuffer o(elems * 2);
  auto view = [&](const spattn::runtime::DeviceBuffer& b) {
    return spattn::TensorView::contiguous(b.data(), spattn::DType::kBFloat16, {1, n, H, D});
  };
  spattn::AttentionOptions opts;
  if (!g_config.empty()) opts.config = spattn::KernelConfig::parse(g_config);
  spattn::Attention attn(spattn::Pattern::parse(c.json), opts);
  attn.forward(view(q[0]), view(k[0]), view(v[0]), view(o));  // layout, compile, load
  spattn::runtime::synchronize();
  const double flops = 4.0 * D * attn.explanation().stats.allowed_pairs_total;
  int set = 0;
  for (auto _ : state) {
    spattn::runtime::Event start, stop;
    start.record();
    attn.forward(view(q[set]), view(k[set]), view(v[set]), view(o));
    stop.record();
    stop.synchronize();
    state.SetIterationTime(stop.elapsed_ms_since(start) / 1e3);
    set = (set + 1) % kSets;
  }
  state.counters["TFLOPs"] = benchmark::Counter(flops * state.iterations() / 1e12, benchmark::Counter::kIsRate);
  state.counters["density"] = attn.explanation().stats.density;
  state.SetLabel(attn.explanation().config.to_string());
}

// Host time of one forward() call (no synchronisation): the launch overhead a caller
// pays per call once the plan exists.
void BM_ForwardHostOverhead(benchmark::State& state) {
  if (!spattn::runtime::has_gpu()) {
    state.SkipWithError(("no GPU: " + spattn::runtime::no_gpu_reason()).c_str());
    return;
  }
  const int64_t n = 4096, H = 16, D = 128, elems = n * H * D;
  spattn::runtime::DeviceBuffer q(elems * 2), o(elems * 2);
  spattn::engine::fill_random(q.data(), elems, spattn::DType::kBFloat16, 1);
  const auto t = spattn::TensorView::contiguous(q.data(), spattn::DType::kBFloat16, {1, n, H, D});
  const auto to = spattn::TensorView::contiguous(o.data(), spattn::DType::kBFloat16, {1, n, H, D});
  spattn::Attention attn(spattn::Pattern::parse(R"({"type":"local_window","window":256})"));
  attn.forward(t, t, t, to);
  spattn::runtime::synchronize();
  int calls = 0;
  for (auto _ : state) {
    attn.forward(t, t, t, to);
    if (++calls % 64 == 0) {
      state.PauseTiming();
      spattn::runtime::synchronize();
      state.ResumeTiming();
    }
  }
  spattn::runtime::synchronize();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest;
  for (int a = 0; a < argc; ++a) {
    if (std::strncmp(argv[a], "--config=", 9) == 0) g_config = argv[a] + 9;
    else rest.push_back(argv[a]);
  }
  for (const auto& c : kCases)
    benchmark::RegisterBenchmark((std::string("forward/") + c.name).c_str(), BM_Forward, c)
        ->Arg(16384)
        ->Arg(65536)
        ->UseManualTime()
        ->MinTime(0.3)
        ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("forward_host_overhead", BM_ForwardHostOverhead)->Unit(benchmark::kMicrosecond);
  int rc = static_cast<int>(rest.size());
  benchmark::Initialize(&rc, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
