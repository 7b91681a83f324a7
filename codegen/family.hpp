// Derived shapes of the kernel families that codegen writes into the templates; the
// family table itself is public (spattn/config.hpp) and lives in family.cpp.
#pragma once

#include <spattn/config.hpp>

namespace spattn::codegen {

// What an sm90 configuration implies for its kernel: warpgroups, register split,
// whether outputs are staged through shared memory, and the shared memory it needs.
struct Sm90Shape {
  int consumers = 2;      // consumer warpgroups (tile_m / 64)
  int threads = 384;
  int producer_regs = 0;  // setmaxnreg targets; 0: no reallocation
  int consumer_regs = 0;
  bool stage_o = true;    // outputs go through shared memory when it has room for them
  int smem_bytes = 0;
};
Sm90Shape sm90_shape(const KernelConfig& config, int head_dim);

// What an sm90 backward configuration (sm90:64x<tile_n>s<stages>) implies: one
// warpgroup per 64 keys of the tile, and the shared memory it needs.
struct Sm90BackwardShape {
  int warpgroups = 2;
  int threads = 256;
  int dq_cols = 64;  // dQ columns each warpgroup computes (head dim / warpgroups)
  int smem_bytes = 0;
};
Sm90BackwardShape sm90_backward_shape(const KernelConfig& config, int head_dim);

}  // namespace spattn::codegen
