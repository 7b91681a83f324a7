// Adaptive block gates on the GPU (AdaptiveInputs::gates, gates_grad) against a host fp64
// reference of gated attention over the blocks the forward pass chose: the logits of
// query block I against chosen key block J get log g[I, J] added (a gate <= 0 removes the
// block). Forward O and LSE, and dQ, dK, dV and dL/dg of the backward pass, for causal and
// non-causal patterns, Nq != Nk, GQA, both families, deterministic mode (bitwise the same
// twice, dL/dg included). Outputs are poisoned with NaN first, so every entry must be
// written; dL/dg must be exactly 0 where no block was chosen.
#include <gtest/gtest.h>

#include <spattn/adaptive.hpp>
#include <spattn/attention.hpp>

#include <cmath>
#include <cstring>
#include <random>

#include "autotune/harness.hpp"
#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "tests/support/gpu.hpp"

namespace spattn {
namespace {

struct Case {
  std::string json;
  int64_t batch = 2, nq = 512, nk = 512, heads = 4, kv_heads = 2, head_dim = 64;
  DType dtype = DType::kBFloat16;
  const char* forward_config = nullptr;   // or the heuristic's
  const char* backward_config = nullptr;
  bool deterministic = false;
};

struct Reference {
  std::vector<float> o, lse;             // as engine::ReferenceResult
  std::vector<double> dq, dk, dv, dg;    // dg: [B, Hq, nq_blocks, nk_blocks]
};

// Gated attention over the chosen blocks, in fp64 (inputs as floats of the rounded values).
Reference gated_reference(const Case& c, const AdaptiveGeometry& g, const std::vector<int32_t>& chosen,
                          const std::vector<float>& gates, const std::vector<float>& q, const std::vector<float>& k,
                          const std::vector<float>& v, const std::vector<float>& d_o) {
  const int64_t D = c.head_dim, H = c.heads, Hkv = c.kv_heads, group = H / Hkv, shift = c.nk - c.nq;
  const double scale = 1.0 / std::sqrt(double(D));
  Reference r;
  r.o.assign(static_cast<size_t>(c.batch * c.nq * H * D), 0.f);
  r.lse.assign(static_cast<size_t>(c.batch * H * c.nq), -INFINITY);
  r.dq.assign(r.o.size(), 0.0);
  r.dk.assign(static_cast<size_t>(c.batch * c.nk * Hkv * D), 0.0);
  r.dv.assign(r.dk.size(), 0.0);
  r.dg.assign(static_cast<size_t>(c.batch * H * g.nq_blocks * g.nk_blocks), 0.0);
  auto qa = [&](int64_t b, int64_t i, int64_t h) { return ((b * c.nq + i) * H + h) * D; };
  auto ka = [&](int64_t b, int64_t j, int64_t kh) { return ((b * c.nk + j) * Hkv + kh) * D; };
  std::vector<int64_t> keys, gate_at;
  std::vector<double> p, dp, o(static_cast<size_t>(D));
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < c.nq; ++i) {
        const int64_t I = i / g.block, kh = h / group;
        keys.clear();
        gate_at.clear();
        p.clear();
        for (int64_t x = 0; x < g.max_k; ++x) {
          const int32_t J = chosen[static_cast<size_t>(((b * H + h) * g.nq_blocks + I) * g.max_k + x)];
          if (J < 0) continue;
          const int64_t at = ((b * H + h) * g.nq_blocks + I) * g.nk_blocks + J;
          const double gate = gates[static_cast<size_t>(at)];
          if (!(gate > 0)) continue;
          for (int64_t j = J * g.block; j < std::min((J + 1) * g.block, c.nk); ++j) {
            if (g.causal && j > i + shift) continue;
            double s = 0;
            for (int64_t d = 0; d < D; ++d) s += double(q[qa(b, i, h) + d]) * k[ka(b, j, kh) + d];
            keys.push_back(j);
            gate_at.push_back(at);
            p.push_back(scale * s + std::log(gate));
          }
        }
        if (keys.empty()) continue;
        double mx = -INFINITY, sum = 0;
        for (double l : p) mx = std::max(mx, l);
        for (double& l : p) sum += (l = std::exp(l - mx));
        for (double& l : p) l /= sum;
        r.lse[static_cast<size_t>((b * H + h) * c.nq + i)] = static_cast<float>(mx + std::log(sum));
        std::fill(o.begin(), o.end(), 0.0);
        for (size_t x = 0; x < keys.size(); ++x)
          for (int64_t d = 0; d < D; ++d) o[d] += p[x] * v[ka(b, keys[x], kh) + d];
        for (int64_t d = 0; d < D; ++d) r.o[qa(b, i, h) + d] = static_cast<float>(o[d]);
        dp.assign(keys.size(), 0.0);
        double delta = 0;
        for (size_t x = 0; x < keys.size(); ++x) {
          for (int64_t d = 0; d < D; ++d) dp[x] += double(d_o[qa(b, i, h) + d]) * v[ka(b, keys[x], kh) + d];
          delta += p[x] * dp[x];
        }
        for (size_t x = 0; x < keys.size(); ++x) {
          const double ds = p[x] * (dp[x] - delta);
          const int64_t j = keys[x];
          for (int64_t d = 0; d < D; ++d) {
            r.dq[qa(b, i, h) + d] += scale * ds * k[ka(b, j, kh) + d];
            r.dk[ka(b, j, kh) + d] += scale * ds * q[qa(b, i, h) + d];
            r.dv[ka(b, j, kh) + d] += p[x] * d_o[qa(b, i, h) + d];
          }
          r.dg[static_cast<size_t>(gate_at[x])] += ds / gates[static_cast<size_t>(gate_at[x])];
        }
      }
  return r;
}

void run_case(const Case& c, uint64_t seed) {
  SCOPED_TRACE(fmt::format("{} B={} Nq={} Nk={} H={}/{} D={} {} forward {} backward {}{}", c.json, c.batch, c.nq,
                           c.nk, c.heads, c.kv_heads, c.head_dim, to_string(c.dtype),
                           c.forward_config ? c.forward_config : "heuristic",
                           c.backward_config ? c.backward_config : "heuristic",
                           c.deterministic ? " deterministic" : ""));
  const Pattern pattern = Pattern::parse(c.json);
  const AdaptiveGeometry g = adaptive_geometry(pattern, c.nq, c.nk);
  const int64_t qe = c.batch * c.nq * c.heads * c.head_dim, ke = c.batch * c.nk * c.kv_heads * c.head_dim;
  const int64_t se = c.batch * c.heads * g.nq_blocks * g.nk_blocks, ce = c.batch * c.heads * g.nq_blocks * g.max_k;
  runtime::DeviceBuffer q(qe * 2), k(ke * 2), v(ke * 2), o(qe * 2), d_o(qe * 2), dq(qe * 2), dk(ke * 2), dv(ke * 2),
      lse(c.batch * c.heads * c.nq * 4), scores(se * 4), gates(se * 4), dg(se * 4), blocks(ce * 4);
  engine::fill_random(q.data(), qe, c.dtype, seed * 5 + 1);
  engine::fill_random(k.data(), ke, c.dtype, seed * 5 + 2);
  engine::fill_random(v.data(), ke, c.dtype, seed * 5 + 3);
  engine::fill_random(d_o.data(), qe, c.dtype, seed * 5 + 4);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<float> u(-1.f, 1.f), w(0.05f, 3.f);
  std::vector<float> host_scores(static_cast<size_t>(se)), host_gates(static_cast<size_t>(se));
  for (float& x : host_scores) x = u(rng);
  // Gates from 0.05 to 3 (weights far from 1, so a missing or doubled bias shows), every
  // 11th removed (0) and every 13th negative (removed too).
  for (size_t x = 0; x < host_gates.size(); ++x) host_gates[x] = x % 11 == 3 ? 0.f : x % 13 == 5 ? -1.f : w(rng);
  scores.upload(host_scores.data(), host_scores.size() * 4);
  gates.upload(host_gates.data(), host_gates.size() * 4);
  auto qv = [&](const runtime::DeviceBuffer& b) {
    return TensorView::contiguous(b.data(), c.dtype, {c.batch, c.nq, c.heads, c.head_dim});
  };
  auto kv = [&](const runtime::DeviceBuffer& b) {
    return TensorView::contiguous(b.data(), c.dtype, {c.batch, c.nk, c.kv_heads, c.head_dim});
  };
  auto grid = [&](const runtime::DeviceBuffer& b) {
    return TensorView::contiguous(b.data(), DType::kFloat32, {c.batch, c.heads, g.nq_blocks, g.nk_blocks});
  };
  const auto tl = TensorView::contiguous3(lse.data(), DType::kFloat32, {c.batch, c.heads, c.nq});
  const auto ts = grid(scores), tg = grid(gates), tdg = grid(dg);
  const auto tb = TensorView::contiguous(blocks.data(), DType::kInt32, {c.batch, c.heads, g.nq_blocks, g.max_k});
  AdaptiveInputs fwd_in, bwd_in;
  fwd_in.scores = bwd_in.scores = &ts;
  fwd_in.gates = bwd_in.gates = &tg;
  fwd_in.blocks = &tb;
  bwd_in.gates_grad = &tdg;

  AttentionOptions opts;
  opts.use_tuning_db = false;
  opts.deterministic = c.deterministic;
  if (c.forward_config) opts.config = KernelConfig::parse(c.forward_config);
  if (c.backward_config) opts.backward_config = KernelConfig::parse(c.backward_config);
  Attention attn(pattern, opts);
  for (auto* b : {&o, &lse, &dq, &dk, &dv, &dg}) b->fill_bytes(0xff);  // NaN
  attn.forward(qv(q), kv(k), kv(v), qv(o), &tl, nullptr, &fwd_in);
  attn.backward(qv(q), kv(k), kv(v), qv(o), tl, qv(d_o), qv(dq), kv(dk), kv(dv), nullptr, &bwd_in);
  runtime::synchronize();
  SCOPED_TRACE(attn.explain());

  std::vector<int32_t> chosen(static_cast<size_t>(ce));
  blocks.download(chosen.data(), chosen.size() * 4);
  auto host = [&](const runtime::DeviceBuffer& b, int64_t n) {
    std::vector<uint16_t> bits(static_cast<size_t>(n));
    b.download(bits.data(), bits.size() * 2);
    return bits;
  };
  auto host_f32 = [&](const runtime::DeviceBuffer& b, int64_t n) {
    std::vector<float> f(static_cast<size_t>(n));
    b.download(f.data(), f.size() * 4);
    return f;
  };
  if (c.deterministic) {
    const auto first_q = host(dq, qe), first_k = host(dk, ke), first_v = host(dv, ke);
    const auto first_g = host_f32(dg, se);
    for (auto* b : {&dq, &dk, &dv, &dg}) b->fill_bytes(0xff);
    attn.backward(qv(q), kv(k), kv(v), qv(o), tl, qv(d_o), qv(dq), kv(dk), kv(dv), nullptr, &bwd_in);
    runtime::synchronize();
    EXPECT_TRUE(host(dq, qe) == first_q) << "dQ differs in the second run";
    EXPECT_TRUE(host(dk, ke) == first_k) << "dK differs in the second run";
    EXPECT_TRUE(host(dv, ke) == first_v) << "dV differs in the second run";
    EXPECT_EQ(std::memcmp(host_f32(dg, se).data(), first_g.data(), first_g.size() * 4), 0)
        << "dL/dg differs in the second run";
  }
  auto to_f = [&](const std::vector<uint16_t>& bits) {
    std::vector<float> f(bits.size());
    for (size_t x = 0; x < bits.size(); ++x) f[x] = engine::half_bits_to_float(bits[x], c.dtype);
    return f;
  };
  const Reference ref = gated_reference(c, g, chosen, host_gates, to_f(host(q, qe)), to_f(host(k, ke)),
                                        to_f(host(v, ke)), to_f(host(d_o, qe)));

  const auto cmp = engine::compare(host(o, qe), c.dtype, host_f32(lse, c.batch * c.heads * c.nq),
                                   engine::ReferenceResult{ref.o, ref.lse});
  const autotune::Tolerance ftol = autotune::tolerance_for(c.dtype);
  EXPECT_EQ(cmp.nonfinite, 0) << cmp.to_string();
  EXPECT_EQ(cmp.lse_mismatch, 0) << cmp.to_string();
  EXPECT_LE(cmp.rel_l2_err, ftol.rel_l2) << cmp.to_string();
  EXPECT_LE(cmp.max_abs_err, ftol.max_abs) << cmp.to_string();
  EXPECT_LE(cmp.max_lse_err, ftol.lse) << cmp.to_string();

  const double tol = autotune::backward_tolerance_for(c.dtype);
  const autotune::GradientError gq = autotune::gradient_error(to_f(host(dq, qe)), ref.dq);
  const autotune::GradientError gk = autotune::gradient_error(to_f(host(dk, ke)), ref.dk);
  const autotune::GradientError gv = autotune::gradient_error(to_f(host(dv, ke)), ref.dv);
  const std::vector<float> got_g = host_f32(dg, se);
  const autotune::GradientError gg = autotune::gradient_error(got_g, ref.dg);
  EXPECT_EQ(gq.nonfinite + gk.nonfinite + gv.nonfinite + gg.nonfinite, 0);
  EXPECT_LE(gq.rel_l2, tol) << "dQ";
  EXPECT_LE(gk.rel_l2, tol) << "dK";
  EXPECT_LE(gv.rel_l2, tol) << "dV";
  EXPECT_LE(gg.rel_l2, tol) << "dL/dg";
  // Exactly 0 where no block was chosen or the gate removed it.
  std::vector<char> trained(got_g.size(), 0);
  for (int64_t row = 0; row < c.batch * c.heads * g.nq_blocks; ++row)
    for (int64_t x = 0; x < g.max_k; ++x) {
      const int32_t J = chosen[static_cast<size_t>(row * g.max_k + x)];
      if (J >= 0) trained[static_cast<size_t>(row * g.nk_blocks + J)] = 1;
    }
  int64_t stray = 0, nonzero_ref = 0;
  for (size_t x = 0; x < got_g.size(); ++x) {
    if (!trained[x] || !(host_gates[x] > 0)) stray += got_g[x] != 0.f;
    nonzero_ref += ref.dg[x] != 0.0;
  }
  EXPECT_EQ(stray, 0) << "dL/dg entries of removed blocks are not 0";
  EXPECT_GT(nonzero_ref, 0) << "the case trains no gate";
}

class AdaptiveGatesGpu : public ::testing::Test {
 protected:
  void SetUp() override { SPATTN_REQUIRE_GPU(); }
  static bool hopper() { return runtime::device_info(runtime::current_device()).arch() == "sm_90a"; }
};

TEST_F(AdaptiveGatesGpu, ForwardAndGradientsMatchTheReference) {
  std::vector<Case> cases = {
      {R"({"type":"adaptive","block":64,"top_k":3,"causal":true})"},
      {R"({"type":"adaptive","block":128,"top_k":2,"causal":true})", 2, 300, 700},  // Nk > Nq
      {R"({"type":"adaptive","block":64,"keep_ratio":0.5})", 1, 700, 450, 4, 1, 128, DType::kFloat16},  // MQA
      {R"({"type":"adaptive","block":64,"top_k":3,"causal":true})", 2, 512, 512, 4, 4, 64, DType::kBFloat16,
       "64x64w4s2", "64x64w4s2"},
  };
  if (hopper()) {
    cases.push_back({R"({"type":"adaptive","block":128,"top_k":3,"causal":true})", 2, 640, 640, 4, 2, 128,
                     DType::kBFloat16, "sm90:128x128s2", "sm90:64x128s2"});
    cases.push_back({R"({"type":"adaptive","block":64,"keep_ratio":0.4})", 1, 500, 600, 2, 2, 64, DType::kFloat16,
                     "sm90:64x64s2", "sm90:64x64s1"});
  }
  uint64_t seed = 301;
  for (const Case& c : cases) run_case(c, seed++);
}

TEST_F(AdaptiveGatesGpu, DeterministicModeIsBitwiseReproducible) {
  Case gqa{R"({"type":"adaptive","block":128,"top_k":3,"causal":true})", 2, 640, 640, 4, 2, 128};
  gqa.deterministic = true;
  run_case(gqa, 401);
  Case sm80{R"({"type":"adaptive","block":64,"keep_ratio":0.3})", 1, 512, 512, 2, 2, 64};
  sm80.deterministic = true;
  sm80.forward_config = "64x64w4s2";
  sm80.backward_config = "64x64w4s2";
  run_case(sm80, 402);
}

}  // namespace
}  // namespace spattn
