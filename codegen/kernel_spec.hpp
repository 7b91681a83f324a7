// KernelSpec: everything that determines the source of one forward kernel, and the
// tile configuration that is the autotuner's search space.
#pragma once

#include <spattn/config.hpp>
#include <spattn/layout.hpp>
#include <spattn/tensor.hpp>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace spattn::codegen {

struct KernelSpec {
  std::vector<LayoutPart> parts;  // the partial-tile predicate of each softmax part
  KernelConfig config;
  int head_dim = 128;
  DType dtype = DType::kBFloat16;
  std::string arch = "sm_90a";
  // Whether some table gathers keys through a permutation (LongNet, strides, grids);
  // kernels without one compile the gather paths out.
  bool permuted_keys = true;
  // Forward only: the tensors hold a sub-rectangle of a larger problem (ring attention's
  // shard pairs), so the predicate adds SpattnFwdParams::q_offset / k_offset to local
  // indices; whole problems compile the additions out.
  bool token_offsets = false;
  // Documents (spattn/varlen.hpp, SpattnFwdParams::vl_tiles, SpattnBwdParams::vl_ktiles).
  // Forward: where the parts have per-row key ranges (render_row_bounds) the program also
  // holds the builders of their tables on the GPU, spattn_varlen_docs and
  // spattn_varlen_tables; otherwise the tables come from the host, with each document
  // shape's token orders. Backward: the parts must have per-row key ranges; the program
  // holds those builders and spattn_varlen_transpose at the backward tiles.
  bool varlen = false;
  // Backward only: the deterministic mode (no atomics; a separate dQ kernel).
  bool deterministic = false;
  // Adaptive layouts: the kernels read block gates when a call gives them
  // (SpattnGates; the backward also sums dS per tile pair for their gradients).
  bool gates = false;
};

// A rendered, ready-to-compile program.
struct RenderedKernel {
  std::string program_name;   // "spattn_fwd_<hash>.cu"
  std::string kernel_name;    // the extern "C" entry point
  std::string source;         // the generated translation unit
  std::vector<std::pair<std::string, std::string>> headers;  // embedded templates it includes
  std::vector<std::pair<std::string, std::string>> template_hashes;
  int threads = 0;
  int smem_bytes = 0;
  int dq_threads = 0, dq_smem_bytes = 0;  // the backward dQ kernel, when there is one
};

// Readable CUDA source for the spec, with a header comment naming it.
RenderedKernel render_forward(const KernelSpec& spec);
// Backward kernel source (templates/backward.cuh) for a spec whose config is a backward
// configuration (check_backward_config): the key-tile kernel `spattn_bwd`, and in
// deterministic mode the dQ kernel `spattn_bwd_dq` (tile_m / 16 warps, dq_smem_bytes).
RenderedKernel render_backward(const KernelSpec& spec);
// The merge / fill / reference helper kernels (templates/merge.cuh, reference.cuh).
RenderedKernel render_support_kernels();
// The selection kernels of adaptive patterns (templates/adaptive.cuh).
RenderedKernel render_adaptive_kernels();

// The partial-tile predicate of `parts` as one C++ function
//   bool <name>(int part, int h, int i, int j, int nq, int nk, int heads)
// (32-bit arithmetic: token indices are below 2^30)
// compilable both by NVRTC (as device code) and by a host C++ compiler, so tests can
// check it against Pattern::allowed_in_branch. `qualifiers` is prepended
// ("__device__ __forceinline__" or "inline").
std::string render_predicate(const std::vector<LayoutPart>& parts, const std::string& name,
                             const std::string& qualifiers);

// The same predicate as per-row key ranges, when every part allows each query at most
// two contiguous key ranges in natural order (windows, causal, global columns,
// hierarchies, their intersections and head groups):
//   void <name>(int part, int h, int i, int nq, int nk, int heads, int& lo0, int& hi0, int& lo1, int& hi1)
// key j is allowed iff lo0 <= j <= hi0 or lo1 <= j <= hi1. nullopt when not expressible.
std::optional<std::string> render_row_bounds(const std::vector<LayoutPart>& parts, const std::string& name,
                                             const std::string& qualifiers);

}  // namespace spattn::codegen
