// The selective scan on the GPU against the sequential fp64 host reference, at several
// lengths (1, odd, chunk tails, long), channel counts that leave partial CTAs, every
// state size, dtype and table configuration, with and without gate, skip, bias and
// softplus, strided x/z (halves of one projection output), large and small Δ.
//
// Inputs are rounded to the storage dtype on the host and the reference reads the
// rounded values; y is poisoned (NaN) before the launch. Tolerance per element
// (linear::scan_tolerance, the autotuner's gate too):
//   |y - ref| <= rtol |ref| + atol max|ref|
//   fp32: rtol 1e-4, atol 1e-4   (SFU exp2 at 2^-22 per decay, compounded over the
//                                 state's memory of ~100 steps; fp32 state)
//   fp16: rtol 2^-11, atol 5e-4  (output rounding, 11-bit mantissa)
//   bf16: rtol 2^-8,  atol 4e-3  (output rounding, 8-bit mantissa)
// final_state (fp32) is held to the fp32 bounds for every dtype.
#include <gtest/gtest.h>

#include <spattn/linear.hpp>

#include <algorithm>
#include <cmath>
#include <optional>
#include <random>

#include "linear/kernels.hpp"
#include "runtime/device.hpp"
#include "tests/linear/linear_test_util.hpp"
#include "tests/support/gpu.hpp"

namespace spattn {
namespace {

struct ScanCase {
  int64_t batch = 2, length = 300, channels = 100, state = 16;
  DType dtype = DType::kFloat32;
  bool gate = true, skip = true, bias = true, softplus = true, final_state = true;
  bool packed_xz = false;                 // x and z as halves of one [B, L, 2 channels] tensor
  float dt_lo = -4.f, dt_hi = 1.f;        // range of Δraw
  std::optional<ScanConfig> config;
  int splits = 0;  // SelectiveScanOptions::splits (0: chosen)
};

std::string describe(const ScanCase& c) {
  return fmt::format("B={} L={} ch={} N={} {} gate={} skip={} bias={} softplus={} packed={} Δraw in [{}, {}] {}",
                     c.batch, c.length, c.channels, c.state, to_string(c.dtype), c.gate, c.skip, c.bias, c.softplus,
                     c.packed_xz, c.dt_lo, c.dt_hi, c.config ? c.config->to_string() : "heuristic") +
         (c.splits ? fmt::format(" splits={}", c.splits) : "");
}

// Returns what the forward ran.
ScanExplanation run_case(const ScanCase& c, uint64_t seed) {
  SCOPED_TRACE(describe(c));
  std::mt19937_64 rng(seed);
  const int64_t B = c.batch, L = c.length, D = c.channels, N = c.state;
  const DType dt = c.dtype;
  std::vector<float> x = test::uniform(B * L * D, -1, 1, rng), dr = test::uniform(B * L * D, c.dt_lo, c.dt_hi, rng),
                     z = test::uniform(B * L * D, -3, 3, rng), bm = test::uniform(B * L * N, -1, 1, rng),
                     cm = test::uniform(B * L * N, -1, 1, rng), d = test::uniform(D, -1, 1, rng),
                     bias = test::uniform(D, -0.5f, 0.5f, rng);
  // Mamba's initialisation A = -(1..N), perturbed.
  std::vector<float> alog(D * N);
  for (int64_t ch = 0; ch < D; ++ch)
    for (int64_t n = 0; n < N; ++n)
      alog[ch * N + n] = std::log(static_cast<float>(n + 1)) + test::uniform(1, -0.3f, 0.3f, rng)[0];
  for (auto* v : {&x, &dr, &z, &bm, &cm}) test::round_to(*v, dt);

  std::vector<double> ref, ref_state;
  reference_selective_scan(ScanShape{B, L, D, N, dt}, x.data(), dr.data(), alog.data(), bm.data(), cm.data(),
                           c.skip ? d.data() : nullptr, c.bias ? bias.data() : nullptr, c.gate ? z.data() : nullptr,
                           c.softplus, ref, &ref_state);

  // Device tensors. packed_xz: one [B, L, 2D] buffer holding x in [..., :D] and z in [..., D:].
  std::vector<float> xz;
  if (c.packed_xz) {
    xz.resize(B * L * 2 * D);
    for (int64_t r = 0; r < B * L; ++r)
      for (int64_t ch = 0; ch < D; ++ch) xz[r * 2 * D + ch] = x[r * D + ch], xz[r * 2 * D + D + ch] = z[r * D + ch];
  }
  runtime::DeviceBuffer dx = test::upload_as(c.packed_xz ? xz : x, dt), ddr = test::upload_as(dr, dt),
                        dz = test::upload_as(z, dt), dbm = test::upload_as(bm, dt), dcm = test::upload_as(cm, dt),
                        dd = test::upload_as(d, DType::kFloat32), dbias = test::upload_as(bias, DType::kFloat32),
                        dalog = test::upload_as(alog, DType::kFloat32);
  runtime::DeviceBuffer dy(B * L * D * dtype_size(dt)), dstate(B * D * N * 4);
  dy.fill_bytes(0xff);  // NaN in every dtype
  dstate.fill_bytes(0xff);

  SelectiveScanArgs a;
  a.x = TensorView::contiguous3(dx.data(), dt, {B, L, D});
  a.z = c.gate ? TensorView::contiguous3(dz.data(), dt, {B, L, D}) : TensorView{};
  if (c.packed_xz) {
    a.x.strides = {L * 2 * D, 2 * D, 1, 1};
    a.z = a.x;
    a.z.data = static_cast<char*>(dx.data()) + D * dtype_size(dt);
    if (!c.gate) a.z = {};
  }
  a.delta = TensorView::contiguous3(ddr.data(), dt, {B, L, D});
  a.b = TensorView::contiguous3(dbm.data(), dt, {B, L, N});
  a.c = TensorView::contiguous3(dcm.data(), dt, {B, L, N});
  a.y = TensorView::contiguous3(dy.data(), dt, {B, L, D});
  TensorView alog_v = TensorView::contiguous3(dalog.data(), DType::kFloat32, {D, N, 1});
  alog_v.rank = 2;
  a.a_log = alog_v;
  TensorView vec_v = TensorView::contiguous3(dd.data(), DType::kFloat32, {D, 1, 1});
  vec_v.rank = 1;
  if (c.skip) a.d = vec_v;
  if (c.bias) {
    a.delta_bias = vec_v;
    a.delta_bias.data = dbias.data();
  }
  if (c.final_state) a.final_state = TensorView::contiguous3(dstate.data(), DType::kFloat32, {B, D, N});
  a.delta_softplus = c.softplus;

  SelectiveScanOptions opts;
  opts.config = c.config;
  opts.splits = c.splits;
  SelectiveScan scan(opts);
  scan.forward(a);
  runtime::synchronize();
  const ScanExplanation ran = scan.prepare(ScanShape{B, L, D, N, dt});  // what forward() ran

  const std::vector<float> y = test::download_as(dy, B * L * D, dt);
  double max_ref = 0;
  for (double v : ref) max_ref = std::max(max_ref, std::fabs(v));
  const linear::LinearTolerance tol = linear::scan_tolerance(dt);  // the autotuner's gate too
  int64_t bad = 0, nonfinite = 0;
  double worst = 0;
  for (size_t k = 0; k < y.size(); ++k) {
    if (!std::isfinite(y[k])) {
      ++nonfinite;
      continue;
    }
    const double err = std::fabs(y[k] - ref[k]);
    worst = std::max(worst, err);
    if (err > tol.rtol * std::fabs(ref[k]) + tol.atol * max_ref) {
      if (bad++ < 5)
        ADD_FAILURE() << "y[" << k << "] (b " << k / (L * D) << " t " << (k / D) % L << " ch " << k % D
                      << ") = " << y[k] << ", reference " << ref[k];
    }
  }
  EXPECT_EQ(nonfinite, 0);
  EXPECT_EQ(bad, 0) << "max |err| " << worst << ", max |ref| " << max_ref << "\n" << scan.explain();
  if (c.final_state) {
    std::vector<float> st(B * D * N);
    dstate.download(st.data(), st.size() * 4);
    double max_st = 0;
    for (double v : ref_state) max_st = std::max(max_st, std::fabs(v));
    int64_t bad_st = 0;
    for (size_t k = 0; k < st.size(); ++k)
      if (!(std::fabs(st[k] - ref_state[k]) <= 1e-4 * std::fabs(ref_state[k]) + 1e-4 * max_st) &&
          bad_st++ < 5)
        ADD_FAILURE() << "final_state[" << k << "] = " << st[k] << ", reference " << ref_state[k];
    EXPECT_EQ(bad_st, 0);
  }
  return ran;
}

TEST(ScanGpu, LengthsIncludingOneAndOdd) {
  SPATTN_REQUIRE_GPU();
  uint64_t seed = 1;
  for (int64_t length : {1, 2, 7, 127, 128, 129, 1000, 4097})
    for (const std::optional<ScanConfig>& config :
         {std::optional<ScanConfig>{}, std::optional<ScanConfig>{{32, 1, 16}}, std::optional<ScanConfig>{{32, 8, 16}}}) {
      ScanCase c;
      c.length = length;
      c.config = config;
      run_case(c, seed++);
    }
}

TEST(ScanGpu, EveryConfig) {
  SPATTN_REQUIRE_GPU();
  uint64_t seed = 100;
  for (const ScanConfig& config : scan_configs()) {
    ScanCase c;
    c.length = 777;
    c.channels = 130;  // partial CTAs for 32 and 64 channels
    c.config = config;
    run_case(c, seed++);
  }
}

TEST(ScanGpu, EveryStateSizeAndDtype) {
  SPATTN_REQUIRE_GPU();
  uint64_t seed = 200;
  for (int64_t state : scan_state_sizes())
    for (DType dt : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
      ScanCase c;
      c.state = state;
      c.dtype = dt;
      c.length = 513;
      run_case(c, seed++);
    }
}

TEST(ScanGpu, OptionalInputsAndStridedViews) {
  SPATTN_REQUIRE_GPU();
  uint64_t seed = 300;
  for (int mask = 0; mask < 16; ++mask) {
    ScanCase c;
    c.gate = mask & 1;
    c.skip = mask & 2;
    c.bias = mask & 4;
    c.final_state = mask & 8;
    c.length = 200;
    run_case(c, seed++);
  }
  ScanCase packed;
  packed.packed_xz = true;
  packed.dtype = DType::kBFloat16;
  packed.length = 333;
  run_case(packed, seed++);
  ScanCase no_softplus;
  no_softplus.softplus = false;
  no_softplus.dt_lo = 0.f, no_softplus.dt_hi = 2.f;
  run_case(no_softplus, seed++);
}

// Δ large (exp(ΔA) underflows to 0, ΔBx large) and tiny (exp(ΔA) rounds to 1, the skip
// term dominates): finite and equal to the reference.
TEST(ScanGpu, LargeAndSmallDelta) {
  SPATTN_REQUIRE_GPU();
  uint64_t seed = 400;
  for (auto [lo, hi] : {std::pair{10.f, 40.f}, std::pair{-30.f, -10.f}, std::pair{-30.f, 40.f}})
    for (DType dt : {DType::kFloat32, DType::kBFloat16})
      for (const ScanConfig& config : {ScanConfig{32, 1, 16}, ScanConfig{32, 16, 16}}) {
        ScanCase c;
        c.dt_lo = lo, c.dt_hi = hi;
        c.dtype = dt;
        c.length = 1500;
        c.config = config;
        run_case(c, seed++);
      }
}

// The time axis split over CTAs (a summarising launch, then each split from the composed
// state of the splits before it): forced counts that do and do not divide the chunks,
// more splits than chunks, the plain sequential kernel and the segmented one, decaying
// and near-identity Δ; the final state comes from the last split.
TEST(ScanGpu, SequenceSplits) {
  SPATTN_REQUIRE_GPU();
  uint64_t seed = 600;
  for (const char* config : {"32x1x16", "32x8x16", "64x4x8"})
    for (int64_t length : {1, 129, 1000, 4097})
      for (int splits : {1, 2, 3, 7, 1000}) {
        ScanCase c;
        c.length = length;
        c.channels = 70;
        c.config = ScanConfig::parse(config);
        c.splits = splits;
        c.dtype = DType::kBFloat16;
        const ScanExplanation ran = run_case(c, seed++);
        const int64_t chunk = int64_t{c.config->segments} * c.config->steps;
        const int64_t chunks = (length + chunk - 1) / chunk;
        // At most one split per chunk, each non-empty, covering the sequence.
        EXPECT_GE(ran.splits, 1);
        EXPECT_LE(ran.splits, std::min<int64_t>(splits, chunks)) << ran.to_string();
        EXPECT_EQ(ran.split_length % chunk == 0 || ran.splits == 1, true) << ran.to_string();
        EXPECT_GE(ran.split_length * ran.splits, length) << ran.to_string();
        EXPECT_LT(ran.split_length * (ran.splits - 1), length) << ran.to_string();
        if (chunks >= splits && splits > 1) {
          EXPECT_GT(ran.splits, 1) << ran.to_string();
        }
      }
  for (auto [lo, hi] : {std::pair{10.f, 40.f}, std::pair{-30.f, -10.f}}) {
    ScanCase c;
    c.length = 5000;
    c.dt_lo = lo, c.dt_hi = hi;
    c.splits = 5;
    run_case(c, seed++);
  }
}

TEST(ScanGpu, LongSequence) {
  SPATTN_REQUIRE_GPU();
  ScanCase c;
  c.batch = 1;
  c.length = 65536 + 3;
  c.channels = 64;
  c.dtype = DType::kBFloat16;
  // Few channels over a long sequence: the time axis is split to fill the GPU.
  const ScanExplanation ran = run_case(c, 500);
  EXPECT_GT(ran.splits, 1) << ran.to_string();
  const ScanShape shape{1, 65536, 1536, 16, DType::kBFloat16};
  SelectiveScan scan;
  const ScanExplanation ex = scan.prepare(shape);
  EXPECT_GT(ex.config.segments, 1) << ex.to_string();
}

}  // namespace
}  // namespace spattn
