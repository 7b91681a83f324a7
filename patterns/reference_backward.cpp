#include <spattn/reference.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "common/check.hpp"
#include "patterns/workers.hpp"

namespace spattn {

void reference_attention_backward(const Pattern& pattern, const Shape& shape, int64_t batch, int64_t kv_heads,
                                  int64_t head_dim, const float* q, const float* k, const float* v, const float* d_o,
                                  double scale, std::vector<double>& dq, std::vector<double>& dk,
                                  std::vector<double>& dv, int threads) {
  // The forward reference validates the inputs and gives the merged LSE.
  std::vector<double> out, lse;
  reference_attention(pattern, shape, batch, kv_heads, head_dim, q, k, v, scale, out, lse, threads);
  const int64_t nq = shape.nq, nk = shape.nk, hq = shape.heads, d = head_dim;
  const int64_t group = hq / kv_heads;
  const int branches = pattern.branch_count();
  dq.assign(static_cast<size_t>(batch * nq * hq * d), 0.0);
  dk.assign(static_cast<size_t>(batch * nk * kv_heads * d), 0.0);
  dv.assign(dk.size(), 0.0);

  // One worker per (batch, kv head): it owns that slice of dk and dv, and the rows of
  // dq of the group's query heads.
  const int64_t slices = batch * kv_heads;
  std::atomic<int64_t> next{0};
  auto work = [&] {
    std::vector<double> dov(static_cast<size_t>(d));
    for (int64_t s = next.fetch_add(1); s < slices; s = next.fetch_add(1)) {
      const int64_t b = s / kv_heads, kvh = s % kv_heads;
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
        for (int64_t i = 0; i < nq; ++i) {
          const double L = lse[static_cast<size_t>((b * hq + h) * nq + i)];
          if (L == -std::numeric_limits<double>::infinity()) continue;
          const float* qi = q + ((b * nq + i) * hq + h) * d;
          const float* doi = d_o + ((b * nq + i) * hq + h) * d;
          const double* oi = out.data() + ((b * nq + i) * hq + h) * d;
          double D = 0;
          for (int64_t x = 0; x < d; ++x) D += double(doi[x]) * oi[x];
          double* dqi = dq.data() + ((b * nq + i) * hq + h) * d;
          for (int64_t j = 0; j < nk; ++j) {
            int m = 0;
            for (int br = 0; br < branches; ++br)
              m += pattern.takes_part(shape, br, h, i) && pattern.allowed_in_branch(shape, br, h, i, j) ? 1 : 0;
            if (m == 0) continue;
            const float* kj = k + ((b * nk + j) * kv_heads + kvh) * d;
            const float* vj = v + ((b * nk + j) * kv_heads + kvh) * d;
            double dot = 0, dp = 0;
            for (int64_t x = 0; x < d; ++x) {
              dot += double(qi[x]) * double(kj[x]);
              dp += double(doi[x]) * double(vj[x]);
            }
            const double p = m * std::exp(dot * scale - L);
            const double ds = p * (dp - D);
            double* dkj = dk.data() + ((b * nk + j) * kv_heads + kvh) * d;
            double* dvj = dv.data() + ((b * nk + j) * kv_heads + kvh) * d;
            for (int64_t x = 0; x < d; ++x) {
              dqi[x] += scale * ds * double(kj[x]);
              dkj[x] += scale * ds * double(qi[x]);
              dvj[x] += p * double(doi[x]);
            }
          }
        }
      }
    }
  };
  detail::run_workers(threads, slices, work);
}

}  // namespace spattn
