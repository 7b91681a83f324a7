#include "engine/select.hpp"

#include <fmt/format.h>

#include <spattn/adaptive.hpp>

#include <algorithm>

#include "common/check.hpp"

namespace spattn::engine {

namespace {

// sm90 family (Hopper, sm_90a), FlashAttention-3's tile shapes:
//  - D = 64 and 128: 128x128 tiles, two consumer warpgroups of 64 rows, a K/V ring of
//    two stages (S, P and O of a consumer thread: 64 + 32 + 64 registers at D = 128);
//  - D = 256: 128x64 tiles (O alone is 128 registers per consumer thread);
//  - 64-row tiles (one consumer warpgroup) when 128-row tiles would give fewer work
//    items than SMs.
//  - layouts with permuted tokens (LongNet, strides, grids) copy their rows in slot order
//    first (":copy"), so the kernel loads them by TMA like natural-order tiles.
KernelChoice sm90(const Problem& problem, const runtime::DeviceInfo& device, bool permuted) {
  KernelConfig c;
  c.family = KernelFamily::kSm90;
  c.tile_m = 128;
  c.tile_n = problem.head_dim == 256 ? 64 : 128;
  c.stages = 2;
  c.schedule = ScheduleOrder::kLongestFirst;
  std::string why = fmt::format("Hopper, head dim {}: wgmma/TMA family, {}x{} tiles, two consumer warpgroups, "
                                "2-stage K/V ring",
                                problem.head_dim, c.tile_m, c.tile_n);
  const int64_t items = (problem.nq + 127) / 128 * problem.heads * problem.batch;
  if (items < device.sm_count) {
    c.tile_m = 64;
    why += fmt::format("; 64-row tiles since {} work items of 128 rows would not fill {} SMs", items, device.sm_count);
  }
  if (permuted) {
    c.gather = TokenGather::kCopy;
    why += "; permuted tokens copied in slot order before the kernel, then loaded by TMA";
  }
  c.warps = c.threads() / 32;
  return {c, "heuristic (" + why + ")"};
}

// sm80 family (mma.sync, sm_80+), from the register and shared memory budgets ptxas
// reports (`spattn compile` prints them):
//  - D = 128: 128x64 tiles, 4 warps, 1 stage (FlashAttention-2's choice): 32 query
//    rows per warp, so every K/V fragment read from shared memory feeds two m16 tiles;
//    255 registers without spills, 71 KB of shared memory, two CTAs per SM. Two stages
//    would spill a few registers at this tile.
//  - D <= 96: the same tile with 2 stages (the accumulators leave room for the
//    double-buffered K/V, so the whole next tile loads during this one).
//  - D = 256: 64x64 tiles, 4 warps, 1 stage: 16 rows per warp keeps the 128 output
//    accumulators per thread in registers; 104 KB of shared memory.
//  - When 128-row query tiles would give fewer than two CTAs per SM, 64-row tiles.
KernelChoice sm80(const Problem& problem, const runtime::DeviceInfo& device, const std::string& why_not_sm90) {
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
  return {c, "heuristic (sm80 family: " + why + "; " + why_not_sm90 + ")"};
}

// Adaptive patterns write whole blocks of tiles per chosen block, so both tiles divide
// the block: the family's usual tile where it does, else the largest smaller one that
// does (sm90 needs 64-row multiples; blocks of 32 run on sm80 with 32x32 tiles).
KernelChoice adaptive_heuristic(const Pattern& pattern, const Problem& problem, const runtime::DeviceInfo& device) {
  const int64_t block = std::get<Adaptive>(pattern.node()).block;
  if (block % 32 != 0)
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "adaptive block {} is not a multiple of 32: the kernels' tiles (32 to 128 tokens) must divide it", block);
  std::string why_not;
  const bool sm90_ok =
      family_supports(KernelFamily::kSm90, static_cast<int>(problem.head_dim), problem.dtype, device.arch(), &why_not);
  if (sm90_ok && block % 64 == 0) {
    KernelChoice c = sm90(problem, device, false);
    if (block % c.config.tile_m != 0) c.config.tile_m = 64;
    if (block % c.config.tile_n != 0) c.config.tile_n = 64;
    c.config.warps = c.config.threads() / 32;  // derived from tile_m in this family
    c.source.insert(c.source.size() - 1, fmt::format("; adaptive block {}: {}x{} tiles divide it", block,
                                                     c.config.tile_m, c.config.tile_n));
    return c;
  }
  KernelChoice c = sm80(problem, device, sm90_ok ? fmt::format("not sm90: adaptive block {} is not a multiple of its "
                                                               "64-row tiles", block)
                                                 : "not sm90: " + why_not);
  if (block % c.config.tile_m != 0) c.config.tile_m = block % 64 == 0 ? 64 : 32;
  if (block % c.config.tile_n != 0) c.config.tile_n = 32;
  if (c.config.tile_m == 32) c.config.warps = 2;
  c.source.insert(c.source.size() - 1,
                  fmt::format("; adaptive block {}: {}x{} tiles divide it", block, c.config.tile_m, c.config.tile_n));
  return c;
}

}  // namespace

// Work items launch longest first (most key tiles first): for uniform patterns this is
// the natural order, for imbalanced ones (causal, global rows) the long items no longer
// start last and stretch the tail.
KernelChoice heuristic_for(KernelFamily family, const Pattern& pattern, const Problem& problem,
                           const runtime::DeviceInfo& device) {
  std::string why;
  if (!family_supports(family, static_cast<int>(problem.head_dim), problem.dtype, device.arch(), &why))
    SPATTN_FAIL(ErrorCode::kUnsupported, "no {} kernel for {} on {}: {}", to_string(family), problem.to_string(),
                device.name, why);
  switch (family) {
    case KernelFamily::kSm80: return sm80(problem, device, "family requested");
    case KernelFamily::kSm90: return sm90(problem, device, layout_permutes_or_false(pattern, problem));
  }
  SPATTN_FAIL(ErrorCode::kInternal, "no heuristic for kernel family {}", static_cast<int>(family));
}

// The backward kernel: on Hopper at head dim 128 the sm90 family (wgmma), 128 keys per
// CTA with two query-tile stages; measured on an H200 (bench/NOTES.md) dense 16k 14.7 ms
// against 23.2 for the sm80 kernel, window 1024 at 64k 6.8 against 9.2. Permuted layouts
// copy their rows in slot order first (":copy": LongNet at 64k 16.1 ms against 22.1 on
// sm80 and 22.9 gathered inline; strided 64 6.7 against 7.3), except grids whose tiles
// are mostly partial, which stay on sm80 as in the forward pass (neighborhood 13x13 at
// 64k: 8.8 ms on sm80, 8.5 copied on sm90). Otherwise the sm80
// family: 128 keys per CTA (8 warps) and two query-tile buffers where they fit, then one
// buffer, then 64 keys per CTA.
KernelChoice backward_heuristic(const Pattern& pattern, const Problem& problem, const runtime::DeviceInfo& device) {
  const int d = static_cast<int>(problem.head_dim);
  const int limit = device.smem_per_block_optin;
  // Both kernels of a config (key tiles, deterministic dQ pass) within the device's limit.
  auto fits = [&](const KernelConfig& c) {
    return limit <= 0 || std::max(backward_smem_bytes(c, d), backward_dq_smem_bytes(c, d)) <= limit;
  };
  // Adaptive patterns: both tiles divide the block (key tiles are 64 or 128 keys).
  const int64_t block = is_adaptive(pattern) ? std::get<Adaptive>(pattern.node()).block : 0;
  if (block > 0 && block % 64 != 0)
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "backward of adaptive block {}: the backward kernels take 64 or 128 keys per CTA and their tiles must "
                "divide the block; blocks that are multiples of 64 train",
                block);
  auto divides = [&](const KernelConfig& c) { return block == 0 || (block % c.tile_m == 0 && block % c.tile_n == 0); };
  std::string why_not;
  if (!family_supports(KernelFamily::kSm90, d, problem.dtype, device.arch(), &why_not)) {
    why_not = "not sm90: " + why_not;
  } else if (d != 128) {
    why_not = fmt::format("not sm90: its backward is measured faster at head dim 128 only (not {})", d);
  } else {
    const LayoutTraits traits = block > 0 ? LayoutTraits{} : layout_traits_or_default(pattern, problem);
    KernelConfig c = KernelConfig::parse(block > 0 && block % 128 != 0 ? "sm90:64x64s2" : "sm90:64x128s2");
    if (traits.permutes) c.gather = TokenGather::kCopy;
    if (traits.permutes && traits.mostly_partial) {
      why_not = "not sm90: the layout permutes tokens and most of its tiles are partial, whose mask the sm80 kernel "
                "evaluates faster";
    } else if (!fits(c)) {
      why_not = fmt::format("not sm90: {} B of shared memory per block allowed", limit);
    } else {
      check_backward_config(c, d, problem.dtype, device.arch(), limit);
      return {c, fmt::format("heuristic (backward, sm90 family: wgmma, {} keys per CTA in {} warpgroup{}, 64 "
                             "queries per step, two query-tile stages, {} B of shared memory{}{})",
                             c.tile_n, c.tile_n / 64, c.tile_n > 64 ? "s" : "", backward_smem_bytes(c, d),
                             block > 0 ? fmt::format("; adaptive block {}: the tiles divide it", block) : "",
                             traits.permutes ? "; permuted tokens copied in slot order before the kernel, then "
                                               "loaded by TMA"
                                             : "")};
    }
  }
  for (const char* text : {"64x128w8s2", "64x128w8s1", "64x64w4s2", "64x64w4s1"}) {
    KernelConfig c = KernelConfig::parse(text);
    if (!fits(c) || !divides(c)) continue;
    check_backward_config(c, d, problem.dtype, device.arch(), limit);
    return {c, fmt::format("heuristic (backward, sm80 family: {} keys per CTA, {} queries per step, {} query-tile "
                           "buffer{}, {} B of shared memory of {} allowed; {})",
                           c.tile_n, c.tile_m, c.stages, c.stages > 1 ? "s" : "", backward_smem_bytes(c, d), limit,
                           why_not)};
  }
  SPATTN_FAIL(ErrorCode::kUnsupported,
              "no backward config fits head dim {} in {} B of shared memory per block on {} (64x64w4s1 needs {} B)", d,
              limit, device.name, backward_smem_bytes(KernelConfig::parse("64x64w4s1"), d));
}

bool layout_permutes(const Pattern& pattern, const Problem& problem) {
  LayoutOptions lo;  // the permutation a layout chooses does not depend on the tile shape
  const Layout layout = compile_layout(pattern, problem.shape(), lo);
  for (const BlockTable& t : layout.tables)
    if (!t.q_slots.empty() || !t.k_slots.empty()) return true;
  return false;
}

LayoutTraits layout_traits_or_default(const Pattern& pattern, const Problem& problem) {
  LayoutTraits traits;
  try {
    const Layout layout = compile_layout(pattern, problem.shape(), LayoutOptions{});
    int64_t listed = 0, full = 0;
    for (const BlockTable& t : layout.tables) {
      traits.permutes |= !t.q_slots.empty() || !t.k_slots.empty();
      listed += t.row_ptr.empty() ? 0 : t.row_ptr.back();
      for (int32_t f : t.full_count) full += f;
    }
    traits.mostly_partial = listed > 0 && 2 * full < listed;
  } catch (const Error&) {
  }
  return traits;
}

bool layout_permutes_or_false(const Pattern& pattern, const Problem& problem) {
  try {
    return layout_permutes(pattern, problem);
  } catch (const Error&) {
    return false;
  }
}

// Permuted layouts run on sm90 with their rows copied in slot order first (":copy"),
// measured on an H200 at 64k tokens, 16 heads (bench/NOTES.md): LongNet
// [2048,4096,8192]x[1,2,4] 5.32 ms against 8.24 (sm80) and 8.65 (sm90 gathering rows
// inline); relative stride 64: 1.63 against 2.37 and 4.09. Permuted layouts whose tiles
// are mostly partial stay on sm80, whose mask of partial tiles costs less: neighborhood
// 256x256, window 13x13: 4.21 ms against 7.19 (inline) and 8.61 (copied). (The
// autotuner tries all of them.)
KernelChoice heuristic(const Pattern& pattern, const Problem& problem, const runtime::DeviceInfo& device) {
  if (is_adaptive(pattern)) return adaptive_heuristic(pattern, problem, device);
  std::string why;
  if (!family_supports(KernelFamily::kSm90, static_cast<int>(problem.head_dim), problem.dtype, device.arch(), &why))
    return sm80(problem, device, "not sm90: " + why);
  const LayoutTraits traits = layout_traits_or_default(pattern, problem);
  if (traits.permutes && traits.mostly_partial)
    return sm80(problem, device,
                "not sm90: the layout permutes tokens and most of its tiles are partial, whose mask the sm80 kernel "
                "evaluates faster");
  return sm90(problem, device, traits.permutes);
}

KernelChoice heuristic_for_pass(TunePass pass, const Pattern& pattern, const Problem& problem,
                                const runtime::DeviceInfo& device) {
  switch (pass) {
    case TunePass::kForward: return heuristic(pattern, problem, device);
    case TunePass::kBackward: return backward_heuristic(pattern, problem, device);
  }
  SPATTN_FAIL(ErrorCode::kInternal, "no heuristic for pass {}", static_cast<int>(pass));
}

}  // namespace spattn::engine
