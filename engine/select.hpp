// Kernel selection by the documented heuristic: a pure function from a problem and a
// GPU (real, or a typical one of an arch) to a kernel configuration — its family
// included — and the reason, printable and logged. The tuning database, when it has an
// entry, overrides it (api/select.hpp); the autotuner uses it as its baseline.
#pragma once

#include <spattn/config.hpp>
#include <spattn/pattern.hpp>

#include <string>

#include "engine/forward.hpp"
#include "runtime/device.hpp"

namespace spattn::engine {

struct KernelChoice {
  KernelConfig config;
  std::string source;  // why: "heuristic (...)", "tuning database (...)", "forced ..."
};

// The backward kernel's configuration (sm80 family, see check_backward_config):
// FlashAttention-2's 128 keys per CTA (8 warps of 16) and 64 queries per step where the
// shared memory allows (sm_80, sm_90: 124 KB at head dim 128), else 64 keys (4 warps).
KernelChoice backward_heuristic(const Pattern& pattern, const Problem& problem, const runtime::DeviceInfo& device);

// Whether the layout of `pattern` at `problem` gathers tokens through a permutation
// (LongNet, relative strides, grids); throws like compile_layout (e.g. adaptive patterns).
bool layout_permutes(const Pattern& pattern, const Problem& problem);

// The heuristic's family for this problem and device — sm90 where it supports the head
// dim and dtype on the device's arch and the layout is in natural token order, else
// sm80 — then its configuration in that family.
KernelChoice heuristic(const Pattern& pattern, const Problem& problem, const runtime::DeviceInfo& device);
// The heuristic's configuration within one family; throws kUnsupported (naming what the
// family supports) when it cannot run the problem on the device.
KernelChoice heuristic_for(KernelFamily family, const Pattern& pattern, const Problem& problem,
                           const runtime::DeviceInfo& device);

}  // namespace spattn::engine
