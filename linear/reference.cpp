// fp64 host references of the linear-time kernels: the recurrences written as in the
// papers, sequentially, sharing nothing with the templates.
#include <spattn/linear.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "common/check.hpp"
#include "linear/kernels.hpp"

namespace spattn {

void reference_selective_scan(const ScanShape& s, const float* x, const float* delta, const float* a_log,
                              const float* b, const float* c, const float* d, const float* delta_bias,
                              const float* z, bool delta_softplus, std::vector<double>& y,
                              std::vector<double>* final_state) {
  SPATTN_REQUIRE(s.batch >= 1 && s.length >= 1 && s.channels >= 1 && s.state >= 1,
                 "reference_selective_scan: every size must be >= 1");
  const int64_t B = s.batch, L = s.length, D = s.channels, N = s.state;
  y.assign(static_cast<size_t>(B * L * D), 0.0);
  if (final_state) final_state->assign(static_cast<size_t>(B * D * N), 0.0);
  std::vector<double> h(static_cast<size_t>(N));
  for (int64_t bi = 0; bi < B; ++bi) {
    for (int64_t ch = 0; ch < D; ++ch) {
      std::fill(h.begin(), h.end(), 0.0);
      for (int64_t t = 0; t < L; ++t) {
        const int64_t row = (bi * L + t) * D + ch;
        double dt = static_cast<double>(delta[row]) + (delta_bias ? delta_bias[ch] : 0.0);
        if (delta_softplus) dt = dt > 20 ? dt : std::log1p(std::exp(dt));
        const double xv = x[row];
        double acc = 0;
        for (int64_t n = 0; n < N; ++n) {
          const double a = -std::exp(static_cast<double>(a_log[ch * N + n]));
          const int64_t bc = (bi * L + t) * N + n;
          h[n] = std::exp(dt * a) * h[n] + dt * b[bc] * xv;
          acc += c[bc] * h[n];
        }
        if (d) acc += d[ch] * xv;
        if (z) {
          const double zv = z[row];
          acc *= zv / (1 + std::exp(-zv));
        }
        y[row] = acc;
      }
      if (final_state)
        for (int64_t n = 0; n < N; ++n) (*final_state)[(bi * D + ch) * N + n] = h[n];
    }
  }
}

void reference_performer(const PerformerShape& s, const float* q, const float* k, const float* v, const float* omega,
                         int64_t features, bool causal, std::vector<double>& out) {
  SPATTN_REQUIRE(s.heads % s.kv_heads == 0 && features >= 1, "reference_performer: bad shape");
  SPATTN_REQUIRE(!causal || s.nq == s.nk, "reference_performer: causal needs nq == nk");
  const int64_t B = s.batch, Nq = s.nq, Nk = s.nk, H = s.heads, Hkv = s.kv_heads, D = s.head_dim, Dv = s.v_dim,
                M = features, G = H / Hkv;
  const double scale = 1.0 / std::sqrt(std::sqrt(static_cast<double>(D)));
  // φ(x) = exp(ω x̂ - |x̂|²/2) / sqrt(m) with no stabiliser (fp64 has the range).
  auto phi = [&](const float* x, std::vector<double>& f) {
    double norm = 0;
    for (int64_t d = 0; d < D; ++d) norm += static_cast<double>(x[d]) * x[d];
    norm *= scale * scale / 2;
    f.resize(static_cast<size_t>(M));
    for (int64_t m = 0; m < M; ++m) {
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(omega[m * D + d]) * x[d];
      f[m] = std::exp(dot * scale - norm) / std::sqrt(static_cast<double>(M));
    }
  };
  out.assign(static_cast<size_t>(B * Nq * H * Dv), 0.0);
  std::vector<double> fq;
  std::vector<std::vector<double>> fk(static_cast<size_t>(Nk));
  std::vector<double> acc(static_cast<size_t>(Dv));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t kh = 0; kh < Hkv; ++kh) {
      for (int64_t j = 0; j < Nk; ++j) phi(k + ((b * Nk + j) * Hkv + kh) * D, fk[j]);
      for (int64_t h = kh * G; h < (kh + 1) * G; ++h)
        for (int64_t i = 0; i < Nq; ++i) {
          phi(q + ((b * Nq + i) * H + h) * D, fq);
          std::fill(acc.begin(), acc.end(), 0.0);
          double den = 0;
          const int64_t last = causal ? i : Nk - 1;
          for (int64_t j = 0; j <= last; ++j) {
            double w = 0;
            for (int64_t m = 0; m < M; ++m) w += fq[m] * fk[j][m];
            den += w;
            const float* vj = v + ((b * Nk + j) * Hkv + kh) * Dv;
            for (int64_t d = 0; d < Dv; ++d) acc[d] += w * vj[d];
          }
          double* o = &out[((b * Nq + i) * H + h) * Dv];
          for (int64_t d = 0; d < Dv; ++d) o[d] = den > 0 ? acc[d] / den : 0.0;
        }
    }
}

}  // namespace spattn

namespace spattn::linear {

LinearTolerance scan_tolerance(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return {1e-4, 1e-4};  // SFU exp2 at 2^-22 per decay over ~100 steps of memory
    case DType::kFloat16: return {std::ldexp(1.0, -11), 5e-4};
    case DType::kBFloat16: return {std::ldexp(1.0, -8), 4e-3};
    case DType::kInt32: break;
  }
  SPATTN_FAIL(ErrorCode::kInternal, "unknown dtype");
}

LinearTolerance performer_tolerance(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return {1e-4, 1e-4};
    case DType::kFloat16: return {std::ldexp(1.0, -11), 1e-3};
    case DType::kBFloat16: return {std::ldexp(1.0, -8), 8e-3};
    case DType::kInt32: break;
  }
  SPATTN_FAIL(ErrorCode::kInternal, "unknown dtype");
}

LinearCheck check_output(const std::vector<float>& out, const std::vector<double>& ref, LinearTolerance tol) {
  SPATTN_REQUIRE(out.size() == ref.size(), "output of {} elements against a reference of {}", out.size(), ref.size());
  LinearCheck c;
  c.elements = static_cast<int64_t>(out.size());
  for (double r : ref) c.max_ref = std::max(c.max_ref, std::fabs(r));
  for (size_t k = 0; k < out.size(); ++k) {
    if (!std::isfinite(out[k])) {
      ++c.nonfinite;
      continue;
    }
    const double err = std::fabs(out[k] - ref[k]);
    const double allowed = tol.rtol * std::fabs(ref[k]) + tol.atol * c.max_ref;
    c.max_abs_err = std::max(c.max_abs_err, err);
    c.worst = std::max(c.worst, allowed > 0 ? err / allowed : (err > 0 ? INFINITY : 0.0));
    if (!(err <= allowed) && c.bad++ == 0) c.first_bad = static_cast<int64_t>(k);
  }
  return c;
}

std::string LinearCheck::to_string() const {
  return fmt::format("{} of {} elements out of tolerance{}, {} non-finite; max |err| {:.3g} (max |ref| {:.3g}), "
                     "worst {:.2f}x the tolerance", bad, elements,
                     first_bad >= 0 ? fmt::format(" (first at {})", first_bad) : "", nonfinite, max_abs_err, max_ref,
                     worst);
}

}  // namespace spattn::linear
