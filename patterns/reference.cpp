#include <spattn/reference.hpp>

#include <algorithm>
#include <atomic>
#include <functional>
#include <cmath>
#include <limits>
#include <thread>

#include "common/check.hpp"
#include "patterns/workers.hpp"

namespace spattn {

namespace {

bool contains_adaptive(const Pattern& p) {
  const PatternNode& n = p.node();
  if (std::holds_alternative<Adaptive>(n)) return true;
  const std::vector<Pattern>* items = nullptr;
  if (const auto* u = std::get_if<Union>(&n)) items = &u->items;
  if (const auto* x = std::get_if<Intersect>(&n)) items = &x->items;
  if (const auto* b = std::get_if<Branches>(&n)) items = &b->items;
  if (items) return std::any_of(items->begin(), items->end(), contains_adaptive);
  if (const auto* h = std::get_if<HeadGroups>(&n)) {
    return std::any_of(h->groups.begin(), h->groups.end(),
                       [](const HeadGroup& g) { return contains_adaptive(*g.pattern); });
  }
  return false;
}

}  // namespace

namespace detail {

void run_workers(int threads, int64_t max_useful, const std::function<void()>& work) {
  int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  n = static_cast<int>(std::min<int64_t>(n, max_useful));
  if (n <= 1) {
    work();
    return;
  }
  std::vector<std::thread> pool;
  for (int t = 0; t < n; ++t) pool.emplace_back(work);
  for (std::thread& t : pool) t.join();
}

}  // namespace detail

void reference_attention(const Pattern& pattern, const Shape& shape, int64_t batch, int64_t kv_heads,
                         int64_t head_dim, const float* q, const float* k, const float* v, double scale,
                         std::vector<double>& out, std::vector<double>& lse, int threads) {
  pattern.validate(shape);
  if (contains_adaptive(pattern)) {
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "reference: adaptive patterns choose their blocks from the data on the GPU; there is no "
                "host reference for them");
  }
  SPATTN_REQUIRE(batch >= 1, "reference: batch must be >= 1 (got {})", batch);
  SPATTN_REQUIRE(head_dim >= 1, "reference: head_dim must be >= 1 (got {})", head_dim);
  SPATTN_REQUIRE(kv_heads >= 1 && shape.heads % kv_heads == 0,
                 "reference: kv_heads must divide the {} query heads (got {})", shape.heads, kv_heads);
  const int64_t nq = shape.nq, nk = shape.nk, hq = shape.heads, d = head_dim;
  const int64_t group = hq / kv_heads;
  const int branches = pattern.branch_count();
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  out.assign(static_cast<size_t>(batch * nq * hq * d), 0.0);
  lse.assign(static_cast<size_t>(batch * hq * nq), kNegInf);

  const int64_t rows = batch * hq * nq;
  std::atomic<int64_t> next{0};
  auto work = [&] {
    std::vector<double> scores(static_cast<size_t>(nk));
    std::vector<double> acc(static_cast<size_t>(d)), merged(static_cast<size_t>(d));
    std::vector<char> keep(static_cast<size_t>(nk));
    constexpr int64_t kChunk = 16;
    for (int64_t start = next.fetch_add(kChunk); start < rows; start = next.fetch_add(kChunk)) {
      for (int64_t row = start; row < std::min(rows, start + kChunk); ++row) {
        const int64_t b = row / (hq * nq), h = (row / nq) % hq, i = row % nq;
        const int64_t kvh = h / group;
        const float* qi = q + ((b * nq + i) * hq + h) * d;
        // Merge of the branches as a running log-sum-exp.
        double m_lse = kNegInf;
        std::fill(merged.begin(), merged.end(), 0.0);
        for (int br = 0; br < branches; ++br) {
          if (!pattern.takes_part(shape, br, h, i)) continue;
          double mx = kNegInf;
          for (int64_t j = 0; j < nk; ++j) {
            keep[j] = pattern.allowed_in_branch(shape, br, h, i, j);
            if (!keep[j]) continue;
            const float* kj = k + ((b * nk + j) * kv_heads + kvh) * d;
            double dot = 0;
            for (int64_t x = 0; x < d; ++x) dot += double(qi[x]) * double(kj[x]);
            scores[j] = dot * scale;
            mx = std::max(mx, scores[j]);
          }
          if (mx == kNegInf) continue;  // no key in this branch: weight 0
          double sum = 0;
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t j = 0; j < nk; ++j) {
            if (!keep[j]) continue;
            const double p = std::exp(scores[j] - mx);
            sum += p;
            const float* vj = v + ((b * nk + j) * kv_heads + kvh) * d;
            for (int64_t x = 0; x < d; ++x) acc[x] += p * double(vj[x]);
          }
          const double b_lse = mx + std::log(sum);
          const double new_lse = m_lse == kNegInf ? b_lse : std::max(m_lse, b_lse) +
                                     std::log1p(std::exp(-std::abs(m_lse - b_lse)));
          const double w_old = m_lse == kNegInf ? 0.0 : std::exp(m_lse - new_lse);
          const double w_new = std::exp(b_lse - new_lse);
          for (int64_t x = 0; x < d; ++x) merged[x] = merged[x] * w_old + (acc[x] / sum) * w_new;
          m_lse = new_lse;
        }
        double* o = out.data() + ((b * nq + i) * hq + h) * d;
        for (int64_t x = 0; x < d; ++x) o[x] = m_lse == kNegInf ? 0.0 : merged[x];
        lse[static_cast<size_t>((b * hq + h) * nq + i)] = m_lse;
      }
    }
  };
  detail::run_workers(threads, (rows + 15) / 16, work);
}

}  // namespace spattn
