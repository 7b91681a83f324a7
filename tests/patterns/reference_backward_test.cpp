// The host reference gradients against central finite differences of the host
// reference forward, on tiny problems (fp64 throughout).
#include <gtest/gtest.h>

#include <spattn/reference.hpp>

#include <cmath>
#include <random>

namespace spattn {
namespace {

// L = sum(dO * O) as a function of the inputs.
double loss(const Pattern& p, const Shape& s, int64_t hkv, int64_t d, const std::vector<float>& q,
            const std::vector<float>& k, const std::vector<float>& v, const std::vector<float>& d_o, double scale) {
  std::vector<double> out, lse;
  reference_attention(p, s, 1, hkv, d, q.data(), k.data(), v.data(), scale, out, lse, 1);
  double l = 0;
  for (size_t x = 0; x < out.size(); ++x) l += out[x] * d_o[x];
  return l;
}

void check(const char* json, int64_t nq, int64_t nk, int64_t hq, int64_t hkv) {
  SCOPED_TRACE(json);
  const Pattern p = Pattern::parse(json);
  const Shape s{nq, nk, hq};
  const int64_t d = 4;
  const double scale = 0.7;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  auto rnd = [&](int64_t n) {
    std::vector<float> x(static_cast<size_t>(n));
    for (float& e : x) e = u(rng);
    return x;
  };
  std::vector<float> q = rnd(nq * hq * d), k = rnd(nk * hkv * d), v = rnd(nk * hkv * d), d_o = rnd(nq * hq * d);
  std::vector<double> dq, dk, dv;
  reference_attention_backward(p, s, 1, hkv, d, q.data(), k.data(), v.data(), d_o.data(), scale, dq, dk, dv, 1);
  auto fd = [&](std::vector<float>& x, size_t at) {
    const float orig = x[at];
    const float eps = 1e-2f;
    x[at] = orig + eps;
    const double up = loss(p, s, hkv, d, q, k, v, d_o, scale);
    const double hi = double(x[at]);
    x[at] = orig - eps;
    const double down = loss(p, s, hkv, d, q, k, v, d_o, scale);
    const double lo = double(x[at]);
    x[at] = orig;
    return (up - down) / (hi - lo);
  };
  for (size_t at = 0; at < q.size(); ++at) EXPECT_NEAR(dq[at], fd(q, at), 2e-4) << "dq " << at;
  for (size_t at = 0; at < k.size(); ++at) EXPECT_NEAR(dk[at], fd(k, at), 2e-4) << "dk " << at;
  for (size_t at = 0; at < v.size(); ++at) EXPECT_NEAR(dv[at], fd(v, at), 2e-4) << "dv " << at;
}

TEST(ReferenceBackward, MatchesFiniteDifferences) {
  check(R"({"type":"dense","causal":true})", 5, 7, 2, 1);  // bottom-right causal, GQA, cross-attention
  check(R"({"type":"local_window","left":2,"right":1})", 6, 6, 2, 2);
  check(R"({"type":"longnet","segments":[2,4],"rates":[1,2]})", 6, 6, 2, 2);  // multiset union of branches
  check(R"({"branches":[{"type":"local_window","window":2},{"type":"dense"}]})", 5, 5, 1, 1);
  check(R"({"type":"dense","causal":true})", 6, 2, 1, 1);  // rows without keys: zero gradient
}

}  // namespace
}  // namespace spattn
