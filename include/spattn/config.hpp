// The kernel configuration: the one struct that is the autotuner's search space, the
// constants the code generator writes into the kernel template, and part of the kernel
// cache key. Every field changes speed, never results: block tables are rebuilt for the
// tile shape and the partial-tile mask is exact at any tile.
//
// A configuration belongs to a kernel family (one template each). The family table
// (kernel_families()) is the one place that says what a family supports — head dims,
// dtypes, archs, tile shapes, shared memory — and KernelConfig::check() is the one place
// a configuration is validated against it.
#pragma once

#include <spattn/layout.hpp>
#include <spattn/tensor.hpp>

#include <string>
#include <string_view>
#include <vector>

namespace spattn {

enum class KernelFamily {
  kSm80,  // FlashAttention-2 style: mma.sync, ldmatrix, cp.async; every CTA one work item (sm_80 and newer)
  kSm90,  // Hopper: wgmma, TMA, a producer and consumer warpgroups, persistent CTAs (sm_90a only)
};
const char* to_string(KernelFamily family);                   // "sm80", "sm90"
KernelFamily kernel_family_from_string(std::string_view name);  // throws kInvalidArgument

// How an sm90 kernel reads the rows of tables whose tokens are permuted (LongNet,
// strides, grids): kInline gathers them row by row in the producer warpgroup with
// cp.async; kCopy first writes each such table's rows in slot order into workspace
// copies (a bandwidth-bound pre-pass per call), which the kernel then loads by TMA like
// natural-order tiles. Results are the same; tables in natural order never copy.
enum class TokenGather { kInline, kCopy };

struct KernelConfig {
  KernelFamily family = KernelFamily::kSm80;
  int tile_m = 128;  // query rows per work item. sm80: a multiple of 16 * warps, at most 256;
                     // sm90: 64 per consumer warpgroup (64, 128 or 192)
  int tile_n = 64;   // keys per K/V tile. sm80: 32, 64 or 128; sm90: a multiple of 16 up to 256
  int warps = 4;     // sm80: 2, 4 or 8 warps, each owning tile_m / warps query rows;
                     // sm90: derived, 4 per warpgroup (producer + tile_m / 64 consumers)
  int stages = 1;    // sm80: 1 (single K and V buffers: the V load overlaps QK^T and the next
                     //    K load overlaps PV) or 2 (double-buffered K/V);
                     // sm90: depth of the K/V ring between producer and consumers (1 to 4)
  bool permute = true;  // token permutations for token-level patterns (LongNet, strides, grids)
  ScheduleOrder schedule = ScheduleOrder::kRowMajor;  // launch order of work items
  TokenGather gather = TokenGather::kInline;  // sm90 only: ":copy" copies permuted rows first
  // sm90 forward with two or three consumer warpgroups (tile_m 128 or 192) only: ":turns"
  // makes the consumers take turns issuing their matrix instructions (named barriers), so
  // that one warpgroup's softmax runs while the next one's products use the tensor cores.
  bool turns = false;

  // The family's own rules (tile shape, warps, stages, register budgets for this head
  // dim, supported head dims). Throws kInvalidArgument / kUnsupported naming the field
  // and what the family allows.
  void validate(int head_dim) const;
  // validate() plus what a target must offer: the dtype, the arch (sm90 needs sm_90a)
  // and, when smem_limit > 0, the dynamic shared memory a block may opt into.
  void check(int head_dim, DType dtype, std::string_view arch, int smem_limit) const;
  // Dynamic shared memory per CTA of the forward kernel.
  int smem_bytes(int head_dim) const;
  // Threads per CTA.
  int threads() const;
  // The layout this config runs on: its tile shape, permutation and launch order.
  LayoutOptions layout_options() const;
  // sm80: "128x64w4s2"; sm90: "sm90:128x128s2"; plus ":noperm", ":hilbert"/":longest" and
  // (sm90) ":copy", ":turns" when not the default. (sm80 configs carry no prefix, so tuning databases and
  // scripts written before the sm90 family keep their meaning; parse() accepts "sm80:".)
  std::string to_string() const;
  // Inverse of to_string(); throws kInvalidArgument.
  static KernelConfig parse(std::string_view text);
  bool operator==(const KernelConfig&) const = default;
};

// One row of the family table.
struct KernelFamilyInfo {
  KernelFamily family;
  const char* name;           // "sm80"
  const char* summary;        // what the kernel is, in a line
  const char* template_name;  // the kernel template it renders, e.g. "spattn/forward.cuh"
  std::vector<int> head_dims;
  std::vector<DType> dtypes;
  std::vector<std::string> archs;  // NVRTC targets it compiles for ("sm_80", "sm_90a", ...)
  int ctas_per_sm;                 // CTAs one SM runs at once with the family's usual tiles
  bool persistent;                 // CTAs walk the work list (grid of at most SMs x ctas_per_sm)
};
const std::vector<KernelFamilyInfo>& kernel_families();
const KernelFamilyInfo& kernel_family_info(KernelFamily family);

// Whether the family can run (head_dim, dtype) on `arch`; if not and `why` is given, why.
bool family_supports(KernelFamily family, int head_dim, DType dtype, std::string_view arch,
                     std::string* why = nullptr);

// The pass a kernel configuration is for: the forward kernel, or the backward kernel
// (check_backward_config). The autotuner tunes one pass per run (spattn/autotune.hpp).
enum class TunePass { kForward, kBackward };

// Backward kernels take a KernelConfig of either family:
//  - sm80 (mma.sync; sm_80 and newer, Hopper too), e.g. 64x128w8s2: tile_n keys per CTA,
//    16 per warp (tile_n = 16 * warps, 4 or 8 warps), tile_m queries per step (16 to 128,
//    a multiple of 16), stages 1 or 2 (query-tile buffers). Head dims 32, 64, 96, 128.
//  - sm90 (wgmma/TMA; sm_90a), e.g. sm90:64x128s2: 64 queries per step, tile_n keys per
//    CTA (64 per warpgroup: 64 or 128), stages 1 to 3. Head dims 64 and 128 (128 keys per
//    CTA at 128 only).
// permute and schedule as in the forward pass. Throws kInvalidArgument / kUnsupported
// naming the field and what is allowed; smem_limit > 0 checks the shared memory of both
// backward kernels (the key-tile kernel and the deterministic dQ pass) too.
void check_backward_config(const KernelConfig& config, int head_dim, DType dtype, std::string_view arch, int smem_limit);
int backward_smem_bytes(const KernelConfig& config, int head_dim);     // the key-tile kernel
int backward_dq_smem_bytes(const KernelConfig& config, int head_dim);  // the deterministic dQ kernel
const std::vector<int>& backward_head_dims();  // of the sm80 backward kernel (the widest set)

// Head dims some family supports, and the list as text for error messages.
bool head_dim_supported(int head_dim);
std::string supported_head_dims();
// Throws kUnsupported when no family runs this head dim / dtype, naming what each
// family supports. The one check of a problem's head dim and dtype.
void check_problem_supported(int64_t head_dim, DType dtype);

}  // namespace spattn
