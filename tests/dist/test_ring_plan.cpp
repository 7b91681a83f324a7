// The ring-attention planner: contiguous and zigzag shards; shard-pair emptiness equal to
// a brute-force scan of the token predicate for every pattern kind; plans for world 2 to
// 64 (dense needs every shard, sparse patterns only their neighbours); causal balance of
// zigzag against contiguous; bytes moved for window 1024 at 1M tokens on 8 ranks.
#include <gtest/gtest.h>

#include <spattn/error.hpp>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dist/ring_plan.hpp"

namespace spattn::dist {
namespace {

TEST(RingShards, ContiguousAndZigzag) {
  const auto c = shard_sequence(64, 4, Sharding::kContiguous);
  ASSERT_EQ(c.size(), 4u);
  EXPECT_EQ(c[1].ranges, (std::vector<std::pair<int64_t, int64_t>>{{16, 32}}));
  const auto z = shard_sequence(64, 4, Sharding::kZigzag);
  EXPECT_EQ(z[0].ranges, (std::vector<std::pair<int64_t, int64_t>>{{0, 8}, {56, 64}}));
  EXPECT_EQ(z[3].ranges, (std::vector<std::pair<int64_t, int64_t>>{{24, 32}, {32, 40}}));
  for (const Shard& s : z) EXPECT_EQ(s.tokens(), 16);
  EXPECT_THROW((void)shard_sequence(100, 8, Sharding::kContiguous), Error);
  EXPECT_THROW((void)shard_sequence(64, 5, Sharding::kZigzag), Error);
  EXPECT_THROW((void)shard_sequence(64, 0, Sharding::kContiguous), Error);
}

bool brute_needs(const Pattern& p, const Shape& shape, const Shard& q, const Shard& k) {
  for (int64_t h = 0; h < shape.heads; ++h)
    for (const auto& [qb, qe] : q.ranges)
      for (int64_t i = qb; i < qe; ++i)
        for (const auto& [kb, ke] : k.ranges)
          for (int64_t j = kb; j < ke; ++j)
            if (p.allowed(shape, h, i, j)) return true;
  return false;
}

TEST(RingPlanner, ShardPairEmptinessEqualsBruteForce) {
  const char* patterns[] = {
      R"({"type":"dense"})",
      R"({"type":"dense","causal":true})",
      R"({"type":"local_window","window":40})",
      R"({"type":"local_window","left":100,"right":0})",
      R"({"type":"global_local","global":8,"window":16})",
      R"({"type":"strided","stride":96,"mode":"relative"})",
      R"({"type":"longnet","segments":[64,128],"rates":[1,2]})",
      R"({"type":"neighborhood","grid":[16,24],"window":[3,5],"dilation":[1,1]})",
      R"({"union":[{"type":"strided","stride":128,"mode":"relative"},{"type":"local_window","window":8}]})",
      R"({"branches":[{"type":"local_window","window":16},{"type":"dense","causal":true}]})",
      R"({"heads":[{"first":0,"count":1,"pattern":{"type":"local_window","window":8}},{"first":1,"count":1,"pattern":{"type":"dense","causal":true}}]})",
  };
  for (const char* json : patterns) {
    for (int world : {2, 4}) {
      for (Sharding sh : {Sharding::kContiguous, Sharding::kZigzag}) {
        SCOPED_TRACE(fmt::format("{} world {} {}", json, world, to_string(sh)));
        const Pattern p = Pattern::parse(json);
        RingProblem prob;
        prob.seq = 384;
        prob.heads = prob.kv_heads = 2;
        prob.world = world;
        prob.sharding = sh;
        const RingPlan plan = plan_ring(p, prob);
        const Shape shape{prob.seq, prob.seq, prob.heads};
        for (int r = 0; r < world; ++r)
          for (int s = 0; s < world; ++s) {
            EXPECT_EQ(plan.needs[r][s], brute_needs(p, shape, plan.shards[r], plan.shards[s])) << r << " <- " << s;
            EXPECT_EQ(plan.needs[r][s], plan.work[r][s] > 0);
          }
        // The schedule sends exactly the needed shards, once each.
        size_t needed = 0, sent = 0;
        for (int r = 0; r < world; ++r)
          for (int s = 0; s < world; ++s) needed += r != s && plan.needs[r][s];
        for (const RingPlan::Step& st : plan.steps)
          for (const RingPlan::Transfer& t : st.transfers) {
            ++sent;
            EXPECT_EQ((t.src + st.offset) % world, t.dst);
            EXPECT_TRUE(plan.needs[t.dst][t.src]);
          }
        EXPECT_EQ(sent, needed);
      }
    }
  }
}

TEST(RingPlanner, PlansForManyWorldSizes) {
  for (int world : {2, 4, 8, 64}) {
    SCOPED_TRACE(world);
    RingProblem prob;
    prob.seq = 65536;
    prob.world = world;
    const RingPlan dense = plan_ring(Pattern::parse("dense"), prob);
    EXPECT_EQ(dense.bytes_moved(), dense.dense_ring_bytes());
    EXPECT_EQ(static_cast<int>(dense.steps.size()), world - 1);
    EXPECT_DOUBLE_EQ(dense.balance(), 1.0);
    // A window shorter than a shard needs only the neighbours.
    const RingPlan window = plan_ring(Pattern::parse(R"({"type":"local_window","window":512})"), prob);
    for (int r = 0; r < world; ++r)
      for (int s = 0; s < world; ++s) EXPECT_EQ(window.needs[r][s], std::abs(r - s) <= 1) << r << " " << s;
    const nlohmann::json j = nlohmann::json::parse(window.to_json());
    EXPECT_EQ(j["world"], world);
    EXPECT_EQ(j["ranks"].size(), static_cast<size_t>(world));
    EXPECT_EQ(j["bytes_moved"].get<int64_t>(), window.bytes_moved());
  }
  // Causal work: zigzag balances it, contiguous does not.
  RingProblem prob;
  prob.seq = 65536;
  prob.world = 8;
  const RingPlan contiguous = plan_ring(Pattern::parse(R"({"type":"dense","causal":true})"), prob);
  prob.sharding = Sharding::kZigzag;
  const RingPlan zigzag = plan_ring(Pattern::parse(R"({"type":"dense","causal":true})"), prob);
  EXPECT_LT(contiguous.balance(), 0.6);
  EXPECT_GT(zigzag.balance(), 0.95);
}

TEST(RingPlanner, Window1024AtOneMillionTokensMovesAQuarterOfTheDenseRing) {
  RingProblem prob;
  prob.seq = int64_t{1} << 20;
  prob.world = 8;
  const RingPlan plan = plan_ring(Pattern::parse(R"({"type":"local_window","window":1024})"), prob);
  // Each rank needs its two neighbours (the ends one): 14 of the dense ring's 56 shard sends.
  EXPECT_EQ(plan.bytes_moved() * 4, plan.dense_ring_bytes());
  EXPECT_EQ(plan.steps.size(), 2u) << "offsets 1 and 7 only";
  EXPECT_NE(plan.to_table().find("25.0% of a dense ring"), std::string::npos) << plan.to_table();
}

TEST(RingPlanner, BadProblemsAreRefusedWithTheReason) {
  RingProblem prob;
  prob.seq = 1000;
  prob.world = 3;
  try {
    (void)plan_ring(Pattern::parse("dense"), prob);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 3"), std::string::npos) << e.what();
  }
  prob.seq = 999;
  prob.heads = 4;
  prob.kv_heads = 3;
  EXPECT_THROW((void)plan_ring(Pattern::parse("dense"), prob), Error);
}

}  // namespace
}  // namespace spattn::dist
