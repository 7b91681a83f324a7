#include "tests/modules/module_reference.hpp"

#include <spattn/reference.hpp>

#include <cmath>
#include <random>

#include <fmt/format.h>

#include "modules/half.hpp"

namespace spattn::test {
namespace {

using modules::round_to;

// y[t, r] = sum_c x[t, c] * w[first + r, c] (+ bias[first + r]), rows r < rows, in fp64.
std::vector<double> linear(const std::vector<float>& x, int64_t tokens, int64_t in, const std::vector<float>& w,
                           int64_t first, int64_t rows, const std::vector<float>& bias) {
  std::vector<double> y(static_cast<size_t>(tokens * rows));
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      double s = bias.empty() ? 0.0 : bias[first + r];
      const float* xr = &x[t * in];
      const float* wr = &w[(first + r) * in];
      for (int64_t c = 0; c < in; ++c) s += static_cast<double>(xr[c]) * wr[c];
      y[t * rows + r] = s;
    }
  return y;
}

std::vector<float> rounded(const std::vector<double>& x, DType dtype) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = round_to(static_cast<float>(x[i]), dtype);
  return out;
}

// Rotates each head of [B, N, heads, D] (stored as `x`, rounded to the dtype after).
void rotary(std::vector<float>& x, int64_t batch, int64_t tokens, int64_t heads, int64_t d, int64_t offset,
            const RotaryOptions& r, DType dtype) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t n = 0; n < tokens; ++n) {
      const double position = static_cast<double>(n + offset);
      for (int64_t h = 0; h < heads; ++h) {
        float* head = &x[((b * tokens + n) * heads + h) * d];
        for (int64_t i = 0; i < d / 2; ++i) {
          const double angle = position * std::pow(r.base, -2.0 * static_cast<double>(i) / static_cast<double>(d));
          const int64_t i0 = r.interleaved ? 2 * i : i, i1 = r.interleaved ? 2 * i + 1 : i + d / 2;
          const double a = head[i0], c = head[i1];
          head[i0] = round_to(static_cast<float>(a * std::cos(angle) - c * std::sin(angle)), dtype);
          head[i1] = round_to(static_cast<float>(c * std::cos(angle) + a * std::sin(angle)), dtype);
        }
      }
    }
}

}  // namespace

std::vector<double> reference_module(const Pattern& pattern, const ModuleProblem& p, const HostWeights& w,
                                     const std::vector<float>& query, const std::vector<float>& key,
                                     const std::vector<float>& value, const std::vector<float>& residual) {
  const DType dtype = p.options.dtype;
  const int64_t E = p.embed, D = E / p.heads, Ekv = p.kv_heads * D;
  const int64_t Tq = p.batch * p.nq, Tk = p.batch * p.nk;
  std::vector<float> q = rounded(linear(query, Tq, E, w.in_proj_weight, 0, E, w.in_proj_bias), dtype);
  std::vector<float> k = rounded(linear(key, Tk, E, w.in_proj_weight, E, Ekv, w.in_proj_bias), dtype);
  const std::vector<float> v = rounded(linear(value, Tk, E, w.in_proj_weight, E + Ekv, Ekv, w.in_proj_bias), dtype);
  if (p.options.rotary.enabled) {
    rotary(q, p.batch, p.nq, p.heads, D, p.nk - p.nq, p.options.rotary, dtype);
    rotary(k, p.batch, p.nk, p.kv_heads, D, 0, p.options.rotary, dtype);
  }
  const double scale = p.options.attention.scale > 0 ? p.options.attention.scale : 1.0 / std::sqrt(double(D));
  std::vector<double> attn_out, lse;
  reference_attention(pattern, Shape{p.nq, p.nk, p.heads}, p.batch, p.kv_heads, D, q.data(), k.data(), v.data(),
                      scale, attn_out, lse);
  std::vector<float> a = rounded(attn_out, dtype);
  if (p.options.sub_layernorm) {
    for (int64_t t = 0; t < Tq; ++t) {
      float* row = &a[t * E];
      double mean = 0, var = 0;
      for (int64_t c = 0; c < E; ++c) mean += row[c];
      mean /= static_cast<double>(E);
      for (int64_t c = 0; c < E; ++c) var += (row[c] - mean) * (row[c] - mean);
      var /= static_cast<double>(E);
      const double rstd = 1.0 / std::sqrt(var + p.options.layernorm_eps);
      for (int64_t c = 0; c < E; ++c)
        row[c] = round_to(static_cast<float>((row[c] - mean) * rstd * w.ln_weight[c] + w.ln_bias[c]), dtype);
    }
  }
  // out = s_a * (A Wo^T) + bias' + s_r * residual, bias' = s_a * bo rounded (the module's scaled bias).
  const double sa = p.extras.attention_scale, sr = p.extras.residual_scale;
  std::vector<float> bias = w.out_proj_bias;
  if (!bias.empty() && sa != 1.0)
    for (float& b : bias) b = round_to(static_cast<float>(sa * b), dtype);
  std::vector<double> out = linear(a, Tq, E, w.out_proj_weight, 0, E, {});
  for (int64_t t = 0; t < Tq; ++t)
    for (int64_t c = 0; c < E; ++c) {
      double& y = out[t * E + c];
      y = sa * y + (bias.empty() ? 0.0 : bias[c]) + (residual.empty() ? 0.0 : sr * residual[t * E + c]);
    }
  return out;
}

ModuleTolerance module_tolerance(DType dtype) {
  return dtype == DType::kBFloat16 ? ModuleTolerance{1.5e-2, 4e-2} : ModuleTolerance{3e-3, 8e-3};
}

std::string ModuleError::to_string() const {
  return fmt::format("rel L2 {:.3g}, max |err| {:.3g} (max |ref| {:.3g}), {} non-finite", rel_l2, max_abs, max_ref,
                     nonfinite);
}

ModuleError compare_output(const std::vector<uint16_t>& got, DType dtype, const std::vector<double>& ref) {
  ModuleError e;
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size() && i < got.size(); ++i) {
    const double x = modules::half_bits_to_float(got[i], dtype);
    if (!std::isfinite(x)) {
      ++e.nonfinite;
      continue;
    }
    const double err = std::abs(x - ref[i]);
    num += err * err;
    den += ref[i] * ref[i];
    e.max_abs = std::max(e.max_abs, err);
    e.max_ref = std::max(e.max_ref, std::abs(ref[i]));
  }
  if (got.size() != ref.size()) e.nonfinite += 1;  // a size mismatch never passes
  e.rel_l2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return e;
}

std::vector<float> random_rounded(size_t n, double bound, uint64_t seed, DType dtype) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-bound, bound);
  std::vector<float> out(n);
  for (float& x : out) x = round_to(static_cast<float>(u(rng)), dtype);
  return out;
}

}  // namespace spattn::test
