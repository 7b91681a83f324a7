#include "engine/reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

#include "common/check.hpp"
#include "templates/params.cuh"

namespace spattn::engine {

std::vector<uint32_t> build_masks(const Pattern& pattern, const Problem& problem) {
  const Shape shape = problem.shape();
  const int branches = pattern.branch_count();
  const int64_t words = (problem.nk + 31) / 32;
  const int64_t rows = static_cast<int64_t>(branches) * problem.heads * problem.nq;
  std::vector<uint32_t> masks(static_cast<size_t>(rows * words), 0u);
  const unsigned threads = std::max(1u, std::min(64u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int64_t r = t; r < rows; r += threads) {
        const int64_t i = r % problem.nq;
        const int64_t h = (r / problem.nq) % problem.heads;
        const int b = static_cast<int>(r / (problem.nq * problem.heads));
        if (!pattern.takes_part(shape, b, h, i)) continue;
        uint32_t* row = masks.data() + r * words;
        for (int64_t j = 0; j < problem.nk; ++j)
          if (pattern.allowed_in_branch(shape, b, h, i, j)) row[j / 32] |= 1u << (j % 32);
      }
    });
  }
  for (auto& th : pool) th.join();
  return masks;
}

ReferenceResult reference_forward(const Pattern& pattern, const Problem& problem, const TensorView& q,
                                  const TensorView& k, const TensorView& v, float scale) {
  return reference_forward_masks(build_masks(pattern, problem), pattern.branch_count(), problem, q, k, v, scale);
}

ReferenceResult reference_forward_masks(const std::vector<uint32_t>& masks, int branches, const Problem& problem,
                                        const TensorView& q, const TensorView& k, const TensorView& v, float scale) {
  const size_t words = static_cast<size_t>((problem.nk + 31) / 32);
  SPATTN_REQUIRE(masks.size() == static_cast<size_t>(branches * problem.heads * problem.nq) * words,
                 "reference: {} mask words for {} branches of {}", masks.size(), branches, problem.to_string());
  runtime::DeviceBuffer dmask(masks.size() * 4);
  dmask.upload(masks.data(), masks.size() * 4);
  const size_t o_elems = static_cast<size_t>(problem.batch * problem.nq * problem.heads * problem.head_dim);
  const size_t l_elems = static_cast<size_t>(problem.batch * problem.heads * problem.nq);
  runtime::DeviceBuffer dout(o_elems * 4), dlse(l_elems * 4);

  SpattnReferenceParams p{};
  set_inputs(p, q, k, v);
  p.o = reinterpret_cast<float*>(dout.get());
  p.lse = reinterpret_cast<float*>(dlse.get());
  p.masks = reinterpret_cast<const uint32_t*>(dmask.get());
  p.batch = static_cast<int32_t>(problem.batch);
  p.nq = static_cast<int32_t>(problem.nq);
  p.nk = static_cast<int32_t>(problem.nk);
  p.heads = static_cast<int32_t>(problem.heads);
  p.kv_group = static_cast<int32_t>(problem.heads / problem.kv_heads);
  p.head_dim = static_cast<int32_t>(problem.head_dim);
  p.branches = branches;
  p.words = static_cast<int32_t>((problem.nk + 31) / 32);
  p.bf16 = problem.dtype == DType::kBFloat16 ? 1 : 0;
  p.scale = scale > 0 ? scale : 1.0f / std::sqrt(static_cast<float>(problem.head_dim));

  const JitKernel& kern = load_kernel(codegen::render_support_kernels(), runtime::current_device(), "spattn_reference");
  const int64_t rows = problem.batch * problem.heads * problem.nq;
  void* args[] = {&p};
  kern.kernel.launch({static_cast<unsigned>((rows + 7) / 8)}, {256}, 0, nullptr, args);
  runtime::synchronize();
  ReferenceResult r;
  r.o.resize(o_elems);
  r.lse.resize(l_elems);
  dout.download(r.o.data(), o_elems * 4);
  dlse.download(r.lse.data(), l_elems * 4);
  return r;
}

}  // namespace spattn::engine

namespace spattn::engine {

void fill_random(void* data, int64_t n, DType dtype, uint64_t seed, float scale, CUstream stream) {
  SPATTN_REQUIRE(dtype == DType::kFloat16 || dtype == DType::kBFloat16, "fill_random: fp16/bf16 only");
  SpattnRandomParams p{};
  p.data = data;
  p.n = n;
  p.seed = seed;
  p.scale = scale;
  p.bf16 = dtype == DType::kBFloat16 ? 1 : 0;
  const JitKernel& kern = load_kernel(codegen::render_support_kernels(), runtime::current_device(), "spattn_fill_random");
  void* args[] = {&p};
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 65535);
  kern.kernel.launch({static_cast<unsigned>(std::max<int64_t>(blocks, 1))}, {256}, 0, stream, args);
}

std::vector<float> download_values(const runtime::DeviceBuffer& buf, size_t n, DType dtype) {
  std::vector<float> out(n);
  if (dtype == DType::kFloat32) {
    buf.download(out.data(), n * 4);
  } else {
    std::vector<uint16_t> bits(n);
    buf.download(bits.data(), n * 2);
    for (size_t k = 0; k < n; ++k) out[k] = half_bits_to_float(bits[k], dtype);
  }
  return out;
}

float half_bits_to_float(uint16_t bits, DType dtype) {
  if (dtype == DType::kBFloat16) {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  const uint32_t sign = (bits >> 15) & 1, exp = (bits >> 10) & 0x1f, mant = bits & 0x3ff;
  float v;
  if (exp == 0) v = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31) v = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  else v = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

std::string Comparison::to_string() const {
  return fmt::format("max |err| {:.3g}, rel L2 {:.3g}, max LSE err {:.3g}, non-finite {}, LSE -inf mismatches {}",
                     max_abs_err, rel_l2_err, max_lse_err, nonfinite, lse_mismatch);
}

Comparison compare(const std::vector<uint16_t>& out, DType dtype, const std::vector<float>& lse,
                   const ReferenceResult& ref) {
  Comparison c;
  SPATTN_REQUIRE(out.size() == ref.o.size(), "compare: output has {} values, reference {}", out.size(), ref.o.size());
  double num = 0, den = 0;
  for (size_t k = 0; k < out.size(); ++k) {
    const double x = half_bits_to_float(out[k], dtype);
    if (!std::isfinite(x)) {
      ++c.nonfinite;
      continue;
    }
    const double e = std::abs(x - ref.o[k]);
    c.max_abs_err = std::max(c.max_abs_err, e);
    num += e * e;
    den += static_cast<double>(ref.o[k]) * ref.o[k];
  }
  c.rel_l2_err = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  if (!lse.empty()) {
    SPATTN_REQUIRE(lse.size() == ref.lse.size(), "compare: LSE sizes differ");
    for (size_t k = 0; k < lse.size(); ++k) {
      const bool a = std::isinf(lse[k]) && lse[k] < 0, b = std::isinf(ref.lse[k]) && ref.lse[k] < 0;
      if (std::isnan(lse[k])) ++c.nonfinite;
      else if (a != b) ++c.lse_mismatch;
      else if (!a) c.max_lse_err = std::max(c.max_lse_err, static_cast<double>(std::abs(lse[k] - ref.lse[k])));
    }
  }
  return c;
}

}  // namespace spattn::engine
