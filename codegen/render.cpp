// Forward kernel source generation: a header comment naming the spec, the generated
// predicate, the Cfg struct of template constants, the template include and the entry.
#include <fmt/format.h>

#include <algorithm>
#include <sstream>
#include <utility>

#include "codegen/family.hpp"
#include "codegen/kernel_spec.hpp"
#include "common/check.hpp"
#include "templates/embedded.hpp"

namespace spattn::codegen {

namespace {

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

// The parts a kernel's predicate covers, as comment lines of its header.
void write_parts(std::ostringstream& src, const std::vector<LayoutPart>& parts) {
  for (size_t k = 0; k < parts.size(); ++k) {
    const auto& part = parts[k];
    src << fmt::format("//   part {}: branch {} of {}\n", k, part.branch, part.pattern.to_json());
    for (const auto& ex : part.exclude) src << fmt::format("//           minus {}\n", ex.to_json());
  }
}

// Cfg's mask context and general predicate (spattn_generated::allowed must precede it).
// nq, nk: the whole problem's; q_off, k_off: the tokens of local row 0 and key 0 (a
// sub-rectangle of the problem, SpattnFwdParams::q_offset), read only with `offsets`
// (KernelSpec::token_offsets): whole problems keep the predicate on raw indices.
void write_mask_members(std::ostringstream& src, bool offsets) {
  src << "  struct MaskCtx {\n    int nq, nk, heads, q_off, k_off;\n  };\n";
  src << "  static __device__ __forceinline__ bool allowed(int part, int h, int i, int j, const MaskCtx& c) {\n";
  src << (offsets ? "    return spattn_generated::allowed(part, h, i + c.q_off, j + c.k_off, c.nq, c.nk, c.heads);\n  }\n"
                  : "    return spattn_generated::allowed(part, h, i, j, c.nq, c.nk, c.heads);\n  }\n");
}

// wgmma wrappers for the widths a spec needs: D(64 x N, fp32) = A(64 x 16) * B(16 x N)
// (+ D). `ss` reads A and B from shared memory, both K-major (S = Q Kᵀ: Q rows and K
// rows are contiguous along the head dim); `ss_bt` the same with B N-major (the
// backward's dQ = dS K); `rs` takes A from registers and B N-major (O += P V: V rows
// are contiguous along the head dim, which is N). One inline-PTX
// statement per width; the accumulator list is N / 2 registers per thread.
std::string render_wgmma(int n, DType dtype) {
  const char* t = dtype == DType::kBFloat16 ? "bf16" : "f16";
  const int regs = n / 2;
  std::string list, outs;
  for (int r = 0; r < regs; ++r) {
    list += fmt::format("{}%{}", r ? ", " : "", r);
    outs += fmt::format("{}\"+f\"(d[{}])", r ? ", " : "", r);
  }
  std::string s;
  s += fmt::format("struct Wgmma{} {{\n  static constexpr int kN = {};\n", n, n);
  // Both operands from shared memory; B K-major (ss) or N-major (ss_bt, trans-b = 1).
  for (const auto& [name, trans_b] : {std::pair{"ss", 0}, std::pair{"ss_bt", 1}})
    s += fmt::format(
        "  static __device__ __forceinline__ void {}(float (&d)[{}], uint64_t a, uint64_t b, int scale_d) {{\n"
        "    asm volatile(\n"
        "        \"{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{}, 0;\\n\"\n"
        "        \"wgmma.mma_async.sync.aligned.m64n{}k16.f32.{}.{} {{{}}}, %{}, %{}, p, 1, 1, 0, {};\\n}}\\n\"\n"
        "        : {}\n"
        "        : \"l\"(a), \"l\"(b), \"r\"(scale_d));\n  }}\n",
        name, regs, regs + 2, n, t, t, list, regs, regs + 1, trans_b, outs);
  s += fmt::format(
      "  static __device__ __forceinline__ void rs(float (&d)[{}], const uint32_t (&a)[4], uint64_t b) {{\n"
      "    asm volatile(\n"
      "        \"wgmma.mma_async.sync.aligned.m64n{}k16.f32.{}.{} {{{}}}, {{%{}, %{}, %{}, %{}}}, %{}, 1, 1, 1, 1;\\n\"\n"
      "        : {}\n"
      "        : \"r\"(a[0]), \"r\"(a[1]), \"r\"(a[2]), \"r\"(a[3]), \"l\"(b));\n  }}\n",
      regs, n, t, t, list, regs, regs + 1, regs + 2, regs + 3, regs + 4, outs);
  s += "};\n";
  return s;
}

// Cfg::row_bounds: the parts' per-row key ranges (render_row_bounds) where they have that
// form (`bounds`), else empty ranges; sub-rectangles shift them by the token offsets.
void write_row_bounds_member(std::ostringstream& src, bool bounds, bool token_offsets) {
  src << "  static __device__ __forceinline__ void row_bounds(int part, int h, int i, const MaskCtx& c, int& lo0, int& hi0,\n"
         "                                                  int& lo1, int& hi1) {\n";
  if (bounds && token_offsets)
    src << "    spattn_generated::row_bounds(part, h, i + c.q_off, c.nq, c.nk, c.heads, lo0, hi0, lo1, hi1);\n"
           "    lo0 -= c.k_off, hi0 -= c.k_off, lo1 -= c.k_off, hi1 -= c.k_off;\n";
  else if (bounds)
    src << "    spattn_generated::row_bounds(part, h, i, c.nq, c.nk, c.heads, lo0, hi0, lo1, hi1);\n";
  else
    src << "    (void)part; (void)h; (void)i; (void)c; lo0 = lo1 = 1; hi0 = hi1 = 0;\n";
  src << "  }\n";
}

// The entry points of the documents' table builders (templates/varlen.cuh) at the
// program's tiles; forward programs add the work list's order, backward programs the
// transposed tables' builder.
void write_document_builders(std::ostringstream& src, bool backward) {
  src << "\n#include \"spattn/varlen.cuh\"\n\n";
  src << "extern \"C\" __global__ void __launch_bounds__(spattn::varlen::kDocsThreads) spattn_varlen_docs("
         "const SpattnVarlenDocsParams p) {\n  spattn::varlen::varlen_docs(p);\n}\n";
  src << "extern \"C\" __global__ void __launch_bounds__(spattn::varlen::kTablesThreads) spattn_varlen_tables("
         "const SpattnVarlenTablesParams p) {\n  spattn::varlen::VarlenTables<Cfg>::run(p);\n}\n";
  if (backward)
    src << "extern \"C\" __global__ void __launch_bounds__(spattn::varlen::kTablesThreads) spattn_varlen_transpose("
           "const SpattnVarlenTransposeParams p) {\n  spattn::varlen::varlen_transpose(p);\n}\n";
  else
    src << "extern \"C\" __global__ void __launch_bounds__(spattn::varlen::kDocsThreads) spattn_varlen_order("
           "const SpattnVarlenOrderParams p) {\n  spattn::varlen::varlen_order(p);\n}\n";
}

}  // namespace

RenderedKernel render_forward(const KernelSpec& spec) {
  const KernelConfig& c = spec.config;
  c.validate(spec.head_dim);
  SPATTN_REQUIRE(!spec.parts.empty(), "a kernel needs at least one pattern part");
  std::string why;
  if (!family_supports(c.family, spec.head_dim, spec.dtype, spec.arch, &why))
    SPATTN_FAIL(ErrorCode::kUnsupported, "cannot render config {}: {}", c.to_string(), why);
  const KernelFamilyInfo& family = kernel_family_info(c.family);
  const bool sm90 = c.family == KernelFamily::kSm90;

  std::ostringstream src;
  src << "// spattn forward kernel, generated from this spec (do not edit):\n";
  write_parts(src, spec.parts);
  // Only what changes the source: the schedule order and the permutation switch act on
  // the tables, so configs that differ in them share a kernel.
  const std::string workers = sm90 ? fmt::format("{} consumer warpgroup(s)", c.tile_m / 64) : fmt::format("{} warps", c.warps);
  src << fmt::format("//   family {}, tile {}x{}, {}, {} stage(s), head dim {}, {}, {}{}\n", family.name, c.tile_m,
                     c.tile_n, workers, c.stages, spec.head_dim, to_string(spec.dtype), spec.arch,
                     spec.permuted_keys ? ", permuted keys" : "");
  src << "#include \"spattn/params.cuh\"\n\n";
  const std::optional<std::string> bounds =
      render_row_bounds(spec.parts, "row_bounds", "__device__ __forceinline__");
  SPATTN_REQUIRE(!spec.varlen || !spec.token_offsets, "documents run whole problems, not sub-rectangles (internal)");
  src << "namespace spattn_generated {\n";
  src << render_predicate(spec.parts, "allowed", "__device__ __forceinline__");
  if (bounds) src << *bounds;
  if (sm90) {
    src << render_wgmma(c.tile_n, spec.dtype);
    if (spec.head_dim != c.tile_n) src << render_wgmma(spec.head_dim, spec.dtype);
  }
  src << "}  // namespace spattn_generated\n\n";
  const int smem = c.smem_bytes(spec.head_dim);
  src << "struct Cfg {\n";
  src << fmt::format("  static constexpr int kHeadDim = {};\n", spec.head_dim);
  src << fmt::format("  static constexpr int kBlockM = {};\n", c.tile_m);
  src << fmt::format("  static constexpr int kBlockN = {};\n", c.tile_n);
  if (!sm90) src << fmt::format("  static constexpr int kWarps = {};\n", c.warps);
  src << fmt::format("  static constexpr int kStages = {};\n", c.stages);
  src << fmt::format("  static constexpr bool kBf16 = {};\n", spec.dtype == DType::kBFloat16 ? "true" : "false");
  src << fmt::format("  static constexpr int kSmemBytes = {};\n", smem);
  src << fmt::format("  static constexpr bool kPermutedKeys = {};\n", spec.permuted_keys ? "true" : "false");
  src << fmt::format("  static constexpr bool kVarlen = {};  // documents (SpattnFwdParams::vl_tiles)\n",
                     spec.varlen ? "true" : "false");
  src << fmt::format("  static constexpr bool kGates = {};  // adaptive block gates (SpattnGates)\n",
                     spec.gates ? "true" : "false");
  if (sm90) {
    const Sm90Shape shape = sm90_shape(c, spec.head_dim);
    src << fmt::format("  static constexpr bool kStageO = {};  // outputs through shared memory\n",
                       shape.stage_o ? "true" : "false");
    src << fmt::format("  static constexpr int kProducerRegs = {};  // setmaxnreg (0: keep the launch's)\n",
                       shape.producer_regs);
    src << fmt::format("  static constexpr int kConsumerRegs = {};\n", shape.consumer_regs);
    src << fmt::format("  static constexpr bool kTurns = {};  // consumers take turns issuing products\n",
                       c.turns ? "true" : "false");
    src << fmt::format("  using MmaS = spattn_generated::Wgmma{};  // S = Q K^T: N = tile_n\n", c.tile_n);
    src << fmt::format("  using MmaO = spattn_generated::Wgmma{};  // O += P V: N = head dim\n", spec.head_dim);
  }
  write_mask_members(src, spec.token_offsets);
  // Partial tiles compare keys with per-row ranges when the predicate has that form.
  src << fmt::format("  static constexpr bool kIntervalMask = {};\n", bounds ? "true" : "false");
  write_row_bounds_member(src, bounds.has_value(), spec.token_offsets);
  src << "};\n\n";
  src << fmt::format("#include \"{}\"\n\n", family.template_name);
  if (sm90) {
    src << fmt::format(
        "extern \"C\" __global__ void __launch_bounds__({}, 1) spattn_fwd(const __grid_constant__ SpattnFwd90Params p) {{\n",
        c.threads());
    src << "  spattn::sm90::Forward<Cfg>::run(p);\n}\n";
  } else {
    src << fmt::format("extern \"C\" __global__ void __launch_bounds__({}) spattn_fwd(const SpattnFwdParams p) {{\n",
                       c.threads());
    src << "  spattn::Forward<Cfg>::run(p);\n}\n";
  }
  if (spec.varlen && bounds) write_document_builders(src, false);  // they need per-row key ranges

  RenderedKernel out;
  out.source = src.str();
  out.kernel_name = "spattn_fwd";
  out.program_name = fmt::format("spattn_fwd_{:016x}.cu", fnv1a(out.source));
  add_template(out, "spattn/params.cuh");
  add_template(out, "spattn/ptx.cuh");
  if (sm90) add_template(out, "spattn/sm90.cuh");
  add_template(out, family.template_name);
  add_template(out, "spattn/warp.cuh");  // through ptx.cuh
  if (spec.varlen && bounds) {
    add_template(out, "spattn/tables.cuh");
    add_template(out, "spattn/varlen.cuh");
  }
  out.threads = c.threads();
  out.smem_bytes = smem;
  return out;
}

RenderedKernel render_backward(const KernelSpec& spec) {
  const KernelConfig& c = spec.config;
  check_backward_config(c, spec.head_dim, spec.dtype, spec.arch, 0);
  SPATTN_REQUIRE(!spec.parts.empty(), "a kernel needs at least one pattern part");
  const bool sm90 = c.family == KernelFamily::kSm90;
  const Sm90BackwardShape shape = sm90 ? sm90_backward_shape(c, spec.head_dim) : Sm90BackwardShape{};
  const int threads = sm90 ? shape.threads : c.warps * 32;
  std::ostringstream src;
  src << "// spattn backward kernel, generated from this spec (do not edit):\n";
  write_parts(src, spec.parts);
  const std::string workers = sm90 ? fmt::format("family sm90 (wgmma), {} keys per CTA ({} warpgroup(s))",
                                                 c.tile_n, shape.warpgroups)
                                   : fmt::format("family sm80 (mma.sync), {} keys per CTA ({} warps)", c.tile_n, c.warps);
  src << fmt::format("//   {}, {} queries per step ({} buffers), head dim {}, {}, {}{}{}\n", workers, c.tile_m,
                     c.stages, spec.head_dim, to_string(spec.dtype), spec.arch,
                     spec.permuted_keys ? ", permuted keys" : "", spec.deterministic ? ", deterministic" : "");
  src << "#include \"spattn/params.cuh\"\n\n";
  // Documents build their tables on the GPU from the parts' per-row key ranges.
  const std::optional<std::string> bounds =
      spec.varlen ? render_row_bounds(spec.parts, "row_bounds", "__device__ __forceinline__") : std::nullopt;
  SPATTN_REQUIRE(!spec.varlen || bounds,
                 "the backward pass over documents needs a pattern whose rows are key ranges (internal)");
  src << "namespace spattn_generated {\n";
  src << render_predicate(spec.parts, "allowed", "__device__ __forceinline__");
  if (bounds) src << *bounds;
  if (sm90) {
    // Sᵀ and dPᵀ: N = tile_m; dV and dK: N = head dim; dQ: N = head dim / warpgroups.
    std::vector<int> widths;
    for (int n : {c.tile_m, spec.head_dim, shape.dq_cols})
      if (std::find(widths.begin(), widths.end(), n) == widths.end()) widths.push_back(n);
    for (int n : widths) src << render_wgmma(n, spec.dtype);
  }
  src << "}  // namespace spattn_generated\n\n";
  const int smem = backward_smem_bytes(c, spec.head_dim);
  src << "struct Cfg {\n";
  src << fmt::format("  static constexpr int kHeadDim = {};\n", spec.head_dim);
  src << fmt::format("  static constexpr int kBlockM = {};  // queries per step\n", c.tile_m);
  src << fmt::format("  static constexpr int kBlockN = {};  // keys per CTA\n", c.tile_n);
  if (!sm90) src << fmt::format("  static constexpr int kWarps = {};\n", c.warps);
  src << fmt::format("  static constexpr int kStages = {};  // query-tile buffers\n", c.stages);
  src << fmt::format("  static constexpr bool kDeterministic = {};\n", spec.deterministic ? "true" : "false");
  src << fmt::format("  static constexpr int kDqSmemBytes = {};\n", backward_dq_smem_bytes(c, spec.head_dim));
  src << fmt::format("  static constexpr bool kBf16 = {};\n", spec.dtype == DType::kBFloat16 ? "true" : "false");
  src << fmt::format("  static constexpr int kSmemBytes = {};\n", smem);
  src << fmt::format("  static constexpr bool kPermutedKeys = {};\n", spec.permuted_keys ? "true" : "false");
  if (sm90) {
    src << fmt::format("  using MmaT = spattn_generated::Wgmma{};  // S^T = K Q^T, dP^T = V dO^T: N = tile_m\n",
                       c.tile_m);
    src << fmt::format("  using MmaKV = spattn_generated::Wgmma{};  // dV += P^T dO, dK += dS^T Q: N = head dim\n",
                       spec.head_dim);
    src << fmt::format("  using MmaQ = spattn_generated::Wgmma{};  // dQ = dS K: N = head dim / warpgroups\n",
                       shape.dq_cols);
  }
  src << fmt::format("  static constexpr bool kVarlen = {};  // documents (SpattnBwdParams::vl_ktiles)\n",
                     spec.varlen ? "true" : "false");
  src << fmt::format("  static constexpr bool kGates = {};  // adaptive block gates (SpattnGates)\n",
                     spec.gates ? "true" : "false");
  write_mask_members(src, false);  // the backward runs whole problems
  if (bounds) write_row_bounds_member(src, true, false);
  src << "};\n\n";
  if (sm90) {
    src << "#include \"spattn/backward_sm90.cuh\"\n";
    if (spec.deterministic) src << "#include \"spattn/backward.cuh\"\n";
    src << fmt::format(
        "\nextern \"C\" __global__ void __launch_bounds__({}, 1) spattn_bwd(const __grid_constant__ SpattnBwd90Params "
        "p) {{\n",
        threads);
    src << "  spattn::sm90::Backward<Cfg>::run(p);\n}\n";
  } else {
    src << "#include \"spattn/backward.cuh\"\n\n";
    src << fmt::format("extern \"C\" __global__ void __launch_bounds__({}) spattn_bwd(const SpattnBwdParams p) {{\n",
                       threads);
    src << "  spattn::bwd::Backward<Cfg>::run(p);\n}\n";
  }
  if (spec.deterministic) {
    // The dQ pass of deterministic mode (both families): 16 queries per warp.
    src << fmt::format("\nextern \"C\" __global__ void __launch_bounds__({}) spattn_bwd_dq(const SpattnBwdParams p) {{\n",
                       c.tile_m / 16 * 32);
    src << "  spattn::bwd::BackwardDq<Cfg>::run(p);\n}\n";
  }
  if (bounds) write_document_builders(src, true);
  RenderedKernel out;
  out.source = src.str();
  out.kernel_name = "spattn_bwd";
  out.program_name = fmt::format("spattn_bwd_{:016x}.cu", fnv1a(out.source));
  add_template(out, "spattn/params.cuh");
  add_template(out, "spattn/ptx.cuh");
  if (sm90) {
    add_template(out, "spattn/sm90.cuh");
    add_template(out, "spattn/backward_sm90.cuh");
  }
  if (!sm90 || spec.deterministic) add_template(out, "spattn/backward.cuh");
  add_template(out, "spattn/warp.cuh");  // through ptx.cuh
  if (bounds) {
    add_template(out, "spattn/tables.cuh");
    add_template(out, "spattn/varlen.cuh");
  }
  out.threads = threads;
  out.smem_bytes = smem;
  if (spec.deterministic) {
    out.dq_threads = c.tile_m / 16 * 32;
    out.dq_smem_bytes = backward_dq_smem_bytes(c, spec.head_dim);
  }
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

RenderedKernel render_adaptive_kernels() {
  RenderedKernel out;
  out.source =
      "// spattn adaptive selection: block means, top-k key blocks, their tables.\n"
      "#include \"spattn/adaptive.cuh\"\n";
  out.kernel_name = "spattn_adaptive_select";
  out.program_name = "spattn_adaptive.cu";
  add_template(out, "spattn/params.cuh");
  add_template(out, "spattn/tables.cuh");
  add_template(out, "spattn/adaptive.cuh");
  out.threads = 128;
  return out;
}

}  // namespace spattn::codegen
