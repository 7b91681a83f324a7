// The documents calls of the C ABI (spattn_attention_forward_varlen / _padded and their
// backward calls, include/spattn/spattn.h) without a GPU: the "check_lengths" option, and every argument
// error found before any GPU work (NULL handle and tensors, ranks, dtypes and counts of
// the offsets and lengths, the packed layouts) as SPATTN_ERROR_INVALID_ARGUMENT with the
// library's message; a valid call on a host without a GPU is "no GPU" (status 3).
// Descriptors carry fake device addresses: nothing here touches the device.
#include <gtest/gtest.h>

#include <spattn/spattn.h>

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/driver.hpp"
#include "tests/linear/linear_test_util.hpp"

namespace {

using spattn::test::expect_status;
using spattn::test::fake_tensor;

class DocumentsCApi : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(spattn_attention_create(R"({"type":"dense","causal":true})", nullptr, &attn_), SPATTN_OK)
        << spattn_last_error();
  }
  void TearDown() override { spattn_attention_destroy(attn_); }
  spattn_attention_t attn_ = nullptr;
};

// A valid packed call: 2 documents in 300 rows, Hq=4, Hkv=2, D=64 bf16.
struct Packed {
  spattn_tensor q = fake_tensor(SPATTN_BF16, {300, 4, 64}, 1), k = fake_tensor(SPATTN_BF16, {300, 2, 64}, 2),
                v = fake_tensor(SPATTN_BF16, {300, 2, 64}, 3), o = fake_tensor(SPATTN_BF16, {300, 4, 64}, 4),
                lse = fake_tensor(SPATTN_FP32, {4, 300}, 5), cu_q = fake_tensor(SPATTN_INT32, {3}, 6),
                cu_k = fake_tensor(SPATTN_INT32, {3}, 7);
  int64_t max_q = 200, max_k = 200;
  spattn_status forward(spattn_attention_t attn, bool with_lse = true) const {
    return spattn_attention_forward_varlen(attn, &q, &k, &v, &o, with_lse ? &lse : nullptr, &cu_q, &cu_k, max_q,
                                           max_k, nullptr);
  }
};

// A valid padded call: B=2, N=300, Hq=4, Hkv=2, D=64 bf16.
struct Padded {
  spattn_tensor q = fake_tensor(SPATTN_BF16, {2, 300, 4, 64}, 1), k = fake_tensor(SPATTN_BF16, {2, 300, 2, 64}, 2),
                v = fake_tensor(SPATTN_BF16, {2, 300, 2, 64}, 3), o = fake_tensor(SPATTN_BF16, {2, 300, 4, 64}, 4),
                lse = fake_tensor(SPATTN_FP32, {2, 4, 300}, 5), used_q = fake_tensor(SPATTN_INT32, {2}, 6),
                used_k = fake_tensor(SPATTN_INT32, {2}, 7);
  spattn_status forward(spattn_attention_t attn, const spattn_tensor* uq, const spattn_tensor* uk) const {
    return spattn_attention_forward_padded(attn, &q, &k, &v, &o, &lse, uq, uk, nullptr);
  }
};

TEST(DocumentsCApiCreate, CheckLengthsIsAnOption) {
  spattn_attention_t attn = nullptr;
  ASSERT_EQ(spattn_attention_create("dense", R"({"check_lengths": false, "use_tuning_db": false})", &attn), SPATTN_OK)
      << spattn_last_error();
  spattn_attention_destroy(attn);
  attn = nullptr;
  expect_status(spattn_attention_create("dense", R"({"check_lengths": "no"})", &attn), SPATTN_ERROR_INVALID_ARGUMENT,
                "options.check_lengths: a value of the wrong type (\"no\")");
  EXPECT_EQ(attn, nullptr);
  // A scale that is not a finite float (1e300 does not fit one) would turn every output into NaN.
  expect_status(spattn_attention_create("dense", R"({"scale": 1e300})", &attn), SPATTN_ERROR_INVALID_ARGUMENT,
                "AttentionOptions::scale must be a finite number");
  EXPECT_EQ(attn, nullptr);
  expect_status(spattn_attention_create("dense", R"({"check_length": true})", &attn), SPATTN_ERROR_INVALID_ARGUMENT,
                "options.check_length: unknown option; known: scale, device, config, backward_config, use_tuning_db, "
                "deterministic, record, check_lengths");
}

TEST_F(DocumentsCApi, VarlenNullHandleAndTensors) {
  Packed t;
  expect_status(t.forward(nullptr), SPATTN_ERROR_INVALID_ARGUMENT, "attention handle is NULL");
  expect_status(spattn_attention_forward_varlen(attn_, nullptr, &t.k, &t.v, &t.o, nullptr, &t.cu_q, &t.cu_k, 200, 200,
                                                nullptr),
                SPATTN_ERROR_INVALID_ARGUMENT, "q is NULL");
  expect_status(spattn_attention_forward_varlen(attn_, &t.q, &t.k, &t.v, &t.o, nullptr, nullptr, &t.cu_k, 200, 200,
                                                nullptr),
                SPATTN_ERROR_INVALID_ARGUMENT, "cu_seqlens_q is NULL");
  expect_status(spattn_attention_forward_varlen(attn_, &t.q, &t.k, &t.v, &t.o, nullptr, &t.cu_q, nullptr, 200, 200,
                                                nullptr),
                SPATTN_ERROR_INVALID_ARGUMENT, "cu_seqlens_k is NULL");
  Packed u;
  u.cu_q.data = nullptr;
  expect_status(u.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT, "cu_seqlens_q is a null pointer");
}

TEST_F(DocumentsCApi, VarlenLayoutsAreTheirOwn) {
  {
    Packed t;  // the batched layout is refused by name
    t.q = fake_tensor(SPATTN_BF16, {1, 300, 4, 64}, 1);
    expect_status(t.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT,
                  "Q must have 3 dimensions [total_q, Hq, D] for packed documents");
  }
  {
    Packed t;
    t.v = fake_tensor(SPATTN_BF16, {300, 2}, 3);
    expect_status(t.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT,
                  "V must have 3 dimensions [total_k, Hkv, D] for packed documents");
  }
  {
    Packed t;
    t.lse = fake_tensor(SPATTN_FP32, {1, 4, 300}, 5);
    expect_status(t.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT,
                  "LSE must have 2 dimensions [Hq, total_q] for packed documents");
    t.lse = fake_tensor(SPATTN_FP32, {4, 299}, 5);
    expect_status(t.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT, "LSE must have shape [1, 4, 300]");
  }
  {
    Packed t;
    t.k = fake_tensor(SPATTN_BF16, {300, 3, 64}, 2);
    t.v = fake_tensor(SPATTN_BF16, {300, 3, 64}, 3);
    expect_status(t.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT, "multiple of key/value heads");
  }
  {
    Packed t;
    t.o.dtype = SPATTN_FP16;
    expect_status(t.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT, "O has dtype");
  }
}

TEST_F(DocumentsCApi, VarlenOffsetsMustBeInt32VectorsOfOneCount) {
  {
    Packed t;
    t.cu_q.rank = 0;
    expect_status(t.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT, "cu_seqlens_q: rank must be 1 to 4 (got 0)");
    t.cu_q.rank = 5;
    expect_status(t.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT, "cu_seqlens_q: rank must be 1 to 4 (got 5)");
    t.cu_q = fake_tensor(SPATTN_INT32, {1, 3}, 6);
    expect_status(t.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT,
                  "cu_seqlens_q must be a device int32 [documents + 1] with at least one document");
    t.cu_q = fake_tensor(SPATTN_INT32, {1}, 6);  // no document
    expect_status(t.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT, "with at least one document");
  }
  {
    Packed t;
    t.cu_q.dtype = SPATTN_FP32;
    expect_status(t.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT,
                  "cu_seqlens_q must be a contiguous device int32 [3] (documents + 1 query offsets)");
    t.cu_q.dtype = static_cast<spattn_dtype>(8);
    expect_status(t.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT, "cu_seqlens_q: unknown dtype code 8");
  }
  {
    Packed t;
    t.cu_k = fake_tensor(SPATTN_INT32, {4}, 7);
    expect_status(t.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT,
                  "cu_seqlens_k must be a contiguous device int32 [3] (documents + 1 key offsets, as many as "
                  "cu_seqlens_q)");
    t.cu_k = fake_tensor(SPATTN_INT32, {3}, 7);
    t.cu_k.strides[0] = 2;
    expect_status(t.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT, "cu_seqlens_k must be a contiguous device int32");
  }
  {
    Packed t;
    t.max_k = -1;
    expect_status(t.forward(attn_), SPATTN_ERROR_INVALID_ARGUMENT,
                  "max_seqlen_q and max_seqlen_k must be >= 0; got 200 and -1");
  }
}

TEST_F(DocumentsCApi, PaddedValidatesArguments) {
  Padded t;
  expect_status(t.forward(nullptr, &t.used_q, &t.used_k), SPATTN_ERROR_INVALID_ARGUMENT, "attention handle is NULL");
  expect_status(t.forward(attn_, nullptr, nullptr), SPATTN_ERROR_INVALID_ARGUMENT,
                "forward_padded needs seqused_k (device int32 [B]) and/or seqused_q");
  spattn_tensor absent = t.used_k;
  absent.data = nullptr;
  expect_status(t.forward(attn_, &absent, &absent), SPATTN_ERROR_INVALID_ARGUMENT, "forward_padded needs seqused_k");
  const spattn_tensor three = fake_tensor(SPATTN_INT32, {3}, 7);
  expect_status(t.forward(attn_, nullptr, &three), SPATTN_ERROR_INVALID_ARGUMENT,
                "seqused_k must be a contiguous device int32 [2] (keys used per batch)");
  spattn_tensor f32 = t.used_q;
  f32.dtype = SPATTN_FP32;
  expect_status(t.forward(attn_, &f32, &t.used_k), SPATTN_ERROR_INVALID_ARGUMENT,
                "seqused_q must be a contiguous device int32 [2] (queries used per batch)");
  spattn_tensor rank0 = t.used_k;
  rank0.rank = 0;
  expect_status(t.forward(attn_, nullptr, &rank0), SPATTN_ERROR_INVALID_ARGUMENT, "seqused_k: rank must be 1 to 4");
  Padded packed;  // the packed layout is refused: padded batches are [B, N, H, D]
  packed.q = fake_tensor(SPATTN_BF16, {300, 4, 64}, 1);
  expect_status(packed.forward(attn_, nullptr, &packed.used_k), SPATTN_ERROR_INVALID_ARGUMENT,
                "Q must be [B, Nq, Hq, D]");
  packed.q = fake_tensor(SPATTN_BF16, {300, 64}, 1);
  expect_status(packed.forward(attn_, nullptr, &packed.used_k), SPATTN_ERROR_INVALID_ARGUMENT,
                "q: rank must be 3 or 4 (got 2)");
}

TEST_F(DocumentsCApi, ValidCallsNeedAGpu) {
  if (spattn::runtime::has_gpu()) GTEST_SKIP() << "this host has a GPU (the fake device addresses would be launched)";
  Packed t;
  expect_status(t.forward(attn_), SPATTN_ERROR_NO_GPU, "");
  EXPECT_STRNE(spattn_last_error(), "") << "no GPU comes with the reason";
  expect_status(t.forward(attn_, false), SPATTN_ERROR_NO_GPU, "");
  Padded p;
  spattn_tensor absent = p.used_q;
  absent.data = nullptr;
  expect_status(p.forward(attn_, &p.used_q, &p.used_k), SPATTN_ERROR_NO_GPU, "");
  expect_status(p.forward(attn_, nullptr, &p.used_k), SPATTN_ERROR_NO_GPU, "");
  expect_status(p.forward(attn_, &absent, &p.used_k), SPATTN_ERROR_NO_GPU, "");
  expect_status(p.forward(attn_, &p.used_q, nullptr), SPATTN_ERROR_NO_GPU, "");
}

// The gradients of documents (spattn_attention_backward_varlen / _padded): the same
// layouts with the gradients named, LSE required, lengths as the forward calls take them.
struct PackedBackward : Packed {
  spattn_tensor d_o = fake_tensor(SPATTN_BF16, {300, 4, 64}, 8), dq = fake_tensor(SPATTN_BF16, {300, 4, 64}, 9),
                dk = fake_tensor(SPATTN_BF16, {300, 2, 64}, 10), dv = fake_tensor(SPATTN_BF16, {300, 2, 64}, 11);
  spattn_status backward(spattn_attention_t attn, const spattn_tensor* l) const {
    return spattn_attention_backward_varlen(attn, &q, &k, &v, &o, l, &d_o, &dq, &dk, &dv, &cu_q, &cu_k, max_q, max_k,
                                            nullptr);
  }
};
struct PaddedBackward : Padded {
  spattn_tensor d_o = fake_tensor(SPATTN_BF16, {2, 300, 4, 64}, 8), dq = fake_tensor(SPATTN_BF16, {2, 300, 4, 64}, 9),
                dk = fake_tensor(SPATTN_BF16, {2, 300, 2, 64}, 10), dv = fake_tensor(SPATTN_BF16, {2, 300, 2, 64}, 11);
  spattn_status backward(spattn_attention_t attn, const spattn_tensor* uq, const spattn_tensor* uk) const {
    return spattn_attention_backward_padded(attn, &q, &k, &v, &o, &lse, &d_o, &dq, &dk, &dv, uq, uk, nullptr);
  }
};

TEST_F(DocumentsCApi, BackwardValidatesArguments) {
  PackedBackward t;
  expect_status(t.backward(nullptr, &t.lse), SPATTN_ERROR_INVALID_ARGUMENT, "attention handle is NULL");
  expect_status(t.backward(attn_, nullptr), SPATTN_ERROR_INVALID_ARGUMENT, "lse is NULL");
  {
    PackedBackward u;
    u.dq = fake_tensor(SPATTN_BF16, {1, 300, 4, 64}, 9);
    expect_status(u.backward(attn_, &u.lse), SPATTN_ERROR_INVALID_ARGUMENT,
                  "dQ must have 3 dimensions [total_q, Hq, D] for packed documents");
    u.dq = fake_tensor(SPATTN_BF16, {300, 4, 64}, 9);
    u.dk = fake_tensor(SPATTN_BF16, {300, 4, 64}, 10);
    expect_status(u.backward(attn_, &u.lse), SPATTN_ERROR_INVALID_ARGUMENT, "dK must have shape [1, 300, 2, 64]");
    u.dk = fake_tensor(SPATTN_BF16, {300, 2, 64}, 10);
    u.cu_k = fake_tensor(SPATTN_INT32, {4}, 7);
    expect_status(u.backward(attn_, &u.lse), SPATTN_ERROR_INVALID_ARGUMENT,
                  "cu_seqlens_k must be a contiguous device int32 [3]");
  }
  PaddedBackward p;
  expect_status(p.backward(attn_, nullptr, nullptr), SPATTN_ERROR_INVALID_ARGUMENT,
                "backward_padded needs seqused_k (device int32 [B]) and/or seqused_q; without padding call backward()");
  p.dv = fake_tensor(SPATTN_FP16, {2, 300, 2, 64}, 11);
  expect_status(p.backward(attn_, nullptr, &p.used_k), SPATTN_ERROR_INVALID_ARGUMENT, "dV has dtype");
  if (!spattn::runtime::has_gpu()) {
    expect_status(t.backward(attn_, &t.lse), SPATTN_ERROR_NO_GPU, "");
    PaddedBackward ok;
    expect_status(ok.backward(attn_, nullptr, &ok.used_k), SPATTN_ERROR_NO_GPU, "");
  }
}

}  // namespace
