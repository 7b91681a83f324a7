// The documents calls of the C ABI on the GPU: spattn_attention_forward_varlen and
// spattn_attention_forward_padded (and their backward calls) write the same bits as
// spattn::Attention's on the same inputs (O and LSE, poisoned alike first,
// so rows a call leaves alone are compared too). Their results against the reference are
// tests/engine/test_varlen_gpu.cpp's; here only the boundary is in question. And bad
// offsets come back as SPATTN_ERROR_INVALID_ARGUMENT naming the entry (with
// "check_lengths": false the call succeeds and writes nothing).
#include <gtest/gtest.h>

#include <spattn/attention.hpp>
#include <spattn/spattn.h>
#include <spattn/varlen.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "tests/linear/linear_test_util.hpp"
#include "tests/support/gpu.hpp"

namespace spattn {
namespace {

using test::i32_view;
using test::upload_i32;

std::vector<uint8_t> bytes_of(const runtime::DeviceBuffer& b) {
  std::vector<uint8_t> h(b.size());
  b.download(h.data(), h.size());
  return h;
}

void expect_same_bits(const runtime::DeviceBuffer& a, const runtime::DeviceBuffer& b, const char* what) {
  const std::vector<uint8_t> x = bytes_of(a), y = bytes_of(b);
  ASSERT_EQ(x.size(), y.size());
  const auto diff = std::mismatch(x.begin(), x.end(), y.begin());
  EXPECT_TRUE(diff.first == x.end()) << what << " differs from the C++ API's at byte " << (diff.first - x.begin());
}

std::string create_options(bool check_lengths) {
  return std::string(R"({"use_tuning_db": false, "check_lengths": )") + (check_lengths ? "true" : "false") + "}";
}

AttentionOptions cpp_options() {
  AttentionOptions opt;
  opt.use_tuning_db = false;  // the same choice as the C handle's
  return opt;
}

TEST(DocumentsCApiGpu, VarlenWritesTheBitsOfTheCppApi) {
  SPATTN_REQUIRE_GPU();
  // Lengths of 1, 0, not a multiple of any tile, more than one tile row; rows after the
  // last document that neither call writes.
  const std::vector<int32_t> lengths{1, 0, 200, 77, 513};
  std::vector<int32_t> cu{0};
  for (int32_t n : lengths) cu.push_back(cu.back() + n);
  const int64_t T = cu.back() + 3, H = 4, HK = 2, D = 128;
  const DType dt = DType::kBFloat16;
  runtime::DeviceBuffer q(T * H * D * 2), k(T * HK * D * 2), v(T * HK * D * 2);
  engine::fill_random(q.data(), T * H * D, dt, 51);
  engine::fill_random(k.data(), T * HK * D, dt, 52);
  engine::fill_random(v.data(), T * HK * D, dt, 53);
  const runtime::DeviceBuffer dcu = upload_i32(cu);
  const int64_t docs = static_cast<int64_t>(cu.size());
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());

  for (const char* json : {R"({"type":"dense","causal":true})", R"({"type":"local_window","window":96})"}) {
    SCOPED_TRACE(json);
    runtime::DeviceBuffer o_c(T * H * D * 2), lse_c(H * T * 4), o_cpp(T * H * D * 2), lse_cpp(H * T * 4);
    for (auto* b : {&o_c, &lse_c, &o_cpp, &lse_cpp}) b->fill_bytes(0x7e);

    spattn_attention_t attn = nullptr;
    ASSERT_EQ(spattn_attention_create(json, create_options(true).c_str(), &attn), SPATTN_OK) << spattn_last_error();
    const spattn_tensor tq = test::c_tensor(q.data(), SPATTN_BF16, {T, H, D}),
                        tk = test::c_tensor(k.data(), SPATTN_BF16, {T, HK, D}),
                        tv = test::c_tensor(v.data(), SPATTN_BF16, {T, HK, D}),
                        to = test::c_tensor(o_c.data(), SPATTN_BF16, {T, H, D}),
                        tl = test::c_tensor(lse_c.data(), SPATTN_FP32, {H, T}),
                        tcu = test::c_tensor(dcu.data(), SPATTN_INT32, {docs});
    ASSERT_EQ(spattn_attention_forward_varlen(attn, &tq, &tk, &tv, &to, &tl, &tcu, &tcu, longest, longest, nullptr),
              SPATTN_OK)
        << spattn_last_error();
    runtime::synchronize();
    const std::string text = test::explain_text(attn);
    EXPECT_NE(text.find("documents"), std::string::npos) << text;
    spattn_attention_destroy(attn);

    Attention cpp(Pattern::parse(json), cpp_options());
    const TensorView l = test::packed_lse_view(lse_cpp, H, T);
    const Documents d{i32_view(dcu, docs), i32_view(dcu, docs), longest, longest};
    cpp.forward_varlen(TensorView::contiguous3(q.data(), dt, {T, H, D}), TensorView::contiguous3(k.data(), dt, {T, HK, D}),
                       TensorView::contiguous3(v.data(), dt, {T, HK, D}),
                       TensorView::contiguous3(o_cpp.data(), dt, {T, H, D}), &l, d);
    runtime::synchronize();
    expect_same_bits(o_c, o_cpp, "O");
    expect_same_bits(lse_c, lse_cpp, "LSE");
  }
}

TEST(DocumentsCApiGpu, PaddedWritesTheBitsOfTheCppApi) {
  SPATTN_REQUIRE_GPU();
  const int64_t B = 3, N = 300, H = 4, HK = 2, D = 128;
  const DType dt = DType::kBFloat16;
  const std::vector<int32_t> used_q{300, 250, 5}, used_k{300, 17, 0};
  runtime::DeviceBuffer q(B * N * H * D * 2), k(B * N * HK * D * 2), v(B * N * HK * D * 2);
  engine::fill_random(q.data(), B * N * H * D, dt, 61);
  engine::fill_random(k.data(), B * N * HK * D, dt, 62);
  engine::fill_random(v.data(), B * N * HK * D, dt, 63);
  const runtime::DeviceBuffer uq = upload_i32(used_q), uk = upload_i32(used_k);
  const char* json = R"({"type":"dense","causal":true})";
  for (bool with_q : {false, true}) {
    SCOPED_TRACE(with_q ? "seqused_q and seqused_k" : "seqused_k only");
    runtime::DeviceBuffer o_c(B * N * H * D * 2), lse_c(B * H * N * 4), o_cpp(B * N * H * D * 2),
        lse_cpp(B * H * N * 4);
    for (auto* b : {&o_c, &lse_c, &o_cpp, &lse_cpp}) b->fill_bytes(0x7e);

    spattn_attention_t attn = nullptr;
    ASSERT_EQ(spattn_attention_create(json, create_options(true).c_str(), &attn), SPATTN_OK) << spattn_last_error();
    const spattn_tensor tq = test::c_tensor(q.data(), SPATTN_BF16, {B, N, H, D}),
                        tk = test::c_tensor(k.data(), SPATTN_BF16, {B, N, HK, D}),
                        tv = test::c_tensor(v.data(), SPATTN_BF16, {B, N, HK, D}),
                        to = test::c_tensor(o_c.data(), SPATTN_BF16, {B, N, H, D}),
                        tl = test::c_tensor(lse_c.data(), SPATTN_FP32, {B, H, N}),
                        tuq = test::c_tensor(uq.data(), SPATTN_INT32, {B}),
                        tuk = test::c_tensor(uk.data(), SPATTN_INT32, {B});
    ASSERT_EQ(spattn_attention_forward_padded(attn, &tq, &tk, &tv, &to, &tl, with_q ? &tuq : nullptr, &tuk, nullptr),
              SPATTN_OK)
        << spattn_last_error();
    runtime::synchronize();
    spattn_attention_destroy(attn);

    Attention cpp(Pattern::parse(json), cpp_options());
    KeyPadding pad;
    pad.seqused_k = i32_view(uk, B);
    if (with_q) pad.seqused_q = i32_view(uq, B);
    const auto tl_cpp = TensorView::contiguous3(lse_cpp.data(), DType::kFloat32, {B, H, N});
    cpp.forward_padded(TensorView::contiguous(q.data(), dt, {B, N, H, D}),
                       TensorView::contiguous(k.data(), dt, {B, N, HK, D}),
                       TensorView::contiguous(v.data(), dt, {B, N, HK, D}),
                       TensorView::contiguous(o_cpp.data(), dt, {B, N, H, D}), &tl_cpp, pad);
    runtime::synchronize();
    expect_same_bits(o_c, o_cpp, "O");
    expect_same_bits(lse_c, lse_cpp, "LSE");
  }
}

// The gradients of documents: spattn_attention_backward_varlen / _padded write the bits
// of Attention::backward_varlen / backward_padded (deterministic mode on both sides, so
// the bits do not depend on the order of atomics).
TEST(DocumentsCApiGpu, BackwardWritesTheBitsOfTheCppApi) {
  SPATTN_REQUIRE_GPU();
  const std::vector<int32_t> lengths{1, 0, 200, 77, 513};
  std::vector<int32_t> cu{0};
  for (int32_t n : lengths) cu.push_back(cu.back() + n);
  const int64_t T = cu.back() + 3, H = 4, HK = 2, D = 128, docs = static_cast<int64_t>(cu.size());
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  const DType dt = DType::kBFloat16;
  const int64_t qe = T * H * D, ke = T * HK * D;
  runtime::DeviceBuffer q(qe * 2), k(ke * 2), v(ke * 2), o(qe * 2), d_o(qe * 2), lse(H * T * 4);
  engine::fill_random(q.data(), qe, dt, 81);
  engine::fill_random(k.data(), ke, dt, 82);
  engine::fill_random(v.data(), ke, dt, 83);
  engine::fill_random(d_o.data(), qe, dt, 84);
  const runtime::DeviceBuffer dcu = upload_i32(cu);
  const char* json = R"({"type":"dense","causal":true})";
  AttentionOptions opt = cpp_options();
  opt.deterministic = true;
  Attention cpp(Pattern::parse(json), opt);
  const TensorView l = test::packed_lse_view(lse, H, T);
  const Documents d{i32_view(dcu, docs), i32_view(dcu, docs), longest, longest};
  auto qv = [&](const runtime::DeviceBuffer& b) { return TensorView::contiguous3(b.data(), dt, {T, H, D}); };
  auto kv = [&](const runtime::DeviceBuffer& b) { return TensorView::contiguous3(b.data(), dt, {T, HK, D}); };
  cpp.forward_varlen(qv(q), kv(k), kv(v), qv(o), &l, d);
  runtime::DeviceBuffer dq_c(qe * 2), dk_c(ke * 2), dv_c(ke * 2), dq_cpp(qe * 2), dk_cpp(ke * 2), dv_cpp(ke * 2);
  for (auto* b : {&dq_c, &dk_c, &dv_c, &dq_cpp, &dk_cpp, &dv_cpp}) b->fill_bytes(0xff);
  cpp.backward_varlen(qv(q), kv(k), kv(v), qv(o), l, qv(d_o), qv(dq_cpp), kv(dk_cpp), kv(dv_cpp), d);

  spattn_attention_t attn = nullptr;
  ASSERT_EQ(spattn_attention_create(json, R"({"use_tuning_db": false, "deterministic": true})", &attn), SPATTN_OK)
      << spattn_last_error();
  auto qt = [&](const runtime::DeviceBuffer& b) { return test::c_tensor(b.data(), SPATTN_BF16, {T, H, D}); };
  auto kt = [&](const runtime::DeviceBuffer& b) { return test::c_tensor(b.data(), SPATTN_BF16, {T, HK, D}); };
  const spattn_tensor tq = qt(q), tk = kt(k), tv = kt(v), to = qt(o), tdo = qt(d_o), tdq = qt(dq_c), tdk = kt(dk_c),
                      tdv = kt(dv_c), tl = test::c_tensor(lse.data(), SPATTN_FP32, {H, T}),
                      tcu = test::c_tensor(dcu.data(), SPATTN_INT32, {docs});
  ASSERT_EQ(spattn_attention_backward_varlen(attn, &tq, &tk, &tv, &to, &tl, &tdo, &tdq, &tdk, &tdv, &tcu, &tcu,
                                             longest, longest, nullptr),
            SPATTN_OK)
      << spattn_last_error();
  // Padded: one batch of all rows with seqused_k, both ways.
  const runtime::DeviceBuffer used = upload_i32({static_cast<int32_t>(T - 7)});
  KeyPadding pad;
  pad.seqused_k = i32_view(used, 1);
  auto q4 = [&](const runtime::DeviceBuffer& b) { return TensorView::contiguous(b.data(), dt, {1, T, H, D}); };
  auto k4 = [&](const runtime::DeviceBuffer& b) { return TensorView::contiguous(b.data(), dt, {1, T, HK, D}); };
  runtime::DeviceBuffer plse(H * T * 4), pq_c(qe * 2), pk_c(ke * 2), pv_c(ke * 2), pq_cpp(qe * 2), pk_cpp(ke * 2),
      pv_cpp(ke * 2);
  const auto tl4 = TensorView::contiguous3(plse.data(), DType::kFloat32, {1, H, T});
  cpp.forward_padded(q4(q), k4(k), k4(v), q4(o), &tl4, pad);
  cpp.backward_padded(q4(q), k4(k), k4(v), q4(o), tl4, q4(d_o), q4(pq_cpp), k4(pk_cpp), k4(pv_cpp), pad);
  auto q4t = [&](const runtime::DeviceBuffer& b) { return test::c_tensor(b.data(), SPATTN_BF16, {1, T, H, D}); };
  auto k4t = [&](const runtime::DeviceBuffer& b) { return test::c_tensor(b.data(), SPATTN_BF16, {1, T, HK, D}); };
  const spattn_tensor pq = q4t(q), pk = k4t(k), pv = k4t(v), po = q4t(o), pdo = q4t(d_o), pdq = q4t(pq_c),
                      pdk = k4t(pk_c), pdv = k4t(pv_c), pl = test::c_tensor(plse.data(), SPATTN_FP32, {1, H, T}),
                      pu = test::c_tensor(used.data(), SPATTN_INT32, {1});
  ASSERT_EQ(spattn_attention_backward_padded(attn, &pq, &pk, &pv, &po, &pl, &pdo, &pdq, &pdk, &pdv, nullptr, &pu,
                                             nullptr),
            SPATTN_OK)
      << spattn_last_error();
  runtime::synchronize();
  spattn_attention_destroy(attn);
  expect_same_bits(dq_c, dq_cpp, "dQ (packed)");
  expect_same_bits(dk_c, dk_cpp, "dK (packed)");
  expect_same_bits(dv_c, dv_cpp, "dV (packed)");
  expect_same_bits(pq_c, pq_cpp, "dQ (padded)");
  expect_same_bits(pk_c, pk_cpp, "dK (padded)");
  expect_same_bits(pv_c, pv_cpp, "dV (padded)");
}

TEST(DocumentsCApiGpu, BadOffsetsAreInvalidArgumentsNamingTheEntry) {
  SPATTN_REQUIRE_GPU();
  const int64_t T = 256, H = 2, D = 64;
  runtime::DeviceBuffer q(T * H * D * 2), k(T * H * D * 2), v(T * H * D * 2), o(T * H * D * 2);
  engine::fill_random(q.data(), T * H * D, DType::kBFloat16, 71);
  engine::fill_random(k.data(), T * H * D, DType::kBFloat16, 72);
  engine::fill_random(v.data(), T * H * D, DType::kBFloat16, 73);
  const runtime::DeviceBuffer bad = upload_i32({0, 100, 50, 256}), good = upload_i32({0, 100, 150, 256});
  const spattn_tensor tq = test::c_tensor(q.data(), SPATTN_BF16, {T, H, D}),
                      tk = test::c_tensor(k.data(), SPATTN_BF16, {T, H, D}),
                      tv = test::c_tensor(v.data(), SPATTN_BF16, {T, H, D}),
                      to = test::c_tensor(o.data(), SPATTN_BF16, {T, H, D}),
                      tbad = test::c_tensor(bad.data(), SPATTN_INT32, {4}),
                      tgood = test::c_tensor(good.data(), SPATTN_INT32, {4});
  for (bool check : {true, false}) {
    SCOPED_TRACE(check ? "check_lengths" : "no check");
    o.fill_bytes(0x7e);
    spattn_attention_t attn = nullptr;
    ASSERT_EQ(spattn_attention_create(R"({"type":"dense","causal":true})", create_options(check).c_str(), &attn),
              SPATTN_OK)
        << spattn_last_error();
    const spattn_status s =
        spattn_attention_forward_varlen(attn, &tq, &tk, &tv, &to, nullptr, &tbad, &tgood, 256, 256, nullptr);
    const std::string message = spattn_last_error();
    if (check) {
      EXPECT_EQ(s, SPATTN_ERROR_INVALID_ARGUMENT) << message;
      EXPECT_NE(message.find("cu_seqlens_q[2] = 50 is below cu_seqlens_q[1] = 100"), std::string::npos) << message;
    } else {
      EXPECT_EQ(s, SPATTN_OK) << message;
    }
    runtime::synchronize();  // no fault either way
    const std::vector<uint8_t> out = bytes_of(o);
    EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](uint8_t x) { return x == 0x7e; })) << "bad offsets wrote O";
    // The handle still works after the refusal.
    ASSERT_EQ(spattn_attention_forward_varlen(attn, &tq, &tk, &tv, &to, nullptr, &tgood, &tgood, 106, 106, nullptr),
              SPATTN_OK)
        << spattn_last_error();
    runtime::synchronize();
    spattn_attention_destroy(attn);
  }
}

}  // namespace
}  // namespace spattn
