// Forward attention on the GPU against references, for every pattern of DESIGN.md §3
// except adaptive, across dtypes, head dims, causal, GQA, odd lengths, Nq != Nk and
// strided views — once per kernel family (sm80 everywhere, sm90 on Hopper): the same
// cases run on each family's heuristic configuration, plus explicit configurations.
//
// Each case draws fresh random inputs, poisons O (NaN) and LSE before the run, and
// compares with the fp32 GPU reference (masks from Pattern::allowed_in_branch). For
// small cases the GPU reference itself is also checked against the host fp64 reference.
//
// Tolerances (|V| <= 1, so outputs are O(1)):
//   bf16: relative L2 <= 1e-2, max |err| <= 3e-2  (8-bit mantissa: P and O are rounded)
//   fp16: relative L2 <= 2e-3, max |err| <= 5e-3  (11-bit mantissa)
//   LSE:  max |err| <= 2e-3 on rows with allowed keys; -inf exactly where the reference has -inf
#include <gtest/gtest.h>

#include <spattn/attention.hpp>
#include <spattn/reference.hpp>

#include <cmath>
#include <algorithm>
#include <random>
#include <span>

#include "autotune/harness.hpp"
#include "engine/reference.hpp"
#include "engine/select.hpp"
#include "runtime/device.hpp"
#include "tests/support/gpu.hpp"

namespace spattn {
namespace {

struct Case {
  std::string json;
  int64_t batch = 1, nq = 1000, nk = 1000, heads = 4, kv_heads = 2, head_dim = 128;
  DType dtype = DType::kBFloat16;
  std::optional<KernelConfig> config;
  bool host_check = false;  // also check the GPU reference against the host fp64 one
  // Q, K, V as views of one packed [B, N, 3, H, D] buffer (needs nq == nk, heads ==
  // kv_heads), as a fused QKV projection leaves them; O strided likewise in [B, N, 2, H, D].
  bool packed = false;
  bool broadcast_kv = false;  // K and V with batch stride 0 (one K/V for every batch row)
};

// The family a test instance runs; cases without an explicit config use that family's
// heuristic configuration (cases the family cannot run fall back to the heuristic).
KernelFamily g_family = KernelFamily::kSm80;

std::string describe(const Case& c) {
  return fmt::format("{} B={} Nq={} Nk={} H={}/{} D={} {}{}", c.json, c.batch, c.nq, c.nk, c.heads, c.kv_heads,
                     c.head_dim, to_string(c.dtype), c.config ? " config " + c.config->to_string() : "");
}

void run_case(const Case& c, uint64_t seed) {
  const Pattern pattern = Pattern::parse(c.json);
  engine::Problem problem{c.batch, c.nq, c.nk, c.heads, c.kv_heads, c.head_dim, c.dtype};
  std::optional<KernelConfig> config = c.config;
  if (!config) {
    const runtime::DeviceInfo dev = runtime::device_info(runtime::current_device());
    if (family_supports(g_family, static_cast<int>(c.head_dim), c.dtype, dev.arch()))
      config = engine::heuristic_for(g_family, pattern, problem, dev).config;
  }
  SCOPED_TRACE(describe(c) + (config ? " -> " + config->to_string() : " -> heuristic"));
  const int64_t q_elems = c.batch * c.nq * c.heads * c.head_dim;
  const int64_t kv_elems = c.batch * c.nk * c.kv_heads * c.head_dim;
  const int64_t hd = c.heads * c.head_dim;
  if (c.packed) ASSERT_TRUE(c.nq == c.nk && c.heads == c.kv_heads);
  // Packed: one buffer holds Q, K, V interleaved per token; O interleaved with padding.
  runtime::DeviceBuffer q((c.packed ? 3 : 1) * q_elems * 2), k(kv_elems * 2), v(kv_elems * 2),
      o((c.packed ? 2 : 1) * q_elems * 2), lse(c.batch * c.heads * c.nq * 4);
  engine::fill_random(q.data(), (c.packed ? 3 : 1) * q_elems, c.dtype, seed * 3 + 1);
  engine::fill_random(k.data(), kv_elems, c.dtype, seed * 3 + 2);
  engine::fill_random(v.data(), kv_elems, c.dtype, seed * 3 + 3);
  o.fill_bytes(0xff);    // NaN in fp16 and bf16: every element must be written
  lse.fill_bytes(0xff);  // NaN
  auto tq = TensorView::contiguous(q.data(), c.dtype, {c.batch, c.nq, c.heads, c.head_dim});
  auto tk = TensorView::contiguous(k.data(), c.dtype, {c.batch, c.nk, c.kv_heads, c.head_dim});
  auto tv = TensorView::contiguous(v.data(), c.dtype, {c.batch, c.nk, c.kv_heads, c.head_dim});
  auto to = TensorView::contiguous(o.data(), c.dtype, {c.batch, c.nq, c.heads, c.head_dim});
  if (c.packed) {
    char* base = static_cast<char*>(q.data());
    tk.data = base + hd * 2;
    tv.data = base + 2 * hd * 2;
    for (TensorView* t : {&tq, &tk, &tv}) {
      t->strides[0] = c.nq * 3 * hd;
      t->strides[1] = 3 * hd;
    }
    to.strides[0] = c.nq * 2 * hd;
    to.strides[1] = 2 * hd;
  }
  if (c.broadcast_kv) tk.strides[0] = tv.strides[0] = 0;
  const auto tl = TensorView::contiguous3(lse.data(), DType::kFloat32, {c.batch, c.heads, c.nq});

  AttentionOptions opts;
  opts.config = config;
  opts.use_tuning_db = false;
  Attention attn(pattern, opts);
  attn.forward(tq, tk, tv, to, &tl);
  runtime::synchronize();

  const auto ref = engine::reference_forward(pattern, problem, tq, tk, tv, 0);
  std::vector<uint16_t> out(q_elems);
  std::vector<float> lse_out(c.batch * c.heads * c.nq);
  if (c.packed) {
    // Gather O's rows out of the interleaved buffer; the padding between them must still be NaN.
    std::vector<uint16_t> all(2 * q_elems);
    o.download(all.data(), all.size() * 2);
    int64_t touched = 0;
    for (int64_t row = 0; row < c.batch * c.nq; ++row)
      for (int64_t x = 0; x < hd; ++x) {
        out[row * hd + x] = all[row * 2 * hd + x];
        touched += all[row * 2 * hd + hd + x] != 0xffff;
      }
    EXPECT_EQ(touched, 0) << "the kernel wrote outside O's view";
  } else {
    o.download(out.data(), out.size() * 2);
  }
  lse.download(lse_out.data(), lse_out.size() * 4);
  const auto cmp = engine::compare(out, c.dtype, lse_out, ref);
  const autotune::Tolerance tol = autotune::tolerance_for(c.dtype);  // the forward tolerance, one place
  EXPECT_EQ(cmp.nonfinite, 0) << cmp.to_string();
  EXPECT_EQ(cmp.lse_mismatch, 0) << cmp.to_string();
  EXPECT_LE(cmp.rel_l2_err, tol.rel_l2) << cmp.to_string() << "\n" << attn.explain();
  if (config) EXPECT_EQ(attn.explanation().config, *config);
  EXPECT_LE(cmp.max_abs_err, tol.max_abs) << cmp.to_string();
  EXPECT_LE(cmp.max_lse_err, tol.lse) << cmp.to_string();

  if (c.host_check) {
    // The GPU reference against the host fp64 reference on the same (rounded) inputs.
    std::vector<uint16_t> hq(q_elems), hk(kv_elems), hv(kv_elems);
    q.download(hq.data(), hq.size() * 2);
    k.download(hk.data(), hk.size() * 2);
    v.download(hv.data(), hv.size() * 2);
    auto to_f = [&](const std::vector<uint16_t>& in) {
      std::vector<float> f(in.size());
      for (size_t x = 0; x < in.size(); ++x) f[x] = engine::half_bits_to_float(in[x], c.dtype);
      return f;
    };
    std::vector<double> host_o, host_lse;
    reference_attention(pattern, problem.shape(), c.batch, c.kv_heads, c.head_dim, to_f(hq).data(), to_f(hk).data(),
                        to_f(hv).data(), 1.0 / std::sqrt(static_cast<double>(c.head_dim)), host_o, host_lse);
    ASSERT_EQ(host_o.size(), ref.o.size());
    double max_err = 0;
    for (size_t x = 0; x < host_o.size(); ++x) max_err = std::max(max_err, std::abs(host_o[x] - ref.o[x]));
    EXPECT_LE(max_err, 1e-4) << "GPU fp32 reference disagrees with the host fp64 reference";
    for (size_t x = 0; x < host_lse.size(); ++x) {
      if (std::isinf(host_lse[x])) EXPECT_TRUE(std::isinf(ref.lse[x]) && ref.lse[x] < 0) << "row " << x;
      else EXPECT_NEAR(host_lse[x], ref.lse[x], 1e-4) << "row " << x;
    }
  }
}

class ForwardGpu : public ::testing::TestWithParam<KernelFamily> {
 protected:
  void SetUp() override {
    SPATTN_REQUIRE_GPU();
    g_family = GetParam();
    const runtime::DeviceInfo dev = runtime::device_info(runtime::current_device());
    const KernelFamilyInfo& f = kernel_family_info(g_family);
    if (std::find(f.archs.begin(), f.archs.end(), dev.arch()) == f.archs.end())
      GTEST_SKIP() << "the " << f.name << " family does not run on " << dev.name << " (" << dev.arch() << ")";
  }
  bool sm90() const { return GetParam() == KernelFamily::kSm90; }
};

// Every pattern kind at an odd length with GQA, bf16, head dim 128; small enough for
// the host fp64 cross-check of the reference.
TEST_P(ForwardGpu, EveryPatternKind) {
  const char* patterns[] = {
      R"({"type":"dense"})",
      R"({"type":"dense","causal":true})",
      R"({"type":"local_window","window":256})",
      R"({"type":"local_window","left":200,"right":37})",
      R"({"type":"global_local","global":64,"window":128})",
      R"({"type":"strided","stride":16,"mode":"relative"})",
      R"({"type":"strided","stride":24,"mode":"columns"})",
      R"({"type":"dilated_sparse","block":64,"rates":[1,2,4],"reach":1})",
      R"({"preset":"standard"})",
      R"({"type":"custom","block":128,"pairs":[[0,0],[1,0],[1,1],[3,2],[5,7],[7,0]]})",
      R"({"type":"butterfly","block":64})",
      R"({"type":"longnet","segments":[256,512,1024],"rates":[1,2,4]})",
      R"({"type":"longnet","segments":[300,600],"rates":[1,3],"causal":true})",
      R"({"union":[{"type":"strided","stride":32,"mode":"relative"},{"type":"local_window","window":64}]})",
      R"({"intersect":[{"type":"local_window","window":300},{"type":"dense","causal":true}]})",
      R"({"branches":[{"type":"local_window","window":128},{"type":"dense","causal":true}]})",
      R"({"heads":[{"first":0,"count":2,"pattern":{"type":"local_window","window":64}},{"first":2,"count":2,"pattern":{"type":"strided","stride":8,"mode":"relative"}}]})",
  };
  uint64_t seed = 100;
  for (const char* p : patterns) {
    Case c;
    c.json = p;
    c.nq = c.nk = 1531;
    c.host_check = true;
    run_case(c, seed++);
  }
}

TEST_P(ForwardGpu, NeighborhoodGridsWithDilation) {
  Case c1{R"({"type":"neighborhood","grid":[2000],"window":[65],"dilation":[3]})"};
  c1.nq = c1.nk = 2000;
  c1.host_check = true;
  run_case(c1, 1);
  Case c2{R"({"type":"neighborhood","grid":[40,48],"window":[7,9],"dilation":[1,2]})"};
  c2.nq = c2.nk = 1920;
  c2.host_check = true;
  run_case(c2, 2);
  Case c3{R"({"type":"neighborhood","grid":[12,10,16],"window":[3,5,7],"dilation":[2,1,1]})"};
  c3.nq = c3.nk = 1920;
  run_case(c3, 3);
}

TEST_P(ForwardGpu, DtypesHeadDimsAndConfigs) {
  struct V {
    DType dtype;
    int64_t d;
    const char* config;
  };
  const V variants[] = {
      {DType::kFloat16, 128, nullptr},  {DType::kFloat16, 64, nullptr},   {DType::kBFloat16, 64, nullptr},
      {DType::kBFloat16, 32, nullptr},  {DType::kBFloat16, 96, nullptr},  {DType::kBFloat16, 256, nullptr},
      {DType::kBFloat16, 128, "128x64w8s2"}, {DType::kBFloat16, 128, "128x64w4s1"},
      {DType::kFloat16, 128, "64x128w4s2"},  {DType::kBFloat16, 128, "128x32w4s2:noperm"},
  };
  const V variants90[] = {
      {DType::kFloat16, 128, nullptr},           {DType::kFloat16, 64, nullptr},
      {DType::kBFloat16, 64, nullptr},           {DType::kBFloat16, 256, nullptr},
      {DType::kBFloat16, 128, "sm90:128x64s1"},  {DType::kBFloat16, 128, "sm90:64x128s2"},
      {DType::kFloat16, 64, "sm90:192x64s3"},    {DType::kBFloat16, 128, "sm90:128x64s3:noperm"},
      {DType::kBFloat16, 64, "sm90:128x160s2"},  {DType::kFloat16, 256, "sm90:64x64s2"},
      {DType::kBFloat16, 128, "sm90:128x80s2"},  {DType::kBFloat16, 128, "sm90:128x128s2:copy"},
      {DType::kFloat16, 64, "sm90:64x128s2:copy"}, {DType::kBFloat16, 128, "sm90:192x64s3:copy"},
      {DType::kBFloat16, 128, "sm90:128x128s2:turns"}, {DType::kFloat16, 64, "sm90:192x64s3:copy:turns"},
      {DType::kBFloat16, 128, "sm90:128x128s2:longest:copy:turns"},
  };
  uint64_t seed = 500;
  for (const auto& v : sm90() ? std::span<const V>(variants90) : std::span<const V>(variants)) {
    Case c{R"({"type":"local_window","window":300,"causal":true})"};
    c.dtype = v.dtype;
    c.head_dim = v.d;
    c.nq = c.nk = 1111;
    if (v.config) c.config = KernelConfig::parse(v.config);
    run_case(c, seed++);
    Case l{R"({"type":"longnet","segments":[256,512],"rates":[1,2]})"};
    l.dtype = v.dtype;
    l.head_dim = v.d;
    l.nq = l.nk = 1111;
    if (v.config) l.config = KernelConfig::parse(v.config);
    run_case(l, seed++);
  }
}

TEST_P(ForwardGpu, CrossAttentionGqaBatchAndTinyLengths) {
  Case cross{R"({"type":"dense","causal":true})"};
  cross.nq = 700;
  cross.nk = 1300;  // bottom-right aligned causal
  cross.heads = 6;
  cross.kv_heads = 1;  // MQA
  cross.batch = 2;
  cross.host_check = true;
  run_case(cross, 7);
  Case wide{R"({"type":"local_window","window":100})"};
  wide.nq = 1300;
  wide.nk = 700;
  wide.heads = 8;
  wide.kv_heads = 2;
  run_case(wide, 8);
  Case tiny{R"({"type":"dense","causal":true})"};
  tiny.nq = 1;
  tiny.nk = 1;
  run_case(tiny, 9);
  Case packed{R"({"type":"local_window","window":200})"};
  packed.nq = packed.nk = 777;
  packed.heads = packed.kv_heads = 3;
  packed.batch = 2;
  packed.packed = true;
  run_case(packed, 11);
  Case packed_ln{R"({"type":"longnet","segments":[128,256],"rates":[1,2]})"};
  packed_ln.nq = packed_ln.nk = 600;
  packed_ln.heads = packed_ln.kv_heads = 4;
  packed_ln.packed = true;
  run_case(packed_ln, 12);
  Case shared_kv{R"({"type":"dense","causal":true})"};
  shared_kv.nq = shared_kv.nk = 500;
  shared_kv.batch = 3;
  shared_kv.broadcast_kv = true;
  run_case(shared_kv, 13);
  Case causal_short_keys{R"({"type":"dense","causal":true})"};
  causal_short_keys.nq = 300;  // the first 200 queries see no key: O = 0, LSE = -inf
  causal_short_keys.nk = 100;
  causal_short_keys.host_check = true;
  run_case(causal_short_keys, 10);
}

// 4k-16k tokens against the fp32 GPU reference.
TEST_P(ForwardGpu, LongSequences) {
  Case win{R"({"type":"local_window","window":1024})"};
  win.nq = win.nk = 16384;
  win.heads = win.kv_heads = 2;
  run_case(win, 21);
  Case ln{R"({"type":"longnet","segments":[2048,4096,8192],"rates":[1,2,4]})"};
  ln.nq = ln.nk = 16384;
  ln.heads = ln.kv_heads = 4;
  run_case(ln, 22);
  Case dense{R"({"type":"dense","causal":true})"};
  dense.nq = dense.nk = 4096;
  dense.heads = dense.kv_heads = 2;
  run_case(dense, 23);
  Case gl{R"({"type":"global_local","global":128,"window":512})"};
  gl.nq = gl.nk = 8192;
  gl.heads = gl.kv_heads = 2;
  run_case(gl, 24);
}

TEST_P(ForwardGpu, BadInputsAreRefusedWithClearErrors) {
  runtime::DeviceBuffer buf(1 << 20);
  Attention attn(Pattern::parse(R"({"type":"dense"})"));
  const auto q = TensorView::contiguous(buf.data(), DType::kBFloat16, {1, 64, 4, 128});
  const auto k = TensorView::contiguous(buf.data(), DType::kBFloat16, {1, 64, 3, 128});
  try {
    attn.forward(q, k, k, q);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("multiple of key/value heads"), std::string::npos) << e.what();
  }
  const auto q80 = TensorView::contiguous(buf.data(), DType::kBFloat16, {1, 64, 4, 80});
  try {
    attn.forward(q80, q80, q80, q80);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("supported head dims"), std::string::npos) << e.what();
  }
  const auto q32 = TensorView::contiguous(buf.data(), DType::kFloat32, {1, 64, 4, 128});
  EXPECT_THROW(attn.forward(q32, q32, q32, q32), Error);
}

INSTANTIATE_TEST_SUITE_P(Families, ForwardGpu, ::testing::Values(KernelFamily::kSm80, KernelFamily::kSm90),
                         [](const ::testing::TestParamInfo<KernelFamily>& info) { return std::string(to_string(info.param)); });

}  // namespace
}  // namespace spattn
