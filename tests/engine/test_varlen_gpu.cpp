// Documents on the GPU (spattn/varlen.hpp): packed variable-length documents and padded
// batches against the fp64 host reference run on each document alone, at the forward
// tolerances (autotune::tolerance_for), on both kernel families.
//
//  - lengths of 1, 0 (empty documents), not a multiple of any tile, longer than one tile
//    row, Nq != Nk per document, more documents than one CTA of the table builder
//    scans at once;
//  - rows outside every document are left untouched (checked against a poison value);
//  - padded batches: keys past seqused_k never attend, query rows past seqused_q get
//    O = 0 and LSE = -inf;
//  - bad lengths are kInvalidArgument naming the entry, and with the check off they
//    leave the outputs untouched; unsupported patterns are kUnsupported with the reason;
//  - a call captured in a CUDA graph replays on new lengths like a direct call.
#include <gtest/gtest.h>

#include <spattn/attention.hpp>
#include <spattn/reference.hpp>
#include <spattn/varlen.hpp>

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "autotune/harness.hpp"
#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"
#include "tests/support/gpu.hpp"

namespace spattn {
namespace {

constexpr const char* kConfigs[] = {"sm80:128x64w4s1", "sm80:64x64w4s2", "sm90:128x128s2", "sm90:128x64s2"};

using test::download_as;
using test::i32_view;
using test::upload_i32;

// Rows [r0, r0 + n) of a [rows, heads, d] host array as a contiguous [n, heads, d] one.
std::vector<float> rows_of(const std::vector<float>& x, int64_t r0, int64_t n, int64_t heads, int64_t d) {
  return std::vector<float>(x.begin() + r0 * heads * d, x.begin() + (r0 + n) * heads * d);
}

struct Errors {
  double err2 = 0, ref2 = 0, max_abs = 0, lse_max = 0;
  int64_t bad_inf = 0, nonfinite = 0;
  void add_row(const float* got, const double* want, int64_t d) {
    for (int64_t e = 0; e < d; ++e) {
      if (!std::isfinite(got[e])) ++nonfinite;
      const double diff = got[e] - want[e];
      err2 += diff * diff;
      ref2 += want[e] * want[e];
      max_abs = std::max(max_abs, std::abs(diff));
    }
  }
  void add_lse(float got, double want) {
    if (std::isinf(want)) {
      bad_inf += !(std::isinf(got) && got < 0);
    } else {
      lse_max = std::max(lse_max, std::abs(got - want));
    }
  }
  void expect_within(DType dtype) const {
    const autotune::Tolerance tol = autotune::tolerance_for(dtype);
    EXPECT_EQ(nonfinite, 0);
    EXPECT_LE(std::sqrt(err2 / std::max(ref2, 1e-30)), tol.rel_l2);
    EXPECT_LE(max_abs, tol.max_abs);
    EXPECT_LE(lse_max, tol.lse);
    EXPECT_EQ(bad_inf, 0) << "rows without keys must have LSE = -inf";
  }
};

// One document (or used part of a batch) of nq x nk against the reference; rows of `o`
// at `row0` of a [*, heads, d] output, LSE at lse[h * lse_stride + row0 + i].
void check_document(const Pattern& pattern, int64_t nq, int64_t nk, int64_t heads, int64_t kv_heads, int64_t d,
                    const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                    const std::vector<float>& o, const std::vector<float>& lse, int64_t row0, int64_t lse_stride,
                    double scale, Errors& err) {
  if (nq == 0) return;
  std::vector<double> ref_o(nq * heads * d, 0.0), ref_lse(heads * nq, -INFINITY);
  if (nk > 0)
    reference_attention(pattern, Shape{nq, nk, heads}, 1, kv_heads, d, q.data(), k.data(), v.data(), scale, ref_o,
                        ref_lse);
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t h = 0; h < heads; ++h) {
      err.add_row(o.data() + ((row0 + i) * heads + h) * d, ref_o.data() + (i * heads + h) * d, d);
      err.add_lse(lse[h * lse_stride + row0 + i], ref_lse[h * nq + i]);
    }
}

struct PackedCase {
  std::string json;
  std::vector<int32_t> lq, lk;  // per document; lk empty: as lq
  int64_t heads = 4, kv_heads = 2, head_dim = 128;
  DType dtype = DType::kBFloat16;
  int64_t pad_rows = 5;  // rows after the last document (left untouched)
  bool host_tables = false;
};

void run_packed(const PackedCase& c, const char* config, uint64_t seed) {
  SCOPED_TRACE(fmt::format("{} config {} {} D={} documents {}", c.json, config, to_string(c.dtype), c.head_dim,
                           c.lq.size()));
  const std::vector<int32_t>& lk = c.lk.empty() ? c.lq : c.lk;
  const test::DeviceDocuments documents(c.lq, lk);
  const std::vector<int32_t>&cu_q = documents.cu_q, &cu_k = documents.cu_k;
  const Documents& docs = documents.docs;
  const int64_t tq = cu_q.back() + c.pad_rows, tk = cu_k.back() + c.pad_rows;
  const int64_t H = c.heads, HK = c.kv_heads, D = c.head_dim;
  runtime::DeviceBuffer q(tq * H * D * 2), k(tk * HK * D * 2), v(tk * HK * D * 2), o(tq * H * D * 2),
      lse(H * tq * 4);
  engine::fill_random(q.data(), tq * H * D, c.dtype, seed * 3 + 1);
  engine::fill_random(k.data(), tk * HK * D, c.dtype, seed * 3 + 2);
  engine::fill_random(v.data(), tk * HK * D, c.dtype, seed * 3 + 3);
  o.fill_bytes(0x7e);  // a finite poison value
  lse.fill_bytes(0x7e);

  AttentionOptions opt;
  opt.config = KernelConfig::parse(config);
  opt.use_tuning_db = false;
  Attention attn(Pattern::parse(c.json), opt);
  auto view3 = [](const runtime::DeviceBuffer& b, DType t, int64_t n, int64_t h, int64_t d) {
    TensorView x = TensorView::contiguous3(b.data(), t, {n, h, d});
    return x;
  };
  const TensorView vq = view3(q, c.dtype, tq, H, D), vk = view3(k, c.dtype, tk, HK, D),
                   vv = view3(v, c.dtype, tk, HK, D), vo = view3(o, c.dtype, tq, H, D);
  const TensorView vl = test::packed_lse_view(lse, H, tq);
  attn.forward_varlen(vq, vk, vv, vo, &vl, docs);
  SPATTN_CU_CHECK(cuCtxSynchronize());
  EXPECT_NE(attn.explain().find(c.host_tables ? "documents: tables built on the host from cu_seqlens"
                                              : "documents: tables built on the GPU from cu_seqlens"),
            std::string::npos)
      << attn.explain();

  const auto hq = download_as(q, tq * H * D, c.dtype), hk = download_as(k, tk * HK * D, c.dtype),
             hv = download_as(v, tk * HK * D, c.dtype), ho = download_as(o, tq * H * D, c.dtype);
  std::vector<float> hl(H * tq);
  lse.download(hl.data(), hl.size() * 4);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const Pattern pattern = Pattern::parse(c.json);
  Errors err;
  for (size_t x = 0; x < c.lq.size(); ++x)
    check_document(pattern, c.lq[x], lk[x], H, HK, D, rows_of(hq, cu_q[x], c.lq[x], H, D),
                   rows_of(hk, cu_k[x], lk[x], HK, D), rows_of(hv, cu_k[x], lk[x], HK, D), ho, hl, cu_q[x], tq,
                   scale, err);
  err.expect_within(c.dtype);
  // Rows after the last document keep the poison; multi-part patterns and those whose
  // rows some part leaves without a table may write O = 0 there (spattn/varlen.hpp).
  std::vector<uint16_t> bits(c.pad_rows * H * D);
  o.download(bits.data(), bits.size() * 2, cu_q.back() * H * D * 2);
  const bool may_zero = c.host_tables || attn.explanation().parts > 1;
  for (uint16_t b : bits)
    ASSERT_TRUE(b == 0x7e7e || (may_zero && b == 0)) << "a row outside every document was written: " << b;
}

TEST(DocumentsGpu, PackedCausalAndWindowsMatchEachDocumentAlone) {
  SPATTN_REQUIRE_GPU();
  const std::vector<int32_t> lengths{1, 0, 200, 77, 513, 128, 1000, 3};
  const char* patterns[] = {
      R"({"type":"dense","causal":true})",
      R"({"type":"local_window","window":96,"causal":true})",
      R"({"type":"global_local","global":16,"window":64})",
      R"({"type":"dense"})",
  };
  uint64_t seed = 1;
  for (const char* json : patterns)
    for (const char* config : kConfigs) run_packed({json, lengths}, config, ++seed);
}

TEST(DocumentsGpu, CrossLengthsDtypesHeadDimsAndManyDocuments) {
  SPATTN_REQUIRE_GPU();
  // Nq != Nk per document (both ways, and documents with queries but no keys):
  // causal aligned bottom-right per document.
  PackedCase cross{R"({"type":"dense","causal":true})", {100, 300, 1, 64, 50}, {300, 100, 40, 0, 50}};
  cross.heads = 4;
  cross.kv_heads = 1;
  for (const char* config : kConfigs) run_packed(cross, config, 11);
  PackedCase fp16{R"({"type":"local_window","left":40,"right":9})", {129, 64, 255, 1}};
  fp16.dtype = DType::kFloat16;
  fp16.head_dim = 64;
  for (const char* config : kConfigs) run_packed(fp16, config, 12);
  // More documents than the builder's 1024 threads scan in one round.
  PackedCase many{R"({"type":"dense","causal":true})", {}};
  std::mt19937 rng(3);
  for (int x = 0; x < 1500; ++x) many.lq.push_back(static_cast<int32_t>(rng() % 4));
  many.heads = many.kv_heads = 2;
  run_packed(many, "sm90:128x128s2", 13);
  run_packed(many, "sm80:64x64w4s2", 14);
}

TEST(DocumentsGpu, PaddedBatchesIgnorePaddedKeysAndZeroPaddedQueries) {
  SPATTN_REQUIRE_GPU();
  const int64_t B = 3, N = 300, H = 4, HK = 2, D = 128;
  const std::vector<int32_t> used_q{300, 250, 5}, used_k{300, 17, 0};
  for (const char* json : {R"({"type":"dense","causal":true})", R"({"type":"local_window","window":64})"})
    for (const char* config : kConfigs) {
      SCOPED_TRACE(fmt::format("{} {}", json, config));
      const DType dt = DType::kBFloat16;
      runtime::DeviceBuffer q(B * N * H * D * 2), k(B * N * HK * D * 2), v(B * N * HK * D * 2), o(B * N * H * D * 2),
          lse(B * H * N * 4);
      engine::fill_random(q.data(), B * N * H * D, dt, 21);
      engine::fill_random(k.data(), B * N * HK * D, dt, 22);
      engine::fill_random(v.data(), B * N * HK * D, dt, 23);
      o.fill_bytes(0x7e);
      lse.fill_bytes(0x7e);
      runtime::DeviceBuffer uq = upload_i32(used_q), uk = upload_i32(used_k);
      KeyPadding pad;
      pad.seqused_q = i32_view(uq, B);
      pad.seqused_k = i32_view(uk, B);
      AttentionOptions opt;
      opt.config = KernelConfig::parse(config);
      opt.use_tuning_db = false;
      Attention attn(Pattern::parse(json), opt);
      const auto tq = TensorView::contiguous(q.data(), dt, {B, N, H, D});
      const auto tk = TensorView::contiguous(k.data(), dt, {B, N, HK, D});
      const auto tv = TensorView::contiguous(v.data(), dt, {B, N, HK, D});
      const auto to = TensorView::contiguous(o.data(), dt, {B, N, H, D});
      const auto tl = TensorView::contiguous3(lse.data(), DType::kFloat32, {B, H, N});
      attn.forward_padded(tq, tk, tv, to, &tl, pad);
      SPATTN_CU_CHECK(cuCtxSynchronize());
      EXPECT_NE(attn.explain().find("from seqused"), std::string::npos) << attn.explain();
      const auto hq = download_as(q, B * N * H * D, dt), hk = download_as(k, B * N * HK * D, dt),
                 hv = download_as(v, B * N * HK * D, dt), ho = download_as(o, B * N * H * D, dt);
      std::vector<float> hl(B * H * N);
      lse.download(hl.data(), hl.size() * 4);
      Errors err;
      const Pattern pattern = Pattern::parse(json);
      for (int64_t b = 0; b < B; ++b) {
        const std::vector<float> ob(ho.begin() + b * N * H * D, ho.begin() + (b + 1) * N * H * D);
        const std::vector<float> lb(hl.begin() + b * H * N, hl.begin() + (b + 1) * H * N);
        // The used part against the reference on its own lengths; the padded query rows
        // as rows without keys.
        check_document(pattern, used_q[b], used_k[b], H, HK, D,
                       rows_of(std::vector<float>(hq.begin() + b * N * H * D, hq.end()), 0, used_q[b], H, D),
                       rows_of(std::vector<float>(hk.begin() + b * N * HK * D, hk.end()), 0, used_k[b], HK, D),
                       rows_of(std::vector<float>(hv.begin() + b * N * HK * D, hv.end()), 0, used_k[b], HK, D), ob,
                       lb, 0, N, 1.0 / std::sqrt(double(D)), err);
        for (int64_t i = used_q[b]; i < N; ++i)
          for (int64_t h = 0; h < H; ++h) {
            const std::vector<double> zero(D, 0.0);
            err.add_row(ob.data() + (i * H + h) * D, zero.data(), D);
            err.add_lse(lb[h * N + i], -INFINITY);
          }
      }
      err.expect_within(dt);
    }
}

TEST(DocumentsGpu, BadLengthsAreClearErrorsAndNeverReadOutOfBounds) {
  SPATTN_REQUIRE_GPU();
  const int64_t T = 256, H = 2, D = 64;
  const DType dt = DType::kBFloat16;
  runtime::DeviceBuffer q(T * H * D * 2), k(T * H * D * 2), v(T * H * D * 2), o(T * H * D * 2);
  engine::fill_random(q.data(), T * H * D, dt, 31);
  engine::fill_random(k.data(), T * H * D, dt, 32);
  engine::fill_random(v.data(), T * H * D, dt, 33);
  const auto view = [&](const runtime::DeviceBuffer& b) { return TensorView::contiguous3(b.data(), dt, {T, H, D}); };
  struct Bad {
    std::vector<int32_t> cu_q, cu_k;
    int64_t max_q, max_k;
    const char* needle;
  };
  const Bad bad[] = {
      {{0, 100, 50, 256}, {0, 100, 150, 256}, 256, 256, "cu_seqlens_q[2] = 50 is below cu_seqlens_q[1] = 100"},
      {{0, 100, 300}, {0, 100, 200}, 256, 256, "cu_seqlens_q[2] = 300 lies outside [0, 256]"},
      {{0, 100, 200}, {0, 100, 1 << 30}, 256, 256, "cu_seqlens_k[2] = 1073741824 lies outside [0, 256]"},
      {{-5, 100, 200}, {0, 100, 200}, 256, 256, "cu_seqlens_q[0] = -5"},
      {{0, 100, 150}, {0, 100, 150}, 64, 256, "document 0 has 100 query rows, more than max_seqlen_q = 64"},
      {{0, 10, 200}, {0, 10, 200}, 256, 100, "document 1 has 190 key rows, more than max_seqlen_k = 100"},
  };
  for (bool check : {true, false})
    for (const Bad& b : bad) {
      SCOPED_TRACE(fmt::format("{} check {}", b.needle, check));
      o.fill_bytes(0x7e);
      runtime::DeviceBuffer dq = upload_i32(b.cu_q), dk = upload_i32(b.cu_k);
      Documents docs{i32_view(dq, static_cast<int64_t>(b.cu_q.size())),
                     i32_view(dk, static_cast<int64_t>(b.cu_k.size())), b.max_q, b.max_k};
      AttentionOptions opt;
      opt.check_lengths = check;
      opt.use_tuning_db = false;
      Attention attn(Pattern::parse(R"({"type":"dense","causal":true})"), opt);
      if (check) {
        try {
          attn.forward_varlen(view(q), view(k), view(v), view(o), nullptr, docs);
          ADD_FAILURE() << "expected kInvalidArgument";
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
          EXPECT_NE(std::string(e.what()).find(b.needle), std::string::npos) << e.what();
        }
      } else {
        attn.forward_varlen(view(q), view(k), view(v), view(o), nullptr, docs);
      }
      SPATTN_CU_CHECK(cuCtxSynchronize());  // no fault either way
      std::vector<uint16_t> bits(T * H * D);
      o.download(bits.data(), bits.size() * 2);
      for (uint16_t x : bits) ASSERT_EQ(x, 0x7e7e) << "bad lengths wrote outputs";
    }
  // Host-side shape errors and unsupported patterns.
  std::vector<int32_t> cu{0, 128, 256};
  runtime::DeviceBuffer dcu = upload_i32(cu);
  Documents docs{i32_view(dcu, 3), i32_view(dcu, 2), 128, 128};
  Attention dense(Pattern::parse(R"({"type":"dense"})"));
  try {
    dense.forward_varlen(view(q), view(k), view(v), view(o), nullptr, docs);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cu_seqlens_k must be a contiguous device int32 [3]"), std::string::npos)
        << e.what();
  }
  docs.cu_seqlens_k = i32_view(dcu, 3);
  Attention adaptive(Pattern::parse(R"({"type":"adaptive","block":64,"top_k":2})"));
  try {
    adaptive.forward_varlen(view(q), view(k), view(v), view(o), nullptr, docs);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("documents run static patterns"), std::string::npos) << e.what();
  }
  // Host-built tables check the lengths on the host, with the same messages.
  std::vector<int32_t> decreasing{0, 200, 100};
  runtime::DeviceBuffer dbad = upload_i32(decreasing);
  Documents bad_docs{i32_view(dbad, 3), i32_view(dbad, 3), 256, 256};
  Attention strided(Pattern::parse(R"({"type":"strided","stride":16,"mode":"relative"})"));
  try {
    strided.forward_varlen(view(q), view(k), view(v), view(o), nullptr, bad_docs);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("cu_seqlens_q[2] = 100 is below cu_seqlens_q[1] = 200"), std::string::npos)
        << e.what();
  }
}

// Patterns without per-row key ranges: tables from the host, per document shape.
TEST(DocumentsGpu, HostTablesForLongNetStridesAndCustomBlocks) {
  SPATTN_REQUIRE_GPU();
  const std::vector<int32_t> lengths{1, 0, 300, 77, 513, 300, 1024};
  // A custom block list needs documents that hold its blocks (a shorter one is a clear
  // error naming the document, as a problem that short is for Attention::forward).
  const std::vector<int32_t> blocks{256, 320, 0, 512, 1024};
  const std::pair<const char*, const std::vector<int32_t>*> cases[] = {
      {R"({"type":"strided","stride":16,"mode":"relative"})", &lengths},
      {R"({"type":"longnet","segments":[128,256],"rates":[1,2],"causal":true})", &lengths},
      {R"({"type":"custom","block":64,"pairs":[[0,0],[1,0],[3,2],[2,2]]})", &blocks},
      {R"({"union":[{"type":"strided","stride":32,"mode":"columns"},{"type":"local_window","window":64}]})", &lengths},
  };
  uint64_t seed = 100;
  for (const auto& [json, lens] : cases)
    for (const char* config : {"sm80:128x64w4s1", "sm90:128x128s2"}) {
      PackedCase c{json, *lens};
      c.host_tables = true;
      run_packed(c, config, ++seed);
    }
  Attention custom(Pattern::parse(cases[2].first));
  const int64_t T = 600, H = 4, D = 128;
  runtime::DeviceBuffer x(T * H * D * 2);
  const auto view = TensorView::contiguous3(x.data(), DType::kBFloat16, {T, H, D});
  const std::vector<int32_t> short_docs{0, 100, 600};
  runtime::DeviceBuffer cu = upload_i32(short_docs);
  try {
    custom.forward_varlen(view, view, view, view, nullptr, Documents{i32_view(cu, 3), i32_view(cu, 3), 500, 500});
    ADD_FAILURE() << "expected an error for a document shorter than the custom blocks";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("documents: document 0 (100 queries x 100 keys)"), std::string::npos)
        << e.what();
  }
}

TEST(DocumentsGpu, GraphCaptureReplaysOnNewLengths) {
  SPATTN_REQUIRE_GPU();
  const int64_t T = 1500, H = 4, D = 128;
  const DType dt = DType::kBFloat16;
  runtime::DeviceBuffer q(T * H * D * 2), k(T * H * D * 2), v(T * H * D * 2), o1(T * H * D * 2), o2(T * H * D * 2);
  engine::fill_random(q.data(), T * H * D, dt, 41);
  engine::fill_random(k.data(), T * H * D, dt, 42);
  engine::fill_random(v.data(), T * H * D, dt, 43);
  const auto view = [&](const runtime::DeviceBuffer& b) { return TensorView::contiguous3(b.data(), dt, {T, H, D}); };
  const std::vector<int32_t> first{0, 700, 1500}, second{0, 1, 64, 1000, 1000, 1500};
  // Room for the second call's documents: the same number of entries, padded with empty ones.
  std::vector<int32_t> first_padded = first;
  while (first_padded.size() < second.size()) first_padded.push_back(first.back());
  runtime::DeviceBuffer cu = upload_i32(first_padded);
  Documents docs{i32_view(cu, 6), i32_view(cu, 6), 1000, 1000};
  AttentionOptions opt;
  opt.check_lengths = false;
  opt.config = KernelConfig::parse("sm90:128x128s2");
  Attention attn(Pattern::parse(R"({"type":"dense","causal":true})"), opt);
  CUstream stream = nullptr;
  SPATTN_CU_CHECK(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  attn.forward_varlen(view(q), view(k), view(v), view(o1), nullptr, docs, stream);  // warm-up: allocates
  SPATTN_CU_CHECK(cuStreamSynchronize(stream));
  CUgraph graph = nullptr;
  CUgraphExec exec = nullptr;
  SPATTN_CU_CHECK(cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
  attn.forward_varlen(view(q), view(k), view(v), view(o1), nullptr, docs, stream);
  SPATTN_CU_CHECK(cuStreamEndCapture(stream, &graph));
  SPATTN_CU_CHECK(cuGraphInstantiateWithFlags(&exec, graph, 0));
  cu.upload(second.data(), second.size() * 4);
  o1.fill_bytes(0);
  SPATTN_CU_CHECK(cuGraphLaunch(exec, stream));
  SPATTN_CU_CHECK(cuStreamSynchronize(stream));
  o2.fill_bytes(0);
  attn.forward_varlen(view(q), view(k), view(v), view(o2), nullptr, docs, stream);
  SPATTN_CU_CHECK(cuStreamSynchronize(stream));
  std::vector<uint16_t> a(T * H * D), b(T * H * D);
  o1.download(a.data(), a.size() * 2);
  o2.download(b.data(), b.size() * 2);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 2)) << "the replay differs from a direct call";
  // And both are the second call's documents, not the first's (nor untouched zeros).
  {
    const auto hq = download_as(q, T * H * D, dt), hk = download_as(k, T * H * D, dt),
               hv = download_as(v, T * H * D, dt), ho = download_as(o1, T * H * D, dt);
    const std::vector<float> no_lse(H * T, -INFINITY);
    Errors err;
    const Pattern causal = Pattern::parse(R"({"type":"dense","causal":true})");
    for (size_t x = 0; x + 1 < second.size(); ++x) {
      const int64_t n = second[x + 1] - second[x];
      std::vector<double> ref_o(n * H * D, 0.0), ref_lse(H * n);
      if (n == 0) continue;
      reference_attention(causal, Shape{n, n, H}, 1, H, D, rows_of(hq, second[x], n, H, D).data(),
                          rows_of(hk, second[x], n, H, D).data(), rows_of(hv, second[x], n, H, D).data(),
                          1.0 / std::sqrt(double(D)), ref_o, ref_lse);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t h = 0; h < H; ++h)
          err.add_row(ho.data() + ((second[x] + i) * H + h) * D, ref_o.data() + (i * H + h) * D, D);
    }
    err.expect_within(dt);
  }
  // And the check, which waits on the host, refuses a capture with a clear message.
  AttentionOptions checked = opt;
  checked.check_lengths = true;
  Attention attn2(Pattern::parse(R"({"type":"dense","causal":true})"), checked);
  attn2.forward_varlen(view(q), view(k), view(v), view(o2), nullptr, docs, stream);
  SPATTN_CU_CHECK(cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
  std::string message;
  try {
    attn2.forward_varlen(view(q), view(k), view(v), view(o2), nullptr, docs, stream);
  } catch (const Error& e) {
    message = e.what();
  }
  CUgraph aborted = nullptr;
  const runtime::DriverApi& drv = runtime::driver();
  drv.cuStreamEndCapture(stream, &aborted);
  if (aborted) drv.cuGraphDestroy(aborted);
  EXPECT_NE(message.find("check_lengths = false"), std::string::npos) << message;
  // Tables from the host wait for the lengths: refused under capture, whatever the check.
  Attention host(Pattern::parse(R"({"type":"strided","stride":16,"mode":"relative"})"), opt);
  host.forward_varlen(view(q), view(k), view(v), view(o2), nullptr, docs, stream);
  SPATTN_CU_CHECK(cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
  message.clear();
  try {
    host.forward_varlen(view(q), view(k), view(v), view(o2), nullptr, docs, stream);
  } catch (const Error& e) {
    message = e.what();
  }
  aborted = nullptr;
  drv.cuStreamEndCapture(stream, &aborted);
  if (aborted) drv.cuGraphDestroy(aborted);
  EXPECT_NE(message.find("built on the host from the lengths"), std::string::npos) << message;
  drv.cuGraphExecDestroy(exec);
  drv.cuGraphDestroy(graph);
  drv.cuStreamDestroy(stream);
}

}  // namespace
}  // namespace spattn
