// A program written the way a user of an installed spattn writes one: only the public
// headers and libspattn. It parses a pattern, compiles its layout, prints the stats and
// the block picture, checks that errors cross the library boundary as spattn::Error,
// then runs a forward pass: on a host without a GPU that must throw ErrorCode::kNoGpu;
// with a GPU, a tiny problem is run and compared with the host reference.
#include <spattn/spattn.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "device.hpp"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

std::uint16_t to_bf16(float x) {  // round to nearest even
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
  return static_cast<std::uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}
float from_bf16(std::uint16_t h) { return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16); }

// B=1, N=256, H=2, D=64, bf16 on the GPU, against the fp64 host reference.
void run_on_gpu(spattn::Attention& attn) {
  constexpr int64_t kN = 256, kHeads = 2, kDim = 64;
  const size_t count = kN * kHeads * kDim;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<std::uint16_t> q(count), k(count), v(count), o(count, 0xffff);  // O poisoned (NaN)
  std::vector<float> qf(count), kf(count), vf(count);
  for (size_t i = 0; i < count; ++i) {
    q[i] = to_bf16(dist(rng));
    k[i] = to_bf16(dist(rng));
    v[i] = to_bf16(dist(rng));
    qf[i] = from_bf16(q[i]);
    kf[i] = from_bf16(k[i]);
    vf[i] = from_bf16(v[i]);
  }
  const size_t bytes = count * sizeof(std::uint16_t);
  void* dq = consumer::device_alloc(bytes);
  void* dk = consumer::device_alloc(bytes);
  void* dv = consumer::device_alloc(bytes);
  void* dout = consumer::device_alloc(bytes);
  consumer::copy_to_device(dq, q.data(), bytes);
  consumer::copy_to_device(dk, k.data(), bytes);
  consumer::copy_to_device(dv, v.data(), bytes);
  consumer::copy_to_device(dout, o.data(), bytes);
  const std::array<int64_t, 4> shape{1, kN, kHeads, kDim};
  using spattn::TensorView;
  attn.forward(TensorView::contiguous(dq, spattn::DType::kBFloat16, shape),
               TensorView::contiguous(dk, spattn::DType::kBFloat16, shape),
               TensorView::contiguous(dv, spattn::DType::kBFloat16, shape),
               TensorView::contiguous(dout, spattn::DType::kBFloat16, shape));
  consumer::device_synchronize();
  consumer::copy_to_host(o.data(), dout, bytes);
  for (void* p : {dq, dk, dv, dout}) consumer::device_free(p);

  std::vector<double> ref, lse;
  spattn::reference_attention(attn.pattern(), spattn::Shape{kN, kN, kHeads}, 1, kHeads, kDim, qf.data(), kf.data(),
                              vf.data(), 1.0 / std::sqrt(double(kDim)), ref, lse);
  double max_err = 0;
  for (size_t i = 0; i < count; ++i) {
    const double err = std::fabs(from_bf16(o[i]) - ref[i]);
    max_err = std::isnan(err) ? INFINITY : std::max(max_err, err);
  }
  std::printf("%s", attn.explain().c_str());
  expect(max_err < 2e-2, "forward matches the host reference (max abs error " + std::to_string(max_err) + ")");
}

}  // namespace

int main() {
  try {
    std::printf("spattn %s\n", spattn::version());

    const spattn::Pattern pattern = spattn::Pattern::parse(R"({"type": "local_window", "window": 256, "causal": true})");
    std::printf("pattern %s\n", pattern.to_json().c_str());
    expect(pattern.kind() == "local_window" && pattern.causal(), "pattern parsed");

    // window 256, causal: query i attends keys max(0, i - 128) .. i.
    const spattn::Shape shape{4096, 4096, 4};
    const spattn::Layout layout = spattn::compile_layout(pattern, shape);
    const spattn::LayoutStats stats = spattn::layout_stats(pattern, layout, 64);
    int64_t expected_pairs = 0;
    for (int64_t i = 0; i < shape.nq; ++i) expected_pairs += std::min<int64_t>(i, 128) + 1;
    std::printf("stats: density %.4f, %.0f allowed pairs per head, %lld of %lld tiles active (%lld full)\n",
                stats.density, stats.allowed_pairs, static_cast<long long>(stats.active_tiles),
                static_cast<long long>(stats.total_tiles), static_cast<long long>(stats.full_tiles));
    expect(stats.allowed_pairs == static_cast<double>(expected_pairs), "allowed pairs per head = " +
                                                                           std::to_string(expected_pairs));
    expect(stats.active_tiles > 0 && stats.active_tiles < stats.total_tiles, "the layout is sparse");
    std::printf("%s", spattn::render_pattern(pattern, shape, 512, 0, 8).c_str());

    try {
      spattn::Pattern::parse(R"({"type": "nope"})");
      expect(false, "an unknown pattern type throws");
    } catch (const spattn::Error& e) {
      expect(e.code() == spattn::ErrorCode::kInvalidArgument, std::string("spattn::Error crosses the library: ") + e.what());
    }

    spattn::Attention attn(pattern);
    std::string no_gpu_why;
    if (consumer::gpu_present(no_gpu_why)) {
      run_on_gpu(attn);
    } else {
      std::printf("no GPU (%s): forward must throw kNoGpu\n", no_gpu_why.c_str());
      // Host memory stands in for device tensors: the call must stop before touching it.
      std::vector<std::uint16_t> host(1 * 256 * 2 * 64);
      const auto view = spattn::TensorView::contiguous(host.data(), spattn::DType::kBFloat16, {1, 256, 2, 64});
      try {
        attn.forward(view, view, view, view);
        expect(false, "forward without a GPU throws");
      } catch (const spattn::Error& e) {
        expect(e.code() == spattn::ErrorCode::kNoGpu,
               std::string("forward without a GPU throws kNoGpu (") + spattn::error_code_name(e.code()) + "): " + e.what());
      }
    }
  } catch (const std::exception& e) {
    std::printf("FAIL unexpected exception: %s\n", e.what());
    return 1;
  }
  std::printf("%s\n", failures == 0 ? "consumer: all checks passed" : "consumer: FAILED");
  return failures == 0 ? 0 : 1;
}
