// encoder.cpp: a two-layer encoder on LongNet attention over random tokens, with the
// attention modules of spattn/modules.hpp (no CLI, no Python).
//
//   build/examples/encoder [tokens=16384] [batch=1]
//
// Each layer is an attention block x = x + MHA(x) (the residual fused into the output
// projection's epilogue) with rotary embedding and MAGNETO's sub-LayerNorm, 16 heads of
// 64 over E = 1024, bf16, LongNet segments [2048, 4096, 8192] with rates [1, 2, 4]. It
// prints the shapes, the time per encoder pass and how much of a layer is attention.
#include <spattn/modules.hpp>

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(status));
    std::exit(1);
  }
}

// Host bf16 bits of x (round to nearest even), for the random input.
uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

// Milliseconds per call of fn, averaged over `reps` after one warm-up call.
template <typename Fn>
float time_ms(Fn&& fn, int reps) {
  fn();
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  check(cudaEventRecord(start), "cudaEventRecord");
  for (int i = 0; i < reps; ++i) fn();
  check(cudaEventRecord(stop), "cudaEventRecord");
  check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / static_cast<float>(reps);
}

}  // namespace

int main(int argc, char** argv) try {
  const int64_t N = argc > 1 ? std::atoll(argv[1]) : 16384;
  const int64_t B = argc > 2 ? std::atoll(argv[2]) : 1;
  const int64_t E = 1024, H = 16, layers = 2;
  const auto pattern =
      spattn::Pattern::parse(R"({"type": "longnet", "segments": [2048, 4096, 8192], "rates": [1, 2, 4]})");

  spattn::MultiheadAttentionOptions options;
  options.dtype = spattn::DType::kBFloat16;
  options.rotary.enabled = true;
  options.sub_layernorm = true;
  std::vector<spattn::MultiheadAttention> blocks;
  for (int64_t l = 0; l < layers; ++l) {
    options.seed = static_cast<uint64_t>(l);  // each layer its own initialisation
    blocks.emplace_back(E, H, H, pattern, options);
  }

  // Random tokens in [-1, 1), bf16, [B, N, E].
  std::vector<uint16_t> host(static_cast<size_t>(B * N * E));
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (auto& x : host) x = to_bf16(uniform(rng));
  // Layer l reads buffer l and writes buffer l + 1, so the input survives repeated passes.
  std::vector<void*> buffers(layers + 1);
  std::vector<spattn::TensorView> views;
  for (void*& p : buffers) {
    check(cudaMalloc(&p, host.size() * 2), "cudaMalloc");
    views.push_back(spattn::TensorView::contiguous3(p, spattn::DType::kBFloat16, {B, N, E}));
  }
  check(cudaMemcpy(buffers[0], host.data(), host.size() * 2, cudaMemcpyHostToDevice), "cudaMemcpy");

  auto encode = [&] {
    for (int64_t l = 0; l < layers; ++l) {
      spattn::ForwardExtras residual;  // x_{l+1} = x_l + MHA(x_l), the residual in the output GEMM's epilogue
      residual.residual = &views[l];
      blocks[l].forward(views[l], views[l], views[l], views[l + 1], residual);
    }
  };
  const float encoder_ms = time_ms(encode, 10);
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");

  // The attention of one layer alone, on buffers of its shape, for the split.
  void *q, *o;
  check(cudaMalloc(&q, host.size() * 2), "cudaMalloc");
  check(cudaMalloc(&o, host.size() * 2), "cudaMalloc");
  check(cudaMemset(q, 0, host.size() * 2), "cudaMemset");
  const auto heads = [&](void* p) { return spattn::TensorView::contiguous(p, spattn::DType::kBFloat16, {B, N, H, E / H}); };
  spattn::Attention& attention = blocks[0].attention();
  const float attention_ms = time_ms([&] { attention.forward(heads(q), heads(q), heads(q), heads(o)); }, 10);

  std::vector<uint16_t> result(host.size());
  check(cudaMemcpy(result.data(), buffers[layers], result.size() * 2, cudaMemcpyDeviceToHost), "cudaMemcpy");
  double sum = 0;
  for (uint16_t bits : result) {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    sum += f;
  }
  std::printf("encoder: %lld layers, x [%lld, %lld, %lld] bf16, %lld heads of %lld, LongNet %s\n",
              static_cast<long long>(layers), static_cast<long long>(B), static_cast<long long>(N),
              static_cast<long long>(E), static_cast<long long>(H), static_cast<long long>(E / H),
              pattern.to_json().c_str());
  std::printf("encoder pass %.3f ms (%.0f tokens/s); per layer %.3f ms, of which attention %.3f ms (%.0f%%)\n",
              encoder_ms, static_cast<double>(B * N) / (encoder_ms * 1e-3), encoder_ms / layers, attention_ms,
              100.0 * attention_ms / (encoder_ms / layers));
  std::printf("output mean %.6f\n%s", sum / static_cast<double>(result.size()), blocks[0].explain().c_str());
  for (void* p : buffers) cudaFree(p);
  for (void* p : {q, o}) cudaFree(p);
  return 0;
} catch (const spattn::Error& e) {
  std::fprintf(stderr, "%s: %s\n", spattn::error_code_name(e.code()), e.what());
  return e.code() == spattn::ErrorCode::kNoGpu ? 3 : 1;
}
