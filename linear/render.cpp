// Rendering of the linear-time kernels: a header comment naming what the program is
// for, a Cfg struct of template constants, the template include and extern "C" entries.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/check.hpp"
#include "linear/kernels.hpp"
#include "templates/embedded.hpp"

namespace spattn::linear {

int dtype_code(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return 0;
    case DType::kBFloat16: return 1;
    case DType::kFloat32: return 2;
    case DType::kInt32: break;
  }
  SPATTN_FAIL(ErrorCode::kInvalidArgument, "linear attention takes fp16, bf16 or fp32 tensors; got {}", to_string(dtype));
}

void add_template(codegen::RenderedKernel& out, std::string_view name) {
  const auto& t = templates::get(name);
  out.headers.emplace_back(std::string(t.name), std::string(t.text));
  out.template_hashes.emplace_back(std::string(t.name), std::string(t.sha256));
}

codegen::RenderedKernel render_scan(const ScanConfig& config, int state, DType dtype) {
  config.validate();
  bool state_ok = false;
  for (int s : scan_state_sizes()) state_ok |= s == state;
  if (!state_ok)
    SPATTN_FAIL(ErrorCode::kUnsupported, "selective scan: state size {} is not supported; supported: {}", state,
                fmt::join(scan_state_sizes(), ", "));
  codegen::RenderedKernel out;
  const std::string tag = fmt::format("n{}_{}_{}x{}x{}", state, to_string(dtype), config.channels, config.segments,
                                      config.steps);
  out.program_name = "spattn_scan_" + tag + ".cu";
  out.kernel_name = "spattn_selective_scan";
  out.threads = config.threads();
  out.smem_bytes = config.smem_bytes(state);
  out.source = fmt::format(
      "// spattn Mamba selective scan: state {}, {}, config {} (channels x segments x steps),\n"
      "// {} threads, {} B dynamic shared memory.\n"
      "#include \"spattn/linear_scan.cuh\"\n\n"
      "struct Cfg {{\n"
      "  static constexpr int kState = {};\n"
      "  static constexpr int kChannels = {};\n"
      "  static constexpr int kSegments = {};\n"
      "  static constexpr int kSteps = {};\n"
      "  static constexpr int kDtype = {};  // 0 fp16, 1 bf16, 2 fp32\n"
      "}};\n"
      "static_assert(spattn::linear::scan_smem_floats<Cfg>() * 4 == {}, \"host and template disagree on shared memory\");\n\n"
      "extern \"C\" __global__ void __launch_bounds__({}) spattn_selective_scan(const SpattnScanParams p) {{\n"
      "  spattn::linear::selective_scan<Cfg>(p);\n"
      "}}\n",
      state, to_string(dtype), config.to_string(), out.threads, out.smem_bytes, state, config.channels,
      config.segments, config.steps, dtype_code(dtype), out.smem_bytes, out.threads);
  add_template(out, "spattn/linear_params.cuh");
  add_template(out, "spattn/linear_common.cuh");
  add_template(out, "spattn/linear_scan.cuh");
  return out;
}

codegen::RenderedKernel render_performer_support(DType dtype) {
  codegen::RenderedKernel out;
  out.program_name = fmt::format("spattn_performer_{}.cu", to_string(dtype));
  out.kernel_name = "spattn_performer_query_features";
  out.threads = 256;
  const int code = dtype_code(dtype);
  out.source = fmt::format(
      "// spattn Performer (FAVOR+) helper kernels for {} inputs: feature maps around the\n"
      "// cuBLAS projections, V to fp32 with a ones column, the final normalisation.\n"
      "#include \"spattn/linear_performer.cuh\"\n\n"
      "constexpr int kDtype = {};  // 0 fp16, 1 bf16, 2 fp32\n"
      "extern \"C\" __global__ void __launch_bounds__(256) spattn_performer_query_features(const SpattnFeatureParams p) {{\n"
      "  spattn::linear::query_features<kDtype>(p);\n}}\n"
      "extern \"C\" __global__ void __launch_bounds__(256) spattn_performer_key_exponents(const SpattnFeatureParams p) {{\n"
      "  spattn::linear::key_exponents<kDtype>(p);\n}}\n"
      "extern \"C\" __global__ void __launch_bounds__(256) spattn_performer_key_features(const SpattnFeatureParams p) {{\n"
      "  spattn::linear::key_features(p);\n}}\n"
      "extern \"C\" __global__ void __launch_bounds__(256) spattn_performer_convert_values(const SpattnValueParams p) {{\n"
      "  spattn::linear::convert_values<kDtype>(p);\n}}\n"
      "extern \"C\" __global__ void __launch_bounds__(256) spattn_performer_normalize(const SpattnNormalizeParams p) {{\n"
      "  spattn::linear::normalize<kDtype>(p);\n}}\n",
      to_string(dtype), code);
  add_template(out, "spattn/linear_params.cuh");
  add_template(out, "spattn/linear_common.cuh");
  add_template(out, "spattn/linear_performer.cuh");
  add_template(out, "spattn/warp.cuh");
  return out;
}

codegen::RenderedKernel render_performer_causal(const PerformerConfig& config, int features, DType dtype) {
  config.validate();
  SPATTN_REQUIRE(features >= 16 && features <= 1024 && features % 16 == 0,
                 "performer: {} features; supported: multiples of 16 from 16 to 1024", features);
  codegen::RenderedKernel out;
  out.program_name =
      fmt::format("spattn_performer_causal_m{}_{}_{}.cu", features, to_string(dtype), config.to_string());
  out.kernel_name = "spattn_performer_causal";
  out.threads = 256;
  out.smem_bytes = config.smem_bytes(features);
  out.source = fmt::format(
      "// spattn causal Performer prefix scan: {} features, {} output, config {} (chunk x slice),\n"
      "// {} threads, {} B dynamic shared memory.\n"
      "#include \"spattn/linear_performer.cuh\"\n\n"
      "struct Cfg {{\n"
      "  static constexpr int kFeatures = {};\n"
      "  static constexpr int kChunk = {};\n"
      "  static constexpr int kSlice = {};\n"
      "  static constexpr int kThreads = {};\n"
      "  static constexpr int kDtype = {};  // 0 fp16, 1 bf16, 2 fp32\n"
      "}};\n"
      "static_assert(spattn::linear::causal_smem_floats<Cfg>() * 4 == {}, \"host and template disagree on shared memory\");\n\n"
      "extern \"C\" __global__ void __launch_bounds__({}) spattn_performer_causal(const SpattnCausalParams p) {{\n"
      "  spattn::linear::causal_scan<Cfg>(p);\n"
      "}}\n",
      features, to_string(dtype), config.to_string(), out.threads, out.smem_bytes, features, config.chunk, config.slice,
      out.threads, dtype_code(dtype), out.smem_bytes, out.threads);
  add_template(out, "spattn/linear_params.cuh");
  add_template(out, "spattn/linear_common.cuh");
  add_template(out, "spattn/linear_performer.cuh");
  add_template(out, "spattn/warp.cuh");
  return out;
}

}  // namespace spattn::linear
