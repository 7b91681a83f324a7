// The autotuner's search space: an explicit table of kernel configurations per (arch
// family, dtype, head dim), expanded over schedule orders and (for patterns that use a
// token permutation) permutation on/off, then pruned by what the target can run.
//
// Pruning happens in two steps. Before compiling: KernelConfig::validate() (register
// budgets of the accumulators) and the dynamic shared memory against the device's
// opt-in limit. After compiling (tuner.cpp): register spills reported by ptxas, and the
// driver's per-function limits when the module is loaded on the GPU.
#pragma once

#include <spattn/autotune.hpp>
#include <spattn/config.hpp>
#include <spattn/pattern.hpp>
#include <spattn/tensor.hpp>

#include <string>
#include <vector>

#include "engine/forward.hpp"
#include "engine/select.hpp"
#include "runtime/device.hpp"

namespace spattn::autotune {

// The table a target arch uses: "sm_90a" (sm_90, sm_90a) or "sm_80" (sm_80 .. sm_89, and
// sm_100 / sm_120, which run the portable mma.sync kernels). Throws kUnsupported naming
// the archs that have tables.
std::string arch_family(const std::string& arch);

// Per-block limits of a target, from the device when there is one (device_limits) or, on a
// GPU-less host, the largest opt-in shared memory of that arch (arch_limits):
//   sm_80 / sm_87: 163 KiB, sm_86 / sm_89 / sm_120: 99 KiB, sm_90(a) / sm_100: 227 KiB.
struct TargetLimits {
  std::string arch;
  int smem_per_block = 0;   // dynamic shared memory a block may opt into
  bool from_device = false;  // read from a GPU (true) or assumed for the arch (false)
};
TargetLimits arch_limits(const std::string& arch);
TargetLimits device_limits(const runtime::DeviceInfo& device);

// A stand-in for a GPU of `arch`, for selecting kernels on a host without that GPU
// (prewarm, dry runs): the SM count and L2 of the arch's data-centre part, which is what
// the heuristic looks at (sm_80: A100, 108 SMs; sm_86: 84; sm_87: 16; sm_89: 128;
// sm_90/sm_90a: H100/H200, 132; sm_100: 148; sm_120: 170), shared memory as arch_limits().
runtime::DeviceInfo typical_device(const std::string& arch);

// One row of the search-space table (one per arch, kernel family, head dim).
struct TableRow {
  const char* family;                 // the arch table: "sm_90a", "sm_80"
  std::vector<DType> dtypes;
  int head_dim;
  std::vector<const char*> configs;   // KernelConfig::to_string() forms, tile shape only
  const char* why;                    // what the row explores
};
// The whole table (for listings and tests).
const std::vector<TableRow>& search_table();
// The tile configurations of one (arch, dtype, head dim), in table order (on sm_90a
// both kernel families' rows, so the tuner measures one family against the other). Throws
// kUnsupported when there is no row (naming the head dims that have one).
std::vector<KernelConfig> table_configs(const std::string& arch, DType dtype, int head_dim);

// What a configuration must pass to run `pass` at (head_dim, dtype) on `arch` with
// `smem_limit` bytes of shared memory per block (0: unchecked): KernelConfig::check for
// the forward pass, check_backward_config for the backward pass. Throws with the reason.
void check_config(TunePass pass, const KernelConfig& config, int head_dim, DType dtype, const std::string& arch,
                  int smem_limit);

// The backward kernels' table: per family, the first row of that family whose arch
// matches ("" = every arch) and whose max_head_dim covers the head dim.
struct BackwardRow {
  const char* arch;
  int max_head_dim;
  std::vector<const char*> configs;
  const char* why;
};
const std::vector<BackwardRow>& backward_table();
std::vector<KernelConfig> backward_table_configs(const std::string& arch, int head_dim);

// Schedule orders every tile configuration is tried with (longest-first, row-major, Hilbert).
const std::vector<ScheduleOrder>& schedule_orders();

struct Candidate {
  KernelConfig config;
  bool heuristic = false;  // the configuration the heuristic would choose (the baseline)
  std::string pruned;      // empty: to be compiled and timed; else why it is not
};

// The candidates for a pattern and problem on a target: the table's tiles x schedule
// orders x (permutation on/off where the pattern's layout permutes tokens, and for sm90
// tiles with the permutation on, rows gathered inline or copied first), plus the
// heuristic's configuration (first, never dropped for being absent from the table),
// each pruned statically (validate, shared memory). Deduplicated; pure, no GPU. For the
// backward pass: the backward table x permutation on/off, pruned by
// check_backward_config.
std::vector<Candidate> enumerate_candidates(const Pattern& pattern, const engine::Problem& problem,
                                            const TargetLimits& limits, const KernelConfig& heuristic,
                                            TunePass pass = TunePass::kForward);


}  // namespace spattn::autotune
