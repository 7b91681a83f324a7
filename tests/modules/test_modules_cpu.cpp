// The attention modules without a GPU: argument and tensor validation (everything is
// checked before the first GPU call, so these run anywhere), the seeded initialisation
// (torch.nn.MultiheadAttention's statistics, reproducible), and the host half conversions
// the modules and their references use.
#include <gtest/gtest.h>

#include <spattn/modules.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>

#include "modules/half.hpp"
#include "tests/modules/module_reference.hpp"
#include "tests/support/gpu.hpp"

namespace spattn {
namespace {

// Expects `fn` to throw spattn::Error with `code` and a message containing every part of `parts`.
template <typename Fn>
void expect_error(Fn&& fn, ErrorCode code, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown; expected " << error_code_name(code);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (const std::string& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
        << "'" << part << "' not in: " << e.what();
  }
}

// Plausible, 16-byte aligned device addresses: validation never dereferences them.
void* fake(uintptr_t slot) { return reinterpret_cast<void*>((slot + 1) << 20); }

MultiheadAttentionOptions caller_weights(bool bias = true, bool sub_ln = false) {
  MultiheadAttentionOptions o;
  o.bias = bias;
  o.sub_layernorm = sub_ln;
  MultiheadWeights w;
  w.in_proj_weight = fake(1);
  w.out_proj_weight = fake(2);
  if (bias) {
    w.in_proj_bias = fake(3);
    w.out_proj_bias = fake(4);
  }
  if (sub_ln) {
    w.ln_weight = fake(5);
    w.ln_bias = fake(6);
  }
  o.weights = w;
  return o;
}

TensorView act(uintptr_t slot, int64_t b, int64_t n, int64_t e, DType dtype = DType::kBFloat16) {
  return TensorView::contiguous3(fake(slot), dtype, {b, n, e});
}

TEST(ModulesArgs, EmbedDimMustDivideIntoHeads) {
  expect_error([] { MultiheadAttention(250, 4, 4, Pattern(), caller_weights()); }, ErrorCode::kInvalidArgument,
               {"embed_dim (250)", "num_heads (4)"});
}

TEST(ModulesArgs, KvHeadsMustDivideHeads) {
  expect_error([] { MultiheadAttention(256, 4, 3, Pattern(), caller_weights()); }, ErrorCode::kInvalidArgument,
               {"num_heads (4)", "kv_heads (3)", "GQA"});
}

TEST(ModulesArgs, DimensionsMustBePositive) {
  for (auto [e, h, kv] : std::initializer_list<std::tuple<int, int, int>>{{0, 4, 4}, {256, 0, 1}, {256, 4, 0}, {-64, 1, 1}})
    expect_error([&] { MultiheadAttention(e, h, kv, Pattern(), caller_weights()); }, ErrorCode::kInvalidArgument,
                 {"must be >= 1"});
}

TEST(ModulesArgs, HeadDimAndDtypeComeFromTheAttentionKernels) {
  // Head dim 40 = 160 / 4: the kernels' own message (their list of head dims), with the module's context.
  expect_error([] { MultiheadAttention(160, 4, 4, Pattern(), caller_weights()); }, ErrorCode::kUnsupported,
               {"head dim 40", "embed_dim / num_heads", "supported head dims"});
  auto o = caller_weights();
  o.dtype = DType::kFloat32;
  expect_error([&] { MultiheadAttention(256, 4, 4, Pattern(), o); }, ErrorCode::kUnsupported, {"dtype fp32"});
}

TEST(ModulesArgs, OptionsAreChecked) {
  auto o = caller_weights();
  o.rotary.enabled = true;
  o.rotary.base = 0.5;
  expect_error([&] { MultiheadAttention(256, 4, 4, Pattern(), o); }, ErrorCode::kInvalidArgument, {"rotary.base"});
  o.rotary.base = std::numeric_limits<double>::quiet_NaN();
  expect_error([&] { MultiheadAttention(256, 4, 4, Pattern(), o); }, ErrorCode::kInvalidArgument, {"rotary.base"});
  auto ln = caller_weights(true, true);
  ln.layernorm_eps = 0;
  expect_error([&] { MultiheadAttention(256, 4, 4, Pattern(), ln); }, ErrorCode::kInvalidArgument, {"layernorm_eps"});
  auto sc = caller_weights();
  sc.attention.scale = std::numeric_limits<float>::infinity();
  expect_error([&] { MultiheadAttention(256, 4, 4, Pattern(), sc); }, ErrorCode::kInvalidArgument, {"attention.scale"});
}

TEST(ModulesArgs, CallerWeightsAreChecked) {
  auto o = caller_weights();
  o.weights->in_proj_weight = nullptr;
  expect_error([&] { MultiheadAttention(256, 4, 4, Pattern(), o); }, ErrorCode::kInvalidArgument,
               {"weights.in_proj_weight is null"});
  o = caller_weights();
  o.weights->out_proj_bias = nullptr;
  expect_error([&] { MultiheadAttention(256, 4, 4, Pattern(), o); }, ErrorCode::kInvalidArgument,
               {"weights.out_proj_bias", "options.bias"});
  o = caller_weights(false);
  o.weights->in_proj_bias = fake(3);
  expect_error([&] { MultiheadAttention(256, 4, 4, Pattern(), o); }, ErrorCode::kInvalidArgument,
               {"weights.in_proj_bias is given", "options.bias"});
  o = caller_weights(true, true);
  o.weights->ln_bias = nullptr;
  expect_error([&] { MultiheadAttention(256, 4, 4, Pattern(), o); }, ErrorCode::kInvalidArgument,
               {"weights.ln_bias", "sub_layernorm"});
  o = caller_weights();
  o.weights->out_proj_weight = static_cast<char*>(fake(2)) + 2;
  expect_error([&] { MultiheadAttention(256, 4, 4, Pattern(), o); }, ErrorCode::kInvalidArgument,
               {"weights.out_proj_weight", "16-byte aligned"});
}

TEST(ModulesArgs, CallerWeightsNeedNoGpuToConstruct) {
  MultiheadAttention mha(256, 8, 2, Pattern(), caller_weights(true, true));
  EXPECT_EQ(mha.head_dim(), 32);
  EXPECT_EQ(mha.in_proj_rows(), 256 + 2 * 2 * 32);
  EXPECT_EQ(mha.weights().in_proj_weight, fake(1));
  EXPECT_EQ(mha.workspace_bytes(), 0u);
  EXPECT_NE(mha.explain().find("nothing has run yet"), std::string::npos);
}

TEST(ModulesArgs, OwnWeightsWithoutGpuSayNoGpu) {
  if (runtime::has_gpu()) GTEST_SKIP() << "this host has a GPU (the GPU tests construct modules with own weights)";
  expect_error([] { MultiheadAttention(256, 4, 4, Pattern()); }, ErrorCode::kNoGpu, {"GPU"});
}

// Padded batches are lengths (int32 [B] per batch), checked before any GPU work.
TEST(ModulesForward, PaddingIsChecked) {
  MultiheadAttention mha(256, 4, 4, Pattern(), caller_weights());
  const TensorView x = act(10, 2, 64, 256), out = act(11, 2, 64, 256);
  auto lengths = [](uintptr_t slot, int64_t n, DType dtype = DType::kInt32) {
    TensorView t;
    t.data = fake(slot);
    t.dtype = dtype;
    t.rank = 1;
    t.shape = {n, 0, 0, 0};
    t.strides = {1, 0, 0, 0};
    return t;
  };
  ForwardExtras e;
  KeyPadding none;
  e.padding = &none;
  expect_error([&] { mha.forward(x, x, x, out, e); }, ErrorCode::kInvalidArgument,
               {"MultiheadAttention: padding", "seqused_k", "both are null"});
  KeyPadding short_k;
  short_k.seqused_k = lengths(20, 3);
  e.padding = &short_k;
  expect_error([&] { mha.forward(x, x, x, out, e); }, ErrorCode::kInvalidArgument, {"seqused_k", "int32 [2]"});
  KeyPadding float_q;
  float_q.seqused_k = lengths(20, 2);
  float_q.seqused_q = lengths(21, 2, DType::kFloat32);
  e.padding = &float_q;
  expect_error([&] { mha.forward(x, x, x, out, e); }, ErrorCode::kInvalidArgument, {"seqused_q", "int32 [2]"});
  if (runtime::has_gpu()) return;  // the fake pointers would be read
  KeyPadding good;
  good.seqused_k = lengths(20, 2);
  e.padding = &good;
  expect_error([&] { mha.forward(x, x, x, out, e); }, ErrorCode::kNoGpu, {"GPU"});
}

TEST(ModulesForward, TensorsAreChecked) {
  MultiheadAttention mha(256, 4, 4, Pattern(), caller_weights());
  const TensorView x = act(10, 2, 64, 256), out = act(11, 2, 64, 256);
  auto bad = [&](const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                 std::initializer_list<std::string> parts) {
    expect_error([&] { mha.forward(q, k, v, o); }, ErrorCode::kInvalidArgument, parts);
  };
  bad(TensorView::contiguous(fake(10), DType::kBFloat16, {2, 64, 4, 64}), x, x, out, {"query", "rank-3"});
  bad(act(10, 2, 64, 128), x, x, out, {"query", "[B, N, 256]", "kdim"});
  bad(act(10, 2, 64, 256, DType::kFloat16), x, x, out, {"query", "dtype fp16", "bf16"});
  bad(x, act(12, 3, 64, 256), act(12, 3, 64, 256), out, {"key", "batch 3"});
  bad(x, act(12, 2, 80, 256), act(13, 2, 81, 256), out, {"value", "80 tokens"});
  bad(x, x, x, act(11, 2, 65, 256), {"out", "64 tokens"});
  TensorView null_q = x;
  null_q.data = nullptr;
  bad(null_q, x, x, out, {"query", "null"});
  TensorView strided_last = x;
  strided_last.strides[2] = 2;
  bad(strided_last, x, x, out, {"query", "contiguous in its last dimension"});
  TensorView uneven = x;
  uneven.strides[0] = 64 * 256 + 8;  // a gap between batch rows
  bad(uneven, x, x, out, {"query", "evenly spaced tokens"});
  TensorView odd_stride = x;
  odd_stride.strides[1] = 260;
  odd_stride.strides[0] = 64 * 260;
  bad(odd_stride, x, x, out, {"query", "multiple of 8"});
  TensorView misaligned = x;
  misaligned.data = static_cast<char*>(x.data) + 8;
  bad(misaligned, x, x, out, {"query", "16-byte aligned"});
}

TEST(ModulesForward, ExtrasAreChecked) {
  MultiheadAttention mha(256, 4, 4, Pattern(), caller_weights());
  const TensorView x = act(10, 2, 64, 256), out = act(11, 2, 64, 256);
  ForwardExtras e;
  const TensorView wrong = act(12, 2, 63, 256);
  e.residual = &wrong;
  expect_error([&] { mha.forward(x, x, x, out, e); }, ErrorCode::kInvalidArgument, {"residual", "64 tokens"});
  TensorView alias = out;
  alias.strides[1] = 512;
  alias.strides[0] = 64 * 512;
  e.residual = &alias;
  expect_error([&] { mha.forward(x, x, x, out, e); }, ErrorCode::kInvalidArgument, {"residual", "out's memory"});
  e.residual = &x;
  e.attention_scale = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { mha.forward(x, x, x, out, e); }, ErrorCode::kInvalidArgument, {"attention_scale"});
}

TEST(ModulesForward, PatternIsCheckedAgainstTheShape) {
  // LongNet needs Nq == Nk: cross-attention onto a memory of another length is refused by the pattern.
  MultiheadAttention mha(256, 4, 4, Pattern::parse(R"({"type":"longnet","segments":[64,128],"rates":[1,2]})"),
                         caller_weights());
  expect_error([&] { mha.forward(act(10, 1, 64, 256), act(12, 1, 96, 256), act(12, 1, 96, 256), act(11, 1, 64, 256)); },
               ErrorCode::kInvalidArgument, {});
}

TEST(ModulesForward, ValidCallWithoutGpuSaysNoGpu) {
  if (runtime::has_gpu()) GTEST_SKIP() << "this host has a GPU (the fake weights would be used)";
  MultiheadAttention mha(256, 4, 2, Pattern(), caller_weights());
  const TensorView x = act(10, 2, 64, 256);
  expect_error([&] { mha.forward(x, x, x, act(11, 2, 64, 256)); }, ErrorCode::kNoGpu, {"GPU"});
}

TEST(ModulesCrossMemory, FusionRatioMustBeFinite) {
  CrossMemoryOptions o;
  o.attention = caller_weights();
  o.fusion_ratio = std::numeric_limits<float>::infinity();
  expect_error([&] { CrossMemoryAttention(256, 4, 4, Pattern(), o); }, ErrorCode::kInvalidArgument, {"fusion_ratio"});
  o.fusion_ratio = 0.5f;
  o.fusion = MemoryFusion::kInterpolate;
  CrossMemoryAttention fuse(256, 4, 4, Pattern(), o);
  EXPECT_EQ(fuse.fusion_ratio(), 0.5f);
  EXPECT_EQ(fuse.fusion(), MemoryFusion::kInterpolate);
  expect_error([&] { fuse.set_fusion_ratio(std::nanf("")); }, ErrorCode::kInvalidArgument, {"fusion_ratio"});
  EXPECT_EQ(fuse.fusion_ratio(), 0.5f);
  // Memory of another width than the features.
  expect_error([&] { fuse.forward(act(10, 1, 64, 256), act(12, 1, 32, 128), act(11, 1, 64, 256)); },
               ErrorCode::kInvalidArgument, {"key", "[B, N, 256]"});
}

// --- initialisation ---------------------------------------------------------------------

struct Moments {
  double mean = 0, var = 0, max_abs = 0;
};
Moments moments(const std::vector<float>& x) {
  Moments m;
  for (float v : x) m.mean += v;
  m.mean /= static_cast<double>(x.size());
  for (float v : x) {
    m.var += (v - m.mean) * (v - m.mean);
    m.max_abs = std::max(m.max_abs, std::abs(static_cast<double>(v)));
  }
  m.var /= static_cast<double>(x.size());
  return m;
}

// Uniform(-b, b): within the bound, mean 0 and variance b^2 / 3 within a few standard errors.
void expect_uniform(const std::vector<float>& x, double bound, const char* name) {
  SCOPED_TRACE(name);
  const Moments m = moments(x);
  const double n = static_cast<double>(x.size());
  EXPECT_LE(m.max_abs, bound);
  EXPECT_GE(m.max_abs, 0.99 * bound);
  EXPECT_LT(std::abs(m.mean), 5 * bound / std::sqrt(3 * n));
  // The variance of u^2 for u ~ U(-b, b) is 4 b^4 / 45.
  EXPECT_LT(std::abs(m.var - bound * bound / 3), 5 * std::sqrt(4.0 / 45.0 / n) * bound * bound);
}

TEST(ModulesInit, TorchMultiheadAttentionConvention) {
  MultiheadAttentionOptions o;
  o.seed = 3;
  const HostWeights w = MultiheadAttention::initial_weights(256, 4, 4, o);
  ASSERT_EQ(w.in_proj_weight.size(), 3u * 256 * 256);
  ASSERT_EQ(w.out_proj_weight.size(), 256u * 256);
  expect_uniform(w.in_proj_weight, std::sqrt(6.0 / (256 + 3 * 256)), "in_proj_weight: xavier_uniform over [3E, E]");
  expect_uniform(w.out_proj_weight, 1.0 / 16, "out_proj_weight: U(-1/sqrt(E), 1/sqrt(E))");
  ASSERT_EQ(w.in_proj_bias.size(), 3u * 256);
  ASSERT_EQ(w.out_proj_bias.size(), 256u);
  for (float b : w.in_proj_bias) EXPECT_EQ(b, 0.0f);
  for (float b : w.out_proj_bias) EXPECT_EQ(b, 0.0f);
  EXPECT_TRUE(w.ln_weight.empty() && w.ln_bias.empty());
}

TEST(ModulesInit, GqaSubLayerNormAndNoBias) {
  MultiheadAttentionOptions o;
  o.bias = false;
  o.sub_layernorm = true;
  const HostWeights w = MultiheadAttention::initial_weights(256, 8, 2, o);  // D = 32, Ekv = 64
  ASSERT_EQ(w.in_proj_weight.size(), (256u + 2 * 64) * 256);
  expect_uniform(w.in_proj_weight, std::sqrt(6.0 / (256 + 256 + 2 * 64)), "in_proj_weight, GQA");
  EXPECT_TRUE(w.in_proj_bias.empty() && w.out_proj_bias.empty());
  ASSERT_EQ(w.ln_weight.size(), 256u);
  for (size_t i = 0; i < 256; ++i) {
    EXPECT_EQ(w.ln_weight[i], 1.0f);
    EXPECT_EQ(w.ln_bias[i], 0.0f);
  }
}

TEST(ModulesInit, ReproducibleBySeed) {
  MultiheadAttentionOptions o;
  o.seed = 11;
  const HostWeights a = MultiheadAttention::initial_weights(128, 2, 2, o), b = MultiheadAttention::initial_weights(128, 2, 2, o);
  EXPECT_EQ(a.in_proj_weight, b.in_proj_weight);
  EXPECT_EQ(a.out_proj_weight, b.out_proj_weight);
  o.seed = 12;
  const HostWeights c = MultiheadAttention::initial_weights(128, 2, 2, o);
  EXPECT_NE(a.in_proj_weight, c.in_proj_weight);
  EXPECT_NE(a.out_proj_weight, c.out_proj_weight);
  // The two tensors are independent draws, not one stream cut in two.
  EXPECT_NE(std::vector<float>(a.in_proj_weight.begin(), a.in_proj_weight.begin() + 64),
            std::vector<float>(a.out_proj_weight.begin(), a.out_proj_weight.begin() + 64));
  // Golden values: the generator is part of the contract (seeded models must not change).
  EXPECT_FLOAT_EQ(a.in_proj_weight[0], -0.104767181f);
  EXPECT_FLOAT_EQ(a.in_proj_weight[12345], -0.0137746185f);
  EXPECT_FLOAT_EQ(a.out_proj_weight[7], -0.0117338719f);
}

TEST(ModulesInit, ValidatesLikeTheConstructor) {
  expect_error([] { MultiheadAttention::initial_weights(100, 3, 3, {}); }, ErrorCode::kInvalidArgument,
               {"embed_dim (100)"});
}

// --- host half conversions (the references round with them) ----------------------------

TEST(ModulesHalf, RoundToNearestEven) {
  using namespace modules;
  for (DType t : {DType::kBFloat16, DType::kFloat16})
    for (float x : {0.0f, -0.0f, 1.0f, -2.5f, 0.15625f, 1024.0f}) EXPECT_EQ(round_to(x, t), x) << to_string(t);
  // bf16 has 8 significant bits: 1 + 2^-8 is a tie, to even (1); 1 + 3 * 2^-8 ties up to 1 + 2^-6.
  EXPECT_EQ(round_to(1.0f + 0x1p-8f, DType::kBFloat16), 1.0f);
  EXPECT_EQ(round_to(1.0f + 3 * 0x1p-8f, DType::kBFloat16), 1.0f + 0x1p-6f);
  // fp16 has 11: 1 + 2^-11 ties to 1, 1 + 3 * 2^-11 to 1 + 2^-9.
  EXPECT_EQ(round_to(1.0f + 0x1p-11f, DType::kFloat16), 1.0f);
  EXPECT_EQ(round_to(1.0f + 3 * 0x1p-11f, DType::kFloat16), 1.0f + 0x1p-9f);
  EXPECT_EQ(float_to_fp16_bits(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_fp16_bits(65520.0f), 0x7c00);  // rounds to infinity
  EXPECT_EQ(float_to_fp16_bits(0x1p-24f), 0x0001);  // the smallest subnormal
  EXPECT_EQ(float_to_fp16_bits(0x1p-25f), 0x0000);  // a tie to even (zero)
  EXPECT_EQ(fp16_bits_to_float(0x0001), 0x1p-24f);
  EXPECT_EQ(float_to_fp16_bits(-1.5f), 0xbe00);
  EXPECT_EQ(float_to_bf16_bits(-1.5f), 0xbfc0);
  EXPECT_TRUE(std::isnan(half_bits_to_float(float_to_half_bits(std::nanf(""), DType::kFloat16), DType::kFloat16)));
  EXPECT_TRUE(std::isnan(half_bits_to_float(float_to_half_bits(std::nanf(""), DType::kBFloat16), DType::kBFloat16)));
}


// --- the GPU tests' host reference, checked where its answer is known ------------------

namespace reference_checks {

// With one key every query reads that key's V: out = Wo concat_h(V[h / (H / Hkv)]) + bo,
// whatever the rotary embedding and the softmax scale — this pins the reference's
// indexing of heads, GQA groups, biases and the fused in_proj rows.
TEST(ModulesReference, SingleKeyReadsItsValue) {
  const DType dt = DType::kBFloat16;
  const int64_t B = 2, Nq = 3, E = 64, H = 2, Hkv = 1, D = 32;
  test::ModuleProblem p;
  p.batch = B;
  p.nq = Nq;
  p.nk = 1;
  p.embed = E;
  p.heads = H;
  p.kv_heads = Hkv;
  p.options.rotary.enabled = true;
  HostWeights w;
  w.in_proj_weight = test::random_rounded((E + 2 * Hkv * D) * E, 0.3, 1, dt);
  w.in_proj_bias = test::random_rounded(E + 2 * Hkv * D, 0.5, 2, dt);
  w.out_proj_weight = test::random_rounded(E * E, 0.2, 3, dt);
  w.out_proj_bias = test::random_rounded(E, 0.5, 4, dt);
  const std::vector<float> x = test::random_rounded(B * Nq * E, 1.0, 5, dt);
  const std::vector<float> memory = test::random_rounded(B * 1 * E, 1.0, 6, dt);
  const std::vector<double> out = test::reference_module(Pattern(), p, w, x, memory, memory, {});
  ASSERT_EQ(out.size(), static_cast<size_t>(B * Nq * E));
  for (int64_t b = 0; b < B; ++b) {
    std::vector<float> v(D);  // V of the one key (Hkv = 1), rounded as the module stores it
    for (int64_t r = 0; r < D; ++r) {
      double s = w.in_proj_bias[E + D + r];
      for (int64_t c = 0; c < E; ++c) s += double(memory[b * E + c]) * w.in_proj_weight[(E + D + r) * E + c];
      v[r] = modules::round_to(static_cast<float>(s), dt);
    }
    for (int64_t i = 0; i < Nq; ++i)
      for (int64_t o = 0; o < E; ++o) {
        double s = w.out_proj_bias[o];
        for (int64_t c = 0; c < E; ++c) s += double(w.out_proj_weight[o * E + c]) * v[c % D];  // both heads read it
        EXPECT_NEAR(out[(b * Nq + i) * E + o], s, 1e-9) << b << " " << i << " " << o;
      }
  }
}

// The rotary embedding turns pairs: with a pattern that lets each query see only its own
// key (a window of 0) the softmax is 1 whatever the scores, so rotary, sub-LN and the
// residual scales change the output only through V, the LayerNorm and the epilogue; and
// a residual of 0 weight leaves the output as without one.
TEST(ModulesReference, EveryOptionRunsAndResidualScalesCompose) {
  const DType dt = DType::kFloat16;
  test::ModuleProblem p;
  p.nq = p.nk = 16;
  p.embed = 64;
  p.heads = 2;
  p.kv_heads = 2;
  p.options.dtype = dt;
  p.options.rotary.enabled = true;
  p.options.rotary.interleaved = true;
  p.options.sub_layernorm = true;
  const Pattern diagonal = Pattern::parse(R"({"type":"local_window","left":0,"right":0})");
  MultiheadAttentionOptions init;
  init.sub_layernorm = true;
  const HostWeights w = MultiheadAttention::initial_weights(64, 2, 2, init);
  const std::vector<float> x = test::random_rounded(16 * 64, 1.0, 7, dt);
  const std::vector<float> r = test::random_rounded(16 * 64, 1.0, 8, dt);
  const std::vector<double> plain = test::reference_module(diagonal, p, w, x, x, x, {});
  p.options.rotary.enabled = false;  // rotary does not move V, and each query sees one key
  const std::vector<double> no_rotary = test::reference_module(diagonal, p, w, x, x, x, {});
  p.extras.residual_scale = 0.5f;
  p.extras.attention_scale = 2.0f;  // biases are 0 here, so their rounding after scaling is exact
  const std::vector<double> mixed = test::reference_module(diagonal, p, w, x, x, x, r);
  for (size_t i = 0; i < plain.size(); ++i) {
    ASSERT_TRUE(std::isfinite(plain[i]));
    EXPECT_NEAR(plain[i], no_rotary[i], 1e-12);
    EXPECT_NEAR(mixed[i], 2.0 * no_rotary[i] + 0.5 * r[i], 1e-9);
  }
}

}  // namespace reference_checks

}  // namespace
}  // namespace spattn
