// The backward pass of adaptive patterns on the GPU against the host fp64 reference
// gradients (reference_attention_backward) of attention over the blocks the forward pass
// chose: per batch, one custom block pattern per head (intersected with causal where the
// pattern is causal), of the rounded inputs. Also: the backward's own selection chooses
// the forward's blocks (bitwise), every gradient element is written (outputs poisoned
// with NaN first), and deterministic mode gives the same bits twice.
#include <gtest/gtest.h>

#include <spattn/adaptive.hpp>
#include <spattn/attention.hpp>
#include <spattn/reference.hpp>

#include <cmath>
#include <random>

#include "autotune/harness.hpp"
#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "tests/support/gpu.hpp"

namespace spattn {
namespace {

struct Case {
  std::string json;
  int64_t batch = 2, nq = 1000, nk = 1000, heads = 4, kv_heads = 2, head_dim = 128;
  DType dtype = DType::kBFloat16;
  const char* config = nullptr;  // backward config, or the heuristic's
  bool computed = false;         // scores from block means (else supplied, random)
  bool deterministic = false;
};

// The chosen blocks of batch b as a pattern: head h attends its query blocks' chosen key
// blocks (and causal, when the adaptive pattern is).
Pattern chosen_pattern(const AdaptiveGeometry& g, const std::vector<int32_t>& chosen, int64_t b, int64_t heads) {
  std::string groups;
  for (int64_t h = 0; h < heads; ++h) {
    std::string pairs;
    for (int64_t I = 0; I < g.nq_blocks; ++I)
      for (int64_t x = 0; x < g.max_k; ++x) {
        const int32_t J = chosen[static_cast<size_t>(((b * heads + h) * g.nq_blocks + I) * g.max_k + x)];
        if (J >= 0) pairs += fmt::format("{}[{},{}]", pairs.empty() ? "" : ",", I, J);
      }
    std::string p = fmt::format(R"({{"type":"custom","block":{},"pairs":[{}]}})", g.block, pairs);
    if (g.causal) p = fmt::format(R"({{"intersect":[{},{{"type":"dense","causal":true}}]}})", p);
    groups += fmt::format(R"({}{{"first":{},"count":1,"pattern":{}}})", h ? "," : "", h, p);
  }
  return Pattern::parse("{\"heads\":[" + groups + "]}");
}

void run_case(const Case& c, uint64_t seed) {
  SCOPED_TRACE(fmt::format("{} B={} Nq={} Nk={} H={}/{} D={} {} {} scores{} config {}", c.json, c.batch, c.nq, c.nk,
                           c.heads, c.kv_heads, c.head_dim, to_string(c.dtype), c.computed ? "computed" : "supplied",
                           c.deterministic ? " deterministic" : "", c.config ? c.config : "heuristic"));
  const Pattern pattern = Pattern::parse(c.json);
  const AdaptiveGeometry g = adaptive_geometry(pattern, c.nq, c.nk);
  const int64_t qe = c.batch * c.nq * c.heads * c.head_dim, ke = c.batch * c.nk * c.kv_heads * c.head_dim;
  const int64_t se = c.batch * c.heads * g.nq_blocks * g.nk_blocks, ce = c.batch * c.heads * g.nq_blocks * g.max_k;
  runtime::DeviceBuffer q(qe * 2), k(ke * 2), v(ke * 2), o(qe * 2), d_o(qe * 2), dq(qe * 2), dk(ke * 2), dv(ke * 2),
      lse(c.batch * c.heads * c.nq * 4), scores(se * 4), fwd_blocks(ce * 4), bwd_blocks(ce * 4);
  engine::fill_random(q.data(), qe, c.dtype, seed * 5 + 1);
  engine::fill_random(k.data(), ke, c.dtype, seed * 5 + 2);
  engine::fill_random(v.data(), ke, c.dtype, seed * 5 + 3);
  engine::fill_random(d_o.data(), qe, c.dtype, seed * 5 + 4);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> host_scores(static_cast<size_t>(se));
  for (float& x : host_scores) x = u(rng);
  scores.upload(host_scores.data(), host_scores.size() * 4);
  fwd_blocks.fill_bytes(0x7f);
  bwd_blocks.fill_bytes(0x7f);
  auto qv = [&](const runtime::DeviceBuffer& b) {
    return TensorView::contiguous(b.data(), c.dtype, {c.batch, c.nq, c.heads, c.head_dim});
  };
  auto kv = [&](const runtime::DeviceBuffer& b) {
    return TensorView::contiguous(b.data(), c.dtype, {c.batch, c.nk, c.kv_heads, c.head_dim});
  };
  const auto tl = TensorView::contiguous3(lse.data(), DType::kFloat32, {c.batch, c.heads, c.nq});
  const auto ts = TensorView::contiguous(scores.data(), DType::kFloat32, {c.batch, c.heads, g.nq_blocks, g.nk_blocks});
  const auto tfb = TensorView::contiguous(fwd_blocks.data(), DType::kInt32, {c.batch, c.heads, g.nq_blocks, g.max_k});
  const auto tbb = TensorView::contiguous(bwd_blocks.data(), DType::kInt32, {c.batch, c.heads, g.nq_blocks, g.max_k});
  AdaptiveInputs fwd_in, bwd_in;
  if (!c.computed) fwd_in.scores = bwd_in.scores = &ts;
  fwd_in.blocks = &tfb;
  bwd_in.blocks = &tbb;

  AttentionOptions opts;
  opts.use_tuning_db = false;
  opts.deterministic = c.deterministic;
  if (c.config) opts.backward_config = KernelConfig::parse(c.config);
  Attention attn(pattern, opts);
  attn.forward(qv(q), kv(k), kv(v), qv(o), &tl, nullptr, &fwd_in);
  for (auto* b : {&dq, &dk, &dv}) b->fill_bytes(0xff);  // NaN
  attn.backward(qv(q), kv(k), kv(v), qv(o), tl, qv(d_o), qv(dq), kv(dk), kv(dv), nullptr, &bwd_in);
  runtime::synchronize();
  SCOPED_TRACE(attn.explain());

  std::vector<int32_t> chosen(static_cast<size_t>(ce)), again(static_cast<size_t>(ce));
  fwd_blocks.download(chosen.data(), chosen.size() * 4);
  bwd_blocks.download(again.data(), again.size() * 4);
  ASSERT_EQ(chosen, again) << "the backward pass chose other blocks than the forward pass";

  auto host = [&](const runtime::DeviceBuffer& b, int64_t n) {
    std::vector<uint16_t> bits(static_cast<size_t>(n));
    b.download(bits.data(), bits.size() * 2);
    return bits;
  };
  if (c.deterministic) {
    const auto first_q = host(dq, qe), first_k = host(dk, ke), first_v = host(dv, ke);
    for (auto* b : {&dq, &dk, &dv}) b->fill_bytes(0xff);
    attn.backward(qv(q), kv(k), kv(v), qv(o), tl, qv(d_o), qv(dq), kv(dk), kv(dv), nullptr, &bwd_in);
    runtime::synchronize();
    EXPECT_TRUE(host(dq, qe) == first_q) << "dQ differs in the second run";
    EXPECT_TRUE(host(dk, ke) == first_k) << "dK differs in the second run";
    EXPECT_TRUE(host(dv, ke) == first_v) << "dV differs in the second run";
  }
  auto to_f = [&](const std::vector<uint16_t>& bits) {
    std::vector<float> f(bits.size());
    for (size_t x = 0; x < bits.size(); ++x) f[x] = engine::half_bits_to_float(bits[x], c.dtype);
    return f;
  };
  const std::vector<float> fq = to_f(host(q, qe)), fk = to_f(host(k, ke)), fv = to_f(host(v, ke)),
                           fdo = to_f(host(d_o, qe));
  std::vector<double> rdq, rdk, rdv;
  const int64_t qb = c.nq * c.heads * c.head_dim, kb = c.nk * c.kv_heads * c.head_dim;
  for (int64_t b = 0; b < c.batch; ++b) {
    std::vector<double> bq, bk, bv;
    reference_attention_backward(chosen_pattern(g, chosen, b, c.heads), Shape{c.nq, c.nk, c.heads}, 1, c.kv_heads,
                                 c.head_dim, fq.data() + b * qb, fk.data() + b * kb, fv.data() + b * kb,
                                 fdo.data() + b * qb, 1.0 / std::sqrt(double(c.head_dim)), bq, bk, bv);
    rdq.insert(rdq.end(), bq.begin(), bq.end());
    rdk.insert(rdk.end(), bk.begin(), bk.end());
    rdv.insert(rdv.end(), bv.begin(), bv.end());
  }
  const double tol = autotune::backward_tolerance_for(c.dtype);
  const autotune::GradientError gq = autotune::gradient_error(to_f(host(dq, qe)), rdq);
  const autotune::GradientError gk = autotune::gradient_error(to_f(host(dk, ke)), rdk);
  const autotune::GradientError gv = autotune::gradient_error(to_f(host(dv, ke)), rdv);
  EXPECT_EQ(gq.nonfinite + gk.nonfinite + gv.nonfinite, 0);
  EXPECT_LE(gq.rel_l2, tol) << "dQ";
  EXPECT_LE(gk.rel_l2, tol) << "dK";
  EXPECT_LE(gv.rel_l2, tol) << "dV";
}

class AdaptiveBackwardGpu : public ::testing::Test {
 protected:
  void SetUp() override { SPATTN_REQUIRE_GPU(); }
  static bool hopper() { return runtime::device_info(runtime::current_device()).arch() == "sm_90a"; }
};

TEST_F(AdaptiveBackwardGpu, GradientsMatchTheReferenceOverTheChosenBlocks) {
  std::vector<Case> cases = {
      {R"({"type":"adaptive","block":64,"top_k":3,"causal":true})"},
      {R"({"type":"adaptive","block":128,"top_k":2,"causal":true})", 2, 300, 700},  // Nk > Nq
      {R"({"type":"adaptive","block":64,"top_k":2,"causal":true})", 1, 700, 300},   // rows that see nothing
      {R"({"type":"adaptive","block":128,"keep_ratio":0.4})", 1, 1531, 1100, 4, 1, 64, DType::kFloat16},  // MQA
      {R"({"type":"adaptive","block":64,"top_k":3,"causal":true})", 2, 1000, 1000, 4, 4, 64, DType::kBFloat16,
       "64x64w4s2"},
      {R"({"type":"adaptive","block":128,"top_k":3,"causal":true})", 3, 777, 777, 2, 2, 128, DType::kBFloat16,
       "64x128w8s1"},
  };
  Case computed{R"({"type":"adaptive","block":64,"top_k":4,"causal":true})"};
  computed.computed = true;
  cases.push_back(computed);
  if (hopper()) {
    cases.push_back({R"({"type":"adaptive","block":128,"top_k":3,"causal":true})", 2, 1000, 1000, 4, 2, 128,
                     DType::kBFloat16, "sm90:64x128s2"});
    cases.push_back({R"({"type":"adaptive","block":64,"keep_ratio":0.3})", 2, 900, 1100, 2, 2, 128,
                     DType::kFloat16, "sm90:64x64s1"});
  }
  uint64_t seed = 101;
  for (const Case& c : cases) run_case(c, seed++);
}

TEST_F(AdaptiveBackwardGpu, DeterministicModeIsBitwiseReproducible) {
  Case gqa{R"({"type":"adaptive","block":128,"top_k":3,"causal":true})", 2, 1000, 1000, 4, 2, 128};
  gqa.deterministic = true;
  run_case(gqa, 201);
  Case sm80 = gqa;
  sm80.config = "64x64w4s2";
  sm80.json = R"({"type":"adaptive","block":64,"keep_ratio":0.25})";
  run_case(sm80, 202);
}

}  // namespace
}  // namespace spattn
