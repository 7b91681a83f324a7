// The backward pass over documents on the GPU (Attention::backward_varlen /
// backward_padded) against the host fp64 reference gradients of each document alone, at
// the backward tolerance (autotune::backward_tolerance_for), on both kernel families:
//  - packed documents of lengths 1, 0, not a multiple of any tile, longer than a tile
//    row, Nq != Nk per document, with and without GQA (fp32 accumulators, or dK and dV
//    stored straight into the outputs);
//  - rows outside every document, queries of documents without keys and keys of
//    documents without queries get zero gradients (the outputs start as NaN, so every
//    element must be written);
//  - padded batches: gradients of padded queries and keys are zero;
//  - deterministic mode is bitwise reproducible run to run;
//  - patterns whose document tables come from the host are kUnsupported with the reason,
//    and bad lengths are kInvalidArgument naming the entry.
#include <gtest/gtest.h>

#include <spattn/attention.hpp>
#include <spattn/reference.hpp>
#include <spattn/varlen.hpp>

#include <cmath>

#include "autotune/harness.hpp"
#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"
#include "tests/support/gpu.hpp"

namespace spattn {
namespace {

using test::download_as;
using test::i32_view;
using test::upload_i32;

// The backward configs the tests force: the sm80 family, and the sm90 family on sm_90a.
std::vector<std::string> backward_configs(int64_t head_dim) {
  std::vector<std::string> out{"64x128w8s2"};
  if (runtime::device_info(0).arch() == "sm_90a" && (head_dim == 64 || head_dim == 128))
    out.push_back(head_dim == 128 ? "sm90:64x128s2" : "sm90:64x64s3");
  return out;
}

// Reference gradients of one document (rows q0.., keys k0..) into whole-tensor arrays.
void reference_document(const Pattern& pattern, int64_t nq, int64_t nk, int64_t heads, int64_t kv_heads, int64_t d,
                        const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                        const std::vector<float>& d_o, int64_t q0, int64_t k0, std::vector<double>& rdq,
                        std::vector<double>& rdk, std::vector<double>& rdv) {
  if (nq == 0 || nk == 0) return;  // zero gradients
  auto rows = [](const std::vector<float>& x, int64_t r0, int64_t n, int64_t h, int64_t d) {
    return std::vector<float>(x.begin() + r0 * h * d, x.begin() + (r0 + n) * h * d);
  };
  std::vector<double> dq, dk, dv;
  reference_attention_backward(pattern, Shape{nq, nk, heads}, 1, kv_heads, d, rows(q, q0, nq, heads, d).data(),
                               rows(k, k0, nk, kv_heads, d).data(), rows(v, k0, nk, kv_heads, d).data(),
                               rows(d_o, q0, nq, heads, d).data(), 1.0 / std::sqrt(static_cast<double>(d)), dq, dk,
                               dv);
  std::copy(dq.begin(), dq.end(), rdq.begin() + q0 * heads * d);
  std::copy(dk.begin(), dk.end(), rdk.begin() + k0 * kv_heads * d);
  std::copy(dv.begin(), dv.end(), rdv.begin() + k0 * kv_heads * d);
}

// Rows with no gradient by construction: queries outside every document or of a document
// without keys (zero_q, per query row), keys outside every document or of a document
// without queries (zero_k, per key row).
struct ZeroRows {
  std::vector<char> q, k;
  ZeroRows(int64_t nq, int64_t nk) : q(static_cast<size_t>(nq), 1), k(static_cast<size_t>(nk), 1) {}
  void document(int64_t q0, int64_t nq, int64_t k0, int64_t nk) {
    if (nq == 0 || nk == 0) return;
    std::fill(q.begin() + q0, q.begin() + q0 + nq, 0);
    std::fill(k.begin() + k0, k.begin() + k0 + nk, 0);
  }
};

void expect_gradients(const std::vector<float>& dq, const std::vector<float>& dk, const std::vector<float>& dv,
                      const std::vector<double>& rdq, const std::vector<double>& rdk, const std::vector<double>& rdv,
                      const ZeroRows& zero, DType dtype) {
  const double tol = autotune::backward_tolerance_for(dtype);
  const autotune::GradientError gq = autotune::gradient_error(dq, rdq), gk = autotune::gradient_error(dk, rdk),
                                gv = autotune::gradient_error(dv, rdv);
  EXPECT_EQ(gq.nonfinite + gk.nonfinite + gv.nonfinite, 0) << "an element was not written";
  EXPECT_LE(gq.rel_l2, tol) << "dQ";
  EXPECT_LE(gk.rel_l2, tol) << "dK";
  EXPECT_LE(gv.rel_l2, tol) << "dV";
  // Exact zeros in the rows without a gradient (the outputs started as NaN).
  const size_t q_row = dq.size() / zero.q.size(), k_row = dk.size() / zero.k.size();
  for (size_t x = 0; x < dq.size(); ++x)
    if (zero.q[x / q_row]) ASSERT_EQ(dq[x], 0.f) << "dQ of query row " << x / q_row;
  for (size_t x = 0; x < dk.size(); ++x)
    if (zero.k[x / k_row]) {
      ASSERT_EQ(dk[x], 0.f) << "dK of key row " << x / k_row;
      ASSERT_EQ(dv[x], 0.f) << "dV of key row " << x / k_row;
    }
}

struct PackedCase {
  std::string json;
  std::vector<int32_t> lq, lk;  // per document; lk empty: as lq
  int64_t heads = 2, kv_heads = 2, head_dim = 128;
  DType dtype = DType::kBFloat16;
  bool deterministic = false;
};

void run_packed(const PackedCase& c, const std::string& config, uint64_t seed) {
  SCOPED_TRACE(fmt::format("{} backward config {} H={}/{} D={} {}{} documents {}", c.json, config, c.heads,
                           c.kv_heads, c.head_dim, to_string(c.dtype), c.deterministic ? " deterministic" : "",
                           c.lq.size()));
  const std::vector<int32_t>& lk = c.lk.empty() ? c.lq : c.lk;
  const test::DeviceDocuments documents(c.lq, lk);
  const std::vector<int32_t>&cu_q = documents.cu_q, &cu_k = documents.cu_k;
  const Documents& docs = documents.docs;
  const int64_t pad = 5;  // rows after the last document
  const int64_t tq = cu_q.back() + pad, tk = cu_k.back() + pad, H = c.heads, HK = c.kv_heads, D = c.head_dim;
  const int64_t qe = tq * H * D, ke = tk * HK * D;
  runtime::DeviceBuffer q(qe * 2), k(ke * 2), v(ke * 2), o(qe * 2), d_o(qe * 2), dq(qe * 2), dk(ke * 2), dv(ke * 2),
      lse(H * tq * 4);
  engine::fill_random(q.data(), qe, c.dtype, seed * 5 + 1);
  engine::fill_random(k.data(), ke, c.dtype, seed * 5 + 2);
  engine::fill_random(v.data(), ke, c.dtype, seed * 5 + 3);
  engine::fill_random(d_o.data(), qe, c.dtype, seed * 5 + 4);
  AttentionOptions opt;
  opt.use_tuning_db = false;
  if (!config.empty()) opt.backward_config = KernelConfig::parse(config);
  opt.deterministic = c.deterministic;
  Attention attn(Pattern::parse(c.json), opt);
  auto qv = [&](const runtime::DeviceBuffer& b) { return TensorView::contiguous3(b.data(), c.dtype, {tq, H, D}); };
  auto kv = [&](const runtime::DeviceBuffer& b) { return TensorView::contiguous3(b.data(), c.dtype, {tk, HK, D}); };
  const TensorView vl = test::packed_lse_view(lse, H, tq);
  o.fill_bytes(0);  // rows outside documents: O = 0 as a caller's zeroed output
  attn.forward_varlen(qv(q), kv(k), kv(v), qv(o), &vl, docs);
  auto backward = [&] {
    for (auto* b : {&dq, &dk, &dv}) b->fill_bytes(0xff);  // NaN
    attn.backward_varlen(qv(q), kv(k), kv(v), qv(o), vl, qv(d_o), qv(dq), kv(dk), kv(dv), docs);
    SPATTN_CU_CHECK(cuCtxSynchronize());
  };
  backward();
  auto bits = [](const runtime::DeviceBuffer& b, int64_t n) {
    std::vector<uint16_t> out(static_cast<size_t>(n));
    b.download(out.data(), out.size() * 2);
    return out;
  };
  if (c.deterministic) {
    const auto bq = bits(dq, qe), bk = bits(dk, ke), bv = bits(dv, ke);
    for (int run = 0; run < 2; ++run) {
      backward();
      EXPECT_TRUE(bits(dq, qe) == bq) << "dQ differs in run " << run + 2;
      EXPECT_TRUE(bits(dk, ke) == bk) << "dK differs in run " << run + 2;
      EXPECT_TRUE(bits(dv, ke) == bv) << "dV differs in run " << run + 2;
    }
  }
  const auto hq = download_as(q, qe, c.dtype), hk = download_as(k, ke, c.dtype), hv = download_as(v, ke, c.dtype),
             hdo = download_as(d_o, qe, c.dtype);
  std::vector<double> rdq(qe, 0.0), rdk(ke, 0.0), rdv(ke, 0.0);
  const Pattern pattern = Pattern::parse(c.json);
  ZeroRows zero(tq, tk);
  for (size_t x = 0; x < c.lq.size(); ++x) {
    reference_document(pattern, c.lq[x], lk[x], H, HK, D, hq, hk, hv, hdo, cu_q[x], cu_k[x], rdq, rdk, rdv);
    zero.document(cu_q[x], c.lq[x], cu_k[x], lk[x]);
  }
  expect_gradients(download_as(dq, qe, c.dtype), download_as(dk, ke, c.dtype), download_as(dv, ke, c.dtype), rdq,
                   rdk, rdv, zero, c.dtype);
}

TEST(DocumentsBackwardGpu, PackedDocumentsMatchEachDocumentAlone) {
  SPATTN_REQUIRE_GPU();
  const std::vector<int32_t> lengths{1, 0, 200, 77, 513, 128, 3};
  const char* patterns[] = {
      R"({"type":"dense","causal":true})",
      R"({"type":"local_window","window":96,"causal":true})",
      R"({"type":"global_local","global":16,"window":64})",
      R"({"type":"dense"})",
  };
  uint64_t seed = 1;
  for (const char* json : patterns)
    for (const std::string& config : backward_configs(128)) {
      run_packed({json, lengths}, config, ++seed);  // one query head per KV head: dK, dV stored directly
      PackedCase gqa{json, lengths};
      gqa.heads = 4;
      gqa.kv_heads = 2;
      run_packed(gqa, config, ++seed);  // GQA: fp32 accumulators
    }
}

TEST(DocumentsBackwardGpu, CrossLengthsDtypesAndHeadDims) {
  SPATTN_REQUIRE_GPU();
  // Nq != Nk per document (both ways; queries without keys and keys without queries).
  PackedCase cross{R"({"type":"dense","causal":true})", {100, 300, 1, 64, 0, 50}, {300, 100, 40, 0, 30, 50}};
  cross.heads = 4;
  cross.kv_heads = 1;
  for (const std::string& config : backward_configs(128)) run_packed(cross, config, 31);
  PackedCase fp16{R"({"type":"local_window","left":40,"right":9})", {129, 64, 255, 1}};
  fp16.dtype = DType::kFloat16;
  fp16.head_dim = 64;
  for (const std::string& config : backward_configs(64)) run_packed(fp16, config, 32);
}

// Deterministic mode over documents on both families (and the heuristic's choice).
TEST(DocumentsBackwardGpu, DeterministicModeIsBitwiseReproducible) {
  SPATTN_REQUIRE_GPU();
  PackedCase det{R"({"type":"dense","causal":true})", {1, 0, 200, 77, 513, 3}};
  det.heads = 4;
  det.kv_heads = 2;
  det.deterministic = true;
  run_packed(det, "64x128w8s2", 33);
  run_packed(det, "", 34);  // the heuristic's choice
  if (runtime::device_info(0).arch() == "sm_90a") run_packed(det, "sm90:64x128s2", 35);
}

TEST(DocumentsBackwardGpu, PaddedBatchesGiveZeroGradientsToPadding) {
  SPATTN_REQUIRE_GPU();
  const int64_t B = 3, N = 300, H = 2, HK = 2, D = 128;
  const DType dt = DType::kBFloat16;
  const std::vector<int32_t> used_q{300, 250, 5}, used_k{300, 17, 0};
  const int64_t qe = B * N * H * D, ke = B * N * HK * D;
  for (const char* json : {R"({"type":"dense","causal":true})", R"({"type":"local_window","window":64})"})
    for (const std::string& config : backward_configs(D)) {
      SCOPED_TRACE(fmt::format("{} {}", json, config));
      runtime::DeviceBuffer q(qe * 2), k(ke * 2), v(ke * 2), o(qe * 2), d_o(qe * 2), dq(qe * 2), dk(ke * 2),
          dv(ke * 2), lse(B * H * N * 4);
      engine::fill_random(q.data(), qe, dt, 41);
      engine::fill_random(k.data(), ke, dt, 42);
      engine::fill_random(v.data(), ke, dt, 43);
      engine::fill_random(d_o.data(), qe, dt, 44);
      for (auto* b : {&dq, &dk, &dv}) b->fill_bytes(0xff);
      runtime::DeviceBuffer uq = upload_i32(used_q), uk = upload_i32(used_k);
      KeyPadding pad;
      pad.seqused_q = i32_view(uq, B);
      pad.seqused_k = i32_view(uk, B);
      AttentionOptions opt;
      opt.use_tuning_db = false;
      opt.backward_config = KernelConfig::parse(config);
      Attention attn(Pattern::parse(json), opt);
      auto qv = [&](const runtime::DeviceBuffer& b) { return TensorView::contiguous(b.data(), dt, {B, N, H, D}); };
      auto kv = [&](const runtime::DeviceBuffer& b) { return TensorView::contiguous(b.data(), dt, {B, N, HK, D}); };
      const auto tl = TensorView::contiguous3(lse.data(), DType::kFloat32, {B, H, N});
      attn.forward_padded(qv(q), kv(k), kv(v), qv(o), &tl, pad);
      attn.backward_padded(qv(q), kv(k), kv(v), qv(o), tl, qv(d_o), qv(dq), kv(dk), kv(dv), pad);
      SPATTN_CU_CHECK(cuCtxSynchronize());
      const auto hq = download_as(q, qe, dt), hk = download_as(k, ke, dt), hv = download_as(v, ke, dt),
                 hdo = download_as(d_o, qe, dt);
      std::vector<double> rdq(qe, 0.0), rdk(ke, 0.0), rdv(ke, 0.0);
      const Pattern pattern = Pattern::parse(json);
      ZeroRows zero(B * N, B * N);
      for (int64_t b = 0; b < B; ++b) {
        reference_document(pattern, used_q[b], used_k[b], H, HK, D, hq, hk, hv, hdo, b * N, b * N, rdq, rdk, rdv);
        zero.document(b * N, used_q[b], b * N, used_k[b]);
      }
      expect_gradients(download_as(dq, qe, dt), download_as(dk, ke, dt), download_as(dv, ke, dt), rdq, rdk, rdv,
                       zero, dt);
    }
}

TEST(DocumentsBackwardGpu, HostTablePatternsAndBadLengthsAreClearErrors) {
  SPATTN_REQUIRE_GPU();
  const int64_t T = 256, H = 2, D = 64;
  const DType dt = DType::kBFloat16;
  runtime::DeviceBuffer buf(T * H * D * 2 * 9), lse(H * T * 4);
  engine::fill_random(buf.data(), T * H * D * 9, dt, 5);
  auto view = [&](int x) {
    return TensorView::contiguous3(static_cast<char*>(buf.data()) + x * T * H * D * 2, dt, {T, H, D});
  };
  const TensorView vl = test::packed_lse_view(lse, H, T);
  runtime::DeviceBuffer cu = upload_i32({0, 100, 256}), bad = upload_i32({0, 200, 150});
  Documents docs;
  docs.cu_seqlens_q = docs.cu_seqlens_k = i32_view(cu, 3);
  docs.max_seqlen_q = docs.max_seqlen_k = 156;
  auto error_of = [&](const char* json, const Documents& d) -> std::pair<ErrorCode, std::string> {
    try {
      Attention attn(Pattern::parse(json));
      attn.backward_varlen(view(0), view(1), view(2), view(3), vl, view(4), view(5), view(6), view(7), d);
      SPATTN_CU_CHECK(cuCtxSynchronize());
    } catch (const Error& e) {
      return {e.code(), e.what()};
    }
    return {ErrorCode::kInternal, "accepted"};
  };
  const auto strided = error_of(R"({"type":"strided","stride":8,"mode":"relative"})", docs);
  EXPECT_EQ(strided.first, ErrorCode::kUnsupported);
  EXPECT_NE(strided.second.find("backward over documents of a 'strided' pattern is not supported yet"),
            std::string::npos)
      << strided.second;
  Documents wrong = docs;
  wrong.cu_seqlens_k = i32_view(bad, 3);
  wrong.max_seqlen_k = 200;
  const auto decreasing = error_of(R"({"type":"dense","causal":true})", wrong);
  EXPECT_EQ(decreasing.first, ErrorCode::kInvalidArgument);
  EXPECT_NE(decreasing.second.find("cu_seqlens_k[2] = 150 is below cu_seqlens_k[1] = 200"), std::string::npos)
      << decreasing.second;
}

}  // namespace
}  // namespace spattn
