// The kernel-family table and KernelConfig's validation, shared-memory formula and
// string form: everything that says what a family supports lives here.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <limits>

#include "codegen/family.hpp"
#include "common/check.hpp"

namespace spattn {

namespace {

// Largest dynamic shared memory one block may opt into on Hopper (H100/H200: 227 KiB).
constexpr int kSm90SmemLimit = 227 * 1024;

bool contains(const std::vector<int>& v, int x) { return std::find(v.begin(), v.end(), x) != v.end(); }

std::string dtype_list(const std::vector<DType>& dtypes) {
  std::string s;
  for (DType d : dtypes) s += (s.empty() ? "" : ", ") + std::string(to_string(d));
  return s;
}

}  // namespace

const std::vector<KernelFamilyInfo>& kernel_families() {
  // ctas_per_sm: sm80's 128x64 tiles at head dim 128 take 255 registers x 128 threads,
  // two CTAs per SM; sm90's CTA holds ~190 KiB of shared memory and all registers, one per SM.
  static const std::vector<KernelFamilyInfo> table = {
      {KernelFamily::kSm80, "sm80", "online softmax with mma.sync m16n8k16, ldmatrix and cp.async; one work item per CTA",
       "spattn/forward.cuh", {32, 64, 96, 128, 256}, {DType::kFloat16, DType::kBFloat16},
       {"sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_90a", "sm_100", "sm_100a", "sm_120", "sm_120a"}, 2, false},
      {KernelFamily::kSm90, "sm90",
       "wgmma with TMA (or cp.async gathers) into swizzled shared memory, a producer warpgroup and 1-3 consumer "
       "warpgroups, persistent CTAs",
       "spattn/forward_sm90.cuh", {64, 128, 256}, {DType::kFloat16, DType::kBFloat16}, {"sm_90a"}, 1, true},
  };
  return table;
}

const KernelFamilyInfo& kernel_family_info(KernelFamily family) {
  for (const KernelFamilyInfo& f : kernel_families())
    if (f.family == family) return f;
  SPATTN_FAIL(ErrorCode::kInternal, "kernel family {} has no row in the family table", static_cast<int>(family));
}

const char* to_string(KernelFamily family) { return kernel_family_info(family).name; }

KernelFamily kernel_family_from_string(std::string_view name) {
  std::string names;
  for (const KernelFamilyInfo& f : kernel_families()) {
    if (name == f.name) return f.family;
    names += (names.empty() ? "" : ", ") + std::string(f.name);
  }
  SPATTN_FAIL(ErrorCode::kInvalidArgument, "unknown kernel family '{}'; known: {}", name, names);
}

bool family_supports(KernelFamily family, int head_dim, DType dtype, std::string_view arch, std::string* why) {
  const KernelFamilyInfo& f = kernel_family_info(family);
  std::string reason;
  if (!contains(f.head_dims, head_dim))
    reason = fmt::format("the {} family supports head dims {} (not {})", f.name, fmt::join(f.head_dims, ", "), head_dim);
  else if (std::find(f.dtypes.begin(), f.dtypes.end(), dtype) == f.dtypes.end())
    reason = fmt::format("the {} family supports dtypes {} (not {})", f.name, dtype_list(f.dtypes), to_string(dtype));
  else if (!arch.empty() && std::find(f.archs.begin(), f.archs.end(), arch) == f.archs.end())
    reason = fmt::format("the {} family compiles for {} (not {})", f.name, fmt::join(f.archs, ", "), arch);
  if (why) *why = reason;
  return reason.empty();
}

bool head_dim_supported(int head_dim) {
  for (const KernelFamilyInfo& f : kernel_families())
    if (contains(f.head_dims, head_dim)) return true;
  return false;
}

std::string supported_head_dims() {
  std::vector<int> all;
  for (const KernelFamilyInfo& f : kernel_families())
    for (int d : f.head_dims)
      if (!contains(all, d)) all.push_back(d);
  std::sort(all.begin(), all.end());
  return fmt::format("{}", fmt::join(all, ", "));
}

void check_problem_supported(int64_t head_dim, DType dtype) {
  std::string per_family;
  std::vector<DType> dtypes;
  for (const KernelFamilyInfo& f : kernel_families()) {
    if (head_dim <= std::numeric_limits<int>::max() && family_supports(f.family, static_cast<int>(head_dim), dtype, ""))
      return;
    per_family += fmt::format("{}{} on {}: head dims {}, dtypes {}", per_family.empty() ? "" : "; ", f.name,
                              fmt::join(f.archs, "/"), fmt::join(f.head_dims, ", "), dtype_list(f.dtypes));
    for (DType d : f.dtypes)
      if (std::find(dtypes.begin(), dtypes.end(), d) == dtypes.end()) dtypes.push_back(d);
  }
  if (std::find(dtypes.begin(), dtypes.end(), dtype) == dtypes.end())
    SPATTN_FAIL(ErrorCode::kUnsupported, "dtype {} is not supported; supported dtypes: {} ({})", to_string(dtype),
                dtype_list(dtypes), per_family);
  SPATTN_FAIL(ErrorCode::kUnsupported, "head dim {} is not supported for {}; supported head dims: {} ({})", head_dim,
              to_string(dtype), supported_head_dims(), per_family);
}

const std::vector<int>& backward_head_dims() {
  static const std::vector<int> dims = {32, 64, 96, 128};
  return dims;
}

namespace {

// Head dims of the sm90 backward: whole 64-column chunks, and dK, dV of 64 keys (D fp32
// per consumer thread) within its registers.
const std::vector<int>& sm90_backward_head_dims() {
  static const std::vector<int> dims = {64, 128};
  return dims;
}

}  // namespace

int backward_smem_bytes(const KernelConfig& c, int head_dim) {
  if (c.family == KernelFamily::kSm90) return codegen::sm90_backward_shape(c, head_dim).smem_bytes;
  // Mirrors bwd::Backward<Cfg>::kSmemBytes (templates/backward.cuh): K and V tiles and,
  // per stage, Q and dO tiles of (head_dim + 8)-element rows; dSᵀ with (tile_m +
  // 8)-element rows; key tokens; per stage query tokens, LSE and row sums.
  const int row = head_dim + 8;
  return (2 * c.tile_n * row + 2 * c.stages * c.tile_m * row + c.tile_n * (c.tile_m + 8)) * 2 + c.tile_n * 4 +
         c.stages * c.tile_m * 12;
}

int backward_dq_smem_bytes(const KernelConfig& c, int head_dim) {
  // Mirrors bwd::BackwardDq<Cfg>::kSmemBytes (the dQ pass of both families): Q, dO, K and
  // V tiles, key tokens, query tokens, LSE and row sums.
  return (2 * c.tile_m + 2 * c.tile_n) * (head_dim + 8) * 2 + c.tile_n * 4 + c.tile_m * 12;
}

namespace {

// ':copy' is an option of the sm90 kernels (forward and backward).
void check_gather(const KernelConfig& c) {
  if (c.gather == TokenGather::kCopy && c.family != KernelFamily::kSm90)
    SPATTN_FAIL(ErrorCode::kInvalidArgument,
                "config {}: ':copy' (permuted rows copied before the kernel) is an sm90 option; the {} kernels gather "
                "permuted rows themselves",
                c.to_string(), kernel_family_info(c.family).name);
}

// ':turns' is an option of the sm90 forward kernel with two or three consumer warpgroups.
void check_turns(const KernelConfig& c, bool backward) {
  if (!c.turns) return;
  if (backward)
    SPATTN_FAIL(ErrorCode::kInvalidArgument,
                "backward config {}: ':turns' (consumer warpgroups taking turns) is an option of the sm90 forward "
                "kernel; the backward kernels do not take it",
                c.to_string());
  if (c.family != KernelFamily::kSm90)
    SPATTN_FAIL(ErrorCode::kInvalidArgument,
                "config {}: ':turns' (consumer warpgroups taking turns) is an sm90 option; the {} kernel has no "
                "warpgroups",
                c.to_string(), kernel_family_info(c.family).name);
  if (c.tile_m < 128)
    SPATTN_FAIL(ErrorCode::kInvalidArgument,
                "config {}: ':turns' needs two or three consumer warpgroups (tile_m 128 or 192); tile_m {} has one",
                c.to_string(), c.tile_m);
}

void check_sm80_backward(const KernelConfig& c, int head_dim) {
  if (!contains(backward_head_dims(), head_dim))
    SPATTN_FAIL(ErrorCode::kUnsupported, "the sm80 backward kernel supports head dims {} (not {})",
                fmt::join(backward_head_dims(), ", "), head_dim);
  SPATTN_REQUIRE(c.warps == 4 || c.warps == 8, "backward config.warps must be 4 or 8 (got {})", c.warps);
  SPATTN_REQUIRE(c.tile_n == 16 * c.warps, "backward config.tile_n must be 16 * warps = {} keys (got {})",
                 16 * c.warps, c.tile_n);
  SPATTN_REQUIRE(c.tile_m >= 16 && c.tile_m <= 128 && c.tile_m % 16 == 0,
                 "backward config.tile_m must be a multiple of 16 from 16 to 128 (got {})", c.tile_m);
  SPATTN_REQUIRE(c.stages == 1 || c.stages == 2,
                 "backward config.stages (query-tile buffers) must be 1 or 2 (got {})", c.stages);
  // Per thread, of a warp's 16 keys: dK and dV (head_dim / 2 fp32 each), Sᵀ and dSᵀ
  // (tile_m / 2 each); 192 of them leave room for fragments within 255 registers.
  if (head_dim + c.tile_m > 192)
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "backward config {} with head dim {}: {} accumulator registers per thread (max 192); use a smaller "
                "tile_m",
                c.to_string(), head_dim, head_dim + c.tile_m);
}

void check_sm90_backward(const KernelConfig& c, int head_dim) {
  if (!contains(sm90_backward_head_dims(), head_dim))
    SPATTN_FAIL(ErrorCode::kUnsupported, "the sm90 backward kernel supports head dims {} (not {}); the sm80 "
                "backward kernel (e.g. 64x128w8s2) supports {}",
                fmt::join(sm90_backward_head_dims(), ", "), head_dim, fmt::join(backward_head_dims(), ", "));
  SPATTN_REQUIRE(c.tile_m == 64, "sm90 backward config {}: tile_m (queries per step) must be 64 (got {})",
                 c.to_string(), c.tile_m);
  SPATTN_REQUIRE(c.tile_n == 64 || c.tile_n == 128,
                 "sm90 backward config {}: tile_n (keys per CTA, 64 per warpgroup) must be 64 or 128 (got {})",
                 c.to_string(), c.tile_n);
  SPATTN_REQUIRE(c.stages >= 1 && c.stages <= 3,
                 "sm90 backward config {}: stages (query-tile buffers) must be 1 to 3 (got {})", c.to_string(),
                 c.stages);
  const codegen::Sm90BackwardShape s = codegen::sm90_backward_shape(c, head_dim);
  if (s.dq_cols % 64 != 0)
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "sm90 backward config {} with head dim {}: each of the {} warpgroups computes {} dQ columns, which "
                "must be a multiple of 64; use tile_n 64",
                c.to_string(), head_dim, s.warpgroups, s.dq_cols);
  // Per thread at the peak (P and dS computed): dK and dV (head_dim fp32 together), Sᵀ
  // and dPᵀ (tile_m fp32 together), ~45 more for addresses, row state and temporaries
  // (ptxas: 237 of 255 at head dim 128).
  const int need = head_dim + c.tile_m + 45;
  if (need > 255)
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "sm90 backward config {} with head dim {}: a thread would need about {} registers of 255",
                c.to_string(), head_dim, need);
  if (s.smem_bytes > kSm90SmemLimit)
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "sm90 backward config {} with head dim {} needs {} bytes of shared memory; Hopper allows {} per block; "
                "use fewer stages",
                c.to_string(), head_dim, s.smem_bytes, kSm90SmemLimit);
}

}  // namespace

void check_backward_config(const KernelConfig& c, int head_dim, DType dtype, std::string_view arch, int smem_limit) {
  std::string why;
  if (!family_supports(c.family, head_dim, dtype, arch, &why))
    SPATTN_FAIL(ErrorCode::kUnsupported, "backward config {}: {}", c.to_string(), why);
  check_gather(c);
  check_turns(c, true);
  switch (c.family) {
    case KernelFamily::kSm80: check_sm80_backward(c, head_dim); break;
    case KernelFamily::kSm90: check_sm90_backward(c, head_dim); break;
  }
  const int smem = std::max(backward_smem_bytes(c, head_dim), backward_dq_smem_bytes(c, head_dim));
  if (smem_limit > 0 && smem > smem_limit)
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "backward config {} with head dim {} needs {} bytes of shared memory per block; the target allows {}; "
                "use fewer keys per CTA, fewer stages or a smaller tile_m",
                c.to_string(), head_dim, smem, smem_limit);
}

namespace codegen {

Sm90Shape sm90_shape(const KernelConfig& c, int head_dim) {
  Sm90Shape s;
  s.consumers = c.tile_m / 64;
  s.threads = 128 * (1 + s.consumers);
  // Registers per thread after setmaxnreg: the producer needs few (address arithmetic),
  // consumers hold S, P and O. With one consumer warpgroup the 256 threads get 255 each
  // at launch and no reallocation is needed.
  switch (s.consumers) {
    case 2: s.producer_regs = 56, s.consumer_regs = 224; break;  // 128 x 56 + 256 x 224 = 64512
    case 3: s.producer_regs = 48, s.consumer_regs = 152; break;  // 128 x 48 + 384 x 152 = 64512
    default: s.producer_regs = 0, s.consumer_regs = 0; break;
  }
  // Mirrors sm90::Forward<Cfg>::kSmemBytes (a static_assert there compares the two):
  // Q, the K and V rings, staged outputs (when they fit), query tokens of the staged
  // rows, 2 + 4 x stages mbarriers, 1 KiB of alignment slack.
  const int tiles = c.tile_m * head_dim * 2 + 2 * c.stages * c.tile_n * head_dim * 2;
  const int rest = s.consumers * 64 * 4 + (2 + 4 * c.stages) * 8 + 1024;
  const int staged = s.consumers * 64 * (head_dim + 8) * 2;
  s.stage_o = tiles + staged + rest <= kSm90SmemLimit;
  s.smem_bytes = tiles + (s.stage_o ? staged : 0) + rest;
  return s;
}

Sm90BackwardShape sm90_backward_shape(const KernelConfig& c, int head_dim) {
  Sm90BackwardShape s;
  // One warpgroup per 64 keys and no producer warpgroup (warp 0 issues the loads): at
  // most 256 threads, so each keeps 255 registers for dK, dV, Sᵀ and dPᵀ.
  s.warpgroups = std::max(1, c.tile_n / 64);
  s.threads = 128 * s.warpgroups;
  s.dq_cols = head_dim / s.warpgroups;
  // Mirrors sm90::Backward<Cfg>::kSmemBytes (templates/backward_sm90.cuh): K, V, Q and dO
  // per stage, two dS buffers, per stage LSE, row sums and tokens of the rows, key
  // tokens, 1 + 2 x stages mbarriers, 1 KiB of alignment slack.
  const int tiles = 2 * c.tile_n * head_dim * 2 + 2 * c.stages * c.tile_m * head_dim * 2 + 2 * c.tile_m * c.tile_n * 2;
  s.smem_bytes = 1024 + tiles + c.stages * c.tile_m * 12 + c.tile_n * 4 + (1 + 2 * c.stages) * 8;
  return s;
}

}  // namespace codegen

void KernelConfig::validate(int head_dim) const {
  const KernelFamilyInfo& f = kernel_family_info(family);
  if (!contains(f.head_dims, head_dim))
    SPATTN_FAIL(ErrorCode::kUnsupported, "head dim {} is not supported by the {} family; it supports head dims {}",
                head_dim, f.name, fmt::join(f.head_dims, ", "));
  SPATTN_REQUIRE(schedule == ScheduleOrder::kRowMajor || schedule == ScheduleOrder::kHilbert ||
                     schedule == ScheduleOrder::kLongestFirst,
                 "config.schedule is not a known order");
  check_gather(*this);
  check_turns(*this, false);
  if (family == KernelFamily::kSm90) {
    SPATTN_REQUIRE(tile_m == 64 || tile_m == 128 || tile_m == 192,
                   "sm90 config.tile_m must be 64, 128 or 192 (64 rows per consumer warpgroup); got {}", tile_m);
    SPATTN_REQUIRE(tile_n >= 16 && tile_n <= 256 && tile_n % 16 == 0,
                   "sm90 config.tile_n must be a multiple of 16 from 16 to 256; got {}", tile_n);
    SPATTN_REQUIRE(stages >= 1 && stages <= 4, "sm90 config.stages must be 1 to 4; got {}", stages);
    const codegen::Sm90Shape s = codegen::sm90_shape(*this, head_dim);
    SPATTN_REQUIRE(warps == s.threads / 32,
                   "sm90 config.warps is derived from tile_m: {} (a producer and {} consumer warpgroups); got {}",
                   s.threads / 32, s.consumers, warps);
    // Per consumer thread: S (tile_n / 2 fp32) and O (head_dim / 2) accumulators; P
    // (tile_n / 4 packed) mostly reuses S's registers as it is packed (ptxas: 165
    // registers at 128 keys, head dim 128); ~32 more for addresses, row state and masks.
    const int budget = s.consumer_regs > 0 ? s.consumer_regs : 255;
    const int need = tile_n / 2 + head_dim / 2 + tile_n / 8 + 32;
    if (need > budget)
      SPATTN_FAIL(ErrorCode::kUnsupported,
                  "config {} with head dim {}: a consumer thread would need about {} registers (S, O and P "
                  "accumulators, addresses) of the {} it has with {} consumer warpgroup(s); use a smaller tile_n or "
                  "fewer consumer warpgroups",
                  to_string(), head_dim, need, budget, s.consumers);
    if (s.smem_bytes > kSm90SmemLimit)
      SPATTN_FAIL(ErrorCode::kUnsupported,
                  "config {} with head dim {} needs {} bytes of shared memory; Hopper allows {} per block; use fewer "
                  "stages or a smaller tile",
                  to_string(), head_dim, s.smem_bytes, kSm90SmemLimit);
    return;
  }
  SPATTN_REQUIRE(warps == 2 || warps == 4 || warps == 8, "config.warps must be 2, 4 or 8 (got {})", warps);
  SPATTN_REQUIRE(stages == 1 || stages == 2, "config.stages must be 1 or 2 (got {})", stages);
  SPATTN_REQUIRE(tile_n == 32 || tile_n == 64 || tile_n == 128, "config.tile_n must be 32, 64 or 128 (got {})",
                 tile_n);
  SPATTN_REQUIRE(tile_m >= 16 * warps && tile_m <= 256 && tile_m % (16 * warps) == 0,
                 "config.tile_m must be a multiple of 16 * warps = {} and at most 256 (got {})", 16 * warps, tile_m);
  // Accumulators live in registers: O is (tile_m / warps) x head_dim and S is
  // (tile_m / warps) x tile_n fp32 values per warp. Beyond these budgets the kernel
  // spills to local memory and is slower than a smaller tile, so such configs are refused.
  const int warp_m = tile_m / warps;
  if (warp_m * head_dim / 32 > 128)
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "config {} with head dim {}: each warp would hold {} output accumulators per thread (max 128); "
                "use fewer rows per warp (tile_m / warps)",
                to_string(), head_dim, warp_m * head_dim / 32);
  if (warp_m * tile_n / 32 > 64)
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "config {}: each warp would hold {} score accumulators per thread (max 64); use a smaller tile_n "
                "or fewer rows per warp",
                to_string(), warp_m * tile_n / 32);
}

void KernelConfig::check(int head_dim, DType dtype, std::string_view arch, int smem_limit) const {
  std::string why;
  if (!family_supports(family, head_dim, dtype, arch, &why))
    SPATTN_FAIL(ErrorCode::kUnsupported, "config {}: {}", to_string(), why);
  validate(head_dim);
  const int smem = smem_bytes(head_dim);
  if (smem_limit > 0 && smem > smem_limit)
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "config {} with head dim {} needs {} bytes of shared memory per block; the target allows {}; use a "
                "smaller tile or fewer stages",
                to_string(), head_dim, smem, smem_limit);
}

int KernelConfig::smem_bytes(int head_dim) const {
  if (family == KernelFamily::kSm90) return codegen::sm90_shape(*this, head_dim).smem_bytes;
  // Mirrors Forward<Cfg>::kSmemBytes in templates/forward.cuh (a static_assert there
  // compares the two): Q, K/V stages of (head_dim + 8)-element rows, key and query
  // token indices, partial-tile mask bits, prefetched key slots.
  const int row = head_dim + 8;
  return (tile_m * row + 2 * stages * tile_n * row) * 2 + stages * tile_n * 4 + tile_m * 4 + tile_m * (tile_n / 32) * 4 +
         tile_n * 4;
}

int KernelConfig::threads() const {
  if (family == KernelFamily::kSm90) return 128 * (1 + tile_m / 64);
  return warps * 32;
}

LayoutOptions KernelConfig::layout_options() const {
  LayoutOptions lo;
  lo.tile_m = tile_m;
  lo.tile_n = tile_n;
  lo.permute = permute;
  lo.schedule = schedule;
  return lo;
}

std::string KernelConfig::to_string() const {
  std::string s = family == KernelFamily::kSm90 ? fmt::format("sm90:{}x{}s{}", tile_m, tile_n, stages)
                                                : fmt::format("{}x{}w{}s{}", tile_m, tile_n, warps, stages);
  if (!permute) s += ":noperm";
  if (schedule == ScheduleOrder::kHilbert) s += ":hilbert";
  if (schedule == ScheduleOrder::kLongestFirst) s += ":longest";
  if (gather == TokenGather::kCopy) s += ":copy";
  if (turns) s += ":turns";
  return s;
}

namespace {

// Reads a decimal integer at `pos` into `out` (1 .. 1 << 20); false when there is none
// or it is out of that range.
bool read_int(std::string_view t, size_t& pos, int& out) {
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(t.data() + pos, t.data() + t.size(), v);
  if (ec != std::errc() || end == t.data() + pos || v < 1 || v > (1 << 20)) return false;
  pos = static_cast<size_t>(end - t.data());
  out = static_cast<int>(v);
  return true;
}

}  // namespace

KernelConfig KernelConfig::parse(std::string_view text) {
  KernelConfig c;
  std::string_view t = text;
  const auto bad = [&]() -> KernelConfig {
    SPATTN_FAIL(ErrorCode::kInvalidArgument,
                "config '{}' is not of the form <tile_m>x<tile_n>w<warps>s<stages> (sm80, e.g. 128x64w4s1) or "
                "sm90:<tile_m>x<tile_n>s<stages> (e.g. sm90:128x128s2), followed by [:noperm][:hilbert|:longest][:copy][:turns]",
                text);
  };
  for (const KernelFamilyInfo& f : kernel_families()) {
    const std::string prefix = std::string(f.name) + ":";
    if (t.substr(0, prefix.size()) == prefix) {
      c.family = f.family;
      t.remove_prefix(prefix.size());
      break;
    }
  }
  const size_t colon = t.find(':');
  const std::string_view head = t.substr(0, colon);
  size_t pos = 0;
  if (!read_int(head, pos, c.tile_m) || pos >= head.size() || head[pos++] != 'x' || !read_int(head, pos, c.tile_n))
    return bad();
  if (pos < head.size() && head[pos] == 'w') {
    ++pos;
    if (!read_int(head, pos, c.warps)) return bad();
  } else if (c.family == KernelFamily::kSm90) {
    c.warps = 4 * (1 + c.tile_m / 64);
  } else {
    return bad();
  }
  if (pos >= head.size() || head[pos++] != 's' || !read_int(head, pos, c.stages) || pos != head.size()) return bad();
  bool scheduled = false;
  for (size_t p = colon; p != std::string_view::npos;) {
    const size_t next = t.find(':', p + 1);
    const std::string_view opt = t.substr(p + 1, next == std::string_view::npos ? std::string_view::npos : next - p - 1);
    if (opt == "noperm" || opt == "perm") {
      c.permute = opt == "perm";
    } else if (opt == "hilbert" || opt == "longest" || opt == "rowmajor") {
      if (scheduled)
        SPATTN_FAIL(ErrorCode::kInvalidArgument, "config '{}' names more than one schedule order (hilbert, longest, rowmajor)",
                    text);
      scheduled = true;
      c.schedule = opt == "hilbert"   ? ScheduleOrder::kHilbert
                   : opt == "longest" ? ScheduleOrder::kLongestFirst
                                      : ScheduleOrder::kRowMajor;
    } else if (opt == "copy" || opt == "inline") {
      c.gather = opt == "copy" ? TokenGather::kCopy : TokenGather::kInline;
    } else if (opt == "turns" || opt == "noturns") {
      c.turns = opt == "turns";
    } else {
      SPATTN_FAIL(ErrorCode::kInvalidArgument,
                  "config '{}': unknown option '{}'; known: noperm, perm, hilbert, longest, rowmajor, copy, inline, turns, noturns",
                  text,
                  opt);
    }
    p = next;
  }
  return c;
}

}  // namespace spattn
