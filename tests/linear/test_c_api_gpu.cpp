// The C ABI of the selective scan and Performer on the GPU: a scan (bf16 and fp32, gate,
// skip, bias, final state) and a Performer (non-causal with GQA, causal, after a redraw)
// through spattn.h against the fp64 host references, with the features the C ABI
// reports. Outputs are poisoned (NaN) first. Tolerance per element
// |out - ref| <= rtol |ref| + atol max|ref|, as the C++ API's tests:
//   scan      fp32 (1e-4, 1e-4)   bf16 (2^-8, 4e-3)
//   performer fp32 (1e-4, 1e-4)   bf16 (2^-8, 8e-3)
// And an adaptive pattern through spattn_attention_forward_adaptive with supplied random
// scores: the chosen blocks equal spattn::adaptive_select_reference per (batch, head), the
// output matches the fp32 reference kernel over masks of those blocks (bf16: rel L2 1e-2,
// max 3e-2, LSE 2e-3, as tests/engine/test_adaptive_gpu.cpp), and the adaptive inputs'
// shapes are checked with the library's messages.
#include <gtest/gtest.h>

#include <spattn/adaptive.hpp>
#include <spattn/attention.hpp>
#include <spattn/linear.hpp>
#include <spattn/spattn.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "autotune/harness.hpp"
#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "tests/linear/linear_test_util.hpp"
#include "tests/support/gpu.hpp"

namespace spattn {
namespace {

spattn_tensor describe(const runtime::DeviceBuffer& buf, DType dtype, std::vector<int64_t> shape) {
  const spattn_dtype c = dtype == DType::kFloat16    ? SPATTN_FP16
                         : dtype == DType::kBFloat16 ? SPATTN_BF16
                         : dtype == DType::kInt32    ? SPATTN_INT32
                                                     : SPATTN_FP32;
  return test::c_tensor(buf.data(), c, shape);
}

template <class Ref>
void expect_close(const std::vector<float>& out, const Ref& ref, double rtol, double atol, const char* what) {
  ASSERT_EQ(out.size(), ref.size());
  double max_ref = 0;
  for (double r : ref) max_ref = std::max(max_ref, std::fabs(r));
  int64_t bad = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const double err = std::fabs(out[i] - ref[i]);
    if (!(err <= rtol * std::fabs(ref[i]) + atol * max_ref) && bad++ < 5)
      ADD_FAILURE() << what << "[" << i << "] = " << out[i] << ", reference " << ref[i];
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << out.size() << " elements outside the tolerance";
}

void scan_case(DType dt) {
  SCOPED_TRACE(to_string(dt));
  const int64_t B = 2, L = 333, D = 70, N = 16;
  std::mt19937_64 rng(41);
  std::vector<float> x = test::uniform(B * L * D, -1, 1, rng), dr = test::uniform(B * L * D, -4, 1, rng),
                     z = test::uniform(B * L * D, -3, 3, rng), bm = test::uniform(B * L * N, -1, 1, rng),
                     cm = test::uniform(B * L * N, -1, 1, rng), d = test::uniform(D, -1, 1, rng),
                     bias = test::uniform(D, -0.5f, 0.5f, rng), alog = test::uniform(D * N, 0.f, 2.5f, rng);
  for (auto* v : {&x, &dr, &z, &bm, &cm}) test::round_to(*v, dt);
  std::vector<double> ref, ref_state;
  reference_selective_scan(ScanShape{B, L, D, N, dt}, x.data(), dr.data(), alog.data(), bm.data(), cm.data(),
                           d.data(), bias.data(), z.data(), true, ref, &ref_state);

  const runtime::DeviceBuffer dx = test::upload_as(x, dt), ddr = test::upload_as(dr, dt), dz = test::upload_as(z, dt),
                              dbm = test::upload_as(bm, dt), dcm = test::upload_as(cm, dt),
                              dd = test::upload_as(d, DType::kFloat32), dbias = test::upload_as(bias, DType::kFloat32),
                              dalog = test::upload_as(alog, DType::kFloat32);
  runtime::DeviceBuffer dy(B * L * D * dtype_size(dt)), dstate(B * D * N * 4);
  dy.fill_bytes(0xff);
  dstate.fill_bytes(0xff);
  const spattn_tensor tx = describe(dx, dt, {B, L, D}), tdr = describe(ddr, dt, {B, L, D}),
                      tz = describe(dz, dt, {B, L, D}), tb = describe(dbm, dt, {B, L, N}),
                      tc = describe(dcm, dt, {B, L, N}), td = describe(dd, DType::kFloat32, {D}),
                      tbias = describe(dbias, DType::kFloat32, {D}), ta = describe(dalog, DType::kFloat32, {D, N}),
                      ty = describe(dy, dt, {B, L, D}), ts = describe(dstate, DType::kFloat32, {B, D, N});

  spattn_selective_scan_t scan = nullptr;
  ASSERT_EQ(spattn_selective_scan_create(nullptr, &scan), SPATTN_OK) << spattn_last_error();
  ASSERT_EQ(spattn_selective_scan_forward(scan, &tx, &tdr, &ta, &tb, &tc, &td, &tbias, &tz, &ty, &ts, 1, nullptr),
            SPATTN_OK)
      << spattn_last_error();
  runtime::synchronize();
  size_t needed = 0;
  ASSERT_EQ(spattn_selective_scan_explain(scan, nullptr, 0, &needed), SPATTN_OK);
  std::string text(needed, '\0');
  ASSERT_EQ(spattn_selective_scan_explain(scan, text.data(), text.size(), &needed), SPATTN_OK);
  EXPECT_NE(text.find("B=2 L=333 channels=70 state=16"), std::string::npos) << text;
  spattn_selective_scan_destroy(scan);

  const bool fp32 = dt == DType::kFloat32;
  expect_close(test::download_as(dy, B * L * D, dt), ref, fp32 ? 1e-4 : std::ldexp(1.0, -8), fp32 ? 1e-4 : 4e-3, "y");
  expect_close(test::download_as(dstate, B * D * N, DType::kFloat32), ref_state, 1e-4, 1e-4, "final_state");
}

TEST(ScanCApiGpu, MatchesTheReference) {
  SPATTN_REQUIRE_GPU();
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) scan_case(dt);
}

void performer_case(DType dt, bool causal) {
  SCOPED_TRACE(std::string(to_string(dt)) + (causal ? " causal" : ""));
  const int64_t B = 2, Nq = 190, Nk = causal ? 190 : 257, H = 4, Hkv = causal ? 4 : 2, Dh = 64, M = 128;
  std::mt19937_64 rng(43);
  std::vector<float> q = test::uniform(B * Nq * H * Dh, -1, 1, rng), k = test::uniform(B * Nk * Hkv * Dh, -1, 1, rng),
                     v = test::uniform(B * Nk * Hkv * Dh, -1, 1, rng);
  for (auto* x : {&q, &k, &v}) test::round_to(*x, dt);
  const runtime::DeviceBuffer dq = test::upload_as(q, dt), dk = test::upload_as(k, dt), dv = test::upload_as(v, dt);
  runtime::DeviceBuffer dout(B * Nq * H * Dh * dtype_size(dt));
  const spattn_tensor tq = describe(dq, dt, {B, Nq, H, Dh}), tk = describe(dk, dt, {B, Nk, Hkv, Dh}),
                      tv = describe(dv, dt, {B, Nk, Hkv, Dh}), to = describe(dout, dt, {B, Nq, H, Dh});

  spattn_performer_t p = nullptr;
  const std::string options = std::string(R"({"features": 128, "seed": 3, "causal": )") + (causal ? "true" : "false") + "}";
  ASSERT_EQ(spattn_performer_create(Dh, options.c_str(), &p), SPATTN_OK) << spattn_last_error();
  for (uint64_t seed : {3, 9}) {  // the first draw, then a redraw
    SCOPED_TRACE("seed " + std::to_string(seed));
    if (seed != 3) {
      ASSERT_EQ(spattn_performer_redraw(p, seed), SPATTN_OK) << spattn_last_error();
    }
    size_t needed = 0;
    ASSERT_EQ(spattn_performer_features(p, nullptr, 0, &needed), SPATTN_OK);
    PerformerFeatures f;
    f.head_dim = Dh, f.features = M, f.seed = seed;
    f.omega.resize(needed);
    ASSERT_EQ(spattn_performer_features(p, f.omega.data(), f.omega.size(), &needed), SPATTN_OK);
    const std::vector<float> omega = f.rounded(dt);
    std::vector<double> ref;
    reference_performer(PerformerShape{B, Nq, Nk, H, Hkv, Dh, Dh, dt}, q.data(), k.data(), v.data(), omega.data(), M,
                        causal, ref);
    dout.fill_bytes(0xff);
    ASSERT_EQ(spattn_performer_forward(p, &tq, &tk, &tv, &to, nullptr), SPATTN_OK) << spattn_last_error();
    runtime::synchronize();
    const bool fp32 = dt == DType::kFloat32;
    expect_close(test::download_as(dout, B * Nq * H * Dh, dt), ref, fp32 ? 1e-4 : std::ldexp(1.0, -8),
                 fp32 ? 1e-4 : 8e-3, "o");
  }
  spattn_performer_destroy(p);
}

TEST(PerformerCApiGpu, MatchesTheReferenceAndFollowsARedraw) {
  SPATTN_REQUIRE_GPU();
  for (DType dt : {DType::kFloat32, DType::kBFloat16})
    for (bool causal : {false, true}) performer_case(dt, causal);
}

TEST(AdaptiveCApiGpu, SuppliedScoresChooseTheReferenceBlocksAndAttendThem) {
  SPATTN_REQUIRE_GPU();
  const char* json = R"({"type":"adaptive","block":64,"top_k":4,"causal":true})";
  const int64_t B = 2, N = 1000, H = 4, Hkv = 2, Dh = 64;
  const DType dt = DType::kBFloat16;
  int64_t nqb = 0, nkb = 0, max_k = 0;
  ASSERT_EQ(spattn_adaptive_geometry(json, N, N, &nqb, &nkb, &max_k), SPATTN_OK) << spattn_last_error();
  const AdaptiveGeometry g = adaptive_geometry(Pattern::parse(json), N, N);
  ASSERT_EQ(nqb, g.nq_blocks);
  ASSERT_EQ(nkb, g.nk_blocks);
  ASSERT_EQ(max_k, g.max_k);

  std::mt19937_64 rng(47);
  std::vector<float> q = test::uniform(B * N * H * Dh, -1, 1, rng), k = test::uniform(B * N * Hkv * Dh, -1, 1, rng),
                     v = test::uniform(B * N * Hkv * Dh, -1, 1, rng), scores = test::uniform(B * H * nqb * nkb, -1, 1, rng);
  for (auto* x : {&q, &k, &v}) test::round_to(*x, dt);
  const runtime::DeviceBuffer dq = test::upload_as(q, dt), dk = test::upload_as(k, dt), dv = test::upload_as(v, dt),
                              ds = test::upload_as(scores, DType::kFloat32);
  runtime::DeviceBuffer dout(B * N * H * Dh * 2), dlse(B * H * N * 4), dblocks(B * H * nqb * max_k * 4);
  dout.fill_bytes(0xff);
  dlse.fill_bytes(0xff);
  dblocks.fill_bytes(0x7f);
  const spattn_tensor tq = describe(dq, dt, {B, N, H, Dh}), tk = describe(dk, dt, {B, N, Hkv, Dh}),
                      tv = describe(dv, dt, {B, N, Hkv, Dh}), to = describe(dout, dt, {B, N, H, Dh}),
                      tl = describe(dlse, DType::kFloat32, {B, H, N}),
                      ts = describe(ds, DType::kFloat32, {B, H, nqb, nkb}),
                      tc = describe(dblocks, DType::kInt32, {B, H, nqb, max_k});

  spattn_attention_t attn = nullptr;
  ASSERT_EQ(spattn_attention_create(json, R"({"use_tuning_db": false})", &attn), SPATTN_OK) << spattn_last_error();
  ASSERT_EQ(spattn_attention_forward_adaptive(attn, &tq, &tk, &tv, &to, &tl, &ts, nullptr, nullptr, &tc, nullptr,
                                              nullptr),
            SPATTN_OK)
      << spattn_last_error();
  runtime::synchronize();
  const std::string text = test::explain_text(attn);
  EXPECT_NE(text.find("supplied by the caller"), std::string::npos) << text;

  std::vector<int32_t> got(B * H * nqb * max_k);
  dblocks.download(got.data(), got.size() * 4);
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const std::vector<int32_t> ref = adaptive_select_reference(g, scores.data() + bh * nqb * nkb);
    for (int64_t I = 0; I < nqb; ++I)
      EXPECT_TRUE(std::equal(ref.begin() + I * max_k, ref.begin() + (I + 1) * max_k,
                             got.begin() + (bh * nqb + I) * max_k))
          << "batch " << bh / H << " head " << bh % H << " block " << I;
  }

  // The output over the blocks chosen: the reference kernel over their masks, per batch.
  const int64_t words = (N + 31) / 32;
  engine::ReferenceResult ref;
  const auto tq_view = TensorView::contiguous(dq.data(), dt, {B, N, H, Dh});
  const auto tk_view = TensorView::contiguous(dk.data(), dt, {B, N, Hkv, Dh});
  const auto tv_view = TensorView::contiguous(dv.data(), dt, {B, N, Hkv, Dh});
  for (int64_t b = 0; b < B; ++b) {
    std::vector<uint32_t> masks(H * N * words, 0u);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i) {
        const int32_t* row = got.data() + ((b * H + h) * nqb + i / g.block) * max_k;
        for (int64_t x = 0; x < max_k && row[x] >= 0; ++x)
          for (int64_t j = row[x] * g.block; j < std::min(N, (row[x] + 1) * g.block); ++j)
            if (j <= i) masks[(h * N + i) * words + j / 32] |= 1u << (j % 32);
      }
    const engine::Problem one{1, N, N, H, Hkv, Dh, dt};
    auto at = [&](const TensorView& t) {
      TensorView x = t;
      x.data = static_cast<char*>(t.data) + b * t.strides[0] * 2;
      x.shape[0] = 1;
      return x;
    };
    const engine::ReferenceResult r =
        engine::reference_forward_masks(masks, 1, one, at(tq_view), at(tk_view), at(tv_view), 0);
    ref.o.insert(ref.o.end(), r.o.begin(), r.o.end());
    ref.lse.insert(ref.lse.end(), r.lse.begin(), r.lse.end());
  }
  std::vector<uint16_t> out(B * N * H * Dh);
  std::vector<float> lse(B * H * N);
  dout.download(out.data(), out.size() * 2);
  dlse.download(lse.data(), lse.size() * 4);
  const auto cmp = engine::compare(out, dt, lse, ref);
  EXPECT_EQ(cmp.nonfinite, 0) << cmp.to_string();
  EXPECT_EQ(cmp.lse_mismatch, 0) << cmp.to_string();
  const autotune::Tolerance tol = autotune::tolerance_for(dt);  // the forward tolerance, one place
  EXPECT_LE(cmp.rel_l2_err, tol.rel_l2) << cmp.to_string();
  EXPECT_LE(cmp.max_abs_err, tol.max_abs) << cmp.to_string();
  EXPECT_LE(cmp.max_lse_err, tol.lse) << cmp.to_string();

  // The adaptive inputs' shapes, checked once the plan knows the block grid.
  const spattn_tensor short_scores = describe(ds, DType::kFloat32, {B, H, nqb, nkb - 1}),
                      wide_blocks = describe(dblocks, DType::kInt32, {B, H, nqb, max_k - 1}),
                      float_blocks = describe(dblocks, DType::kFloat32, {B, H, nqb, max_k});
  EXPECT_EQ(spattn_attention_forward_adaptive(attn, &tq, &tk, &tv, &to, &tl, &short_scores, nullptr, nullptr, &tc,
                                              nullptr, nullptr),
            SPATTN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(spattn_last_error()).find("adaptive scores"), std::string::npos) << spattn_last_error();
  for (const spattn_tensor* bad : {&wide_blocks, &float_blocks}) {
    EXPECT_EQ(spattn_attention_forward_adaptive(attn, &tq, &tk, &tv, &to, &tl, &ts, nullptr, nullptr, bad, nullptr,
                                                nullptr),
              SPATTN_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(spattn_last_error()).find("adaptive blocks output must be int32 [B, Hq, nq_blocks, max_k]"),
              std::string::npos)
        << spattn_last_error();
  }
  EXPECT_EQ(spattn_attention_forward_adaptive(attn, &tq, &tk, &tv, &to, &tl, &ts, &ts, &ts, nullptr, nullptr, nullptr),
            SPATTN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(spattn_last_error()).find("exclude each other"), std::string::npos) << spattn_last_error();
  spattn_attention_destroy(attn);

  // Other patterns refuse adaptive inputs.
  spattn_attention_t dense = nullptr;
  ASSERT_EQ(spattn_attention_create(R"({"type":"dense","causal":true})", R"({"use_tuning_db": false})", &dense),
            SPATTN_OK);
  EXPECT_EQ(spattn_attention_forward_adaptive(dense, &tq, &tk, &tv, &to, &tl, &ts, nullptr, nullptr, nullptr, nullptr,
                                              nullptr),
            SPATTN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(spattn_last_error()).find("they belong to adaptive patterns only"), std::string::npos)
      << spattn_last_error();
  runtime::synchronize();
  spattn_attention_destroy(dense);
}

// Training through the C ABI: spattn_attention_forward_adaptive with gates and
// spattn_attention_backward_adaptive with their gradient give, in deterministic mode,
// the very bits of spattn::Attention on the same inputs (which the engine tests check
// against the fp64 reference), gates_grad included.
TEST(AdaptiveCApiGpu, GatedBackwardEqualsTheCppApi) {
  SPATTN_REQUIRE_GPU();
  const char* json = R"({"type":"adaptive","block":64,"top_k":3,"causal":true})";
  const int64_t B = 2, N = 640, H = 4, Hkv = 2, Dh = 64;
  const DType dt = DType::kBFloat16;
  const AdaptiveGeometry g = adaptive_geometry(Pattern::parse(json), N, N);
  const int64_t nqb = g.nq_blocks, nkb = g.nk_blocks;
  std::mt19937_64 rng(53);
  std::vector<float> q = test::uniform(B * N * H * Dh, -1, 1, rng), k = test::uniform(B * N * Hkv * Dh, -1, 1, rng),
                     v = test::uniform(B * N * Hkv * Dh, -1, 1, rng), d_o = test::uniform(B * N * H * Dh, -1, 1, rng),
                     scores = test::uniform(B * H * nqb * nkb, -1, 1, rng),
                     gates = test::uniform(B * H * nqb * nkb, 0.1, 2, rng);
  for (auto* x : {&q, &k, &v, &d_o}) test::round_to(*x, dt);
  const runtime::DeviceBuffer bq = test::upload_as(q, dt), bk = test::upload_as(k, dt), bv = test::upload_as(v, dt),
                              bdo = test::upload_as(d_o, dt), bs = test::upload_as(scores, DType::kFloat32),
                              bg = test::upload_as(gates, DType::kFloat32);
  struct Outputs {
    runtime::DeviceBuffer o, lse, dq, dk, dv, dg;
  };
  auto outputs = [&] {
    Outputs x{runtime::DeviceBuffer(B * N * H * Dh * 2), runtime::DeviceBuffer(B * H * N * 4),
              runtime::DeviceBuffer(B * N * H * Dh * 2), runtime::DeviceBuffer(B * N * Hkv * Dh * 2),
              runtime::DeviceBuffer(B * N * Hkv * Dh * 2), runtime::DeviceBuffer(B * H * nqb * nkb * 4)};
    for (auto* b : {&x.o, &x.lse, &x.dq, &x.dk, &x.dv, &x.dg}) b->fill_bytes(0xff);
    return x;
  };
  Outputs c = outputs(), cpp = outputs();

  spattn_attention_t attn = nullptr;
  ASSERT_EQ(spattn_attention_create(json, R"({"use_tuning_db": false, "deterministic": true})", &attn), SPATTN_OK)
      << spattn_last_error();
  const spattn_tensor tq = describe(bq, dt, {B, N, H, Dh}), tk = describe(bk, dt, {B, N, Hkv, Dh}),
                      tv = describe(bv, dt, {B, N, Hkv, Dh}), tdo = describe(bdo, dt, {B, N, H, Dh}),
                      ts = describe(bs, DType::kFloat32, {B, H, nqb, nkb}),
                      tg = describe(bg, DType::kFloat32, {B, H, nqb, nkb}), to = describe(c.o, dt, {B, N, H, Dh}),
                      tl = describe(c.lse, DType::kFloat32, {B, H, N}), tdq = describe(c.dq, dt, {B, N, H, Dh}),
                      tdk = describe(c.dk, dt, {B, N, Hkv, Dh}), tdv = describe(c.dv, dt, {B, N, Hkv, Dh}),
                      tdg = describe(c.dg, DType::kFloat32, {B, H, nqb, nkb});
  ASSERT_EQ(spattn_attention_forward_adaptive(attn, &tq, &tk, &tv, &to, &tl, &ts, nullptr, nullptr, nullptr, &tg,
                                              nullptr),
            SPATTN_OK)
      << spattn_last_error();
  ASSERT_EQ(spattn_attention_backward_adaptive(attn, &tq, &tk, &tv, &to, &tl, &tdo, &tdq, &tdk, &tdv, &ts, nullptr,
                                               nullptr, nullptr, &tg, &tdg, nullptr),
            SPATTN_OK)
      << spattn_last_error();
  // gates_grad without gates is refused with the reason.
  EXPECT_EQ(spattn_attention_backward_adaptive(attn, &tq, &tk, &tv, &to, &tl, &tdo, &tdq, &tdk, &tdv, &ts, nullptr,
                                               nullptr, nullptr, nullptr, &tdg, nullptr),
            SPATTN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(spattn_last_error()).find("gates_grad needs the gates"), std::string::npos)
      << spattn_last_error();
  runtime::synchronize();
  spattn_attention_destroy(attn);

  AttentionOptions opts;
  opts.use_tuning_db = false;
  opts.deterministic = true;
  Attention ref(Pattern::parse(json), opts);
  auto qv = [&](const runtime::DeviceBuffer& b) { return TensorView::contiguous(b.data(), dt, {B, N, H, Dh}); };
  auto kv = [&](const runtime::DeviceBuffer& b) { return TensorView::contiguous(b.data(), dt, {B, N, Hkv, Dh}); };
  auto grid = [&](const runtime::DeviceBuffer& b) {
    return TensorView::contiguous(b.data(), DType::kFloat32, {B, H, nqb, nkb});
  };
  const TensorView vs = grid(bs), vg = grid(bg), vdg = grid(cpp.dg);
  const TensorView vl = TensorView::contiguous3(cpp.lse.data(), DType::kFloat32, {B, H, N});
  AdaptiveInputs in;
  in.scores = &vs;
  in.gates = &vg;
  ref.forward(qv(bq), kv(bk), kv(bv), qv(cpp.o), &vl, nullptr, &in);
  in.gates_grad = &vdg;
  ref.backward(qv(bq), kv(bk), kv(bv), qv(cpp.o), vl, qv(bdo), qv(cpp.dq), kv(cpp.dk), kv(cpp.dv), nullptr, &in);
  runtime::synchronize();
  auto bytes = [](const runtime::DeviceBuffer& b) {
    std::vector<unsigned char> x(b.size());
    b.download(x.data(), x.size());
    return x;
  };
  EXPECT_TRUE(bytes(c.o) == bytes(cpp.o)) << "O";
  EXPECT_TRUE(bytes(c.lse) == bytes(cpp.lse)) << "LSE";
  EXPECT_TRUE(bytes(c.dq) == bytes(cpp.dq)) << "dQ";
  EXPECT_TRUE(bytes(c.dk) == bytes(cpp.dk)) << "dK";
  EXPECT_TRUE(bytes(c.dv) == bytes(cpp.dv)) << "dV";
  EXPECT_TRUE(bytes(c.dg) == bytes(cpp.dg)) << "dL/dg";
  std::vector<float> dg(static_cast<size_t>(B * H * nqb * nkb));
  c.dg.download(dg.data(), dg.size() * 4);
  EXPECT_TRUE(std::any_of(dg.begin(), dg.end(), [](float x) { return x != 0.f; })) << "no gate gradient";
  EXPECT_TRUE(std::all_of(dg.begin(), dg.end(), [](float x) { return std::isfinite(x); })) << "non-finite dL/dg";
}

}  // namespace
}  // namespace spattn
