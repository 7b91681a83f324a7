#include "autotune/search_space.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "common/check.hpp"

namespace spattn::autotune {

std::string arch_family(const std::string& arch) {
  if (arch == "sm_90" || arch == "sm_90a") return "sm_90a";
  for (const char* a : {"sm_80", "sm_86", "sm_87", "sm_89", "sm_100", "sm_100a", "sm_120", "sm_120a"})
    if (arch == a) return "sm_80";
  SPATTN_FAIL(ErrorCode::kUnsupported,
              "the autotuner has no search space for arch '{}'; it has tables for sm_90a (sm_90, sm_90a) and sm_80 "
              "(sm_80, sm_86, sm_87, sm_89, sm_100, sm_120)",
              arch);
}

TargetLimits arch_limits(const std::string& arch) {
  const std::string family = arch_family(arch);  // rejects unknown archs first
  TargetLimits l;
  l.arch = arch;
  if (family == "sm_90a" || arch.rfind("sm_100", 0) == 0) l.smem_per_block = 227 * 1024;
  else if (arch == "sm_80" || arch == "sm_87") l.smem_per_block = 163 * 1024;
  else l.smem_per_block = 99 * 1024;  // sm_86, sm_89, sm_120
  return l;
}

TargetLimits device_limits(const runtime::DeviceInfo& device) {
  TargetLimits l;
  l.arch = device.arch();
  l.smem_per_block = device.smem_per_block_optin;
  l.from_device = true;
  return l;
}

runtime::DeviceInfo typical_device(const std::string& arch) {
  struct Typical {
    const char* arch;
    int cc_major, cc_minor, sm_count, l2_mib;
  };
  static const Typical table[] = {{"sm_80", 8, 0, 108, 40},   {"sm_86", 8, 6, 84, 6},     {"sm_87", 8, 7, 16, 4},
                                  {"sm_89", 8, 9, 128, 72},   {"sm_90", 9, 0, 132, 50},   {"sm_90a", 9, 0, 132, 50},
                                  {"sm_100", 10, 0, 148, 126}, {"sm_100a", 10, 0, 148, 126}, {"sm_120", 12, 0, 170, 96},
                                  {"sm_120a", 12, 0, 170, 96}};
  const TargetLimits limits = arch_limits(arch);
  for (const Typical& t : table) {
    if (arch != t.arch) continue;
    runtime::DeviceInfo d;
    d.name = fmt::format("typical {} GPU (assumed: no such GPU on this host)", arch);
    d.cc_major = t.cc_major;
    d.cc_minor = t.cc_minor;
    d.sm_count = t.sm_count;
    d.l2_bytes = t.l2_mib << 20;
    d.smem_per_block_optin = limits.smem_per_block;
    return d;
  }
  SPATTN_FAIL(ErrorCode::kUnsupported, "no typical device is known for arch '{}'", arch);
}

// The tables. Every configuration satisfies KernelConfig::validate() for its head dim (a
// test checks it); rows of the two families differ where the shared memory budget does.
// Why these shapes:
//  - the heuristic's tile first (128x64w4, FlashAttention-2's), with and without the
//    double-buffered K/V;
//  - 64-row query tiles: twice the CTAs, for short sequences, few heads, or sparse
//    patterns whose work is spread thinly over query tiles;
//  - 32-key tiles: less wasted work in partial tiles of fine-grained token patterns
//    (strides, dilation without a permutation, small windows);
//  - 128-key tiles with 16 rows per warp: fewer loop trips over long full-tile runs
//    (dense, wide windows, global columns);
//  - 8 warps: more warps per SM to hide latency when a CTA holds 256 rows or 128 keys.
const std::vector<TableRow>& search_table() {
  static const std::vector<TableRow> table = {
      // --- Hopper (sm_90a): 227 KiB of shared memory per block ------------------------
      {"sm_90a", {DType::kBFloat16, DType::kFloat16}, 128,
       {"128x64w4s1", "128x64w4s2", "64x64w4s1", "64x64w4s2", "64x64w2s1", "64x128w4s1", "128x32w4s1",
        "128x32w4s2", "128x128w8s1", "256x64w8s1"},
       "D=128: at most 32 rows per warp (64 output accumulators per thread)"},
      {"sm_90a", {DType::kBFloat16, DType::kFloat16}, 96,
       {"128x64w4s2", "128x64w4s1", "64x64w4s2", "64x64w2s2", "64x128w4s2", "128x32w4s2", "128x128w8s2",
        "256x64w8s2"},
       "D=96: as D=128, double-buffered K/V by default"},
      {"sm_90a", {DType::kBFloat16, DType::kFloat16}, 64,
       {"128x64w4s2", "128x64w4s1", "64x64w4s2", "128x32w2s2", "64x128w4s2", "128x128w8s2", "256x64w8s2",
        "128x64w8s2"},
       "D=64: up to 64 rows per warp with 32-key tiles"},
      {"sm_90a", {DType::kBFloat16, DType::kFloat16}, 32,
       {"128x64w4s2", "128x64w4s1", "64x64w4s2", "128x32w2s2", "64x128w4s2", "128x128w8s2", "256x64w8s2",
        "64x64w2s2"},
       "D=32: loads are cheap, larger tiles amortise the softmax"},
      {"sm_90a", {DType::kBFloat16, DType::kFloat16}, 256,
       {"64x64w4s1", "64x64w4s2", "64x32w4s2", "64x128w4s1", "128x64w8s1", "128x32w8s2", "32x64w2s1"},
       "D=256: at most 16 rows per warp (128 output accumulators per thread)"},
      // --- Hopper, the sm90 family (wgmma, TMA, warpgroups) ----------------------------
      {"sm_90a", {DType::kBFloat16, DType::kFloat16}, 128,
       {"sm90:128x128s2", "sm90:128x176s2", "sm90:128x160s2", "sm90:128x64s2", "sm90:128x96s2", "sm90:128x80s2",
        "sm90:128x128s1", "sm90:64x128s2", "sm90:128x64s3"},
       "sm90, D=128: two consumer warpgroups (S + P + O = 160 registers at 128 keys); 160-176 keys were 1-5% "
       "faster on dense and causal (H200), narrower key tiles for sparse rows, 64-row tiles for few work items"},
      {"sm_90a", {DType::kBFloat16, DType::kFloat16}, 64,
       {"sm90:128x128s2", "sm90:128x160s2", "sm90:128x64s3", "sm90:192x64s3", "sm90:64x128s2", "sm90:128x96s2"},
       "sm90, D=64: up to three consumer warpgroups; wider key tiles amortise the softmax"},
      {"sm_90a", {DType::kBFloat16, DType::kFloat16}, 256,
       {"sm90:128x64s2", "sm90:128x32s2", "sm90:64x64s2", "sm90:128x48s2"},
       "sm90, D=256: O alone is 128 registers per consumer thread; outputs staged only where shared memory allows"},
      // --- Ampere and the portable family (sm_80): 163 KiB (sm_80) or 99 KiB -----------
      {"sm_80", {DType::kBFloat16, DType::kFloat16}, 128,
       {"128x64w4s1", "128x64w4s2", "64x64w4s1", "64x64w4s2", "64x64w2s1", "64x128w4s1", "128x32w4s1",
        "128x32w4s2", "128x128w8s1", "256x64w8s1"},
       "D=128: at most 32 rows per warp (64 output accumulators per thread)"},
      {"sm_80", {DType::kBFloat16, DType::kFloat16}, 96,
       {"128x64w4s2", "128x64w4s1", "64x64w4s2", "64x64w2s2", "64x128w4s2", "128x32w4s2", "128x128w8s2"},
       "D=96: as D=128, double-buffered K/V by default"},
      {"sm_80", {DType::kBFloat16, DType::kFloat16}, 64,
       {"128x64w4s2", "128x64w4s1", "64x64w4s2", "128x32w2s2", "64x128w4s2", "128x128w8s2", "128x64w8s2"},
       "D=64: up to 64 rows per warp with 32-key tiles"},
      {"sm_80", {DType::kBFloat16, DType::kFloat16}, 32,
       {"128x64w4s2", "128x64w4s1", "64x64w4s2", "128x32w2s2", "64x128w4s2", "128x128w8s2", "256x64w8s2"},
       "D=32: loads are cheap, larger tiles amortise the softmax"},
      {"sm_80", {DType::kBFloat16, DType::kFloat16}, 256,
       {"64x64w4s1", "64x32w4s2", "64x32w4s1", "128x64w8s1", "128x32w8s2", "32x64w2s1", "32x64w2s2"},
       "D=256: at most 16 rows per warp; 64x64 tiles with two stages exceed 163 KiB"},
  };
  return table;
}

std::vector<KernelConfig> table_configs(const std::string& arch, DType dtype, int head_dim) {
  const std::string family = arch_family(arch);
  std::vector<int> dims;
  std::vector<KernelConfig> out;  // every row of the arch (one per kernel family) for this head dim
  for (const TableRow& row : search_table()) {
    if (row.family != family) continue;
    if (std::find(row.dtypes.begin(), row.dtypes.end(), dtype) == row.dtypes.end()) continue;
    if (std::find(dims.begin(), dims.end(), row.head_dim) == dims.end()) dims.push_back(row.head_dim);
    if (row.head_dim != head_dim) continue;
    for (const char* text : row.configs) out.push_back(KernelConfig::parse(text));
  }
  if (!out.empty()) return out;
  std::sort(dims.begin(), dims.end());
  SPATTN_FAIL(ErrorCode::kUnsupported, "no autotuning table for {} {} head dim {}; tables exist for head dims {}",
              arch, to_string(dtype), head_dim, fmt::join(dims, ", "));
}

// The backward kernels (check_backward_config). sm80 family, every arch: 128 keys per
// CTA (8 warps) with two query-tile buffers is the heuristic's; 64 keys (4 warps) doubles
// the CTAs for short or sparse key ranges; 32-query steps waste less of partial tiles;
// one buffer leaves more shared memory (two CTAs per SM on 227 KiB parts at 64 keys).
// sm90 family on sm_90a: 128 keys (two warpgroups) with 1-3 query-tile stages, and 64
// keys (one warpgroup, which computes all dQ columns) for short key ranges.
const std::vector<BackwardRow>& backward_table() {
  static const std::vector<BackwardRow> table = {
      {"", 64, {"64x128w8s2", "128x128w8s2", "64x64w4s2", "128x64w4s2", "32x128w8s2", "64x128w8s1"},
       "D<=64: up to 128 queries per step (D + tile_m <= 192 accumulator registers)"},
      {"", 128, {"64x128w8s2", "64x128w8s1", "64x64w4s2", "64x64w4s1", "32x128w8s2", "32x64w4s2"},
       "D=96, 128: at most 64 queries per step"},
      {"sm_90a", 64, {"sm90:64x64s2", "sm90:64x64s3", "sm90:64x64s1"}, "sm90, D=64: one warpgroup of 64 keys"},
      {"sm_90a", 128, {"sm90:64x128s2", "sm90:64x128s3", "sm90:64x128s1", "sm90:64x64s2"},
       "sm90, D=128: two warpgroups of 64 keys, or one"},
  };
  return table;
}

void check_config(TunePass pass, const KernelConfig& config, int head_dim, DType dtype, const std::string& arch,
                  int smem_limit) {
  if (pass == TunePass::kBackward)
    check_backward_config(config, head_dim, dtype, arch, smem_limit);
  else
    config.check(head_dim, dtype, arch, smem_limit);
}

std::vector<KernelConfig> backward_table_configs(const std::string& arch, int head_dim) {
  std::vector<KernelConfig> out;
  for (KernelFamily family : {KernelFamily::kSm80, KernelFamily::kSm90}) {
    for (const BackwardRow& row : backward_table()) {
      if (head_dim > row.max_head_dim || (*row.arch && arch != row.arch)) continue;
      std::vector<KernelConfig> configs;
      for (const char* text : row.configs) {
        KernelConfig c = KernelConfig::parse(text);
        if (c.family != family) break;
        // A row covers the head dims its family's backward supports (sm90: 64 and 128).
        try {
          check_backward_config(c, head_dim, DType::kBFloat16, arch, 0);
        } catch (const Error&) {
          continue;
        }
        configs.push_back(c);
      }
      if (configs.empty()) continue;
      out.insert(out.end(), configs.begin(), configs.end());
      break;  // the first matching row of the family
    }
  }
  if (!out.empty()) return out;
  SPATTN_FAIL(ErrorCode::kUnsupported, "no backward autotuning table for head dim {}; the backward kernels support {}",
              head_dim, fmt::join(backward_head_dims(), ", "));
}

const std::vector<ScheduleOrder>& schedule_orders() {
  // Longest-first (the heuristic's: long work items do not start last and stretch the
  // tail), row-major (neighbouring query tiles share K/V tiles in L2 at the same time),
  // Hilbert (the same, in two dimensions, for patterns whose key tiles move with the row).
  static const std::vector<ScheduleOrder> orders = {ScheduleOrder::kLongestFirst, ScheduleOrder::kRowMajor,
                                                    ScheduleOrder::kHilbert};
  return orders;
}

std::vector<Candidate> enumerate_candidates(const Pattern& pattern, const engine::Problem& problem,
                                            const TargetLimits& limits, const KernelConfig& heuristic, TunePass pass) {
  const int d = static_cast<int>(problem.head_dim);
  const bool backward = pass == TunePass::kBackward;
  std::vector<KernelConfig> tiles =
      backward ? backward_table_configs(limits.arch, d) : table_configs(limits.arch, problem.dtype, d);
  // The backward kernel walks its work list in table order: the schedule does not apply.
  const std::vector<ScheduleOrder> orders = backward ? std::vector<ScheduleOrder>{heuristic.schedule} : schedule_orders();
  const bool permutes = engine::layout_permutes_or_false(pattern, problem);

  std::vector<KernelConfig> configs = {heuristic};
  for (KernelConfig tile : tiles) {
    for (ScheduleOrder order : orders) {
      for (bool permute : {true, false}) {
        if (!permute && !permutes) continue;
        tile.schedule = order;
        tile.permute = permute;
        // sm90 kernels of permuted layouts also try their rows copied first, and forward
        // kernels of two or three consumer warpgroups also try them taking turns (in the
        // longest-first order only: turns do not change which order is best).
        const bool copies = permute && permutes && tile.family == KernelFamily::kSm90;
        const bool turns = !backward && tile.family == KernelFamily::kSm90 && tile.tile_m >= 128 &&
                           order == ScheduleOrder::kLongestFirst;
        for (TokenGather gather : {TokenGather::kInline, TokenGather::kCopy}) {
          if (gather == TokenGather::kCopy && !copies) continue;
          for (bool turn : {false, true}) {
            if (turn && !turns) continue;
            tile.gather = gather;
            tile.turns = turn;
            configs.push_back(tile);
          }
        }
      }
    }
  }

  std::vector<Candidate> out;
  for (size_t k = 0; k < configs.size(); ++k) {
    const KernelConfig& c = configs[k];
    if (std::any_of(out.begin(), out.end(), [&](const Candidate& x) { return x.config == c; })) continue;
    Candidate cand;
    cand.config = c;
    cand.heuristic = k == 0;
    try {
      check_config(pass, c, d, problem.dtype, limits.arch, limits.smem_per_block);
    } catch (const Error& e) {
      cand.pruned = e.what();
    }
    out.push_back(std::move(cand));
  }
  return out;
}

}  // namespace spattn::autotune
