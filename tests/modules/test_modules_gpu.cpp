// The attention modules on the GPU against the host fp64 reference of
// module_reference.hpp (host GEMMs, spattn::reference_attention, host rotary and
// LayerNorm): dense and LongNet patterns, self- and cross-attention (Nq != Nk, fused and
// separate K/V projections), GQA, with and without biases, rotary (both pair layouts),
// sub-LayerNorm, the residual epilogue (also in place), CrossMemoryAttention's fusions,
// strided activations, shapes that change between calls, and the module's own
// initialisation on the device. Fresh random inputs per case; outputs are poisoned (NaN)
// before each run. Tolerances: module_tolerance() (module_reference.hpp).
#include <gtest/gtest.h>

#include <spattn/modules.hpp>

#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <vector>

#include "modules/half.hpp"
#include "tests/modules/module_reference.hpp"
#include "tests/support/gpu.hpp"

namespace spattn {
namespace {

using test::ModuleProblem;

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x

// One device allocation.
class DeviceMem {
 public:
  explicit DeviceMem(size_t bytes) : bytes_(bytes) {
    if (cudaMalloc(&p_, bytes) != cudaSuccess) p_ = nullptr;
  }
  ~DeviceMem() {
    if (p_) cudaFree(p_);
  }
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
  void* get() const { return p_; }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

std::vector<uint16_t> to_bits(const std::vector<float>& x, DType dtype) {
  std::vector<uint16_t> bits(x.size());
  for (size_t i = 0; i < x.size(); ++i) bits[i] = modules::float_to_half_bits(x[i], dtype);
  return bits;
}

// [rows, cols] values into rows of `stride` elements; the padding holds NaN (0xffff).
std::unique_ptr<DeviceMem> upload_rows(const std::vector<float>& x, int64_t cols, int64_t stride, DType dtype) {
  const int64_t rows = static_cast<int64_t>(x.size()) / cols;
  std::vector<uint16_t> bits(static_cast<size_t>(rows * stride), 0xffff);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) bits[r * stride + c] = modules::float_to_half_bits(x[r * cols + c], dtype);
  auto mem = std::make_unique<DeviceMem>(bits.size() * 2);
  EXPECT_NE(mem->get(), nullptr);
  EXPECT_EQ(cudaMemcpy(mem->get(), bits.data(), bits.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  return mem;
}

std::unique_ptr<DeviceMem> upload(const std::vector<float>& x, DType dtype) {
  const int64_t n = static_cast<int64_t>(x.size());
  return upload_rows(x, n, n, dtype);
}

std::vector<uint16_t> download(const void* p, size_t n) {
  std::vector<uint16_t> out(n);
  EXPECT_EQ(cudaMemcpy(out.data(), p, n * 2, cudaMemcpyDeviceToHost), cudaSuccess);
  return out;
}

// Caller-owned random weights: in_proj large enough that the softmax is far from uniform
// (q and k entries of about unit size), biases and sub-LN parameters away from 0 and 1.
struct CallerWeights {
  HostWeights host;
  std::vector<std::unique_ptr<DeviceMem>> mem;
  MultiheadWeights device;
};

CallerWeights make_weights(int64_t E, int64_t H, int64_t Hkv, bool bias, bool sub_ln, DType dtype, uint64_t seed) {
  CallerWeights w;
  const int64_t rows = E + 2 * Hkv * (E / H);
  const double e = static_cast<double>(E);
  w.host.in_proj_weight = test::random_rounded(rows * E, 3.0 / std::sqrt(e), seed + 1, dtype);
  w.host.out_proj_weight = test::random_rounded(E * E, 1.0 / std::sqrt(e), seed + 2, dtype);
  if (bias) {
    w.host.in_proj_bias = test::random_rounded(rows, 0.5, seed + 3, dtype);
    w.host.out_proj_bias = test::random_rounded(E, 0.5, seed + 4, dtype);
  }
  if (sub_ln) {
    w.host.ln_weight = test::random_rounded(E, 0.5, seed + 5, dtype);
    for (float& g : w.host.ln_weight) g = modules::round_to(1.0f + g, dtype);
    w.host.ln_bias = test::random_rounded(E, 0.5, seed + 6, dtype);
  }
  auto put = [&](const std::vector<float>& x) -> void* {
    if (x.empty()) return nullptr;
    w.mem.push_back(upload(x, dtype));
    return w.mem.back()->get();
  };
  w.device = MultiheadWeights{put(w.host.in_proj_weight), put(w.host.in_proj_bias), put(w.host.out_proj_weight),
                              put(w.host.out_proj_bias),  put(w.host.ln_weight),    put(w.host.ln_bias)};
  return w;
}

enum class Inputs { kSelf, kFusedKv, kSeparateKv };

struct Case {
  std::string pattern = R"({"type":"dense"})";
  int64_t batch = 1, nq = 128, nk = 0;  // nk 0: nq
  int64_t embed = 256, heads = 4, kv_heads = 4;
  DType dtype = DType::kBFloat16;
  Inputs inputs = Inputs::kSelf;
  bool bias = true, own_weights = false, rotary = false, interleaved = false, sub_ln = false;
  bool residual = false, in_place = false;  // in_place: out = query = residual (self-attention)
  float attention_scale = 1.0f, residual_scale = 1.0f;
  int64_t token_stride = 0;  // of query and out; 0: E
};

std::string describe(const Case& c) {
  const char* inputs[] = {"self", "cross (fused KV)", "cross (K, V)"};
  return fmt::format("{} B={} Nq={} Nk={} E={} H={}/{} {} {}{}{}{}{}{}{}", c.pattern, c.batch, c.nq, c.nk ? c.nk : c.nq,
                     c.embed, c.heads, c.kv_heads, to_string(c.dtype), inputs[static_cast<int>(c.inputs)],
                     c.bias ? " bias" : " no-bias", c.own_weights ? " own-weights" : "",
                     c.rotary ? (c.interleaved ? " rotary-interleaved" : " rotary") : "", c.sub_ln ? " sub-LN" : "",
                     c.residual ? fmt::format(" residual {}*x + {}*mha", c.residual_scale, c.attention_scale) : "",
                     c.in_place ? " in-place" : "", c.token_stride ? fmt::format(" stride {}", c.token_stride) : "");
}

MultiheadAttentionOptions options_for(const Case& c, uint64_t seed) {
  MultiheadAttentionOptions o;
  o.dtype = c.dtype;
  o.bias = c.bias;
  o.rotary.enabled = c.rotary;
  o.rotary.interleaved = c.interleaved;
  o.sub_layernorm = c.sub_ln;
  o.seed = seed;
  o.attention.use_tuning_db = false;
  return o;
}

// Runs one forward of `mha` on fresh inputs of case c and compares with the reference.
void check_forward(MultiheadAttention& mha, const HostWeights& weights, const Case& c, uint64_t seed) {
  SCOPED_TRACE(describe(c));
  const Pattern pattern = Pattern::parse(c.pattern);
  const DType dt = c.dtype;
  const int64_t B = c.batch, Nq = c.nq, Nk = c.nk ? c.nk : c.nq, E = c.embed;
  const int64_t stride = c.token_stride ? c.token_stride : E;
  ASSERT_TRUE(c.inputs != Inputs::kSelf || Nq == Nk);
  ASSERT_TRUE(!c.in_place || (c.inputs == Inputs::kSelf && c.residual));

  const std::vector<float> query = test::random_rounded(B * Nq * E, 1.0, seed * 7 + 1, dt);
  const std::vector<float> key =
      c.inputs == Inputs::kSelf ? query : test::random_rounded(B * Nk * E, 1.0, seed * 7 + 2, dt);
  const std::vector<float> value =
      c.inputs == Inputs::kSeparateKv ? test::random_rounded(B * Nk * E, 1.0, seed * 7 + 3, dt) : key;
  std::vector<float> residual;
  if (c.residual) residual = c.in_place ? query : test::random_rounded(B * Nq * E, 1.0, seed * 7 + 4, dt);

  auto q_mem = upload_rows(query, E, stride, dt);
  auto view = [&](const DeviceMem& m, int64_t n, int64_t s) {
    TensorView t = TensorView::contiguous3(m.get(), dt, {B, n, E});
    t.strides = {n * s, s, 1, 0};
    return t;
  };
  const TensorView qv = view(*q_mem, Nq, stride);
  std::unique_ptr<DeviceMem> k_mem, v_mem, r_mem, o_mem;
  TensorView kv = qv, vv = qv;
  if (c.inputs != Inputs::kSelf) {
    k_mem = upload(key, dt);
    kv = vv = view(*k_mem, Nk, E);
  }
  if (c.inputs == Inputs::kSeparateKv) {
    v_mem = upload(value, dt);
    vv = view(*v_mem, Nk, E);
  }
  TensorView ov = qv, rv = qv;
  if (!c.in_place) {
    o_mem = std::make_unique<DeviceMem>(static_cast<size_t>(B * Nq * stride * 2));
    CUDA_OK(cudaMemset(o_mem->get(), 0xff, o_mem->bytes()));  // NaN, padding included
    ov = view(*o_mem, Nq, stride);
    if (c.residual) {
      r_mem = upload(residual, dt);
      rv = view(*r_mem, Nq, E);
    }
  }
  ForwardExtras extras;
  extras.residual = c.residual ? &rv : nullptr;
  extras.attention_scale = c.attention_scale;
  extras.residual_scale = c.residual_scale;
  mha.forward(qv, kv, vv, ov, extras);
  CUDA_OK(cudaDeviceSynchronize());

  ModuleProblem p;
  p.batch = B;
  p.nq = Nq;
  p.nk = Nk;
  p.embed = E;
  p.heads = mha.num_heads();
  p.kv_heads = mha.kv_heads();
  p.options = mha.options();
  p.extras = extras;
  const std::vector<double> ref = test::reference_module(pattern, p, weights, query, key, value, residual);

  const std::vector<uint16_t> all = download(ov.data, static_cast<size_t>(B * Nq * stride));
  std::vector<uint16_t> got(static_cast<size_t>(B * Nq * E));
  int64_t padding_written = 0;
  for (int64_t r = 0; r < B * Nq; ++r)
    for (int64_t x = 0; x < stride; ++x) {
      if (x < E)
        got[r * E + x] = all[r * stride + x];
      else
        padding_written += all[r * stride + x] != 0xffff;
    }
  EXPECT_EQ(padding_written, 0) << "the module wrote between out's rows";
  const test::ModuleError err = test::compare_output(got, dt, ref);
  EXPECT_TRUE(err.within(test::module_tolerance(dt))) << err.to_string();
  const std::string explained = mha.explain();
  const char* path = c.inputs == Inputs::kSelf      ? "fused QKV"
                     : c.inputs == Inputs::kFusedKv ? "fused KV"
                                                    : "(Q, K, V)";
  EXPECT_NE(explained.find(path), std::string::npos) << explained;
}

void run_case(const Case& c, uint64_t seed) {
  SCOPED_TRACE(describe(c));
  MultiheadAttentionOptions o = options_for(c, seed);
  CallerWeights caller;
  HostWeights weights;
  if (c.own_weights) {
    weights = MultiheadAttention::initial_weights(c.embed, c.heads, c.kv_heads, o);
    for (auto* part : {&weights.in_proj_weight, &weights.in_proj_bias, &weights.out_proj_weight,
                       &weights.out_proj_bias, &weights.ln_weight, &weights.ln_bias})
      for (float& x : *part) x = modules::round_to(x, c.dtype);
  } else {
    caller = make_weights(c.embed, c.heads, c.kv_heads, c.bias, c.sub_ln, c.dtype, seed * 13);
    o.weights = caller.device;
    weights = caller.host;
  }
  MultiheadAttention mha(c.embed, c.heads, c.kv_heads, Pattern::parse(c.pattern), o);
  if (c.own_weights) {  // the device holds the seeded initialisation, rounded to the dtype
    const MultiheadWeights w = mha.weights();
    EXPECT_EQ(download(w.in_proj_weight, weights.in_proj_weight.size()), to_bits(weights.in_proj_weight, c.dtype));
    EXPECT_EQ(download(w.out_proj_weight, weights.out_proj_weight.size()), to_bits(weights.out_proj_weight, c.dtype));
    if (c.bias) {
      EXPECT_EQ(download(w.in_proj_bias, weights.in_proj_bias.size()), to_bits(weights.in_proj_bias, c.dtype));
    }
    if (c.sub_ln) {
      EXPECT_EQ(download(w.ln_weight, weights.ln_weight.size()), to_bits(weights.ln_weight, c.dtype));
    }
  }
  check_forward(mha, weights, c, seed);
}

constexpr const char* kLongNet = R"({"type":"longnet","segments":[64,128],"rates":[1,2]})";

TEST(ModulesGpu, DenseSelfOwnWeights) {
  SPATTN_REQUIRE_GPU();
  Case c;
  c.batch = 2;
  c.nq = 256;
  c.own_weights = true;
  run_case(c, 1);
  c.dtype = DType::kFloat16;
  c.sub_ln = true;
  run_case(c, 2);
}

TEST(ModulesGpu, DenseCausalGqaBiases) {
  SPATTN_REQUIRE_GPU();
  Case c;
  c.pattern = R"({"type":"dense","causal":true})";
  c.nq = 300;  // a tail in every tile size
  c.heads = 8;
  c.kv_heads = 2;  // D = 32, four query heads per KV head
  run_case(c, 3);
  c.kv_heads = 1;  // MQA
  c.dtype = DType::kFloat16;
  run_case(c, 4);
}

TEST(ModulesGpu, NoBiases) {
  SPATTN_REQUIRE_GPU();
  Case c;
  c.bias = false;
  c.nq = 200;
  c.embed = 128;
  c.heads = 2;
  c.kv_heads = 2;  // D = 64
  run_case(c, 5);
  c.dtype = DType::kFloat16;
  run_case(c, 6);
}

TEST(ModulesGpu, LongNetRotary) {
  SPATTN_REQUIRE_GPU();
  Case c;
  c.pattern = kLongNet;
  c.nq = 512;
  c.rotary = true;
  run_case(c, 7);
  c.nq = 500;  // the last segments cut short
  c.batch = 2;
  c.interleaved = true;
  run_case(c, 8);
}

TEST(ModulesGpu, LongNetGqaSubLayerNorm) {
  SPATTN_REQUIRE_GPU();
  Case c;
  c.pattern = kLongNet;
  c.nq = 384;
  c.kv_heads = 2;
  c.sub_ln = true;
  c.rotary = true;
  c.dtype = DType::kFloat16;
  run_case(c, 9);
  c.embed = 256;
  c.heads = 2;
  c.kv_heads = 1;  // D = 128
  c.dtype = DType::kBFloat16;
  run_case(c, 10);
}

TEST(ModulesGpu, CrossAttentionFusedKv) {
  SPATTN_REQUIRE_GPU();
  Case c;
  c.inputs = Inputs::kFusedKv;
  c.batch = 2;
  c.nq = 100;
  c.nk = 333;
  run_case(c, 11);
  c.rotary = true;  // queries at positions Nk - Nq + i
  c.kv_heads = 2;
  run_case(c, 12);
  c.nq = 300;  // more queries than keys
  c.nk = 64;
  c.pattern = R"({"type":"dense","causal":true})";
  run_case(c, 13);
}

TEST(ModulesGpu, CrossAttentionSeparateKv) {
  SPATTN_REQUIRE_GPU();
  Case c;
  c.inputs = Inputs::kSeparateKv;
  c.nq = 128;
  c.nk = 200;
  c.kv_heads = 2;
  c.pattern = R"({"type":"local_window","window":64})";
  run_case(c, 14);
  c.inputs = Inputs::kSeparateKv;
  c.nk = 128;  // Nq == Nk, but distinct tensors: still three projections
  c.pattern = kLongNet;
  c.dtype = DType::kFloat16;
  run_case(c, 15);
}

TEST(ModulesGpu, ResidualEpilogue) {
  SPATTN_REQUIRE_GPU();
  Case c;
  c.nq = 160;
  c.residual = true;
  run_case(c, 16);  // x + mha
  c.attention_scale = 0.5f;  // the output bias is scaled too
  c.residual_scale = 0.75f;
  run_case(c, 17);
  c.in_place = true;  // out = query = residual
  c.rotary = true;
  run_case(c, 18);
  c.inputs = Inputs::kFusedKv;
  c.in_place = false;
  c.nk = 96;
  c.bias = false;
  run_case(c, 19);
}

TEST(ModulesGpu, StridedActivations) {
  SPATTN_REQUIRE_GPU();
  Case c;
  c.batch = 2;
  c.nq = 130;
  c.token_stride = 256 + 64;  // query and out rows of a wider buffer
  c.sub_ln = true;
  run_case(c, 20);
  c.inputs = Inputs::kFusedKv;
  c.nk = 70;
  run_case(c, 21);
}

TEST(ModulesGpu, ShapesChangeBetweenCalls) {
  SPATTN_REQUIRE_GPU();
  Case c;
  c.rotary = true;
  c.kv_heads = 2;
  const MultiheadAttentionOptions base = options_for(c, 22);
  CallerWeights w = make_weights(c.embed, c.heads, c.kv_heads, c.bias, c.sub_ln, c.dtype, 22);
  MultiheadAttentionOptions o = base;
  o.weights = w.device;
  MultiheadAttention mha(c.embed, c.heads, c.kv_heads, Pattern(), o);
  uint64_t seed = 23;
  for (auto [batch, nq, nk, inputs] : std::initializer_list<std::tuple<int64_t, int64_t, int64_t, Inputs>>{
           {1, 128, 0, Inputs::kSelf},
           {2, 384, 0, Inputs::kSelf},  // the workspace grows
           {1, 64, 0, Inputs::kSelf},
           {1, 64, 200, Inputs::kFusedKv},
           {2, 128, 0, Inputs::kSelf}}) {
    c.batch = batch;
    c.nq = nq;
    c.nk = nk;
    c.inputs = inputs;
    check_forward(mha, w.host, c, seed++);
  }
  EXPECT_GT(mha.workspace_bytes(), size_t{2 * 384 * (256 + 2 * 128) * 2});
}

// CrossMemoryAttention: out = x + r * a (kResidual) or (1 - r) x + r a (kInterpolate), a = MHA(x, memory).
TEST(ModulesGpu, CrossMemoryFusions) {
  SPATTN_REQUIRE_GPU();
  const DType dt = DType::kBFloat16;
  const int64_t B = 2, N = 64, M = 96, E = 256, H = 4;
  CallerWeights w = make_weights(E, H, H, true, false, dt, 30);
  uint64_t seed = 31;
  for (auto [fusion, ratio, in_place] : std::initializer_list<std::tuple<MemoryFusion, float, bool>>{
           {MemoryFusion::kResidual, 1.0f, false},
           {MemoryFusion::kResidual, 0.3f, true},
           {MemoryFusion::kInterpolate, 0.25f, false},
           {MemoryFusion::kInterpolate, 1.0f, false}}) {  // the memory read alone: x is not read
    SCOPED_TRACE(fmt::format("fusion {} ratio {} {}", fusion == MemoryFusion::kResidual ? "residual" : "interpolate",
                             ratio, in_place ? "in place" : ""));
    CrossMemoryOptions o;
    o.fusion = fusion;
    o.fusion_ratio = ratio;
    o.attention.dtype = dt;
    o.attention.weights = w.device;
    o.attention.attention.use_tuning_db = false;
    CrossMemoryAttention fuse(E, H, H, Pattern(), o);
    const std::vector<float> x = test::random_rounded(B * N * E, 1.0, seed++, dt);
    const std::vector<float> memory = test::random_rounded(B * M * E, 1.0, seed++, dt);
    auto x_mem = upload(x, dt), m_mem = upload(memory, dt);
    DeviceMem o_mem(B * N * E * 2);
    CUDA_OK(cudaMemset(o_mem.get(), 0xff, o_mem.bytes()));
    const TensorView xv = TensorView::contiguous3(x_mem->get(), dt, {B, N, E});
    const TensorView mv = TensorView::contiguous3(m_mem->get(), dt, {B, M, E});
    const TensorView ov = in_place ? xv : TensorView::contiguous3(o_mem.get(), dt, {B, N, E});
    fuse.forward(xv, mv, ov);
    CUDA_OK(cudaDeviceSynchronize());

    ModuleProblem p;
    p.batch = B;
    p.nq = N;
    p.nk = M;
    p.embed = E;
    p.heads = H;
    p.kv_heads = H;
    p.options = fuse.attention().options();
    p.extras.attention_scale = ratio;
    p.extras.residual_scale = fusion == MemoryFusion::kResidual ? 1.0f : 1.0f - ratio;
    const std::vector<double> ref = test::reference_module(Pattern(), p, w.host, x, memory, memory, x);
    const test::ModuleError err = test::compare_output(download(ov.data, B * N * E), dt, ref);
    EXPECT_TRUE(err.within(test::module_tolerance(dt))) << err.to_string();
    EXPECT_NE(fuse.attention().explain().find("fused KV"), std::string::npos);
  }
}

// Padded batches (ForwardExtras::padding, self-attention: seqused_k serves the queries
// too): the rows of batch b before seqused_k[b] equal the module run on that batch's
// first seqused_k[b] tokens alone (the reference of a batch of one, Nq = Nk = length);
// the rows after it have a zero attention output, so out = the output bias.
TEST(ModulesGpu, PaddedBatchesMatchEachBatchAlone) {
  SPATTN_REQUIRE_GPU();
  const int64_t B = 3, N = 160, E = 256, H = 4;
  const std::vector<int32_t> used = {160, 77, 1};
  uint64_t seed = 900;
  for (const char* json : {R"({"type":"dense","causal":true})", R"({"type":"local_window","window":48})", kLongNet}) {
    for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
      SCOPED_TRACE(fmt::format("{} {}", json, to_string(dt)));
      const Pattern pattern = Pattern::parse(json);
      CallerWeights w = make_weights(E, H, H, true, false, dt, seed * 13);
      MultiheadAttentionOptions o;
      o.dtype = dt;
      o.weights = w.device;
      o.attention.use_tuning_db = false;
      MultiheadAttention mha(E, H, H, pattern, o);
      const std::vector<float> x = test::random_rounded(B * N * E, 1.0, seed++, dt);
      auto x_mem = upload(x, dt);
      DeviceMem o_mem(B * N * E * 2);
      CUDA_OK(cudaMemset(o_mem.get(), 0xff, o_mem.bytes()));  // NaN: every row must be written
      const runtime::DeviceBuffer len_mem = test::upload_i32(used);
      const TensorView xv = TensorView::contiguous3(x_mem->get(), dt, {B, N, E});
      const TensorView ov = TensorView::contiguous3(o_mem.get(), dt, {B, N, E});
      KeyPadding padding;
      padding.seqused_k = test::i32_view(len_mem, B);
      ForwardExtras extras;
      extras.padding = &padding;
      mha.forward(xv, xv, xv, ov, extras);
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_NE(mha.explain().find("padded"), std::string::npos) << mha.explain();
      const std::vector<uint16_t> got = download(ov.data, B * N * E);
      for (int64_t b = 0; b < B; ++b) {
        SCOPED_TRACE(fmt::format("batch {} of {} tokens used", b, used[b]));
        const int64_t L = used[b];
        const std::vector<float> xb(x.begin() + b * N * E, x.begin() + (b * N + L) * E);
        ModuleProblem p;
        p.batch = 1;
        p.nq = p.nk = L;
        p.embed = E;
        p.heads = p.kv_heads = H;
        p.options = mha.options();
        const std::vector<double> ref = test::reference_module(pattern, p, w.host, xb, xb, xb, {});
        const std::vector<uint16_t> rows(got.begin() + b * N * E, got.begin() + (b * N + L) * E);
        const test::ModuleError err = test::compare_output(rows, dt, ref);
        EXPECT_TRUE(err.within(test::module_tolerance(dt))) << err.to_string();
        // Padded rows: out = b_o, exactly the rounded bias.
        for (int64_t r = L; r < N; ++r)
          for (int64_t e = 0; e < E; ++e)
            ASSERT_EQ(got[(b * N + r) * E + e], modules::float_to_half_bits(w.host.out_proj_bias[e], dt))
                << "padded row " << r << " feature " << e;
      }
    }
  }
}

// A padded memory bank: batch b reads its first used[b] memory tokens; every query row is
// used (cross-attention pads only the keys). A batch without memory gets out = x + r b_o.
TEST(ModulesGpu, CrossMemoryOverAPaddedBank) {
  SPATTN_REQUIRE_GPU();
  const DType dt = DType::kBFloat16;
  const int64_t B = 3, N = 64, M = 96, E = 256, H = 4;
  const std::vector<int32_t> used = {96, 33, 0};
  CallerWeights w = make_weights(E, H, H, true, false, dt, 40);
  CrossMemoryOptions o;
  o.fusion_ratio = 0.5f;
  o.attention.dtype = dt;
  o.attention.weights = w.device;
  o.attention.attention.use_tuning_db = false;
  CrossMemoryAttention fuse(E, H, H, Pattern(), o);
  const std::vector<float> x = test::random_rounded(B * N * E, 1.0, 41, dt);
  const std::vector<float> memory = test::random_rounded(B * M * E, 1.0, 42, dt);
  auto x_mem = upload(x, dt), m_mem = upload(memory, dt);
  DeviceMem o_mem(B * N * E * 2);
  CUDA_OK(cudaMemset(o_mem.get(), 0xff, o_mem.bytes()));
  const runtime::DeviceBuffer len_mem = test::upload_i32(used);
  const TensorView lengths = test::i32_view(len_mem, B);
  const TensorView xv = TensorView::contiguous3(x_mem->get(), dt, {B, N, E});
  const TensorView mv = TensorView::contiguous3(m_mem->get(), dt, {B, M, E});
  const TensorView ov = TensorView::contiguous3(o_mem.get(), dt, {B, N, E});
  fuse.forward(xv, mv, lengths, ov);
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<uint16_t> got = download(ov.data, B * N * E);
  for (int64_t b = 0; b < B; ++b) {
    SCOPED_TRACE(fmt::format("batch {} with {} memory tokens", b, used[b]));
    const std::vector<float> xb(x.begin() + b * N * E, x.begin() + (b + 1) * N * E);
    const std::vector<uint16_t> rows(got.begin() + b * N * E, got.begin() + (b + 1) * N * E);
    std::vector<double> ref;
    if (used[b] > 0) {
      const std::vector<float> mb(memory.begin() + b * M * E, memory.begin() + (b * M + used[b]) * E);
      ModuleProblem p;
      p.batch = 1;
      p.nq = N;
      p.nk = used[b];
      p.embed = E;
      p.heads = p.kv_heads = H;
      p.options = fuse.attention().options();
      p.extras.attention_scale = 0.5f;
      p.extras.residual_scale = 1.0f;
      ref = test::reference_module(Pattern(), p, w.host, xb, mb, mb, xb);
    } else {
      ref.resize(xb.size());
      for (int64_t r = 0; r < N; ++r)
        for (int64_t e = 0; e < E; ++e) ref[r * E + e] = xb[r * E + e] + 0.5 * w.host.out_proj_bias[e];
    }
    const test::ModuleError err = test::compare_output(rows, dt, ref);
    EXPECT_TRUE(err.within(test::module_tolerance(dt))) << err.to_string();
  }
}

}  // namespace
}  // namespace spattn
