// Source generation of the linear-time kernels (templates/linear_*.cuh) and the choice
// of their configurations. Rendered programs go through engine/jit (NVRTC and the
// kernel cache) like the attention kernels.
#pragma once

#include <spattn/linear.hpp>

#include <string>

#include "codegen/kernel_spec.hpp"
#include "runtime/device.hpp"

namespace spattn::linear {

// The selective-scan kernel `spattn_selective_scan` for a configuration, state size and
// dtype (validated here: kInvalidArgument / kUnsupported).
codegen::RenderedKernel render_scan(const ScanConfig& config, int state, DType dtype);

// The heuristic configuration for a problem on a device, and why.
ScanConfig scan_heuristic(const ScanShape& shape, const runtime::DeviceInfo& device, std::string* why = nullptr);

// The Performer's helper kernels for inputs of `dtype`: spattn_performer_query_features,
// _key_exponents, _key_features, _convert_values and _normalize (256 threads; the row
// kernels one warp per row).
codegen::RenderedKernel render_performer_support(DType dtype);
// The causal prefix scan `spattn_performer_causal` for m features (256 threads).
codegen::RenderedKernel render_performer_causal(const PerformerConfig& config, int features, DType dtype);

// The dtype code of linear_common.cuh (0 fp16, 1 bf16, 2 fp32).
int dtype_code(DType dtype);

// Appends an embedded template to a rendered program (text and content hash).
void add_template(codegen::RenderedKernel& out, std::string_view name);

}  // namespace spattn::linear
