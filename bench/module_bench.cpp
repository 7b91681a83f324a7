// The multihead attention module against its parts (issue target: module <= 1.1 x the
// projection GEMMs at cuBLASLt speed + the attention alone). Self-attention over
// x [1, N, E] bf16 with biases: the module's forward, then on buffers of the same shapes
// the fused QKV GEMM ([N, E] x [E, 3E]), the attention alone ([1, N, H, E / H], the
// module's own spattn::Attention) and the output GEMM ([N, E] x [E, E]), each timed with
// CUDA events (median of --rounds rounds of --reps calls after a warm-up).
//
//   bench/module_bench [--seq N] [--embed E] [--heads H] [--pattern longnet|window|JSON]
//                      [--reps R] [--rounds K]
#include <spattn/modules.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "api/tools.hpp"
#include "modules/gemm.hpp"

namespace {

namespace tools = spattn::tools;

// Median over `rounds` of the mean time of `reps` calls, after one warm-up call.
template <typename Fn>
float time_ms(Fn&& fn, int reps, int rounds) {
  fn();
  tools::synchronize();
  tools::Timer timer;
  std::vector<float> times;
  for (int r = 0; r < rounds; ++r) {
    timer.start();
    for (int i = 0; i < reps; ++i) fn();
    times.push_back(timer.stop_ms() / static_cast<float>(reps));
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

std::string pattern_json(const std::string& name) {
  if (name == "longnet") return R"({"type":"longnet","segments":[2048,4096,8192],"rates":[1,2,4]})";
  if (name == "window") return R"({"type":"local_window","window":1024})";
  return name;  // inline JSON
}

}  // namespace

int main(int argc, char** argv) try {
  int64_t N = 65536, E = 2048, H = 16;
  int reps = 10, rounds = 5;
  std::string pattern_name = "longnet";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--seq") N = std::atoll(v.c_str());
    else if (a == "--embed") E = std::atoll(v.c_str());
    else if (a == "--heads") H = std::atoll(v.c_str());
    else if (a == "--pattern") pattern_name = v;
    else if (a == "--reps") reps = std::atoi(v.c_str());
    else if (a == "--rounds") rounds = std::atoi(v.c_str());
    else {
      std::fprintf(stderr, "module_bench: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (argc % 2 == 0) {
    std::fprintf(stderr, "module_bench: option %s has no value\n", argv[argc - 1]);
    return 2;
  }
  if (N < 1 || E < 1 || H < 1 || E % H != 0 || reps < 1 || rounds < 1) {
    std::fprintf(stderr, "module_bench: need N, E, H, reps, rounds >= 1 and H dividing E\n");
    return 2;
  }
  if (!tools::has_gpu()) {
    std::printf("module_bench: skipped, no GPU (%s)\n", tools::no_gpu_reason().c_str());
    return 0;
  }
  const spattn::DType bf16 = spattn::DType::kBFloat16;
  const spattn::Pattern pattern = spattn::Pattern::parse(pattern_json(pattern_name));
  spattn::MultiheadAttentionOptions options;
  options.dtype = bf16;
  spattn::MultiheadAttention mha(E, H, H, pattern, options);

  const int64_t D = E / H;
  tools::DeviceTensor x(bf16, {1, N, E}), out(bf16, {1, N, E}), qkv(bf16, {1, N, 3 * E}), attn_out(bf16, {1, N, H, D});
  x.fill_random(1);
  qkv.fill_random(2);
  const float module_ms = time_ms([&] { mha.forward(x.view(), x.view(), x.view(), out.view()); }, reps, rounds);

  // The parts on buffers of their shapes: GEMMs with the module's weights and biases.
  const spattn::MultiheadWeights w = mha.weights();
  spattn::modules::Gemm gemm;
  spattn::modules::GemmArgs in{};
  in.m = 3 * E, in.n = N, in.k = E;
  in.w = w.in_proj_weight, in.ldw = E, in.x = x.view().data, in.ldx = E, in.y = qkv.view().data, in.ldy = 3 * E;
  in.bias = w.in_proj_bias;
  const float qkv_ms = time_ms([&] { gemm.run(in, true, nullptr); }, reps, rounds);
  spattn::modules::GemmArgs o{};
  o.m = E, o.n = N, o.k = E;
  o.w = w.out_proj_weight, o.ldw = E, o.x = attn_out.view().data, o.ldx = E, o.y = out.view().data, o.ldy = E;
  o.bias = w.out_proj_bias;
  const float out_ms = time_ms([&] { gemm.run(o, true, nullptr); }, reps, rounds);
  // Q, K, V as the module's attention sees them: head views into the fused QKV rows.
  const auto head_view = [&](int64_t part) {
    spattn::TensorView t =
        spattn::TensorView::contiguous(static_cast<char*>(qkv.view().data) + part * E * 2, bf16, {1, N, H, D});
    t.strides[0] = N * 3 * E;
    t.strides[1] = 3 * E;
    return t;
  };
  spattn::Attention& attention = mha.attention();
  const float attention_ms =
      time_ms([&] { attention.forward(head_view(0), head_view(1), head_view(2), attn_out.view()); }, reps, rounds);
  tools::synchronize();

  const float parts = qkv_ms + attention_ms + out_ms;
  std::printf("module_bench: %s, x [1, %lld, %lld] bf16, %lld heads of %lld, pattern %s\n",
              tools::current_gpu().name.c_str(),
              static_cast<long long>(N), static_cast<long long>(E), static_cast<long long>(H),
              static_cast<long long>(D), pattern.to_json().c_str());
  std::printf("  module forward %.3f ms\n  parts: QKV GEMM %.3f + attention %.3f + output GEMM %.3f = %.3f ms\n",
              module_ms, qkv_ms, attention_ms, out_ms, parts);
  std::printf("  module / parts = %.3f (target <= 1.1); attention %.0f%% of the module\n", module_ms / parts,
              100.0 * attention_ms / module_ms);
  return 0;
} catch (const spattn::Error& e) {
  std::fprintf(stderr, "module_bench: %s: %s\n", spattn::error_code_name(e.code()), e.what());
  return 1;
}
