// Adaptive patterns on the GPU: the blocks the selection kernel chooses against the host
// reference of the same definition (spattn/adaptive.hpp), and the attention over them
// against the fp32 reference kernel over masks of exactly those blocks.
//
//  - supplied scores (random fp32, no ties): the chosen blocks equal the reference row for
//    row;
//  - computed scores (block means, optionally projected, TF32 products): rows may differ
//    only where the reference's last chosen and first unchosen scores are within the TF32
//    error (a near tie); at least 90% of the rows must be decisive and all of those equal;
//  - outputs: over the chosen blocks the GPU returned, at the forward tolerances of
//    test_forward_gpu.cpp (bf16: rel L2 1e-2, max 3e-2; fp16: 2e-3, 5e-3; LSE 2e-3);
//  - a forward captured in a CUDA graph and replayed on new inputs equals a direct forward.
#include <gtest/gtest.h>

#include <spattn/adaptive.hpp>
#include <spattn/attention.hpp>

#include <algorithm>
#include <cmath>
#include <random>

#include "autotune/harness.hpp"
#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"
#include "tests/support/gpu.hpp"

namespace spattn {
namespace {

enum class Scores { kSupplied, kComputed, kProjected, kProjectedPerHead };

struct Case {
  std::string json;
  int64_t batch = 2, nq = 1000, nk = 1000, heads = 4, kv_heads = 2, head_dim = 128;
  DType dtype = DType::kBFloat16;
  const char* config = nullptr;
  Scores scores = Scores::kSupplied;
  int64_t proj = 32;
};

std::string describe(const Case& c) {
  static const char* names[] = {"supplied", "computed", "projected", "projected per head"};
  return fmt::format("{} B={} Nq={} Nk={} H={}/{} D={} {} scores {}{}", c.json, c.batch, c.nq, c.nk, c.heads,
                     c.kv_heads, c.head_dim, to_string(c.dtype), names[static_cast<int>(c.scores)],
                     c.config ? std::string(" config ") + c.config : "");
}

using test::download_as;

// Block means of a [B, N, H, D] tensor in fp64: [B][H][blocks][D].
std::vector<double> pool(const std::vector<float>& x, int64_t batch, int64_t n, int64_t heads, int64_t d,
                         int64_t block) {
  const int64_t blocks = (n + block - 1) / block;
  std::vector<double> out(batch * heads * blocks * d, 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t e = 0; e < d; ++e)
          out[((b * heads + h) * blocks + t / block) * d + e] += x[((b * n + t) * heads + h) * d + e];
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const double count = static_cast<double>(std::min(n, (blk + 1) * block) - blk * block);
        for (int64_t e = 0; e < d; ++e) out[((b * heads + h) * blocks + blk) * d + e] /= count;
      }
  return out;
}

// rows [B][H][blocks][d] times w ([d, p] shared, or [H][d][p]) -> [B][H][blocks][p].
std::vector<double> project(const std::vector<double>& rows, const std::vector<float>& w, bool per_head,
                            int64_t batch, int64_t heads, int64_t blocks, int64_t d, int64_t p) {
  std::vector<double> out(batch * heads * blocks * p, 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h) {
      const float* wh = w.data() + (per_head ? h * d * p : 0);
      for (int64_t r = 0; r < blocks; ++r)
        for (int64_t e = 0; e < d; ++e) {
          const double a = rows[((b * heads + h) * blocks + r) * d + e];
          for (int64_t c = 0; c < p; ++c) out[((b * heads + h) * blocks + r) * p + c] += a * wh[e * p + c];
        }
    }
  return out;
}

void run_case(const Case& c, uint64_t seed) {
  SCOPED_TRACE(describe(c));
  const Pattern pattern = Pattern::parse(c.json);
  const AdaptiveGeometry g = adaptive_geometry(pattern, c.nq, c.nk);
  const int64_t q_elems = c.batch * c.nq * c.heads * c.head_dim;
  const int64_t kv_elems = c.batch * c.nk * c.kv_heads * c.head_dim;
  const int64_t s_elems = c.batch * c.heads * g.nq_blocks * g.nk_blocks;
  const int64_t c_elems = c.batch * c.heads * g.nq_blocks * g.max_k;
  runtime::DeviceBuffer q(q_elems * 2), k(kv_elems * 2), v(kv_elems * 2), o(q_elems * 2),
      lse(c.batch * c.heads * c.nq * 4), chosen(c_elems * 4);
  engine::fill_random(q.data(), q_elems, c.dtype, seed * 5 + 1);
  engine::fill_random(k.data(), kv_elems, c.dtype, seed * 5 + 2);
  engine::fill_random(v.data(), kv_elems, c.dtype, seed * 5 + 3);
  o.fill_bytes(0xff);
  lse.fill_bytes(0xff);
  chosen.fill_bytes(0x7f);
  const auto tq = TensorView::contiguous(q.data(), c.dtype, {c.batch, c.nq, c.heads, c.head_dim});
  const auto tk = TensorView::contiguous(k.data(), c.dtype, {c.batch, c.nk, c.kv_heads, c.head_dim});
  const auto tv = TensorView::contiguous(v.data(), c.dtype, {c.batch, c.nk, c.kv_heads, c.head_dim});
  const auto to = TensorView::contiguous(o.data(), c.dtype, {c.batch, c.nq, c.heads, c.head_dim});
  const auto tl = TensorView::contiguous3(lse.data(), DType::kFloat32, {c.batch, c.heads, c.nq});
  const auto tc = TensorView::contiguous(chosen.data(), DType::kInt32, {c.batch, c.heads, g.nq_blocks, g.max_k});

  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> host_scores, host_wq, host_wk;
  runtime::DeviceBuffer dscores, dwq, dwk;
  TensorView ts, twq, twk;
  AdaptiveInputs in;
  in.blocks = &tc;
  const bool per_head = c.scores == Scores::kProjectedPerHead;
  if (c.scores == Scores::kSupplied) {
    host_scores.resize(s_elems);
    for (float& x : host_scores) x = u(rng);
    dscores = runtime::DeviceBuffer(s_elems * 4);
    dscores.upload(host_scores.data(), s_elems * 4);
    ts = TensorView::contiguous(dscores.data(), DType::kFloat32, {c.batch, c.heads, g.nq_blocks, g.nk_blocks});
    in.scores = &ts;
  } else if (c.scores != Scores::kComputed) {
    const int64_t hq = per_head ? c.heads : 1, hk = per_head ? c.kv_heads : 1;
    host_wq.resize(hq * c.head_dim * c.proj);
    host_wk.resize(hk * c.head_dim * c.proj);
    for (float& x : host_wq) x = u(rng);
    for (float& x : host_wk) x = u(rng);
    dwq = runtime::DeviceBuffer(host_wq.size() * 4);
    dwk = runtime::DeviceBuffer(host_wk.size() * 4);
    dwq.upload(host_wq.data(), host_wq.size() * 4);
    dwk.upload(host_wk.data(), host_wk.size() * 4);
    if (per_head) {
      twq = TensorView::contiguous3(dwq.data(), DType::kFloat32, {c.heads, c.head_dim, c.proj});
      twk = TensorView::contiguous3(dwk.data(), DType::kFloat32, {c.kv_heads, c.head_dim, c.proj});
    } else {
      twq = TensorView::contiguous3(dwq.data(), DType::kFloat32, {1, c.head_dim, c.proj});
      twk = TensorView::contiguous3(dwk.data(), DType::kFloat32, {1, c.head_dim, c.proj});
      for (TensorView* t : {&twq, &twk}) {  // [D, P]
        t->rank = 2;
        t->shape = {c.head_dim, c.proj, 0, 0};
        t->strides = {c.proj, 1, 0, 0};
      }
    }
    in.wq = &twq;
    in.wk = &twk;
  }

  AttentionOptions opts;
  if (c.config) opts.config = KernelConfig::parse(c.config);
  opts.use_tuning_db = false;
  Attention attn(pattern, opts);
  attn.forward(tq, tk, tv, to, &tl, nullptr, &in);
  runtime::synchronize();
  SCOPED_TRACE(attn.explain());
  EXPECT_NE(attn.explanation().selection.find("adaptive"), std::string::npos);

  std::vector<int32_t> got(c_elems);
  chosen.download(got.data(), c_elems * 4);

  // Reference scores (host): supplied as is; computed in fp64 from the rounded inputs.
  std::vector<double> ref_scores(s_elems);
  if (c.scores == Scores::kSupplied) {
    std::copy(host_scores.begin(), host_scores.end(), ref_scores.begin());
  } else {
    const std::vector<float> fq = download_as(q, q_elems, c.dtype), fk = download_as(k, kv_elems, c.dtype);
    std::vector<double> pq = pool(fq, c.batch, c.nq, c.heads, c.head_dim, g.block);
    std::vector<double> pk = pool(fk, c.batch, c.nk, c.kv_heads, c.head_dim, g.block);
    int64_t dim = c.head_dim;
    if (c.scores != Scores::kComputed) {
      pq = project(pq, host_wq, per_head, c.batch, c.heads, g.nq_blocks, c.head_dim, c.proj);
      pk = project(pk, host_wk, per_head, c.batch, c.kv_heads, g.nk_blocks, c.head_dim, c.proj);
      dim = c.proj;
    }
    const int64_t group = c.heads / c.kv_heads;
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t h = 0; h < c.heads; ++h)
        for (int64_t I = 0; I < g.nq_blocks; ++I)
          for (int64_t J = 0; J < g.nk_blocks; ++J) {
            double s = 0;
            for (int64_t e = 0; e < dim; ++e)
              s += pq[((b * c.heads + h) * g.nq_blocks + I) * dim + e] *
                   pk[((b * c.kv_heads + h / group) * g.nk_blocks + J) * dim + e];
            ref_scores[((b * c.heads + h) * g.nq_blocks + I) * g.nk_blocks + J] = s;
          }
  }

  int64_t rows = 0, decisive = 0;
  for (int64_t bh = 0; bh < c.batch * c.heads; ++bh) {
    std::vector<float> s(ref_scores.begin() + bh * g.nq_blocks * g.nk_blocks,
                         ref_scores.begin() + (bh + 1) * g.nq_blocks * g.nk_blocks);
    const std::vector<int32_t> ref = adaptive_select_reference(g, s.data());
    for (int64_t I = 0; I < g.nq_blocks; ++I) {
      const int32_t* gr = got.data() + (bh * g.nq_blocks + I) * g.max_k;
      const int32_t* rr = ref.data() + I * g.max_k;
      const bool equal = std::equal(gr, gr + g.max_k, rr);
      ++rows;
      if (c.scores == Scores::kSupplied) {
        EXPECT_TRUE(equal) << "batch-head " << bh << " block " << I;
        decisive += equal;
        continue;
      }
      // A row is decisive when the weakest chosen and the strongest unchosen candidate are
      // further apart than the TF32 error of the GEMM (relative to the row's largest score).
      const double* row = ref_scores.data() + (bh * g.nq_blocks + I) * g.nk_blocks;
      double weakest = INFINITY, strongest = -INFINITY, scale = 0;
      for (int32_t J = 0; J < g.allowed[I]; ++J) {
        scale = std::max(scale, std::abs(row[J]));
        if (J == g.diagonal[I]) continue;
        if (std::find(rr, rr + g.k[I], J) != rr + g.k[I]) weakest = std::min(weakest, row[J]);
        else strongest = std::max(strongest, row[J]);
      }
      const bool near_tie = weakest - strongest < 5e-3 * scale;
      if (!near_tie) {
        ++decisive;
        EXPECT_TRUE(equal) << "batch-head " << bh << " block " << I << " (margin " << weakest - strongest << " of "
                           << scale << ")";
      }
      // Whatever the tie-break, the row is a valid choice: ascending, the diagonal in it,
      // k_I allowed blocks, -1 after.
      for (int x = 0; x < g.max_k; ++x) {
        if (x < g.k[I]) {
          EXPECT_TRUE(gr[x] >= 0 && gr[x] < g.allowed[I] && (x == 0 || gr[x] > gr[x - 1])) << "row " << I;
        } else {
          EXPECT_EQ(gr[x], -1) << "row " << I;
        }
      }
      if (g.k[I] > 0) EXPECT_NE(std::find(gr, gr + g.k[I], g.diagonal[I]), gr + g.k[I]) << "row " << I;
    }
  }
  EXPECT_GE(decisive, rows * 9 / 10) << "too many near ties to check the selection";

  // Attention over the chosen blocks: masks per batch row, the reference kernel per batch.
  const int64_t words = (c.nk + 31) / 32;
  engine::ReferenceResult ref;
  for (int64_t b = 0; b < c.batch; ++b) {
    std::vector<uint32_t> masks(c.heads * c.nq * words, 0u);
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t i = 0; i < c.nq; ++i) {
        const int32_t* blocks = got.data() + ((b * c.heads + h) * g.nq_blocks + i / g.block) * g.max_k;
        for (int x = 0; x < g.max_k && blocks[x] >= 0; ++x)
          for (int64_t j = blocks[x] * g.block; j < std::min(c.nk, (blocks[x] + 1) * g.block); ++j)
            if (!g.causal || j <= i + c.nk - c.nq) masks[(h * c.nq + i) * words + j / 32] |= 1u << (j % 32);
      }
    engine::Problem one{1, c.nq, c.nk, c.heads, c.kv_heads, c.head_dim, c.dtype};
    auto at = [&](const TensorView& t) {
      TensorView x = t;
      x.data = static_cast<char*>(t.data) + b * t.strides[0] * 2;
      x.shape[0] = 1;
      return x;
    };
    const engine::ReferenceResult r = engine::reference_forward_masks(masks, 1, one, at(tq), at(tk), at(tv), 0);
    ref.o.insert(ref.o.end(), r.o.begin(), r.o.end());
    ref.lse.insert(ref.lse.end(), r.lse.begin(), r.lse.end());
  }
  std::vector<uint16_t> out(q_elems);
  std::vector<float> lse_out(c.batch * c.heads * c.nq);
  o.download(out.data(), out.size() * 2);
  lse.download(lse_out.data(), lse_out.size() * 4);
  const auto cmp = engine::compare(out, c.dtype, lse_out, ref);
  const autotune::Tolerance tol = autotune::tolerance_for(c.dtype);  // the forward tolerance, one place
  EXPECT_EQ(cmp.nonfinite, 0) << cmp.to_string();
  EXPECT_EQ(cmp.lse_mismatch, 0) << cmp.to_string();
  EXPECT_LE(cmp.rel_l2_err, tol.rel_l2) << cmp.to_string();
  EXPECT_LE(cmp.max_abs_err, tol.max_abs) << cmp.to_string();
  EXPECT_LE(cmp.max_lse_err, tol.lse) << cmp.to_string();
}

class AdaptiveGpu : public ::testing::Test {
 protected:
  void SetUp() override { SPATTN_REQUIRE_GPU(); }
  static bool hopper() { return runtime::device_info(runtime::current_device()).arch() == "sm_90a"; }
};

TEST_F(AdaptiveGpu, SuppliedScoresSelectAndAttend) {
  std::vector<Case> cases = {
      {R"({"type":"adaptive","block":64,"top_k":3,"causal":true})"},
      {R"({"type":"adaptive","block":64,"keep_ratio":0.3})"},
      {R"({"type":"adaptive","block":128,"top_k":2,"causal":true})", 2, 300, 700},  // Nk > Nq
      {R"({"type":"adaptive","block":64,"top_k":2,"causal":true})", 1, 700, 300},   // rows that see nothing
      {R"({"type":"adaptive","block":128,"top_k":4})", 1, 1531, 1100, 6, 1, 64, DType::kFloat16},
      {R"({"type":"adaptive","block":32,"top_k":5,"causal":true})", 2, 777, 777, 2, 2, 128},
      {R"({"type":"adaptive","block":64,"top_k":3,"causal":true})", 3, 1000, 1000, 4, 4, 128, DType::kBFloat16,
       "64x64w4s1"},
      {R"({"type":"adaptive","block":128,"top_k":3,"causal":true})", 2, 1000, 1000, 4, 2, 128, DType::kBFloat16,
       "64x32w4s2"},
  };
  if (hopper()) {
    cases.push_back({R"({"type":"adaptive","block":128,"top_k":3,"causal":true})", 2, 1000, 1000, 4, 2, 128,
                     DType::kBFloat16, "sm90:64x128s2"});
    cases.push_back({R"({"type":"adaptive","block":128,"keep_ratio":0.5,"causal":true})", 2, 1000, 1000, 4, 2, 64,
                     DType::kFloat16, "sm90:128x64s2"});
  }
  uint64_t seed = 1;
  for (const Case& c : cases) run_case(c, seed++);
}

TEST_F(AdaptiveGpu, ComputedAndProjectedScores) {
  Case mean{R"({"type":"adaptive","block":64,"top_k":4,"causal":true})"};
  mean.scores = Scores::kComputed;
  run_case(mean, 11);
  Case shared{R"({"type":"adaptive","block":64,"top_k":3})", 2, 900, 1100};
  shared.scores = Scores::kProjected;
  run_case(shared, 12);
  Case per_head{R"({"type":"adaptive","block":128,"keep_ratio":0.4,"causal":true})", 1, 1500, 1500, 4, 2, 64};
  per_head.scores = Scores::kProjectedPerHead;
  run_case(per_head, 13);
}

TEST_F(AdaptiveGpu, GraphCaptureReplaysOnNewInputs) {
  const Pattern pattern = Pattern::parse(R"({"type":"adaptive","block":64,"top_k":4,"causal":true})");
  const int64_t B = 2, N = 2048, H = 4, D = 128;
  const int64_t elems = B * N * H * D;
  runtime::DeviceBuffer q(elems * 2), k(elems * 2), v(elems * 2), o(elems * 2), o2(elems * 2);
  const auto view = [&](const runtime::DeviceBuffer& b) {
    return TensorView::contiguous(b.data(), DType::kBFloat16, {B, N, H, D});
  };
  const TensorView tq = view(q), tk = view(k), tv = view(v), to = view(o), to2 = view(o2);
  engine::fill_random(q.data(), elems, DType::kBFloat16, 1);
  engine::fill_random(k.data(), elems, DType::kBFloat16, 2);
  engine::fill_random(v.data(), elems, DType::kBFloat16, 3);
  runtime::synchronize();
  AttentionOptions opts;
  opts.use_tuning_db = false;
  Attention attn(pattern, opts);
  CUstream stream = nullptr;
  const auto& drv = runtime::driver();
  ASSERT_EQ(drv.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  attn.forward(tq, tk, tv, to, nullptr, stream);  // first call: plan, kernels, buffers
  ASSERT_EQ(drv.cuStreamSynchronize(stream), CUDA_SUCCESS);

  CUgraph graph = nullptr;
  CUgraphExec exec = nullptr;
  ASSERT_EQ(drv.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), CUDA_SUCCESS);
  attn.forward(tq, tk, tv, to, nullptr, stream);
  ASSERT_EQ(drv.cuStreamEndCapture(stream, &graph), CUDA_SUCCESS);
  ASSERT_EQ(drv.cuGraphInstantiateWithFlags(&exec, graph, 0), CUDA_SUCCESS);

  // New contents in the same buffers: the replay selects again from them.
  engine::fill_random(q.data(), elems, DType::kBFloat16, 4);
  engine::fill_random(k.data(), elems, DType::kBFloat16, 5);
  runtime::synchronize();
  o.fill_bytes(0xff);
  ASSERT_EQ(drv.cuGraphLaunch(exec, stream), CUDA_SUCCESS);
  ASSERT_EQ(drv.cuStreamSynchronize(stream), CUDA_SUCCESS);
  attn.forward(tq, tk, tv, to2, nullptr, stream);
  ASSERT_EQ(drv.cuStreamSynchronize(stream), CUDA_SUCCESS);
  std::vector<uint16_t> a(elems), b(elems);
  o.download(a.data(), elems * 2);
  o2.download(b.data(), elems * 2);
  EXPECT_EQ(a, b) << "the replayed graph differs from a direct forward on the same inputs";
  drv.cuGraphExecDestroy(exec);
  drv.cuGraphDestroy(graph);
  drv.cuStreamDestroy(stream);
}

TEST_F(AdaptiveGpu, BadInputsAreClearErrors) {
  const Pattern pattern = Pattern::parse(R"({"type":"adaptive","block":64,"top_k":2})");
  const int64_t B = 1, N = 256, H = 2, D = 64;
  runtime::DeviceBuffer buf(B * N * H * D * 2 * 4), scores(B * H * 4 * 4 * 4);
  const auto view = [&](int x) {
    return TensorView::contiguous(static_cast<char*>(buf.data()) + x * B * N * H * D * 2, DType::kBFloat16,
                                  {B, N, H, D});
  };
  const TensorView q = view(0), k = view(1), v = view(2), o = view(3);
  auto expect = [](auto&& f, ErrorCode code, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "no error; expected " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  Attention attn(pattern);
  TensorView s = TensorView::contiguous(scores.data(), DType::kFloat32, {B, H, 4, 3});
  AdaptiveInputs in;
  in.scores = &s;
  expect([&] { attn.forward(q, k, v, o, nullptr, nullptr, &in); }, ErrorCode::kInvalidArgument,
         "adaptive scores must have shape [B, Hq, nq_blocks, nk_blocks] = [1, 2, 4, 4]");
  s = TensorView::contiguous(scores.data(), DType::kFloat32, {B, H, 4, 4});
  in.wq = &s;
  in.wk = &s;
  expect([&] { attn.forward(q, k, v, o, nullptr, nullptr, &in); }, ErrorCode::kInvalidArgument,
         "exclude each other");
  in = AdaptiveInputs{};
  in.wq = &s;
  expect([&] { attn.forward(q, k, v, o, nullptr, nullptr, &in); }, ErrorCode::kInvalidArgument, "go together");
  TensorView blocks = TensorView::contiguous(scores.data(), DType::kInt32, {B, H, 4, 3});
  in = AdaptiveInputs{};
  in.blocks = &blocks;
  expect([&] { attn.forward(q, k, v, o, nullptr, nullptr, &in); }, ErrorCode::kInvalidArgument,
         "int32 [B, Hq, nq_blocks, max_k] = [1, 2, 4, 2]");
  Attention dense(Pattern::parse(R"({"type":"dense"})"));
  in = AdaptiveInputs{};
  s = TensorView::contiguous(scores.data(), DType::kFloat32, {B, H, 4, 4});
  in.scores = &s;
  expect([&] { dense.forward(q, k, v, o, nullptr, nullptr, &in); }, ErrorCode::kInvalidArgument,
         "they belong to adaptive patterns only");
  Attention odd(Pattern::parse(R"({"type":"adaptive","block":48,"top_k":2})"));
  expect([&] { odd.forward(q, k, v, o); }, ErrorCode::kUnsupported, "adaptive block 48 is not a multiple of 32");
  AttentionOptions forced;
  forced.config = KernelConfig::parse("128x64w4s1");
  Attention wrong_tiles(pattern, forced);
  expect([&] { wrong_tiles.forward(q, k, v, o); }, ErrorCode::kInvalidArgument, "needs kernel tiles that divide it");
  runtime::DeviceBuffer lse(B * H * N * 4), grads(B * N * H * D * 2 * 3);
  const TensorView tl = TensorView::contiguous3(lse.data(), DType::kFloat32, {B, H, N});
  Attention small(Pattern::parse(R"({"type":"adaptive","block":32,"top_k":2})"));
  expect([&] { small.backward(q, k, v, o, tl, o, q, k, v); }, ErrorCode::kUnsupported,
         "backward of adaptive block 32");
  expect([&] { dense.backward(q, k, v, o, tl, o, q, k, v, nullptr, &in); }, ErrorCode::kInvalidArgument,
         "they belong to adaptive patterns only");
  // Gates: the scores' grid, contiguous; their gradient is the backward's output only.
  TensorView gates = TensorView::contiguous(scores.data(), DType::kFloat32, {B, H, 4, 3});
  in = AdaptiveInputs{};
  in.gates = &gates;
  expect([&] { attn.forward(q, k, v, o, nullptr, nullptr, &in); }, ErrorCode::kInvalidArgument,
         "adaptive gates must have shape [B, Hq, nq_blocks, nk_blocks] = [1, 2, 4, 4]");
  expect([&] { dense.forward(q, k, v, o, nullptr, nullptr, &in); }, ErrorCode::kInvalidArgument,
         "they belong to adaptive patterns only");
  gates = TensorView::contiguous(scores.data(), DType::kFloat32, {B, H, 4, 4});
  TensorView gates_grad = gates;
  in.gates_grad = &gates_grad;
  expect([&] { attn.forward(q, k, v, o, nullptr, nullptr, &in); }, ErrorCode::kInvalidArgument,
         "gates_grad is an output of the backward pass");
  in.gates = nullptr;
  Attention trainable(Pattern::parse(R"({"type":"adaptive","block":64,"top_k":2})"));
  expect([&] { trainable.backward(q, k, v, o, tl, o, q, k, v, nullptr, &in); }, ErrorCode::kInvalidArgument,
         "gates_grad needs the gates");
  in.gates = &gates;
  gates_grad.strides[3] = 2;
  expect([&] { trainable.backward(q, k, v, o, tl, o, q, k, v, nullptr, &in); }, ErrorCode::kInvalidArgument,
         "adaptive gates_grad must be contiguous");
}

}  // namespace
}  // namespace spattn
