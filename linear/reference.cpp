// fp64 host references of the linear-time kernels: the recurrences written as in the
// papers, sequentially, sharing nothing with the templates.
#include <spattn/linear.hpp>

#include <cmath>

#include "common/check.hpp"

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

}  // namespace spattn
