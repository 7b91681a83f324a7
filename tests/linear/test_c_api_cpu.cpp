// The C ABI of the selective scan, Performer and adaptive attention patterns
// (include/spattn/spattn.h) without a GPU: handles, options, argument validation with the
// library's messages through spattn_last_error(), the random features and their redraw,
// the block grid of adaptive patterns (spattn_adaptive_geometry, against the C++ API),
// and "no GPU" (status 3) for a valid call on a host without one. Descriptors carry fake
// device addresses: every check here happens before anything touches the device.
#include <gtest/gtest.h>

#include <spattn/adaptive.hpp>
#include <spattn/linear.hpp>
#include <spattn/spattn.h>

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/driver.hpp"
#include "tests/linear/linear_test_util.hpp"

namespace {

using spattn::test::expect_status;
using spattn::test::fake_tensor;

// The tensors of a valid scan: B=2, L=7, channels=5, state=16, bf16.
struct ScanTensors {
  spattn_tensor x = fake_tensor(SPATTN_BF16, {2, 7, 5}, 1), delta = fake_tensor(SPATTN_BF16, {2, 7, 5}, 2),
                a_log = fake_tensor(SPATTN_FP32, {5, 16}, 3), b = fake_tensor(SPATTN_BF16, {2, 7, 16}, 4),
                c = fake_tensor(SPATTN_BF16, {2, 7, 16}, 5), d = fake_tensor(SPATTN_FP32, {5}, 6),
                bias = fake_tensor(SPATTN_FP32, {5}, 7), z = fake_tensor(SPATTN_BF16, {2, 7, 5}, 8),
                y = fake_tensor(SPATTN_BF16, {2, 7, 5}, 9), state = fake_tensor(SPATTN_FP32, {2, 5, 16}, 10);
  spattn_status forward(spattn_selective_scan_t scan) const {
    return spattn_selective_scan_forward(scan, &x, &delta, &a_log, &b, &c, &d, &bias, &z, &y, &state, 1, nullptr);
  }
};

class ScanCApi : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(spattn_selective_scan_create(nullptr, &scan_), SPATTN_OK) << spattn_last_error(); }
  void TearDown() override { spattn_selective_scan_destroy(scan_); }
  spattn_selective_scan_t scan_ = nullptr;
};

TEST(ScanCApiCreate, OptionsAreCheckedAndNamed) {
  spattn_selective_scan_t scan = nullptr;
  expect_status(spattn_selective_scan_create(nullptr, nullptr), SPATTN_ERROR_INVALID_ARGUMENT, "out is NULL");
  expect_status(spattn_selective_scan_create(R"({"nope": 1})", &scan), SPATTN_ERROR_INVALID_ARGUMENT,
                "options.nope: unknown option; known: device, config");
  EXPECT_EQ(scan, nullptr);
  expect_status(spattn_selective_scan_create("[1]", &scan), SPATTN_ERROR_INVALID_ARGUMENT,
                "options must be a JSON object");
  expect_status(spattn_selective_scan_create("{", &scan), SPATTN_ERROR_INVALID_ARGUMENT, "invalid options JSON");
  expect_status(spattn_selective_scan_create(R"({"config": "32x3x16"})", &scan), SPATTN_ERROR_INVALID_ARGUMENT,
                "segments");
  expect_status(spattn_selective_scan_create(R"({"config": 7})", &scan), SPATTN_ERROR_INVALID_ARGUMENT,
                "options.config: a value of the wrong type (7)");
  ASSERT_EQ(spattn_selective_scan_create(R"({"config": "32x8x16", "device": 0})", &scan), SPATTN_OK)
      << spattn_last_error();
  EXPECT_STREQ(spattn_last_error(), "") << "a successful call clears the last error";
  char text[64];
  size_t needed = 0;
  ASSERT_EQ(spattn_selective_scan_explain(scan, text, sizeof text, &needed), SPATTN_OK);
  EXPECT_STREQ(text, "no selective scan has run yet\n");
  EXPECT_EQ(needed, std::string(text).size() + 1);
  spattn_selective_scan_destroy(scan);
  spattn_selective_scan_destroy(nullptr);  // like free(NULL)
}

TEST_F(ScanCApi, NullHandleAndTensors) {
  ScanTensors t;
  expect_status(t.forward(nullptr), SPATTN_ERROR_INVALID_ARGUMENT, "selective scan handle is NULL");
  expect_status(spattn_selective_scan_explain(nullptr, nullptr, 0, nullptr), SPATTN_ERROR_INVALID_ARGUMENT,
                "selective scan handle is NULL");
  expect_status(spattn_selective_scan_forward(scan_, nullptr, &t.delta, &t.a_log, &t.b, &t.c, nullptr, nullptr,
                                              nullptr, &t.y, nullptr, 1, nullptr),
                SPATTN_ERROR_INVALID_ARGUMENT, "x is NULL");
  expect_status(spattn_selective_scan_forward(scan_, &t.x, &t.delta, &t.a_log, &t.b, &t.c, nullptr, nullptr,
                                              nullptr, nullptr, nullptr, 1, nullptr),
                SPATTN_ERROR_INVALID_ARGUMENT, "y is NULL");
}

TEST_F(ScanCApi, ShapesDtypesAndRanksAreValidated) {
  {
    ScanTensors t;
    t.delta.shape[1] = 6;
    expect_status(t.forward(scan_), SPATTN_ERROR_INVALID_ARGUMENT, "delta: ");
    EXPECT_NE(std::string(spattn_last_error()).find("must have shape [2, 7, 5]"), std::string::npos)
        << spattn_last_error();
  }
  {
    ScanTensors t;
    t.b.dtype = SPATTN_FP16;
    expect_status(t.forward(scan_), SPATTN_ERROR_INVALID_ARGUMENT, "b: ");
  }
  {
    ScanTensors t;
    t.a_log = fake_tensor(SPATTN_FP32, {5, 12}, 3);
    expect_status(t.forward(scan_), SPATTN_ERROR_UNSUPPORTED, "state size 12 is not supported; supported: 4, 8, 16, 32");
  }
  {
    ScanTensors t;
    t.d.dtype = SPATTN_BF16;
    expect_status(t.forward(scan_), SPATTN_ERROR_INVALID_ARGUMENT, "d: ");
  }
  {
    ScanTensors t;
    t.state = fake_tensor(SPATTN_FP32, {2, 16, 5}, 10);
    expect_status(t.forward(scan_), SPATTN_ERROR_INVALID_ARGUMENT, "final_state: ");
  }
  {
    ScanTensors t;
    t.x.rank = 0;
    expect_status(t.forward(scan_), SPATTN_ERROR_INVALID_ARGUMENT, "x: rank must be 1 to 4 (got 0)");
    t.x.rank = 3;
    t.x.dtype = static_cast<spattn_dtype>(9);
    expect_status(t.forward(scan_), SPATTN_ERROR_INVALID_ARGUMENT, "x: unknown dtype code");
  }
  {
    ScanTensors t;
    t.x.strides[2] = 2;
    expect_status(t.forward(scan_), SPATTN_ERROR_INVALID_ARGUMENT, "the last dimension must be contiguous");
  }
}

TEST_F(ScanCApi, OptionalTensorsMayBeNullAndAValidCallNeedsAGpu) {
  if (spattn::runtime::has_gpu()) GTEST_SKIP() << "this host has a GPU (the fake device addresses would be launched)";
  ScanTensors t;
  expect_status(t.forward(scan_), SPATTN_ERROR_NO_GPU, "");
  EXPECT_STRNE(spattn_last_error(), "") << "no GPU comes with the reason";
  // d, delta_bias, z and final_state absent: as NULL and as a NULL data pointer.
  spattn_tensor absent = t.z;
  absent.data = nullptr;
  expect_status(spattn_selective_scan_forward(scan_, &t.x, &t.delta, &t.a_log, &t.b, &t.c, nullptr, &absent, &absent,
                                              &t.y, nullptr, 0, nullptr),
                SPATTN_ERROR_NO_GPU, "");
}

// ---- Performer ------------------------------------------------------------------------

TEST(PerformerCApi, CreateChecksHeadDimFeaturesAndOptions) {
  spattn_performer_t p = nullptr;
  expect_status(spattn_performer_create(64, nullptr, nullptr), SPATTN_ERROR_INVALID_ARGUMENT, "out is NULL");
  expect_status(spattn_performer_create(64, R"({"features": 17})", &p), SPATTN_ERROR_UNSUPPORTED,
                "17 random features; supported: multiples of 16 from 16 to 1024");
  EXPECT_EQ(p, nullptr);
  expect_status(spattn_performer_create(0, nullptr, &p), SPATTN_ERROR_INVALID_ARGUMENT, "head_dim 0");
  expect_status(spattn_performer_create(64, R"({"feature": 64})", &p), SPATTN_ERROR_INVALID_ARGUMENT,
                "options.feature: unknown option; known: features, seed, causal, device, config, tf32");
  expect_status(spattn_performer_create(64, R"({"config": "24x32"})", &p), SPATTN_ERROR_INVALID_ARGUMENT, "chunk");
  expect_status(spattn_performer_create(64, R"({"causal": "yes"})", &p), SPATTN_ERROR_INVALID_ARGUMENT,
                "options.causal: a value of the wrong type (\"yes\")");
  ASSERT_EQ(spattn_performer_create(64, R"({"features": 32, "seed": 18446744073709551615, "causal": true,
                                            "config": "16x32", "tf32": true, "device": 0})",
                                    &p),
            SPATTN_OK)
      << spattn_last_error();
  spattn_performer_destroy(p);
  spattn_performer_destroy(nullptr);
}

TEST(PerformerCApi, FeaturesAreTheSeededDrawAndRedrawReplacesThem) {
  spattn_performer_t p = nullptr;
  ASSERT_EQ(spattn_performer_create(32, R"({"features": 48, "seed": 5})", &p), SPATTN_OK) << spattn_last_error();
  size_t needed = 0;
  ASSERT_EQ(spattn_performer_features(p, nullptr, 0, &needed), SPATTN_OK);
  ASSERT_EQ(needed, size_t{48 * 32});
  std::vector<float> omega(needed);
  ASSERT_EQ(spattn_performer_features(p, omega.data(), omega.size(), &needed), SPATTN_OK);
  EXPECT_EQ(omega, spattn::PerformerFeatures::draw(32, 48, 5).omega);
  // A short buffer gets the first rows only.
  std::vector<float> head(10, -1.f);
  ASSERT_EQ(spattn_performer_features(p, head.data(), head.size(), &needed), SPATTN_OK);
  EXPECT_EQ(head, std::vector<float>(omega.begin(), omega.begin() + 10));

  ASSERT_EQ(spattn_performer_redraw(p, 6), SPATTN_OK) << spattn_last_error();
  std::vector<float> redrawn(needed);
  ASSERT_EQ(spattn_performer_features(p, redrawn.data(), redrawn.size(), &needed), SPATTN_OK);
  EXPECT_EQ(redrawn, spattn::PerformerFeatures::draw(32, 48, 6).omega);
  EXPECT_NE(redrawn, omega);

  expect_status(spattn_performer_redraw(nullptr, 1), SPATTN_ERROR_INVALID_ARGUMENT, "performer handle is NULL");
  expect_status(spattn_performer_features(nullptr, nullptr, 0, &needed), SPATTN_ERROR_INVALID_ARGUMENT,
                "performer handle is NULL");
  char text[64];
  ASSERT_EQ(spattn_performer_explain(p, text, sizeof text, &needed), SPATTN_OK);
  EXPECT_STREQ(text, "no performer forward has run yet\n");
  spattn_performer_destroy(p);
}

TEST(PerformerCApi, ForwardValidatesTensorsAndNeedsAGpu) {
  spattn_performer_t p = nullptr, causal = nullptr;
  ASSERT_EQ(spattn_performer_create(64, R"({"features": 64})", &p), SPATTN_OK) << spattn_last_error();
  ASSERT_EQ(spattn_performer_create(64, R"({"features": 64, "causal": true})", &causal), SPATTN_OK);
  const spattn_tensor q = fake_tensor(SPATTN_FP16, {1, 9, 4, 64}, 1), k = fake_tensor(SPATTN_FP16, {1, 11, 2, 64}, 2),
                      v = fake_tensor(SPATTN_FP16, {1, 11, 2, 64}, 3), o = fake_tensor(SPATTN_FP16, {1, 9, 4, 64}, 4);
  expect_status(spattn_performer_forward(nullptr, &q, &k, &v, &o, nullptr), SPATTN_ERROR_INVALID_ARGUMENT,
                "performer handle is NULL");
  expect_status(spattn_performer_forward(p, &q, nullptr, &v, &o, nullptr), SPATTN_ERROR_INVALID_ARGUMENT,
                "k is NULL");
  spattn_tensor bad = v;
  bad.dtype = SPATTN_BF16;
  expect_status(spattn_performer_forward(p, &q, &k, &bad, &o, nullptr), SPATTN_ERROR_INVALID_ARGUMENT, "v: ");
  bad = fake_tensor(SPATTN_FP16, {1, 9, 3, 64}, 1);
  expect_status(spattn_performer_forward(p, &bad, &k, &v, &o, nullptr), SPATTN_ERROR_INVALID_ARGUMENT,
                "not a multiple of the 2 heads of k");
  expect_status(spattn_performer_forward(causal, &q, &k, &v, &o, nullptr), SPATTN_ERROR_INVALID_ARGUMENT,
                "causal performer needs as many queries as keys (q has 9, k has 11)");
  const spattn_tensor q32 = fake_tensor(SPATTN_FP16, {1, 9, 4, 32}, 1), k32 = fake_tensor(SPATTN_FP16, {1, 11, 2, 32}, 2);
  expect_status(spattn_performer_forward(p, &q32, &k32, &v, &o, nullptr), SPATTN_ERROR_INVALID_ARGUMENT,
                "head dim 32 but this Performer was made for head dim 64");
  if (!spattn::runtime::has_gpu()) expect_status(spattn_performer_forward(p, &q, &k, &v, &o, nullptr), SPATTN_ERROR_NO_GPU, "");
  spattn_performer_destroy(causal);
  spattn_performer_destroy(p);
}

// ---- adaptive patterns ------------------------------------------------------------------

TEST(AdaptiveCApi, GeometryIsTheBlockGridOfThePattern) {
  int64_t nq_blocks = -1, nk_blocks = -1, max_k = -1;
  ASSERT_EQ(spattn_adaptive_geometry(R"({"type":"adaptive","block":64,"top_k":4,"causal":true})", 1000, 1000,
                                     &nq_blocks, &nk_blocks, &max_k),
            SPATTN_OK)
      << spattn_last_error();
  EXPECT_EQ(nq_blocks, 16);
  EXPECT_EQ(nk_blocks, 16);
  EXPECT_EQ(max_k, 4);
  EXPECT_STREQ(spattn_last_error(), "");
  // The same numbers as the C++ API, for other shapes and selections (keep_ratio, Nq != Nk,
  // a causal problem whose first query block sees nothing).
  const struct {
    const char* json;
    int64_t nq, nk;
  } cases[] = {{R"({"type":"adaptive","block":128,"keep_ratio":0.25})", 500, 1000},
               {R"({"type":"adaptive","block":64,"top_k":3,"causal":true})", 100, 1000},
               {R"({"type":"adaptive","block":64,"top_k":8,"causal":true})", 1000, 70},
               {R"({"type":"adaptive","block":32,"keep_ratio":1.0,"causal":true})", 1, 1}};
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.json) + " Nq=" + std::to_string(c.nq) + " Nk=" + std::to_string(c.nk));
    ASSERT_EQ(spattn_adaptive_geometry(c.json, c.nq, c.nk, &nq_blocks, &nk_blocks, &max_k), SPATTN_OK)
        << spattn_last_error();
    const spattn::AdaptiveGeometry g = spattn::adaptive_geometry(spattn::Pattern::parse(c.json), c.nq, c.nk);
    EXPECT_EQ(nq_blocks, g.nq_blocks);
    EXPECT_EQ(nk_blocks, g.nk_blocks);
    EXPECT_EQ(max_k, g.max_k);
  }
  EXPECT_EQ(nq_blocks, 1);
  // Every output is optional.
  ASSERT_EQ(spattn_adaptive_geometry(R"({"type":"adaptive","block":64,"top_k":4})", 130, 1000, nullptr, nullptr,
                                     &max_k),
            SPATTN_OK)
      << spattn_last_error();
  EXPECT_EQ(max_k, 4);
  ASSERT_EQ(spattn_adaptive_geometry(R"({"type":"adaptive","block":64,"top_k":4})", 130, 1000, nullptr, nullptr,
                                     nullptr),
            SPATTN_OK);
}

TEST(AdaptiveCApi, GeometryRefusesOtherPatternsAndEmptyShapes) {
  int64_t nq_blocks = -1, nk_blocks = -1, max_k = -1;
  expect_status(spattn_adaptive_geometry(R"({"type":"local_window","window":64})", 1000, 1000, &nq_blocks,
                                         &nk_blocks, &max_k),
                SPATTN_ERROR_INVALID_ARGUMENT, "'local_window' pattern");
  EXPECT_EQ(nq_blocks, -1) << "outputs are not written on failure";
  expect_status(spattn_adaptive_geometry(R"({"type":"dense","causal":true})", 1000, 1000, &nq_blocks, &nk_blocks,
                                         &max_k),
                SPATTN_ERROR_INVALID_ARGUMENT, "'dense' pattern");
  expect_status(spattn_adaptive_geometry(R"({"type":"adaptive","block":64,"top_k":4})", 0, 1000, &nq_blocks,
                                         &nk_blocks, &max_k),
                SPATTN_ERROR_INVALID_ARGUMENT, "empty problem");
  expect_status(spattn_adaptive_geometry(nullptr, 10, 10, &nq_blocks, &nk_blocks, &max_k),
                SPATTN_ERROR_INVALID_ARGUMENT, "pattern_json is NULL");
  EXPECT_NE(spattn_adaptive_geometry("{", 10, 10, &nq_blocks, &nk_blocks, &max_k), SPATTN_OK);
  EXPECT_STRNE(spattn_last_error(), "");
  EXPECT_EQ(nq_blocks, -1);
}

// The tensors of a valid adaptive forward: B=2, N=1000, H=4, D=64 bf16, block 64 top 4.
struct AdaptiveTensors {
  spattn_tensor q = fake_tensor(SPATTN_BF16, {2, 1000, 4, 64}, 1), k = fake_tensor(SPATTN_BF16, {2, 1000, 4, 64}, 2),
                v = fake_tensor(SPATTN_BF16, {2, 1000, 4, 64}, 3), o = fake_tensor(SPATTN_BF16, {2, 1000, 4, 64}, 4),
                lse = fake_tensor(SPATTN_FP32, {2, 4, 1000}, 5), scores = fake_tensor(SPATTN_FP32, {2, 4, 16, 16}, 6),
                blocks = fake_tensor(SPATTN_INT32, {2, 4, 16, 4}, 7), wq = fake_tensor(SPATTN_FP32, {64, 16}, 8),
                wk = fake_tensor(SPATTN_FP32, {64, 16}, 9);
  spattn_status forward(spattn_attention_t attn, const spattn_tensor* s, const spattn_tensor* pq,
                        const spattn_tensor* pk, const spattn_tensor* c) const {
    return spattn_attention_forward_adaptive(attn, &q, &k, &v, &o, &lse, s, pq, pk, c, nullptr, nullptr);
  }
};

TEST(AdaptiveCApi, ForwardValidatesDescriptorsAndNeedsAGpu) {
  spattn_attention_t attn = nullptr;
  ASSERT_EQ(spattn_attention_create(R"({"type":"adaptive","block":64,"top_k":4,"causal":true})", nullptr, &attn),
            SPATTN_OK)
      << spattn_last_error();
  AdaptiveTensors t;
  expect_status(t.forward(nullptr, &t.scores, nullptr, nullptr, &t.blocks), SPATTN_ERROR_INVALID_ARGUMENT,
                "attention handle is NULL");
  expect_status(spattn_attention_forward_adaptive(attn, nullptr, &t.k, &t.v, &t.o, nullptr, &t.scores, nullptr,
                                                  nullptr, &t.blocks, nullptr, nullptr),
                SPATTN_ERROR_INVALID_ARGUMENT, "q is NULL");
  {
    spattn_tensor bad = t.scores;
    bad.rank = 5;
    expect_status(t.forward(attn, &bad, nullptr, nullptr, &t.blocks), SPATTN_ERROR_INVALID_ARGUMENT,
                  "scores: rank must be 1 to 4 (got 5)");
    bad = t.blocks;
    bad.dtype = static_cast<spattn_dtype>(7);
    expect_status(t.forward(attn, &t.scores, nullptr, nullptr, &bad), SPATTN_ERROR_INVALID_ARGUMENT,
                  "blocks: unknown dtype code 7");
    bad = t.wq;
    bad.rank = 0;
    expect_status(t.forward(attn, nullptr, &bad, &t.wk, nullptr), SPATTN_ERROR_INVALID_ARGUMENT,
                  "wq: rank must be 1 to 4 (got 0)");
  }
  {
    // SPATTN_INT32 is for the chosen blocks only: attention tensors of it are refused.
    AdaptiveTensors u;
    for (spattn_tensor* x : {&u.q, &u.k, &u.v, &u.o}) x->dtype = SPATTN_INT32;
    EXPECT_NE(u.forward(attn, nullptr, nullptr, nullptr, nullptr), SPATTN_OK);
    EXPECT_NE(std::string(spattn_last_error()).find("int32"), std::string::npos) << spattn_last_error();
    AdaptiveTensors w;
    w.lse.dtype = SPATTN_INT32;
    expect_status(w.forward(attn, nullptr, nullptr, nullptr, nullptr), SPATTN_ERROR_INVALID_ARGUMENT, "LSE must be fp32");
  }
  if (!spattn::runtime::has_gpu()) {
    // Valid calls: supplied scores and blocks; projections; all absent (as NULL and as a
    // NULL data pointer). The shapes of the adaptive inputs are checked on the GPU side,
    // once the plan (and with it the block grid of the problem) exists.
    expect_status(t.forward(attn, &t.scores, nullptr, nullptr, &t.blocks), SPATTN_ERROR_NO_GPU, "");
    EXPECT_STRNE(spattn_last_error(), "");
    expect_status(t.forward(attn, nullptr, &t.wq, &t.wk, nullptr), SPATTN_ERROR_NO_GPU, "");
    spattn_tensor absent = t.scores;
    absent.data = nullptr;
    expect_status(t.forward(attn, &absent, &absent, &absent, &absent), SPATTN_ERROR_NO_GPU, "");
    expect_status(t.forward(attn, nullptr, nullptr, nullptr, nullptr), SPATTN_ERROR_NO_GPU, "");
  }
  spattn_attention_destroy(attn);
}

}  // namespace
