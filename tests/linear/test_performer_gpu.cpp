// Performer on the GPU against the fp64 reference of the same estimator with the same
// (dtype-rounded) features — not against softmax — non-causal and causal, GQA, Nq != Nk,
// odd lengths, strided views, every causal config; then the statistical check that its
// error against exact softmax attention falls as m grows, and reproducibility by seed.
//
// Inputs are rounded to the dtype on the host; O is poisoned (NaN) first. Tolerance per
// element: |o - ref| <= rtol |ref| + atol max|ref| with linear::performer_tolerance:
//   fp32 (1e-4, 1e-4)   fp16 (2^-11, 1e-3)   bf16 (2^-8, 8e-3)
// (φ and every product in fp32; the 16-bit cases add the rounding of O).
#include <gtest/gtest.h>

#include <spattn/linear.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <random>

#include "linear/kernels.hpp"
#include "runtime/device.hpp"
#include "tests/linear/linear_test_util.hpp"
#include "tests/support/gpu.hpp"

namespace spattn {
namespace {

struct PCase {
  int64_t batch = 2, nq = 300, nk = 257, heads = 4, kv_heads = 2, head_dim = 64, v_dim = 64, features = 128;
  DType dtype = DType::kFloat32;
  bool causal = false;
  bool packed = false;  // q, k, v as views of one [B, N, 3, H, D] buffer (nq == nk, heads == kv_heads, D == Dv)
  float range = 1.f;    // inputs uniform in [-range, range]
  std::optional<PerformerConfig> config;
  uint64_t seed = 0;
};

std::string describe(const PCase& c) {
  return fmt::format("B={} Nq={} Nk={} H={}/{} D={} Dv={} m={} {}{}{} range {} {}", c.batch, c.nq, c.nk, c.heads,
                     c.kv_heads, c.head_dim, c.v_dim, c.features, to_string(c.dtype), c.causal ? " causal" : "",
                     c.packed ? " packed" : "", c.range, c.config ? c.config->to_string() : "");
}

struct PRun {
  std::vector<float> q, k, v, o;
  std::vector<double> ref;
};

PRun run(const PCase& c, uint64_t data_seed, bool check) {
  SCOPED_TRACE(describe(c));
  std::mt19937_64 rng(data_seed);
  const int64_t B = c.batch, Nq = c.nq, Nk = c.nk, H = c.heads, Hkv = c.kv_heads, D = c.head_dim, Dv = c.v_dim;
  const DType dt = c.dtype;
  PRun r;
  r.q = test::uniform(B * Nq * H * D, -c.range, c.range, rng);
  r.k = test::uniform(B * Nk * Hkv * D, -c.range, c.range, rng);
  r.v = test::uniform(B * Nk * Hkv * Dv, -1, 1, rng);
  for (auto* x : {&r.q, &r.k, &r.v}) test::round_to(*x, dt);

  PerformerOptions opts;
  opts.features = c.features;
  opts.seed = c.seed;
  opts.causal = c.causal;
  opts.config = c.config;
  Performer perf(D, opts);

  runtime::DeviceBuffer dq, dk, dv, dpacked;
  TensorView q, k, v;
  if (c.packed) {
    std::vector<float> packed(B * Nq * 3 * H * D);
    for (int64_t t = 0; t < B * Nq; ++t)
      for (int64_t x = 0; x < H * D; ++x) {
        packed[(t * 3 + 0) * H * D + x] = r.q[t * H * D + x];
        packed[(t * 3 + 1) * H * D + x] = r.k[t * H * D + x];
        packed[(t * 3 + 2) * H * D + x] = r.v[t * H * D + x];
      }
    dpacked = test::upload_as(packed, dt);
    for (int which = 0; which < 3; ++which) {
      TensorView t = TensorView::contiguous(static_cast<char*>(dpacked.data()) + which * H * D * dtype_size(dt), dt,
                                            {B, Nq, H, D});
      t.strides = {Nq * 3 * H * D, 3 * H * D, D, 1};
      (which == 0 ? q : which == 1 ? k : v) = t;
    }
  } else {
    dq = test::upload_as(r.q, dt), dk = test::upload_as(r.k, dt), dv = test::upload_as(r.v, dt);
    q = TensorView::contiguous(dq.data(), dt, {B, Nq, H, D});
    k = TensorView::contiguous(dk.data(), dt, {B, Nk, Hkv, D});
    v = TensorView::contiguous(dv.data(), dt, {B, Nk, Hkv, Dv});
  }
  runtime::DeviceBuffer dout(B * Nq * H * Dv * dtype_size(dt));
  dout.fill_bytes(0xff);
  perf.forward(q, k, v, TensorView::contiguous(dout.data(), dt, {B, Nq, H, Dv}));
  runtime::synchronize();
  r.o = test::download_as(dout, B * Nq * H * Dv, dt);
  if (!check) return r;

  const std::vector<float> omega = perf.features().rounded(dt);
  reference_performer(PerformerShape{B, Nq, Nk, H, Hkv, D, Dv, dt}, r.q.data(), r.k.data(), r.v.data(), omega.data(),
                      c.features, c.causal, r.ref);
  const auto [rtol, atol] = linear::performer_tolerance(dt);  // the autotuner's gate too
  double max_ref = 0, worst = 0;
  for (double x : r.ref) max_ref = std::max(max_ref, std::fabs(x));
  int64_t bad = 0;
  for (size_t i = 0; i < r.o.size(); ++i) {
    const double err = std::isfinite(r.o[i]) ? std::fabs(r.o[i] - r.ref[i]) : INFINITY;
    worst = std::max(worst, err);
    if (!(err <= rtol * std::fabs(r.ref[i]) + atol * max_ref) && bad++ < 5)
      ADD_FAILURE() << "o[" << i << "] = " << r.o[i] << ", reference " << r.ref[i];
  }
  EXPECT_EQ(bad, 0) << "max |err| " << worst << " of max |ref| " << max_ref << "\n" << perf.explain();
  return r;
}

TEST(PerformerGpu, NonCausalMatchesReference) {
  SPATTN_REQUIRE_GPU();
  for (DType dt : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    PCase c;
    c.dtype = dt;
    run(c, 1, true);
  }
  PCase odd;
  odd.nq = 1, odd.nk = 1, odd.heads = 3, odd.kv_heads = 1, odd.head_dim = 32, odd.v_dim = 40, odd.features = 48;
  run(odd, 2, true);
  PCase wide;
  wide.head_dim = 128, wide.v_dim = 128, wide.features = 256, wide.batch = 1, wide.nq = 777, wide.nk = 1001;
  wide.dtype = DType::kBFloat16;
  run(wide, 3, true);
}

TEST(PerformerGpu, CausalMatchesMaskedReference) {
  SPATTN_REQUIRE_GPU();
  uint64_t seed = 10;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    PCase c;
    c.causal = true, c.nq = c.nk = 333, c.dtype = dt;
    run(c, seed++, true);
  }
  for (const PerformerConfig& config : performer_configs()) {
    PCase c;
    c.causal = true, c.nq = c.nk = 130, c.v_dim = 72, c.config = config, c.features = 64;
    run(c, seed++, true);
  }
  PCase one;
  one.causal = true, one.nq = one.nk = 1;
  run(one, seed++, true);
}

TEST(PerformerGpu, StridedViewsAndLargeInputs) {
  SPATTN_REQUIRE_GPU();
  for (bool causal : {false, true}) {
    PCase c;
    c.packed = true, c.causal = causal, c.nq = c.nk = 200, c.heads = c.kv_heads = 3, c.dtype = DType::kBFloat16;
    run(c, 20 + causal, true);
    // |x̂|²/2 up to ~12 and exponents spread over tens of nats: the stabilisers keep
    // every value finite, and the result is still the estimator's.
    PCase big;
    big.range = 3.f, big.causal = causal, big.nq = big.nk = 150;
    run(big, 22 + causal, true);
  }
}

// The estimator's error against exact softmax attention falls as m grows (fixed seeds,
// mean over seeds of the relative L2 error).
TEST(PerformerGpu, ErrorAgainstSoftmaxFallsWithFeatures) {
  SPATTN_REQUIRE_GPU();
  for (bool causal : {false, true}) {
    std::vector<double> errs;
    for (int64_t m : {16, 64, 256, 1024}) {
      double err = 0;
      for (uint64_t seed = 0; seed < 3; ++seed) {
        PCase c;
        c.batch = 1, c.heads = c.kv_heads = 1, c.nq = c.nk = 128, c.head_dim = c.v_dim = 32, c.features = m;
        c.causal = causal, c.seed = seed;
        const PRun r = run(c, 100 + seed, false);
        // Exact softmax attention with scale 1/sqrt(D).
        double num = 0, den = 0;
        for (int64_t i = 0; i < 128; ++i) {
          std::vector<double> w(128);
          double mx = -1e300, z = 0;
          const int64_t last = causal ? i : 127;
          for (int64_t j = 0; j <= last; ++j) {
            double s = 0;
            for (int64_t d = 0; d < 32; ++d) s += static_cast<double>(r.q[i * 32 + d]) * r.k[j * 32 + d];
            mx = std::max(mx, w[j] = s / std::sqrt(32.0));
          }
          for (int64_t j = 0; j <= last; ++j) z += w[j] = std::exp(w[j] - mx);
          for (int64_t d = 0; d < 32; ++d) {
            double o = 0;
            for (int64_t j = 0; j <= last; ++j) o += w[j] / z * r.v[j * 32 + d];
            num += (r.o[i * 32 + d] - o) * (r.o[i * 32 + d] - o), den += o * o;
          }
        }
        err += std::sqrt(num / den) / 3;
      }
      errs.push_back(err);
    }
    // At 128 keys the ratio estimator's error falls more slowly than 1/sqrt(m) over m =
    // 16 .. 1024 (its bias is still of the order of its spread): on an H200, non-causal
    // 0.80, 0.59, 0.48, 0.27 and causal 0.61, 0.43, 0.31, 0.18. The kernel itself is held
    // to the fp64 estimator with the same features by the tests above; here each 4x
    // the features must lower the error by a tenth, 64x by half.
    for (size_t i = 1; i < errs.size(); ++i)
      EXPECT_LT(errs[i], 0.9 * errs[i - 1]) << "causal " << causal << " m index " << i;
    EXPECT_LT(errs.back(), 0.5 * errs.front()) << "causal " << causal << ": " << fmt::format("{}", fmt::join(errs, ", "));
  }
}

TEST(PerformerGpu, SameSeedSameOutputRedrawChangesIt) {
  SPATTN_REQUIRE_GPU();
  PCase c;
  c.seed = 5;
  const PRun a = run(c, 7, false), b = run(c, 7, false);
  EXPECT_EQ(a.o, b.o);
  c.seed = 6;
  const PRun d = run(c, 7, false);
  EXPECT_NE(a.o, d.o);
}

}  // namespace
}  // namespace spattn
