// The selective scan without a GPU: configurations, input validation (each error names
// the tensor and what is supported), the fp64 reference against closed forms, and NVRTC
// compilation of every configuration for sm_80 and sm_90a without register spills.
#include <gtest/gtest.h>

#include <spattn/linear.hpp>

#include <cmath>
#include <random>

#include <fmt/format.h>

#include "linear/kernels.hpp"
#include "runtime/driver.hpp"
#include "runtime/nvrtc.hpp"
#include "engine/jit.hpp"
#include "tests/linear/linear_test_util.hpp"

namespace spattn {
namespace {

void* fake(uintptr_t k) { return reinterpret_cast<void*>(0x10000 * k); }

TensorView seq(DType dt, int64_t b, int64_t l, int64_t d, uintptr_t k) {
  return TensorView::contiguous3(fake(k), dt, {b, l, d});
}
TensorView vec(std::initializer_list<int64_t> shape, uintptr_t k) {
  TensorView t;
  t.data = fake(k);
  t.dtype = DType::kFloat32;
  t.rank = static_cast<int>(shape.size());
  int d = 0;
  for (int64_t s : shape) t.shape[d++] = s;
  int64_t stride = 1;
  for (int i = t.rank - 1; i >= 0; --i) t.strides[i] = stride, stride *= t.shape[i];
  return t;
}

SelectiveScanArgs valid_args(DType dt = DType::kBFloat16, int64_t B = 2, int64_t L = 100, int64_t D = 48,
                             int64_t N = 16) {
  SelectiveScanArgs a;
  a.x = seq(dt, B, L, D, 1);
  a.delta = seq(dt, B, L, D, 2);
  a.a_log = vec({D, N}, 3);
  a.b = seq(dt, B, L, N, 4);
  a.c = seq(dt, B, L, N, 5);
  a.d = vec({D}, 6);
  a.delta_bias = vec({D}, 7);
  a.z = seq(dt, B, L, D, 8);
  a.y = seq(dt, B, L, D, 9);
  a.final_state = vec({B, D, N}, 10);
  return a;
}

template <class F>
void expect_error(F&& f, ErrorCode code, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(ScanConfig, ParsePrintAndTable) {
  for (const ScanConfig& c : scan_configs()) {
    EXPECT_NO_THROW(c.validate()) << c.to_string();
    EXPECT_EQ(ScanConfig::parse(c.to_string()), c);
  }
  EXPECT_EQ(ScanConfig::parse("64x4x16"), (ScanConfig{64, 4, 16}));
  expect_error([] { ScanConfig::parse("32x8"); }, ErrorCode::kInvalidArgument, "CHANNELSxSEGMENTSxSTEPS");
  expect_error([] { ScanConfig::parse("32x8x16x"); }, ErrorCode::kInvalidArgument, "CHANNELSxSEGMENTSxSTEPS");
  expect_error([] { ScanConfig::parse("48x8x16"); }, ErrorCode::kInvalidArgument, "channels must be 32 or 64");
  expect_error([] { ScanConfig::parse("32x3x16"); }, ErrorCode::kInvalidArgument, "segments must be");
  expect_error([] { ScanConfig::parse("32x8x12"); }, ErrorCode::kInvalidArgument, "steps must be");
  expect_error([] { ScanConfig::parse("64x16x16"); }, ErrorCode::kInvalidArgument, "at most 512");
}

TEST(ScanConfig, SharedMemoryFormula) {
  // B and C of a chunk, plus segment sums, local states and the two carries.
  EXPECT_EQ((ScanConfig{32, 1, 16}).smem_bytes(16), 2 * 16 * 16 * 4);
  EXPECT_EQ((ScanConfig{32, 8, 16}).smem_bytes(16), (2 * 128 * 16 + 8 * 32 + 10 * 16 * 32) * 4);
}

TEST(ScanValidate, AcceptsValidArgs) {
  for (DType dt : {DType::kBFloat16, DType::kFloat16, DType::kFloat32}) {
    const ScanShape s = check_selective_scan(valid_args(dt));
    EXPECT_EQ(s.batch, 2);
    EXPECT_EQ(s.length, 100);
    EXPECT_EQ(s.channels, 48);
    EXPECT_EQ(s.state, 16);
    EXPECT_EQ(s.dtype, dt);
  }
  SelectiveScanArgs a = valid_args();
  a.z = {};
  a.d = {};
  a.delta_bias = {};
  a.final_state = {};
  EXPECT_NO_THROW(check_selective_scan(a));
  // x and z as the two halves of one [B, L, 2D] projection output (Mamba's in_proj).
  a = valid_args();
  a.x.strides = {100 * 96, 96, 1, 1};
  a.z = a.x;
  a.z.data = static_cast<char*>(a.x.data) + 48 * 2;
  EXPECT_NO_THROW(check_selective_scan(a));
}

TEST(ScanValidate, RejectsBadInput) {
  auto with = [](auto edit) {
    SelectiveScanArgs a = valid_args();
    edit(a);
    return a;
  };
  using A = SelectiveScanArgs;
  expect_error([&] { check_selective_scan(with([](A& a) { a.x.data = nullptr; })); }, ErrorCode::kInvalidArgument,
               "x is missing");
  expect_error([&] { check_selective_scan(with([](A& a) { a.y = {}; })); }, ErrorCode::kInvalidArgument,
               "y is missing");
  expect_error([&] { check_selective_scan(with([](A& a) { a.delta.shape[1] = 99; })); },
               ErrorCode::kInvalidArgument, "delta");
  expect_error([&] { check_selective_scan(with([](A& a) { a.b.dtype = DType::kFloat16; })); },
               ErrorCode::kInvalidArgument, "dtype of x");
  expect_error([&] { check_selective_scan(with([](A& a) { a.c.shape[2] = 8; })); }, ErrorCode::kInvalidArgument,
               "c:");
  expect_error([&] { check_selective_scan(with([](A& a) { a.x.strides[2] = 2; })); }, ErrorCode::kInvalidArgument,
               "last dimension must be contiguous");
  expect_error([&] { check_selective_scan(with([](A& a) { a.a_log = vec({48, 12}, 3); })); },
               ErrorCode::kUnsupported, "supported: 4, 8, 16, 32");
  expect_error([&] { check_selective_scan(with([](A& a) { a.a_log.dtype = DType::kBFloat16; })); },
               ErrorCode::kInvalidArgument, "must be fp32");
  expect_error([&] { check_selective_scan(with([](A& a) { a.d = vec({47}, 6); })); }, ErrorCode::kInvalidArgument,
               "d:");
  expect_error([&] { check_selective_scan(with([](A& a) { a.final_state = vec({2, 16, 48}, 10); })); },
               ErrorCode::kInvalidArgument, "final_state");
  expect_error([&] { check_selective_scan(with([](A& a) { a.x.rank = 4; })); }, ErrorCode::kInvalidArgument,
               "rank 4, expected 3");
  expect_error([&] { check_selective_scan(with([](A& a) { a.x.data = static_cast<char*>(a.x.data) + 1; })); },
               ErrorCode::kInvalidArgument, "aligned");
  expect_error([&] { check_selective_scan(with([](A& a) { a.x.shape[0] = 70000; })); }, ErrorCode::kInvalidArgument,
               "at most 65535");
}

// Without a GPU, a valid call gets as far as the device and says so; an invalid one is
// rejected first.
TEST(ScanValidate, NoGpuIsReportedAfterValidation) {
  if (runtime::has_gpu()) GTEST_SKIP() << "this host has a GPU";
  SelectiveScan scan;
  expect_error([&] { scan.forward(valid_args()); }, ErrorCode::kNoGpu, "");
  SelectiveScanArgs bad = valid_args();
  bad.c = {};
  expect_error([&] { scan.forward(bad); }, ErrorCode::kInvalidArgument, "c is missing");
}

// The reference against the scan's closed form
//   h_t = Σ_{s<=t} exp(A Σ_{r=s+1..t} Δ_r) Δ_s B_s x_s,
// evaluated independently (a double sum, no recurrence).
TEST(ScanReference, MatchesClosedForm) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> u(-1, 1);
  const ScanShape s{2, 13, 3, 4, DType::kFloat32};
  const int64_t B = s.batch, L = s.length, D = s.channels, N = s.state;
  std::vector<float> x(B * L * D), dr(B * L * D), z(B * L * D), bm(B * L * N), cm(B * L * N), alog(D * N), d(D),
      bias(D);
  for (auto* v : {&x, &dr, &z, &bm, &cm, &alog, &d, &bias})
    for (float& e : *v) e = u(rng);
  std::vector<double> y, fs;
  reference_selective_scan(s, x.data(), dr.data(), alog.data(), bm.data(), cm.data(), d.data(), bias.data(), z.data(),
                           true, y, &fs);
  auto softplus = [](double v) { return std::log1p(std::exp(v)); };
  auto delta_at = [&](int64_t b, int64_t t, int64_t ch) {
    return softplus(static_cast<double>(dr[(b * L + t) * D + ch]) + bias[ch]);
  };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t ch = 0; ch < D; ++ch)
      for (int64_t t = 0; t < L; ++t) {
        double acc = 0;
        std::vector<double> h(N, 0.0);
        for (int64_t n = 0; n < N; ++n) {
          const double a = -std::exp(static_cast<double>(alog[ch * N + n]));
          for (int64_t j = 0; j <= t; ++j) {
            double sum = 0;
            for (int64_t r = j + 1; r <= t; ++r) sum += delta_at(b, r, ch);
            const double dj = delta_at(b, j, ch);
            h[n] += std::exp(a * sum) * dj * bm[(b * L + j) * N + n] * x[(b * L + j) * D + ch];
          }
          acc += cm[(b * L + t) * N + n] * h[n];
          if (t == L - 1) {
            EXPECT_NEAR(fs[(b * D + ch) * N + n], h[n], 1e-12);
          }
        }
        acc += static_cast<double>(d[ch]) * x[(b * L + t) * D + ch];
        const double zv = z[(b * L + t) * D + ch];
        acc *= zv / (1 + std::exp(-zv));
        EXPECT_NEAR(y[(b * L + t) * D + ch], acc, 1e-12) << "b " << b << " ch " << ch << " t " << t;
      }
}

// One step from h = 0: y = (C · B) Δ x + D x, with Δ = softplus(Δraw + bias) or not.
TEST(ScanReference, SingleStepAndNoSoftplus) {
  const ScanShape s{1, 1, 1, 2, DType::kFloat32};
  const float x = 0.5f, dr = 0.25f, alog[2] = {0.f, 1.f}, b[2] = {1.f, 2.f}, c[2] = {3.f, -1.f}, d = 0.75f,
              bias = 0.5f;
  std::vector<double> y;
  reference_selective_scan(s, &x, &dr, alog, b, c, &d, &bias, nullptr, true, y);
  const double dt = std::log1p(std::exp(0.75));
  EXPECT_NEAR(y[0], (3 * 1 - 1 * 2) * dt * 0.5 + 0.75 * 0.5, 1e-14);
  reference_selective_scan(s, &x, &dr, alog, b, c, nullptr, nullptr, nullptr, false, y);
  EXPECT_NEAR(y[0], (3 * 1 - 1 * 2) * 0.25 * 0.5, 1e-14);
}

TEST(ScanCompile, EveryConfigCompilesWithoutSpills) {
  for (const std::string arch : {"sm_80", "sm_90a"}) {
    for (const ScanConfig& c : scan_configs()) {
      const auto r = linear::render_scan(c, 16, DType::kBFloat16);
      EXPECT_NE(r.source.find("config " + c.to_string()), std::string::npos);
      const CacheLookup out = engine::compile_cached(r, arch);
      EXPECT_FALSE(out.kernel.cubin.empty());
      test::expect_no_spills(out.kernel.log, arch + " " + c.to_string());
    }
  }
}

TEST(ScanCompile, EveryStateSizeAndDtype) {
  // Every state size at the longest per-thread steps and at the default config; the other
  // dtypes (same register use: loads convert to fp32) at the largest state.
  for (const std::string arch : {"sm_80", "sm_90a"})
    for (int state : scan_state_sizes())
      for (DType dt : {DType::kBFloat16, DType::kFloat16, DType::kFloat32})
        for (const ScanConfig& c : {ScanConfig{32, 1, 32}, ScanConfig{32, 8, 16}}) {
          if (dt != DType::kBFloat16 && (state != 32 || c.segments == 1)) continue;
          const CacheLookup out = engine::compile_cached(linear::render_scan(c, state, dt), arch);
          test::expect_no_spills(out.kernel.log, fmt::format("{} state {} {} {}", arch, state, to_string(dt), c.to_string()));
        }
}

TEST(ScanCompile, RejectsUnsupportedState) {
  expect_error([] { linear::render_scan(ScanConfig{}, 12, DType::kBFloat16); }, ErrorCode::kUnsupported,
               "state size 12");
}

TEST(ScanHeuristic, PicksTableConfigsByParallelism) {
  runtime::DeviceInfo h200;
  h200.sm_count = 132;
  const auto table = scan_configs();
  EXPECT_EQ(linear::scan_heuristic(ScanShape{4, 1000, 80000, 16}, h200).segments, 1);
  for (int64_t channels : {64, 1536, 5120, 65536}) {
    for (int64_t length : {1, 100, 65536}) {
      std::string why;
      const ScanConfig c = linear::scan_heuristic(ScanShape{1, length, channels, 16}, h200, &why);
      EXPECT_NE(std::find(table.begin(), table.end(), c), table.end()) << c.to_string();
      EXPECT_NE(why.find("heuristic"), std::string::npos);
      if (length == 1) {
        EXPECT_EQ(c.segments, 1);
      }
    }
  }
  EXPECT_GT(linear::scan_heuristic(ScanShape{1, 65536, 1536, 16}, h200).segments, 1);
}

// Splits of the time axis: whole chunks, every split non-empty, the sequence covered;
// forced counts are capped by the chunks, chosen ones fill the GPU and stay 1 when the
// channels alone do.
TEST(ScanSplits, CoverTheSequenceInWholeChunks) {
  runtime::DeviceInfo h200;
  h200.sm_count = 132;
  for (const ScanConfig& config : scan_configs()) {
    const int64_t chunk = int64_t{config.segments} * config.steps;
    for (int64_t length : {int64_t{1}, chunk - 1, chunk, chunk + 1, 4097 * chunk / 16, int64_t{65539}}) {
      if (length < 1) continue;
      for (int requested : {0, 1, 2, 3, 7, 100000}) {
        const ScanShape shape{1, length, 64, 16};
        std::string why;
        const linear::ScanSplits s = linear::scan_splits(config, shape, h200, requested, &why);
        SCOPED_TRACE(fmt::format("{} L={} requested {}: {} x {} ({})", config.to_string(), length, requested,
                                 s.splits, s.split_length, why));
        const int64_t chunks = (length + chunk - 1) / chunk;
        ASSERT_GE(s.splits, 1);
        EXPECT_LE(s.splits, chunks);
        if (s.splits == 1) {
          EXPECT_EQ(s.split_length, length);
        } else {
          EXPECT_EQ(s.split_length % chunk, 0);
          EXPECT_LT(s.split_length * (s.splits - 1), length);  // the last split is not empty
          EXPECT_GE(s.split_length * s.splits, length);
        }
        if (requested > 0) {
          EXPECT_LE(s.splits, requested);
          EXPECT_NE(why.find("forced"), std::string::npos);
          // As many as asked for where the chunks allow (ceil rounding may merge a few).
          if (requested <= chunks) {
            EXPECT_GE(s.splits, (requested + 1) / 2);
          }
        } else {
          EXPECT_LE(s.splits, std::max<int64_t>(1, chunks / 4));  // at least 4 chunks per split
        }
      }
    }
  }
  // Few channels over a long sequence are split; enough channels fill the GPU unsplit.
  const ScanConfig c{32, 8, 16};
  EXPECT_GT(linear::scan_splits(c, ScanShape{1, 65536, 1536, 16}, h200).splits, 1);
  EXPECT_EQ(linear::scan_splits(c, ScanShape{8, 65536, 65536, 16}, h200).splits, 1);
  EXPECT_EQ(linear::scan_splits(c, ScanShape{1, 100, 64, 16}, h200).splits, 1);
  expect_error([&] { linear::scan_splits(c, ScanShape{1, 100, 64, 16}, h200, -1); }, ErrorCode::kInvalidArgument,
               "splits must be >= 0");
}

}  // namespace
}  // namespace spattn
