// The kernel configuration: the one struct that is the autotuner's search space, the
// constants the code generator writes into the kernel template, and part of the kernel
// cache key. Every field changes speed, never results: block tables are rebuilt for the
// tile shape and the partial-tile mask is exact at any tile.
#pragma once

#include <spattn/layout.hpp>

#include <string>
#include <string_view>

namespace spattn {

struct KernelConfig {
  int tile_m = 128;  // query rows per CTA; a multiple of 16 * warps, at most 256
  int tile_n = 64;   // keys per K/V tile: 32, 64 or 128
  int warps = 4;     // 2, 4 or 8 warps; each warp owns tile_m / warps query rows
  int stages = 1;    // 1: single K and V buffers — the V load overlaps QK^T and the next K
                     //    load overlaps PV (less shared memory, more CTAs per SM);
                     // 2: double-buffered K and V — the whole next tile loads during this one
  bool permute = true;  // token permutations for token-level patterns (LongNet, strides, grids)
  ScheduleOrder schedule = ScheduleOrder::kRowMajor;  // launch order of work items

  // Throws kInvalidArgument/kUnsupported naming the bad field and what is allowed
  // (including register budgets for this head dim).
  void validate(int head_dim) const;
  // Dynamic shared memory per CTA of the forward kernel.
  int smem_bytes(int head_dim) const;
  // The layout this config runs on: its tile shape, permutation and launch order.
  LayoutOptions layout_options() const;
  // "128x64w4s2" plus ":noperm" and ":hilbert"/":longest" when not the default.
  std::string to_string() const;
  // Inverse of to_string(); throws kInvalidArgument.
  static KernelConfig parse(std::string_view text);
  bool operator==(const KernelConfig&) const = default;
};

// Head dims the forward kernel supports, and the list as text for error messages.
bool head_dim_supported(int head_dim);
std::string supported_head_dims();

}  // namespace spattn
