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

// The backward kernel's configuration (see check_backward_config): on sm_90a at head
// dim 128 for natural-order layouts the sm90 family (sm90:64x128s2); otherwise the sm80
// family, FlashAttention-2's 128 keys per CTA (8 warps of 16) and 64 queries per step
// where the shared memory allows, else 64 keys (4 warps).
KernelChoice backward_heuristic(const Pattern& pattern, const Problem& problem, const runtime::DeviceInfo& device);

// The heuristic of a pass: heuristic() for the forward kernel, backward_heuristic() for
// the backward kernel.
KernelChoice heuristic_for_pass(TunePass pass, const Pattern& pattern, const Problem& problem,
                                const runtime::DeviceInfo& device);

// Whether the layout of `pattern` at `problem` gathers tokens through a permutation
// (LongNet, relative strides, grids); throws like compile_layout (e.g. adaptive patterns).
bool layout_permutes(const Pattern& pattern, const Problem& problem);
// The same, false where the layout cannot be compiled (for the heuristics and the tuner:
// the plan's own compile_layout reports what is wrong; adaptive patterns build their
// tables on the GPU).
bool layout_permutes_or_false(const Pattern& pattern, const Problem& problem);
// What the forward heuristic reads of the layout (default layout options): whether it
// permutes tokens, and whether most of its listed tiles are partial (evaluate the mask).
// Both false where the layout cannot be compiled, as above.
struct LayoutTraits {
  bool permutes = false;
  bool mostly_partial = false;
};
LayoutTraits layout_traits_or_default(const Pattern& pattern, const Problem& problem);

// The heuristic's family for this problem and device — sm90 where it supports the head
// dim and dtype on the device's arch (permuted layouts with their rows copied first),
// except permuted layouts whose tiles are mostly partial (grids); else sm80 — then its
// configuration in that family.
// Adaptive patterns take tiles that divide their block: sm90 for multiples of 64, else
// sm80 (multiples of 32); kUnsupported for other blocks.
KernelChoice heuristic(const Pattern& pattern, const Problem& problem, const runtime::DeviceInfo& device);
// The heuristic's configuration within one family; throws kUnsupported (naming what the
// family supports) when it cannot run the problem on the device.
KernelChoice heuristic_for(KernelFamily family, const Pattern& pattern, const Problem& problem,
                           const runtime::DeviceInfo& device);

}  // namespace spattn::engine
