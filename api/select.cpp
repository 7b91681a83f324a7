#include "api/select.hpp"

#include <fmt/format.h>

namespace spattn::api {

// Heuristic, per head dim (mma.sync template, sm_80+):
//  - D <= 128: 128x64 tiles, 4 warps (32 query rows per warp: each K/V fragment read
//    from shared memory feeds two m16 tiles, halving shared-memory traffic per FLOP
//    against 16 rows per warp), 2 stages (the next K/V tile loads during this one).
//    About 105 KB of shared memory at D = 128, so two CTAs fit on an SM with 228 KB.
//  - D = 256: 64x64 tiles, 4 warps (16 rows per warp keeps the 128 output accumulators
//    per thread in registers), 1 stage (shared memory: Q + K + V = 101 KB).
//  - Short key sequences (< 2 tiles of 128) use 64-row query tiles so more CTAs exist.
Choice heuristic(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device) {
  (void)pattern;
  KernelConfig c;
  std::string why;
  if (problem.head_dim == 256) {
    c.tile_m = 64;
    c.tile_n = 64;
    c.warps = 4;
    c.stages = 1;
    why = "head dim 256: 64x64, 16 rows per warp, single-buffered K/V";
  } else {
    c.tile_m = 128;
    c.tile_n = 64;
    c.warps = 4;
    c.stages = 2;
    why = fmt::format("head dim {}: 128x64, 32 rows per warp, double-buffered K/V", problem.head_dim);
    const int64_t ctas = (problem.nq + 127) / 128 * problem.heads * problem.batch;
    if (ctas < 2 * device.sm_count) {
      c.tile_m = 64;
      c.warps = 4;
      why += fmt::format("; 64-row query tiles since {} CTAs of 128 rows would not fill {} SMs twice", ctas,
                         device.sm_count);
    }
  }
  return {c, "heuristic (" + why + ")"};
}

Choice choose(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device, bool use_db) {
  (void)use_db;  // the tuning database is consulted here once it exists for this GPU
  return heuristic(pattern, problem, device);
}

}  // namespace spattn::api
