// The fp64 host reference attention against independent computations.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include <spattn/error.hpp>
#include <spattn/reference.hpp>

#include "tests/patterns/layout_check.hpp"
#include "tests/patterns/torchscale.hpp"

namespace spattn::test {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

struct Tensors {
  int64_t b, nq, nk, hq, hkv, d;
  std::vector<float> q, k, v;
};

Tensors random_tensors(int64_t b, int64_t nq, int64_t nk, int64_t hq, int64_t hkv, int64_t d, uint64_t seed) {
  Tensors t{b, nq, nk, hq, hkv, d, {}, {}, {}};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  t.q.resize(static_cast<size_t>(b * nq * hq * d));
  t.k.resize(static_cast<size_t>(b * nk * hkv * d));
  t.v.resize(static_cast<size_t>(b * nk * hkv * d));
  for (float& x : t.q) x = dist(rng);
  for (float& x : t.k) x = dist(rng);
  for (float& x : t.v) x = dist(rng);
  return t;
}

// Softmax over the keys of one row, each key j weighted by count[j] (the multiset of
// allowed keys): out and lse of that row for (batch, head).
void masked_row(const Tensors& t, int64_t b, int64_t h, int64_t i, const std::vector<int>& count, double scale,
                double* out, double& lse) {
  const int64_t kvh = h / (t.hq / t.hkv);
  double mx = kNegInf;
  std::vector<double> s(static_cast<size_t>(t.nk));
  for (int64_t j = 0; j < t.nk; ++j) {
    if (!count[j]) continue;
    double dot = 0;
    for (int64_t x = 0; x < t.d; ++x) {
      dot += double(t.q[((b * t.nq + i) * t.hq + h) * t.d + x]) * double(t.k[((b * t.nk + j) * t.hkv + kvh) * t.d + x]);
    }
    s[j] = dot * scale;
    mx = std::max(mx, s[j]);
  }
  for (int64_t x = 0; x < t.d; ++x) out[x] = 0;
  if (mx == kNegInf) {
    lse = kNegInf;
    return;
  }
  double sum = 0;
  for (int64_t j = 0; j < t.nk; ++j) {
    if (!count[j]) continue;
    const double p = count[j] * std::exp(s[j] - mx);
    sum += p;
    for (int64_t x = 0; x < t.d; ++x) out[x] += p * double(t.v[((b * t.nk + j) * t.hkv + kvh) * t.d + x]);
  }
  for (int64_t x = 0; x < t.d; ++x) out[x] /= sum;
  lse = mx + std::log(sum);
}

void expect_close(const std::vector<double>& got, const std::vector<double>& want, double tol, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t k = 0; k < got.size(); ++k) {
    if (std::isinf(want[k])) {
      ASSERT_EQ(got[k], want[k]) << what << " [" << k << "]";
    } else {
      ASSERT_NEAR(got[k], want[k], tol) << what << " [" << k << "]";
    }
  }
}

// Softmax over the multiset union of the branches: for any pattern, the reference must
// equal one masked softmax where key j counts once per branch that allows it.
TEST(Reference, EqualsMultisetSoftmax) {
  for (int trial = 0; trial < 30; ++trial) {
    RandomPatterns gen(500 + trial);
    Shape shape = gen.shape(48, 4);
    const int64_t hkv = (shape.heads % 2 == 0 && gen.coin()) ? shape.heads / 2 : shape.heads;
    const Pattern p = gen.pattern(shape, 2);
    SCOPED_TRACE("seed " + std::to_string(500 + trial) + ": " + p.to_json());
    const Tensors t = random_tensors(2, shape.nq, shape.nk, shape.heads, hkv, 8, trial);
    const double scale = 1.0 / std::sqrt(8.0);
    std::vector<double> out, lse;
    reference_attention(p, shape, 2, hkv, 8, t.q.data(), t.k.data(), t.v.data(), scale, out, lse, 3);
    std::vector<double> want_out(out.size()), want_lse(lse.size());
    std::vector<int> count(static_cast<size_t>(shape.nk));
    for (int64_t b = 0; b < 2; ++b) {
      for (int64_t h = 0; h < shape.heads; ++h) {
        for (int64_t i = 0; i < shape.nq; ++i) {
          for (int64_t j = 0; j < shape.nk; ++j) count[j] = multiplicity(p, shape, h, i, j);
          masked_row(t, b, h, i, count, scale, &want_out[((b * shape.nq + i) * shape.heads + h) * 8],
                     want_lse[(b * shape.heads + h) * shape.nq + i]);
        }
      }
    }
    expect_close(out, want_out, 1e-9, "out");
    expect_close(lse, want_lse, 1e-9, "lse");
  }
}

TEST(Reference, RowsWithoutKeysGiveZeroAndMinusInfinity) {
  // Custom pairs leave query block 1 with no key; cross-attention causal leaves early
  // rows without keys too.
  const Pattern p = Pattern::parse(R"({"type":"custom","block":4,"pairs":[[0,0]]})");
  const Shape s{8, 8, 1};
  const Tensors t = random_tensors(1, 8, 8, 1, 1, 4, 3);
  std::vector<double> out, lse;
  reference_attention(p, s, 1, 1, 4, t.q.data(), t.k.data(), t.v.data(), 0.5, out, lse);
  for (int64_t i = 4; i < 8; ++i) {
    EXPECT_EQ(lse[i], kNegInf);
    for (int64_t x = 0; x < 4; ++x) EXPECT_EQ(out[i * 4 + x], 0.0);
  }
  EXPECT_TRUE(std::isfinite(lse[0]));
  const Pattern c = Pattern::parse(R"({"type":"local_window","left":0,"right":0,"causal":true})");
  const Shape x{6, 3, 1};  // causal allows j <= i - 3: rows 0..2 have nothing
  const Tensors u = random_tensors(1, 6, 3, 1, 1, 4, 4);
  reference_attention(c, x, 1, 1, 4, u.q.data(), u.k.data(), u.v.data(), 0.5, out, lse);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(lse[i], kNegInf) << i;  // the window needs j == i, causal j <= i - 3
  for (double o : out) EXPECT_EQ(o, 0.0);
}

// LongNet as torchscale computes it: per branch, gather each segment's kept positions,
// attend among them, scatter back (absent rows: 0 and lse -inf), then merge the
// branches with weights exp(lse_b - max) / sum.
TEST(Reference, LongNetMatchesTorchscaleForward) {
  std::mt19937_64 rng(21);
  for (int trial = 0; trial < 16; ++trial) {
    const int64_t n = std::uniform_int_distribution<int64_t>(4, 70)(rng);
    const int64_t heads = std::uniform_int_distribution<int64_t>(1, 6)(rng);
    const bool causal = trial % 2 == 0;
    LongNet l;
    for (int b = 0; b < 3; ++b) {
      l.segments.push_back(std::uniform_int_distribution<int64_t>(2, 40)(rng));
      l.rates.push_back(std::uniform_int_distribution<int64_t>(1, 4)(rng));
    }
    const Pattern p(l, causal);
    const Shape s{n, n, heads};
    SCOPED_TRACE(p.to_json() + " N=" + std::to_string(n) + " H=" + std::to_string(heads));
    const int64_t d = 8;
    const Tensors t = random_tensors(1, n, n, heads, heads, d, 100 + trial);
    const double scale = 0.35;
    std::vector<double> out, lse;
    reference_attention(p, s, 1, heads, d, t.q.data(), t.k.data(), t.v.data(), scale, out, lse);

    // Per branch outputs from the torchscale index logic.
    std::vector<std::vector<double>> bout(3, std::vector<double>(static_cast<size_t>(n * heads * d)));
    std::vector<std::vector<double>> blse(3, std::vector<double>(static_cast<size_t>(heads * n)));
    std::vector<int> count(static_cast<size_t>(n));
    for (int b = 0; b < 3; ++b) {
      const auto mask = torchscale_branch(n, heads, l.segments[b], l.rates[b], causal);
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t j = 0; j < n; ++j) count[j] = mask[h][i * n + j];
          masked_row(t, 0, h, i, count, scale, &bout[b][(i * heads + h) * d], blse[b][h * n + i]);
        }
      }
    }
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < n; ++i) {
        double mx = kNegInf;
        for (int b = 0; b < 3; ++b) mx = std::max(mx, blse[b][h * n + i]);
        if (mx == kNegInf) {
          EXPECT_EQ(lse[h * n + i], kNegInf);
          continue;
        }
        double sum = 0;
        for (int b = 0; b < 3; ++b) sum += std::exp(blse[b][h * n + i] - mx);
        ASSERT_NEAR(lse[h * n + i], mx + std::log(sum), 1e-9) << "h " << h << " i " << i;
        for (int64_t x = 0; x < d; ++x) {
          double want = 0;
          for (int b = 0; b < 3; ++b) want += bout[b][(i * heads + h) * d + x] * std::exp(blse[b][h * n + i] - mx) / sum;
          ASSERT_NEAR(out[(i * heads + h) * d + x], want, 1e-9) << "h " << h << " i " << i;
        }
      }
    }
  }
}

TEST(Reference, DuplicateBranchesKeepTheOutputAndAddLog2) {
  const Pattern a = Pattern::parse(R"({"type":"local_window","window":6,"causal":true})");
  const Pattern twice(Branches{{a, a}});
  const Shape s{20, 20, 2};
  const Tensors t = random_tensors(1, 20, 20, 2, 1, 4, 9);
  std::vector<double> o1, l1, o2, l2;
  reference_attention(a, s, 1, 1, 4, t.q.data(), t.k.data(), t.v.data(), 0.5, o1, l1);
  reference_attention(twice, s, 1, 1, 4, t.q.data(), t.k.data(), t.v.data(), 0.5, o2, l2);
  for (size_t k = 0; k < o1.size(); ++k) EXPECT_NEAR(o1[k], o2[k], 1e-12);
  for (size_t k = 0; k < l1.size(); ++k) EXPECT_NEAR(l2[k], l1[k] + std::log(2.0), 1e-12);
}

TEST(Reference, ThreadCountDoesNotChangeResults) {
  const Pattern p = Pattern::parse("standard");
  const Shape s{600, 600, 2};
  const Tensors t = random_tensors(1, 600, 600, 2, 2, 16, 5);
  std::vector<double> o1, l1, o4, l4;
  reference_attention(p, s, 1, 2, 16, t.q.data(), t.k.data(), t.v.data(), 0.25, o1, l1, 1);
  reference_attention(p, s, 1, 2, 16, t.q.data(), t.k.data(), t.v.data(), 0.25, o4, l4, 4);
  EXPECT_EQ(o1, o4);
  EXPECT_EQ(l1, l4);
}

TEST(Reference, Errors) {
  const Shape s{8, 8, 4};
  std::vector<float> x(8 * 4 * 4);
  std::vector<double> out, lse;
  try {
    reference_attention(Pattern(), s, 1, 3, 4, x.data(), x.data(), x.data(), 1.0, out, lse);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("reference: kv_heads must divide the 4 query heads (got 3)"),
              std::string::npos);
  }
  try {
    reference_attention(Pattern::parse(R"({"type":"adaptive","block":4,"top_k":1})"), s, 1, 4, 4, x.data(),
                        x.data(), x.data(), 1.0, out, lse);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
  }
}

}  // namespace
}  // namespace spattn::test
