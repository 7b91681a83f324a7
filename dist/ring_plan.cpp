#include "dist/ring_plan.hpp"

#include <spattn/layout.hpp>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <numeric>

#include "common/check.hpp"

namespace spattn {

const char* to_string(RingSharding s) { return s == RingSharding::kZigzag ? "zigzag" : "contiguous"; }

RingSharding ring_sharding_from_string(const std::string& name) {
  if (name == "contiguous") return RingSharding::kContiguous;
  if (name == "zigzag") return RingSharding::kZigzag;
  SPATTN_FAIL(ErrorCode::kInvalidArgument, "unknown sharding '{}' (supported: contiguous, zigzag)", name);
}

}  // namespace spattn

namespace spattn::dist {

int64_t Shard::tokens() const {
  int64_t n = 0;
  for (const auto& [b, e] : ranges) n += e - b;
  return n;
}

std::vector<Shard> shard_sequence(int64_t n, int world, Sharding sharding) {
  SPATTN_REQUIRE(world >= 1 && world <= 65536, "world must be in [1, 65536] (got {})", world);
  const int64_t chunks = sharding == Sharding::kZigzag ? 2 * int64_t{world} : world;
  SPATTN_REQUIRE(n >= chunks && n % chunks == 0,
                 "the sequence ({} tokens) must be a positive multiple of {} for {} sharding over {} ranks", n, chunks,
                 to_string(sharding), world);
  const int64_t len = n / chunks;
  std::vector<Shard> out(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) {
    if (sharding == Sharding::kContiguous) {
      out[r].ranges.emplace_back(r * len, (r + 1) * len);
    } else {
      out[r].ranges.emplace_back(r * len, (r + 1) * len);
      const int64_t mirror = chunks - 1 - r;
      out[r].ranges.emplace_back(mirror * len, (mirror + 1) * len);
    }
  }
  return out;
}

int64_t RingPlan::shard_kv_bytes() const {
  const int64_t tokens = shards.empty() ? 0 : shards[0].tokens();
  return 2 * tokens * problem.kv_heads * problem.head_dim * static_cast<int64_t>(dtype_size(problem.dtype));
}

int64_t RingPlan::bytes_received(int rank) const {
  int64_t n = 0;
  for (const Step& s : steps)
    for (const Transfer& t : s.transfers) n += t.dst == rank;
  return n * shard_kv_bytes();
}

int64_t RingPlan::bytes_moved() const {
  int64_t n = 0;
  for (const Step& s : steps) n += static_cast<int64_t>(s.transfers.size());
  return n * shard_kv_bytes();
}

int64_t RingPlan::dense_ring_bytes() const {
  const int64_t w = problem.world;
  return w * (w - 1) * shard_kv_bytes();
}

int64_t RingPlan::work_of(int rank) const {
  return std::accumulate(work[rank].begin(), work[rank].end(), int64_t{0});
}

double RingPlan::balance() const {
  int64_t total = 0, most = 0;
  for (int r = 0; r < problem.world; ++r) {
    total += work_of(r);
    most = std::max(most, work_of(r));
  }
  return most > 0 ? static_cast<double>(total) / problem.world / static_cast<double>(most) : 1.0;
}

RingPlan plan_ring(const Pattern& pattern, const RingProblem& problem) {
  SPATTN_REQUIRE(problem.heads >= 1 && problem.kv_heads >= 1 && problem.heads % problem.kv_heads == 0,
                 "query heads ({}) must be a positive multiple of key/value heads ({})", problem.heads,
                 problem.kv_heads);
  SPATTN_REQUIRE(problem.head_dim >= 1, "head_dim must be >= 1 (got {})", problem.head_dim);
  RingPlan plan;
  plan.problem = problem;
  plan.shards = shard_sequence(problem.seq, problem.world, problem.sharding);
  const Shape shape{problem.seq, problem.seq, problem.heads};
  pattern.validate(shape);

  // A tile that divides the chunk length, so that every tile lies in one rank's shard.
  const int64_t chunk = plan.shards[0].ranges[0].second - plan.shards[0].ranges[0].first;
  int64_t tile = std::min<int64_t>(512, chunk);
  while (chunk % tile != 0) --tile;
  plan.tile = tile;
  LayoutOptions options;
  options.tile_m = options.tile_n = tile;
  options.permute = false;  // natural order: tile t holds tokens [t·tile, (t+1)·tile)
  const Layout layout = compile_layout(pattern, shape, options);

  const int w = problem.world;
  const int64_t num_tiles = (problem.seq + tile - 1) / tile;
  std::vector<int> owner(static_cast<size_t>(num_tiles), 0);
  for (int r = 0; r < w; ++r)
    for (const auto& [b, e] : plan.shards[r].ranges)
      for (int64_t t = b / tile; t < e / tile; ++t) owner[t] = r;
  plan.needs.assign(w, std::vector<bool>(w, false));
  plan.work.assign(w, std::vector<int64_t>(w, 0));
  for (const BlockTable& t : layout.tables) {
    SPATTN_ASSERT(t.q_slots.empty() && t.k_slots.empty());
    const int64_t heads = static_cast<int64_t>(t.heads.size());
    for (int64_t q = 0; q < t.num_q_tiles; ++q) {
      const int r = owner[q];
      for (int64_t x = t.row_ptr[q]; x < t.row_ptr[q + 1]; ++x) {
        const int s = owner[t.cols[x]];
        plan.needs[r][s] = true;
        plan.work[r][s] += heads;
      }
    }
  }
  for (int off = 1; off < w; ++off) {
    RingPlan::Step step{off, {}};
    for (int s = 0; s < w; ++s) {
      const int dst = (s + off) % w;
      if (plan.needs[dst][s]) step.transfers.push_back({s, dst});
    }
    if (!step.transfers.empty()) plan.steps.push_back(std::move(step));
  }
  return plan;
}

std::string RingPlan::to_json() const {
  using nlohmann::json;
  json ranks = json::array();
  for (int r = 0; r < problem.world; ++r) {
    json ranges = json::array();
    for (const auto& [b, e] : shards[r].ranges) ranges.push_back({b, e});
    json from = json::array();
    for (const Step& s : steps)
      for (const Transfer& t : s.transfers)
        if (t.dst == r) from.push_back(t.src);
    ranks.push_back({{"rank", r}, {"tokens", ranges}, {"receives_from", from},
                     {"bytes_received", bytes_received(r)}, {"work_tiles", work_of(r)}});
  }
  json step_list = json::array();
  for (const Step& s : steps) {
    json transfers = json::array();
    for (const Transfer& t : s.transfers) transfers.push_back({{"src", t.src}, {"dst", t.dst}});
    step_list.push_back({{"offset", s.offset}, {"transfers", transfers}});
  }
  const json j = {{"seq", problem.seq},
                  {"world", problem.world},
                  {"sharding", to_string(problem.sharding)},
                  {"heads", problem.heads},
                  {"kv_heads", problem.kv_heads},
                  {"head_dim", problem.head_dim},
                  {"dtype", spattn::to_string(problem.dtype)},
                  {"tile", tile},
                  {"ranks", ranks},
                  {"steps", step_list},
                  {"ring_steps", problem.world - 1},
                  {"shard_kv_bytes", shard_kv_bytes()},
                  {"bytes_moved", bytes_moved()},
                  {"dense_ring_bytes", dense_ring_bytes()},
                  {"balance", balance()}};
  return j.dump(2);
}

std::string RingPlan::to_table() const {
  auto mib = [](int64_t b) { return static_cast<double>(b) / (1 << 20); };
  std::string s = fmt::format("ring plan: {} tokens over {} ranks ({}), K/V shard {:.1f} MiB, tile {}\n",
                              problem.seq, problem.world, to_string(problem.sharding), mib(shard_kv_bytes()), tile);
  s += fmt::format("  {:>5}  {:<28}  {:<24}  {:>12}  {:>12}\n", "rank", "tokens", "receives from", "MiB in",
                   "work tiles");
  for (int r = 0; r < problem.world; ++r) {
    std::string tokens, from;
    for (const auto& [b, e] : shards[r].ranges) tokens += fmt::format("{}[{}, {})", tokens.empty() ? "" : " ", b, e);
    int count = 0;
    for (const Step& st : steps)
      for (const Transfer& t : st.transfers)
        if (t.dst == r) from += fmt::format("{}{}", count++ ? "," : "", t.src);
    if (from.size() > 24) from = fmt::format("{} ranks", count);
    s += fmt::format("  {:>5}  {:<28}  {:<24}  {:>12.1f}  {:>12}\n", r, tokens, from.empty() ? "-" : from,
                     mib(bytes_received(r)), work_of(r));
  }
  s += fmt::format("{} of {} ring steps move data; {:.1f} MiB moved in all, {:.1f}% of a dense ring's {:.1f} MiB; "
                   "work balance {:.2f} (mean / max)\n",
                   steps.size(), problem.world - 1, mib(bytes_moved()),
                   dense_ring_bytes() ? 100.0 * static_cast<double>(bytes_moved()) / dense_ring_bytes() : 0.0,
                   mib(dense_ring_bytes()), balance());
  return s;
}

}  // namespace spattn::dist
