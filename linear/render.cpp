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
  }
  SPATTN_FAIL(ErrorCode::kInternal, "unknown dtype");
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

}  // namespace spattn::linear
