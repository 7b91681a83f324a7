// Ring attention on one GPU through the loopback transport: world virtual ranks, one host
// thread and one stream each, every rank holding only its shard of Q, K, V. The
// assembled outputs and LSE are compared with the fp32 reference of the whole problem at
// the forward tests' tolerance (autotune::tolerance_for, the autotuner's gate too), for
// dense causal, windows, LongNet, global_local and compositions, contiguous and zigzag,
// 2, 4 and 8 ranks; the schedule is checked to skip what the pattern never touches.
#include <gtest/gtest.h>

#include <spattn/ring.hpp>

#include <fmt/format.h>

#include <exception>
#include <thread>

#include "autotune/harness.hpp"
#include "dist/ring_plan.hpp"
#include "engine/forward.hpp"
#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"
#include "tests/support/gpu.hpp"

namespace spattn {
namespace {

struct RingCase {
  std::string json;
  int world = 2;
  RingSharding sharding = RingSharding::kContiguous;
  int64_t batch = 1, seq = 2048, heads = 4, kv_heads = 2, head_dim = 128;
  DType dtype = DType::kBFloat16;
  std::optional<KernelConfig> config;
};

std::string describe(const RingCase& c) {
  return fmt::format("{} world {} {} B={} N={} H={}/{} D={} {}{}", c.json, c.world, to_string(c.sharding), c.batch,
                     c.seq, c.heads, c.kv_heads, c.head_dim, to_string(c.dtype),
                     c.config ? " config " + c.config->to_string() : "");
}

struct RingRun {
  std::vector<std::string> explain;
  std::vector<RingTimings> timings;
};

// Runs the case on `world` virtual ranks and checks it against the reference.
RingRun run_ring(const RingCase& c, uint64_t seed, bool timing = false) {
  SCOPED_TRACE(describe(c));
  const Pattern pattern = Pattern::parse(c.json);
  const int64_t B = c.batch, N = c.seq, H = c.heads, Hkv = c.kv_heads, D = c.head_dim;
  const engine::Problem whole{B, N, N, H, Hkv, D, c.dtype};
  runtime::DeviceBuffer q(B * N * H * D * 2), k(B * N * Hkv * D * 2), v(B * N * Hkv * D * 2);
  engine::fill_random(q.data(), B * N * H * D, c.dtype, seed * 3 + 1);
  engine::fill_random(k.data(), B * N * Hkv * D, c.dtype, seed * 3 + 2);
  engine::fill_random(v.data(), B * N * Hkv * D, c.dtype, seed * 3 + 3);
  const auto tq = TensorView::contiguous(q.data(), c.dtype, {B, N, H, D});
  const auto tk = TensorView::contiguous(k.data(), c.dtype, {B, N, Hkv, D});
  const auto tv = TensorView::contiguous(v.data(), c.dtype, {B, N, Hkv, D});
  const engine::ReferenceResult ref = engine::reference_forward(pattern, whole, tq, tk, tv, 0);
  std::vector<uint16_t> hq(B * N * H * D), hk(B * N * Hkv * D), hv(B * N * Hkv * D);
  q.download(hq.data(), hq.size() * 2);
  k.download(hk.data(), hk.size() * 2);
  v.download(hv.data(), hv.size() * 2);

  const auto shards = dist::shard_sequence(N, c.world, c.sharding);
  const int64_t n = N / c.world;
  // Rows of a [B, N, heads, D] host array that rank r holds, in its order.
  auto shard_rows = [&](const std::vector<uint16_t>& all, int64_t heads, int r) {
    std::vector<uint16_t> out(B * n * heads * D);
    for (int64_t b = 0; b < B; ++b) {
      int64_t row = 0;
      for (const auto& [t0, t1] : shards[r].ranges)
        for (int64_t t = t0; t < t1; ++t, ++row)
          std::copy_n(&all[((b * N + t) * heads) * D], heads * D, &out[((b * n + row) * heads) * D]);
    }
    return out;
  };

  LoopbackRing hub(c.world);
  std::vector<runtime::DeviceBuffer> lq, lk, lv, lo, ll;
  for (int r = 0; r < c.world; ++r) {
    lq.emplace_back(B * n * H * D * 2);
    lk.emplace_back(B * n * Hkv * D * 2);
    lv.emplace_back(B * n * Hkv * D * 2);
    lo.emplace_back(B * n * H * D * 2);
    ll.emplace_back(B * H * n * 4);
    lq[r].upload(shard_rows(hq, H, r).data(), lq[r].size());
    lk[r].upload(shard_rows(hk, Hkv, r).data(), lk[r].size());
    lv[r].upload(shard_rows(hv, Hkv, r).data(), lv[r].size());
    lo[r].fill_bytes(0xff);  // NaN: every element must be written
    ll[r].fill_bytes(0xff);
  }
  RingRun run;
  run.explain.resize(c.world);
  run.timings.resize(c.world);
  std::vector<std::exception_ptr> errors(c.world);
  const int device = runtime::current_device();
  std::vector<std::thread> threads;
  for (int r = 0; r < c.world; ++r) {
    threads.emplace_back([&, r] {
      try {
        runtime::make_current(device);
        CUstream stream = nullptr;
        SPATTN_CU_CHECK(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
        RingOptions opts;
        opts.sharding = c.sharding;
        opts.config = c.config;
        opts.timing = timing;
        RingAttention ring(pattern, hub.transport(r), opts);
        const auto l = TensorView::contiguous3(ll[r].data(), DType::kFloat32, {B, H, n});
        ring.forward(TensorView::contiguous(lq[r].data(), c.dtype, {B, n, H, D}),
                     TensorView::contiguous(lk[r].data(), c.dtype, {B, n, Hkv, D}),
                     TensorView::contiguous(lv[r].data(), c.dtype, {B, n, Hkv, D}),
                     TensorView::contiguous(lo[r].data(), c.dtype, {B, n, H, D}), &l, stream);
        SPATTN_CU_CHECK(cuStreamSynchronize(stream));
        run.explain[r] = ring.explain();
        if (timing) run.timings[r] = ring.timings();
        runtime::driver().cuStreamDestroy(stream);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < c.world; ++r)
    if (errors[r]) {
      try {
        std::rethrow_exception(errors[r]);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rank " << r << ": " << e.what();
        return run;
      }
    }

  // Assemble the whole output and LSE from the shards.
  std::vector<uint16_t> out(B * N * H * D);
  std::vector<float> lse(B * H * N);
  for (int r = 0; r < c.world; ++r) {
    std::vector<uint16_t> o(B * n * H * D);
    std::vector<float> l(B * H * n);
    lo[r].download(o.data(), o.size() * 2);
    ll[r].download(l.data(), l.size() * 4);
    for (int64_t b = 0; b < B; ++b) {
      int64_t row = 0;
      for (const auto& [t0, t1] : shards[r].ranges)
        for (int64_t t = t0; t < t1; ++t, ++row) {
          std::copy_n(&o[((b * n + row) * H) * D], H * D, &out[((b * N + t) * H) * D]);
          for (int64_t h = 0; h < H; ++h) lse[(b * H + h) * N + t] = l[(b * H + h) * n + row];
        }
    }
  }
  const engine::Comparison cmp = engine::compare(out, c.dtype, lse, ref);
  const autotune::Tolerance tol = autotune::tolerance_for(c.dtype);
  EXPECT_EQ(cmp.nonfinite, 0) << cmp.to_string();
  EXPECT_EQ(cmp.lse_mismatch, 0) << cmp.to_string();
  EXPECT_LE(cmp.rel_l2_err, tol.rel_l2) << cmp.to_string() << "\n" << run.explain[0];
  EXPECT_LE(cmp.max_abs_err, tol.max_abs) << cmp.to_string();
  EXPECT_LE(cmp.max_lse_err, tol.lse) << cmp.to_string();
  return run;
}

const char* kPatterns[] = {
    R"({"type":"dense","causal":true})",
    R"({"type":"dense"})",
    R"({"type":"local_window","window":256})",
    R"({"type":"local_window","window":300,"causal":true})",
    R"({"type":"longnet","segments":[256,512,1024],"rates":[1,2,4]})",
    R"({"type":"global_local","global":64,"window":128})",
    R"({"union":[{"type":"strided","stride":32,"mode":"relative"},{"type":"local_window","window":64}]})",
    R"({"branches":[{"type":"local_window","window":128},{"type":"dense","causal":true}]})",
};

TEST(RingLoopbackGpu, EveryPatternContiguousAndZigzag) {
  SPATTN_REQUIRE_GPU();
  uint64_t seed = 1;
  for (const char* json : kPatterns)
    for (int world : {2, 4, 8})
      for (RingSharding sh : {RingSharding::kContiguous, RingSharding::kZigzag}) {
        RingCase c;
        c.json = json;
        c.world = world;
        c.sharding = sh;
        run_ring(c, seed++);
      }
}

TEST(RingLoopbackGpu, BatchGqaFp16AndBothFamilies) {
  SPATTN_REQUIRE_GPU();
  const runtime::DeviceInfo dev = runtime::device_info(runtime::current_device());
  uint64_t seed = 100;
  for (const char* json : {R"({"type":"dense","causal":true})", R"({"type":"longnet","segments":[256,512],"rates":[1,2]})"}) {
    RingCase c;
    c.json = json;
    c.world = 4;
    c.sharding = RingSharding::kZigzag;
    c.batch = 2;
    c.heads = 8;
    c.kv_heads = 1;
    c.dtype = DType::kFloat16;
    c.head_dim = 64;
    run_ring(c, seed++);
    c.head_dim = 128;
    c.dtype = DType::kBFloat16;
    c.config = KernelConfig::parse("128x64w4s2");
    run_ring(c, seed++);
    if (dev.arch() == "sm_90a") {
      c.config = KernelConfig::parse("sm90:128x128s2");
      run_ring(c, seed++);
    }
  }
}

// A window far shorter than a shard: each rank computes its own shard and its
// neighbours' only, and receives nothing else.
TEST(RingLoopbackGpu, SparsePatternsSkipShards) {
  SPATTN_REQUIRE_GPU();
  RingCase c;
  c.json = R"({"type":"local_window","window":128,"causal":true})";
  c.world = 8;
  c.seq = 4096;
  const RingRun run = run_ring(c, 7, /*timing=*/true);
  for (int r = 0; r < c.world; ++r) {
    SCOPED_TRACE(run.explain[r]);
    const RingTimings& t = run.timings[r];
    EXPECT_EQ(t.steps_received, r == 0 ? 0 : 1) << t.to_string();
    EXPECT_EQ(t.steps_computed, r == 0 ? 1 : 2) << t.to_string();
    EXPECT_GT(t.total_ms, 0) << t.to_string();
    EXPECT_GT(t.compute_ms, 0) << t.to_string();
    EXPECT_LE(t.compute_ms, t.total_ms * 1.01 + 0.05) << t.to_string();
    EXPECT_NE(run.explain[r].find("step"), std::string::npos);
  }
}

// A second forward with the same ring reuses its plans and still matches (and the
// transports' sequence numbers stay paired across calls).
TEST(RingLoopbackGpu, RepeatedForwardOnOneRing) {
  SPATTN_REQUIRE_GPU();
  const int world = 4;
  const int64_t B = 1, N = 1024, H = 2, D = 128, n = N / world;
  const Pattern pattern = Pattern::parse(R"({"type":"dense","causal":true})");
  LoopbackRing hub(world);
  std::vector<runtime::DeviceBuffer> q, o0, o1;
  for (int r = 0; r < world; ++r) {
    q.emplace_back(B * n * H * D * 2);
    engine::fill_random(q[r].data(), B * n * H * D, DType::kBFloat16, 40 + r);
    o0.emplace_back(B * n * H * D * 2);
    o1.emplace_back(B * n * H * D * 2);
  }
  runtime::synchronize();
  std::vector<std::exception_ptr> errors(world);
  std::vector<std::thread> threads;
  const int device = runtime::current_device();
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        runtime::make_current(device);
        CUstream stream = nullptr;
        SPATTN_CU_CHECK(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
        RingOptions opts;
        opts.sharding = RingSharding::kZigzag;
        RingAttention ring(pattern, hub.transport(r), opts);
        const auto t = [&](runtime::DeviceBuffer& b) {
          return TensorView::contiguous(b.data(), DType::kBFloat16, {B, n, H, D});
        };
        // Q = K = V: self-attention of the shard's own rows.
        for (int rep = 0; rep < 3; ++rep)
          ring.forward(t(q[r]), t(q[r]), t(q[r]), t(rep == 0 ? o0[r] : o1[r]), nullptr, stream);
        SPATTN_CU_CHECK(cuStreamSynchronize(stream));
        runtime::driver().cuStreamDestroy(stream);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) {
    if (errors[r]) std::rethrow_exception(errors[r]);
    std::vector<uint16_t> a(B * n * H * D), b(a.size());
    o0[r].download(a.data(), a.size() * 2);
    o1[r].download(b.data(), b.size() * 2);
    EXPECT_EQ(a, b) << "rank " << r;
  }
}

}  // namespace
}  // namespace spattn
