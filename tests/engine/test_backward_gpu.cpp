// The backward pass on the GPU against the host fp64 reference gradients
// (reference_attention_backward) of the same rounded inputs, for pattern kinds and
// compositions (multi-part LongNet and unions, permuted layouts), GQA and MQA, Nq != Nk
// with bottom-right causal, rows without keys, odd lengths, dtypes and head dims.
//
// Every case draws fresh random inputs, runs Attention::forward for O and LSE, then
// backward into dq / dk / dv poisoned with NaN first (every element must be written).
// Tolerances on relative L2 error per gradient: the autotuner's backward gate
// (autotune::backward_tolerance_for). Each test runs with the heuristic's backward
// kernel and with each family forced (sm90 on sm_90a devices, for the head dims it
// supports; its stages vary over the cases).
#include <gtest/gtest.h>

#include <spattn/attention.hpp>
#include <spattn/reference.hpp>

#include <cmath>
#include <optional>

#include "autotune/harness.hpp"
#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "tests/support/gpu.hpp"

namespace spattn {
namespace {

// The backward kernel a test forces: none (the heuristic's), or a family's config (sm90
// also with permuted rows copied in slot order first, ":copy").
enum class Forced { kHeuristic, kSm80, kSm90, kSm90Copy };

struct Case {
  std::string json;
  Forced forced = Forced::kHeuristic;
  int64_t batch = 1, nq = 300, nk = 300, heads = 2, kv_heads = 2, head_dim = 64;
  DType dtype = DType::kBFloat16;
  bool deterministic = false;  // then backward runs twice and must give the same bits
};

// The forced config for a case, or none; false when the family cannot run the case.
bool forced_config(const Case& c, uint64_t seed, std::optional<KernelConfig>& out) {
  switch (c.forced) {
    case Forced::kHeuristic: return true;
    case Forced::kSm80: out = KernelConfig::parse("64x128w8s2"); return true;
    case Forced::kSm90:
    case Forced::kSm90Copy: {
      if (c.head_dim != 64 && c.head_dim != 128) return false;
      const int stages = 1 + static_cast<int>(seed % 3);  // 1, 2 or 3 query-tile buffers
      out = KernelConfig::parse(fmt::format("sm90:64x{}s{}{}", c.head_dim == 128 ? 128 : 64, stages,
                                            c.forced == Forced::kSm90Copy ? ":copy" : ""));
      return true;
    }
  }
  return false;
}

void run_case(const Case& c, uint64_t seed) {
  std::optional<KernelConfig> config;
  if (!forced_config(c, seed, config)) return;  // e.g. head dim 32 or 96 on the sm90 kernel
  SCOPED_TRACE(fmt::format("{} B={} Nq={} Nk={} H={}/{} D={} {}{} config {}", c.json, c.batch, c.nq, c.nk, c.heads,
                           c.kv_heads, c.head_dim, to_string(c.dtype), c.deterministic ? " deterministic" : "",
                           config ? config->to_string() : "heuristic"));
  const Pattern pattern = Pattern::parse(c.json);
  const int64_t qe = c.batch * c.nq * c.heads * c.head_dim, ke = c.batch * c.nk * c.kv_heads * c.head_dim;
  runtime::DeviceBuffer q(qe * 2), k(ke * 2), v(ke * 2), o(qe * 2), d_o(qe * 2), dq(qe * 2), dk(ke * 2), dv(ke * 2),
      lse(c.batch * c.heads * c.nq * 4);
  engine::fill_random(q.data(), qe, c.dtype, seed * 5 + 1);
  engine::fill_random(k.data(), ke, c.dtype, seed * 5 + 2);
  engine::fill_random(v.data(), ke, c.dtype, seed * 5 + 3);
  engine::fill_random(d_o.data(), qe, c.dtype, seed * 5 + 4);
  for (auto* b : {&dq, &dk, &dv}) b->fill_bytes(0xff);  // NaN
  auto qv = [&](const runtime::DeviceBuffer& b) {
    return TensorView::contiguous(b.data(), c.dtype, {c.batch, c.nq, c.heads, c.head_dim});
  };
  auto kv = [&](const runtime::DeviceBuffer& b) {
    return TensorView::contiguous(b.data(), c.dtype, {c.batch, c.nk, c.kv_heads, c.head_dim});
  };
  const auto tl = TensorView::contiguous3(lse.data(), DType::kFloat32, {c.batch, c.heads, c.nq});
  AttentionOptions opts;
  opts.use_tuning_db = false;
  opts.deterministic = c.deterministic;
  opts.backward_config = config;
  Attention attn(pattern, opts);
  attn.forward(qv(q), kv(k), kv(v), qv(o), &tl);
  attn.backward(qv(q), kv(k), kv(v), qv(o), tl, qv(d_o), qv(dq), kv(dk), kv(dv));
  runtime::synchronize();

  auto host = [&](const runtime::DeviceBuffer& b, int64_t n) {
    std::vector<uint16_t> bits(static_cast<size_t>(n));
    b.download(bits.data(), bits.size() * 2);
    return bits;
  };
  if (c.deterministic) {
    const auto first_q = host(dq, qe), first_k = host(dk, ke), first_v = host(dv, ke);
    for (int run = 0; run < 3; ++run) {
      for (auto* b : {&dq, &dk, &dv}) b->fill_bytes(0xff);
      attn.backward(qv(q), kv(k), kv(v), qv(o), tl, qv(d_o), qv(dq), kv(dk), kv(dv));
      runtime::synchronize();
      EXPECT_TRUE(host(dq, qe) == first_q) << "dQ differs in run " << run + 2;
      EXPECT_TRUE(host(dk, ke) == first_k) << "dK differs in run " << run + 2;
      EXPECT_TRUE(host(dv, ke) == first_v) << "dV differs in run " << run + 2;
    }
  }
  auto to_f = [&](const std::vector<uint16_t>& bits) {
    std::vector<float> f(bits.size());
    for (size_t x = 0; x < bits.size(); ++x) f[x] = engine::half_bits_to_float(bits[x], c.dtype);
    return f;
  };
  std::vector<double> rdq, rdk, rdv;
  reference_attention_backward(pattern, Shape{c.nq, c.nk, c.heads}, c.batch, c.kv_heads, c.head_dim,
                               to_f(host(q, qe)).data(), to_f(host(k, ke)).data(), to_f(host(v, ke)).data(),
                               to_f(host(d_o, qe)).data(), 1.0 / std::sqrt(double(c.head_dim)), rdq, rdk, rdv);
  const double tol = autotune::backward_tolerance_for(c.dtype);
  const autotune::GradientError gq = autotune::gradient_error(to_f(host(dq, qe)), rdq);
  const autotune::GradientError gk = autotune::gradient_error(to_f(host(dk, ke)), rdk);
  const autotune::GradientError gv = autotune::gradient_error(to_f(host(dv, ke)), rdv);
  EXPECT_EQ(gq.nonfinite + gk.nonfinite + gv.nonfinite, 0);
  const double eq = gq.rel_l2, ek = gk.rel_l2, ev = gv.rel_l2;
  EXPECT_LE(eq, tol) << "dQ";
  EXPECT_LE(ek, tol) << "dK";
  EXPECT_LE(ev, tol) << "dV";
}

class BackwardGpu : public ::testing::TestWithParam<Forced> {
 protected:
  void SetUp() override {
    SPATTN_REQUIRE_GPU();
    if ((GetParam() == Forced::kSm90 || GetParam() == Forced::kSm90Copy) && runtime::device_info(0).arch() != "sm_90a")
      GTEST_SKIP() << "the sm90 backward kernel needs an sm_90a device (this one is "
                   << runtime::device_info(0).arch() << ")";
  }
  // A case of this test's kernel.
  Case make(const char* json) const {
    Case c{json};
    c.forced = GetParam();
    return c;
  }
};

INSTANTIATE_TEST_SUITE_P(Kernels, BackwardGpu,
                         ::testing::Values(Forced::kHeuristic, Forced::kSm80, Forced::kSm90, Forced::kSm90Copy),
                         [](const ::testing::TestParamInfo<Forced>& info) {
                           switch (info.param) {
                             case Forced::kHeuristic: return std::string("heuristic");
                             case Forced::kSm80: return std::string("sm80");
                             case Forced::kSm90: return std::string("sm90");
                             case Forced::kSm90Copy: return std::string("sm90_copy");
                           }
                           return std::string("unknown");
                         });

TEST_P(BackwardGpu, PatternKindsAndCompositions) {
  const char* patterns[] = {
      R"({"type":"dense"})",
      R"({"type":"dense","causal":true})",
      R"({"type":"local_window","left":100,"right":20})",
      R"({"type":"global_local","global":32,"window":64})",
      R"({"type":"strided","stride":16,"mode":"relative"})",
      R"({"type":"longnet","segments":[128,256],"rates":[1,2]})",
      R"({"type":"neighborhood","grid":[20,24],"window":[5,7],"dilation":[1,1]})",
      R"({"union":[{"type":"strided","stride":32,"mode":"relative"},{"type":"local_window","window":64}]})",
      R"({"branches":[{"type":"local_window","window":64},{"type":"dense","causal":true}]})",
      R"({"heads":[{"first":0,"count":1,"pattern":{"type":"local_window","window":32}},{"first":1,"count":1,"pattern":{"type":"dense","causal":true}}]})",
  };
  uint64_t seed = 1;
  for (const char* p : patterns) {
    Case c = make(p);
    c.nq = c.nk = 480;
    run_case(c, seed++);
  }
}

TEST_P(BackwardGpu, GqaMqaCrossAttentionEmptyRowsDtypesHeadDims) {
  Case gqa = make(R"({"type":"dense","causal":true})");
  gqa.heads = 8;
  gqa.kv_heads = 2;
  gqa.nq = gqa.nk = 333;
  run_case(gqa, 11);
  Case mqa = make(R"({"type":"local_window","window":100})");
  mqa.heads = 4;
  mqa.kv_heads = 1;
  mqa.batch = 2;
  mqa.nq = 250;
  mqa.nk = 410;
  run_case(mqa, 12);
  Case empty_rows = make(R"({"type":"dense","causal":true})");  // the first 200 queries see no key
  empty_rows.nq = 300;
  empty_rows.nk = 100;
  run_case(empty_rows, 13);
  Case d128 = make(R"({"type":"longnet","segments":[128,256],"rates":[1,2],"causal":true})");
  d128.head_dim = 128;
  d128.dtype = DType::kFloat16;
  d128.nq = d128.nk = 517;
  run_case(d128, 14);
  Case d128_tma = make(R"({"type":"dense","causal":true})");  // natural order: TMA loads on sm90
  d128_tma.head_dim = 128;
  d128_tma.batch = 2;
  d128_tma.heads = 4;
  d128_tma.kv_heads = 2;
  d128_tma.nq = 333;
  d128_tma.nk = 700;
  run_case(d128_tma, 17);
  Case d32 = make(R"({"type":"local_window","window":64})");
  d32.head_dim = 32;
  d32.nq = d32.nk = 1;
  run_case(d32, 15);
  Case d96 = make(R"({"type":"dense"})");
  d96.head_dim = 96;
  d96.dtype = DType::kFloat16;
  d96.nq = d96.nk = 129;
  run_case(d96, 16);
}

// Deterministic mode: bitwise identical gradients over repeated runs, and as accurate as
// the default, for layouts where several work items meet on the same rows (GQA and MQA
// groups, LongNet branches with permutations, unions, per-head patterns, causal).
TEST_P(BackwardGpu, DeterministicModeIsBitwiseReproducible) {
  const char* patterns[] = {
      R"({"type":"dense","causal":true})",
      R"({"type":"longnet","segments":[128,256],"rates":[1,2]})",
      R"({"union":[{"type":"strided","stride":32,"mode":"relative"},{"type":"local_window","window":64}]})",
      R"({"heads":[{"first":0,"count":2,"pattern":{"type":"local_window","window":32}},{"first":2,"count":2,"pattern":{"type":"dense","causal":true}}]})",
      R"({"type":"neighborhood","grid":[20,24],"window":[5,7],"dilation":[1,1]})",
  };
  uint64_t seed = 31;
  for (const char* p : patterns) {
    Case c = make(p);
    c.nq = c.nk = 480;
    c.heads = 4;
    c.kv_heads = 2;  // GQA 2:1: two query heads meet on each KV row
    c.deterministic = true;
    run_case(c, seed++);
  }
  Case mqa = make(R"({"type":"local_window","window":100})");
  mqa.heads = 4;
  mqa.kv_heads = 1;
  mqa.batch = 2;
  mqa.nq = 250;
  mqa.nk = 410;
  mqa.deterministic = true;
  run_case(mqa, 40);
  Case d128 = make(R"({"type":"longnet","segments":[128,256],"rates":[1,2],"causal":true})");
  d128.head_dim = 128;
  d128.dtype = DType::kFloat16;
  d128.nq = d128.nk = 517;
  d128.deterministic = true;
  run_case(d128, 41);
  // Head dim 128 with GQA: items of two query heads over two warpgroups (sm90).
  Case gqa128 = make(R"({"type":"dense","causal":true})");
  gqa128.head_dim = 128;
  gqa128.heads = 4;
  gqa128.kv_heads = 2;
  gqa128.nq = gqa128.nk = 517;
  gqa128.deterministic = true;
  run_case(gqa128, 42);
}

}  // namespace
}  // namespace spattn
