// Forward kernel source generation: a header comment naming the spec, the generated
// predicate, the Cfg struct of template constants, the template include and the entry.
#include <fmt/format.h>

#include <cstdio>
#include <sstream>

#include "codegen/kernel_spec.hpp"
#include "common/check.hpp"
#include "templates/embedded.hpp"

namespace spattn::codegen {

namespace {

constexpr int kHeadDims[] = {32, 64, 96, 128, 256};

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

void add_template(RenderedKernel& out, std::string_view name) {
  const auto& t = templates::get(name);
  out.headers.emplace_back(std::string(t.name), std::string(t.text));
  out.template_hashes.emplace_back(std::string(t.name), std::string(t.sha256));
}

}  // namespace

}  // namespace spattn::codegen

namespace spattn {

bool head_dim_supported(int head_dim) {
  for (int d : codegen::kHeadDims)
    if (d == head_dim) return true;
  return false;
}

std::string supported_head_dims() { return "32, 64, 96, 128, 256"; }

void KernelConfig::validate(int head_dim) const {
  if (!head_dim_supported(head_dim))
    SPATTN_FAIL(ErrorCode::kUnsupported, "head dim {} is not supported; supported head dims: {}", head_dim,
                supported_head_dims());
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

int KernelConfig::smem_bytes(int head_dim) const {
  // Mirrors Forward<Cfg>::kSmemBytes in templates/forward.cuh (a static_assert there
  // compares the two): Q, K/V stages of (head_dim + 8)-element rows, key and query
  // token indices, partial-tile mask bits, prefetched key slots.
  const int row = head_dim + 8;
  return (tile_m * row + 2 * stages * tile_n * row) * 2 + stages * tile_n * 4 + tile_m * 4 + tile_m * (tile_n / 32) * 4 +
         tile_n * 4;
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
  std::string s = fmt::format("{}x{}w{}s{}", tile_m, tile_n, warps, stages);
  if (!permute) s += ":noperm";
  if (schedule == ScheduleOrder::kHilbert) s += ":hilbert";
  if (schedule == ScheduleOrder::kLongestFirst) s += ":longest";
  return s;
}

KernelConfig KernelConfig::parse(std::string_view text) {
  KernelConfig c;
  const std::string t(text);
  const size_t colon = t.find(':');
  const std::string head = t.substr(0, colon);
  char x = 0, w = 0, s = 0;
  int consumed = 0;
  if (std::sscanf(head.c_str(), "%dx%d%c%d%c%d%n", &c.tile_m, &c.tile_n, &w, &c.warps, &s, &c.stages, &consumed) != 6 ||
      w != 'w' || s != 's' || consumed != static_cast<int>(head.size()))
    SPATTN_FAIL(ErrorCode::kInvalidArgument,
                "config '{}' is not of the form <tile_m>x<tile_n>w<warps>s<stages>[:noperm][:hilbert|:longest], "
                "e.g. 128x64w4s2",
                text);
  (void)x;
  for (size_t pos = colon; pos != std::string::npos;) {
    const size_t next = t.find(':', pos + 1);
    const std::string opt = t.substr(pos + 1, next == std::string::npos ? std::string::npos : next - pos - 1);
    if (opt == "noperm") c.permute = false;
    else if (opt == "perm") c.permute = true;
    else if (opt == "hilbert") c.schedule = ScheduleOrder::kHilbert;
    else if (opt == "longest") c.schedule = ScheduleOrder::kLongestFirst;
    else if (opt == "rowmajor") c.schedule = ScheduleOrder::kRowMajor;
    else
      SPATTN_FAIL(ErrorCode::kInvalidArgument, "config '{}': unknown option '{}'; known: noperm, hilbert, longest",
                  text, opt);
    pos = next;
  }
  return c;
}

}  // namespace spattn

namespace spattn::codegen {

RenderedKernel render_forward(const KernelSpec& spec) {
  spec.config.validate(spec.head_dim);
  SPATTN_REQUIRE(!spec.parts.empty(), "a kernel needs at least one pattern part");
  SPATTN_REQUIRE(spec.dtype == DType::kFloat16 || spec.dtype == DType::kBFloat16,
                 "dtype {} is not supported by the forward kernel; supported: fp16, bf16", to_string(spec.dtype));
  const KernelConfig& c = spec.config;

  std::ostringstream src;
  src << "// spattn forward kernel, generated from this spec (do not edit):\n";
  for (size_t k = 0; k < spec.parts.size(); ++k) {
    const auto& part = spec.parts[k];
    src << fmt::format("//   part {}: branch {} of {}\n", k, part.branch, part.pattern.to_json());
    for (const auto& ex : part.exclude) src << fmt::format("//           minus {}\n", ex.to_json());
  }
  src << fmt::format("//   tile {}x{}, {} warps, {} stage(s), head dim {}, {}, {}{}\n", c.tile_m, c.tile_n, c.warps,
                     c.stages, spec.head_dim, to_string(spec.dtype), spec.arch,
                     spec.permuted_keys ? ", permuted keys" : "");
  src << "#include \"spattn/params.cuh\"\n\n";
  const std::optional<std::string> bounds =
      render_row_bounds(spec.parts, "row_bounds", "__device__ __forceinline__");
  src << "namespace spattn_generated {\n";
  src << render_predicate(spec.parts, "allowed", "__device__ __forceinline__");
  if (bounds) src << *bounds;
  src << "}  // namespace spattn_generated\n\n";
  src << "struct Cfg {\n";
  src << fmt::format("  static constexpr int kHeadDim = {};\n", spec.head_dim);
  src << fmt::format("  static constexpr int kBlockM = {};\n", c.tile_m);
  src << fmt::format("  static constexpr int kBlockN = {};\n", c.tile_n);
  src << fmt::format("  static constexpr int kWarps = {};\n", c.warps);
  src << fmt::format("  static constexpr int kStages = {};\n", c.stages);
  src << fmt::format("  static constexpr bool kBf16 = {};\n", spec.dtype == DType::kBFloat16 ? "true" : "false");
  src << fmt::format("  static constexpr int kSmemBytes = {};\n", c.smem_bytes(spec.head_dim));
  src << fmt::format("  static constexpr bool kPermutedKeys = {};\n", spec.permuted_keys ? "true" : "false");
  src << "  struct MaskCtx {\n    int nq, nk, heads;\n  };\n";
  src << "  static __device__ __forceinline__ bool allowed(int part, int h, int i, int j, const MaskCtx& c) {\n";
  src << "    return spattn_generated::allowed(part, h, i, j, c.nq, c.nk, c.heads);\n  }\n";
  // Partial tiles compare keys with per-row ranges when the predicate has that form.
  src << fmt::format("  static constexpr bool kIntervalMask = {};\n", bounds ? "true" : "false");
  src << "  static __device__ __forceinline__ void row_bounds(int part, int h, int i, const MaskCtx& c, int& lo0, int& hi0,\n"
         "                                                  int& lo1, int& hi1) {\n";
  if (bounds)
    src << "    spattn_generated::row_bounds(part, h, i, c.nq, c.nk, c.heads, lo0, hi0, lo1, hi1);\n";
  else
    src << "    (void)part; (void)h; (void)i; (void)c; lo0 = lo1 = 1; hi0 = hi1 = 0;\n";
  src << "  }\n";
  src << "};\n\n";
  src << "#include \"spattn/forward.cuh\"\n\n";
  src << fmt::format("extern \"C\" __global__ void __launch_bounds__({}) spattn_fwd(const SpattnFwdParams p) {{\n",
                     c.warps * 32);
  src << "  spattn::Forward<Cfg>::run(p);\n}\n";

  RenderedKernel out;
  out.source = src.str();
  out.kernel_name = "spattn_fwd";
  out.program_name = fmt::format("spattn_fwd_{:016x}.cu", fnv1a(out.source));
  add_template(out, "spattn/params.cuh");
  add_template(out, "spattn/forward.cuh");
  out.threads = c.warps * 32;
  out.smem_bytes = c.smem_bytes(spec.head_dim);
  return out;
}

RenderedKernel render_support_kernels() {
  RenderedKernel out;
  out.source =
      "// spattn support kernels: LSE merge of parts, empty-row fill, fp32 reference.\n"
      "#include \"spattn/merge.cuh\"\n"
      "#include \"spattn/reference.cuh\"\n";
  out.kernel_name = "spattn_merge_bf16";
  out.program_name = "spattn_support.cu";
  add_template(out, "spattn/params.cuh");
  add_template(out, "spattn/merge.cuh");
  add_template(out, "spattn/reference.cuh");
  out.threads = 256;
  return out;
}

}  // namespace spattn::codegen
