// RingAttention without a GPU: argument errors name what is wrong, the loopback hub's
// ranks and timeouts, shardings by name, and the sub-rectangle plans' local slots (what
// the kernels index by) for natural and permuted layouts.
#include <gtest/gtest.h>

#include <spattn/layout.hpp>
#include <spattn/ring.hpp>
#include <spattn/spattn.h>

#include <algorithm>

#include "engine/forward.hpp"
#include "runtime/driver.hpp"

namespace spattn {
namespace {

template <class F>
void expect_error(F&& f, ErrorCode code, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(RingApi, ShardingsByName) {
  EXPECT_EQ(ring_sharding_from_string("zigzag"), RingSharding::kZigzag);
  EXPECT_EQ(ring_sharding_from_string("contiguous"), RingSharding::kContiguous);
  EXPECT_STREQ(to_string(RingSharding::kZigzag), "zigzag");
  expect_error([] { ring_sharding_from_string("striped"); }, ErrorCode::kInvalidArgument, "contiguous, zigzag");
}

TEST(RingApi, LoopbackRanksAreChecked) {
  expect_error([] { LoopbackRing hub(0); }, ErrorCode::kInvalidArgument, "world must be in [1, 1024]");
  expect_error([] { LoopbackRing hub(2, 0); }, ErrorCode::kInvalidArgument, "timeout must be positive");
  LoopbackRing hub(4);
  EXPECT_EQ(hub.world(), 4);
  const auto t = hub.transport(3);
  EXPECT_EQ(t->rank(), 3);
  EXPECT_EQ(t->world(), 4);
  EXPECT_EQ(t->name(), "loopback");
  expect_error([&] { hub.transport(4); }, ErrorCode::kInvalidArgument, "rank 4 is not in [0, 4)");
  // A peer outside the ring, or the rank itself, is refused before anything is posted.
  expect_error([&] { t->exchange({{nullptr, 16, 7}}, {}, nullptr); }, ErrorCode::kInvalidArgument,
               "cannot send to rank 7");
  expect_error([&] { t->exchange({}, {{nullptr, 16, 3}}, nullptr); }, ErrorCode::kInvalidArgument,
               "cannot receive from rank 3");
}

TEST(RingApi, ConstructsWithoutAGpuAndValidatesBeforeRunning) {
  expect_error([] { RingAttention r(Pattern::parse(R"({"type":"dense"})"), nullptr); }, ErrorCode::kInvalidArgument,
               "transport is null");
  LoopbackRing hub(2);
  RingAttention ring(Pattern::parse(R"({"type":"dense","causal":true})"), hub.transport(0));
  EXPECT_NE(ring.explain().find("no ring forward"), std::string::npos);
  expect_error([&] { (void)ring.timings(); }, ErrorCode::kInvalidArgument, "needs RingOptions::timing");
  auto fake = [](uintptr_t k) { return reinterpret_cast<void*>(0x100000 * k); };
  const auto q = TensorView::contiguous(fake(1), DType::kBFloat16, {1, 512, 4, 128});
  const auto k = TensorView::contiguous(fake(2), DType::kBFloat16, {1, 512, 4, 128});
  const auto o = TensorView::contiguous(fake(3), DType::kBFloat16, {1, 512, 4, 128});
  const auto k_short = TensorView::contiguous(fake(2), DType::kBFloat16, {1, 256, 4, 128});
  expect_error([&] { ring.forward(q, k_short, k_short, o); }, ErrorCode::kInvalidArgument, "same tokens");
  TensorView k_strided = k;
  k_strided.strides[1] *= 2;
  expect_error([&] { ring.forward(q, k_strided, k_strided, o); }, ErrorCode::kInvalidArgument,
               "K and V must be contiguous");
  expect_error([&] { ring.forward(q, k, k, o); }, ErrorCode::kInvalidArgument, "need a stream each");
  if (!runtime::has_gpu())
    expect_error([&] { ring.forward(q, k, k, o, nullptr, reinterpret_cast<CUstream>(fake(9))); }, ErrorCode::kNoGpu,
                 "");
  expect_error([] { nccl_transport_from_comm(nullptr); }, ErrorCode::kInvalidArgument, "communicator is null");
}

// Slots after localise_slots: natural-order rectangles become the identity order (no
// indirection in the kernel), permuted ones hold local tokens of the rectangle only.
TEST(RingSubProblem, LocalSlots) {
  const Shape whole{4096, 4096, 2};
  for (const char* json : {R"({"type":"local_window","window":300,"causal":true})",
                           R"({"type":"longnet","segments":[256,512,1024],"rates":[1,2,4]})",
                           R"({"type":"strided","stride":16,"mode":"relative"})"}) {
    for (const TokenRect rect : {TokenRect{1024, 1536, 512, 1024}, TokenRect{0, 512, 3584, 4096},
                                 TokenRect{2048, 4096, 0, 4096}}) {
      SCOPED_TRACE(std::string(json) + " rect " + std::to_string(rect.q_begin) + ".." + std::to_string(rect.k_end));
      LayoutOptions o;
      o.tile_m = 128;
      o.tile_n = 64;
      o.rect = rect;
      Layout layout = compile_layout(Pattern::parse(json), whole, o);
      const bool natural = std::string(json).find("window") != std::string::npos;
      engine::localise_slots(layout);
      const int64_t nq = rect.q_end - rect.q_begin, nk = rect.k_end - rect.k_begin;
      for (const BlockTable& t : layout.tables) {
        if (natural) {
          EXPECT_TRUE(t.q_slots.empty());
          EXPECT_TRUE(t.k_slots.empty());
        }
        for (int32_t s : t.q_slots) EXPECT_TRUE(s >= -1 && s < nq) << s;
        for (int32_t s : t.k_slots) EXPECT_TRUE(s >= -1 && s < nk) << s;
        if (t.q_slots.empty()) EXPECT_EQ(t.num_q_tiles, (nq + o.tile_m - 1) / o.tile_m);
        if (t.k_slots.empty()) EXPECT_EQ(t.num_k_tiles, (nk + o.tile_n - 1) / o.tile_n);
      }
    }
  }
}

// Only kernels of a sub-rectangle add the token offsets in their predicate: whole
// problems keep the predicate on raw indices (the additions cost partial tiles time).
TEST(RingSubProblem, OnlyRectanglesCompileTokenOffsets) {
  const Pattern p = Pattern::parse(R"({"type":"local_window","window":300,"causal":true})");
  const Shape whole{4096, 4096, 2};
  const KernelConfig config = KernelConfig::parse("sm90:128x128s2");
  const engine::Problem problem{1, 4096, 4096, 2, 2, 128, DType::kBFloat16};
  LayoutOptions o = config.layout_options();
  const Layout full = compile_layout(p, whole, o);
  o.rect = TokenRect{1024, 2048, 512, 2048};
  Layout rect = compile_layout(p, whole, o);
  engine::localise_slots(rect);
  engine::Problem sub = problem;
  sub.nq = 1024;
  sub.nk = 1536;
  const std::string a = engine::render_kernel(full, config, problem, "sm_90a").source;
  const std::string b = engine::render_kernel(rect, config, sub, "sm_90a").source;
  EXPECT_EQ(a.find("c.q_off"), std::string::npos);
  EXPECT_NE(b.find("i + c.q_off"), std::string::npos);
  EXPECT_NE(b.find("lo0 -= c.k_off"), std::string::npos);
}

// The C ABI's ring calls check their arguments and options before NCCL is needed.
TEST(RingCApi, ArgumentsAndOptionsAreNamed) {
  auto expect_status = [](spattn_status got, spattn_status want, const std::string& needle) {
    EXPECT_EQ(got, want) << spattn_last_error();
    EXPECT_NE(std::string(spattn_last_error()).find(needle), std::string::npos) << spattn_last_error();
  };
  const char id[128] = {};
  spattn_ring_t ring = nullptr;
  expect_status(spattn_ring_create("dense", nullptr, id, 0, 2, nullptr), SPATTN_ERROR_INVALID_ARGUMENT, "out is NULL");
  expect_status(spattn_ring_create(nullptr, nullptr, id, 0, 2, &ring), SPATTN_ERROR_INVALID_ARGUMENT,
                "pattern_json is NULL");
  expect_status(spattn_ring_create(R"({"type":"dense"})", nullptr, nullptr, 0, 2, &ring),
                SPATTN_ERROR_INVALID_ARGUMENT, "id is NULL");
  expect_status(spattn_ring_create(R"({"type":"dense"})", R"({"shards": 2})", id, 0, 2, &ring),
                SPATTN_ERROR_INVALID_ARGUMENT, "known: sharding, scale, device, config, timing");
  expect_status(spattn_ring_create(R"({"type":"dense"})", R"({"sharding": "striped"})", id, 0, 2, &ring),
                SPATTN_ERROR_INVALID_ARGUMENT, "contiguous, zigzag");
  expect_status(spattn_ring_create(R"({"type":"dense"})", nullptr, id, 5, 2, &ring), SPATTN_ERROR_INVALID_ARGUMENT,
                "rank 5 must be in [0, world 2)");
  EXPECT_EQ(ring, nullptr);
  expect_status(spattn_ring_forward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr),
                SPATTN_ERROR_INVALID_ARGUMENT, "ring handle is NULL");
  expect_status(spattn_nccl_unique_id(nullptr), SPATTN_ERROR_INVALID_ARGUMENT, "id is NULL");
  spattn_ring_destroy(nullptr);
}

}  // namespace
}  // namespace spattn
