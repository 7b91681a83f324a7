#include "api/select.hpp"

#include <fmt/format.h>

#include "autotune/tuning_db.hpp"

namespace spattn::api {

// Heuristic, per head dim (mma.sync template, sm_80+), from the register and shared
// memory budgets ptxas reports (`spattn compile` prints them):
//  - D = 128: 128x64 tiles, 4 warps, 1 stage (FlashAttention-2's choice): 32 query
//    rows per warp, so every K/V fragment read from shared memory feeds two m16 tiles;
//    255 registers without spills, 71 KB of shared memory, two CTAs per SM. Two stages
//    would spill a few registers at this tile.
//  - D <= 96: the same tile with 2 stages (the accumulators leave room for the
//    double-buffered K/V, so the whole next tile loads during this one).
//  - D = 256: 64x64 tiles, 4 warps, 1 stage: 16 rows per warp keeps the 128 output
//    accumulators per thread in registers; 104 KB of shared memory.
//  - When 128-row query tiles would give fewer than two CTAs per SM, 64-row tiles.
//  - Work items launch longest first (most key tiles first): for uniform patterns this
//    is the natural order, for imbalanced ones (causal, global rows) the long items no
//    longer start last and stretch the tail.
Choice heuristic(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device) {
  (void)pattern;
  KernelConfig c;
  std::string why;
  c.tile_n = 64;
  c.warps = 4;
  c.schedule = ScheduleOrder::kLongestFirst;
  if (problem.head_dim == 256) {
    c.tile_m = 64;
    c.stages = 1;
    why = "head dim 256: 64x64, 16 rows per warp, single-buffered K/V";
  } else {
    c.tile_m = 128;
    c.stages = problem.head_dim == 128 ? 1 : 2;
    why = fmt::format("head dim {}: 128x64, 32 rows per warp, {}", problem.head_dim,
                      c.stages == 1 ? "K/V loads overlapped with the two matrix products" : "double-buffered K/V");
    const int64_t ctas = (problem.nq + 127) / 128 * problem.heads * problem.batch;
    if (ctas < 2 * device.sm_count) {
      c.tile_m = 64;
      why += fmt::format("; 64-row query tiles since {} CTAs of 128 rows would not fill {} SMs twice", ctas,
                         device.sm_count);
    }
  }
  return {c, "heuristic (" + why + ")"};
}

// The tuning database of this GPU (autotune/tuning_db.hpp: <cache dir>/tuning/<device
// fingerprint>.json, written by `spattn autotune`) decides when it has an entry for the
// problem's bucket; otherwise the heuristic does, and the source says why the database
// did not apply.
Choice choose(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device, bool use_db) {
  if (!use_db) {
    Choice c = heuristic(pattern, problem, device);
    c.source.insert(c.source.size() - 1, "; tuning database not consulted (AttentionOptions::use_tuning_db is off)");
    return c;
  }
  const autotune::DbLookup db = autotune::lookup(pattern, problem, device);
  if (db.config) return {*db.config, db.source};
  Choice c = heuristic(pattern, problem, device);
  c.source.insert(c.source.size() - 1, "; " + db.source);
  return c;
}

}  // namespace spattn::api
