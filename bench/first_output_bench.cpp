// Time from process start to the first sparse-attention output: window 1024 at 16k
// tokens, H=16, D=128, bf16 (PERFORMANCE.md target: <= 1 s on a warm kernel cache).
// Run it twice: the first run may compile (cold cache), the second must not.
//   bench/first_output_bench
#include <spattn/attention.hpp>
#include <spattn/cache.hpp>

#include <chrono>
#include <cstdio>

#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

int main() {
  const auto t0 = std::chrono::steady_clock::now();
  if (!spattn::runtime::has_gpu()) {
    std::printf("first_output: skipped, no GPU (%s)\n", spattn::runtime::no_gpu_reason().c_str());
    return 0;
  }
  const int64_t n = 16384, H = 16, D = 128, elems = n * H * D;
  spattn::runtime::DeviceBuffer q(elems * 2), k(elems * 2), v(elems * 2), o(elems * 2);
  spattn::engine::fill_random(q.data(), elems, spattn::DType::kBFloat16, 1);
  spattn::engine::fill_random(k.data(), elems, spattn::DType::kBFloat16, 2);
  spattn::engine::fill_random(v.data(), elems, spattn::DType::kBFloat16, 3);
  auto view = [&](const spattn::runtime::DeviceBuffer& b) {
    return spattn::TensorView::contiguous(b.data(), spattn::DType::kBFloat16, {1, n, H, D});
  };
  const auto t1 = std::chrono::steady_clock::now();
  spattn::Attention attn(spattn::Pattern::parse(R"({"type":"local_window","window":1024})"));
  attn.forward(view(q), view(k), view(v), view(o));
  spattn::runtime::synchronize();
  const auto t2 = std::chrono::steady_clock::now();
  const auto c = spattn::KernelCache::global_counters();
  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  std::printf("first_output: %.0f ms from process start (%.0f ms from the first spattn call; CUDA init and inputs "
              "%.0f ms); kernel cache: %llu hits, %llu compiles\n",
              ms(t0, t2), ms(t1, t2), ms(t0, t1), static_cast<unsigned long long>(c.hits),
              static_cast<unsigned long long>(c.compiles));
  return 0;
}
