// Source generation of the linear-time kernels (templates/linear_*.cuh) and the choice
// of their configurations. Rendered programs go through engine/jit (NVRTC and the
// kernel cache) like the attention kernels.
#pragma once

#include <spattn/linear.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "codegen/kernel_spec.hpp"
#include "engine/jit.hpp"
#include "runtime/device.hpp"
#include "templates/linear_params.cuh"

namespace spattn::linear {

// The selective-scan kernel `spattn_selective_scan` for a configuration, state size and
// dtype (validated here: kInvalidArgument / kUnsupported).
codegen::RenderedKernel render_scan(const ScanConfig& config, int state, DType dtype);

// The heuristic configuration for a problem on a device, and why.
ScanConfig scan_heuristic(const ScanShape& shape, const runtime::DeviceInfo& device, std::string* why = nullptr);

// The scan kernel of a configuration loaded for a problem's state size and dtype on
// `device` (its shared memory checked against the device's opt-in limit: kUnsupported),
// and its launch: what SelectiveScan::forward runs and the autotuner times.
// Sequence splits of a scan (CTAs along time, SpattnScanParams::splits): `requested` > 0
// forces that many (at most one per chunk), else enough that B x channels x segments x
// splits threads give each SM about 2048, each split at least 4 chunks. The split length
// is a whole number of chunks and every split non-empty. `why` says how it was chosen.
struct ScanSplits {
  int splits = 1;
  int64_t split_length = 0;  // steps per split (the sequence length when splits == 1)
};
ScanSplits scan_splits(const ScanConfig& config, const ScanShape& shape, const runtime::DeviceInfo& device,
                       int requested = 0, std::string* why = nullptr);

struct ScanKernel {
  ScanConfig config;
  ScanSplits splits;
  int64_t state = 0;
  const engine::JitKernel* jit = nullptr;
  std::string program;  // generated program name

  static ScanKernel load(const ScanConfig& config, const ScanShape& shape, const runtime::DeviceInfo& device,
                         int requested_splits = 0, std::string* splits_why = nullptr);
  // Bytes of the workspace the launch needs for `shape` (0 without splits).
  size_t workspace_bytes(const ScanShape& shape) const;
  // args as checked by check_selective_scan (which gave `shape`); asynchronous on `stream`.
  // `workspace` grows to workspace_bytes(shape) when smaller (keep it across calls).
  void launch(const SelectiveScanArgs& args, const ScanShape& shape, runtime::DeviceBuffer& workspace,
              CUstream stream) const;
};

// Tuning-database bucket of a scan problem: "scan|bc<B x channels>|l<L>|n<state>|<dtype>",
// B x channels and L rounded up to powers of two (what decides the scan's parallelism).
std::string scan_bucket(const ScanShape& shape);
// The configuration SelectiveScan runs for a problem on a device: this GPU's tuning
// database entry for the bucket when there is one that is valid and fits (and `use_db`),
// else the heuristic. `source` receives "tuning database (<file>, bucket <key>: ...)" or
// "heuristic (<why>; <why the database did not decide>)".
ScanConfig choose_scan(const ScanShape& shape, const runtime::DeviceInfo& device, bool use_db, std::string* source);

// The causal Performer's default configuration: the first of performer_configs() whose
// shared memory for `features` fits the device (kUnsupported when none does).
PerformerConfig performer_heuristic(int64_t features, const runtime::DeviceInfo& device, std::string* why = nullptr);
// Tuning-database bucket of a causal Performer problem (only the causal prefix scan has a
// configuration): "performer|causal|bh<B x H>|n<N>|m<features>|dv<Dv>|<dtype>", B x H and N
// rounded up to powers of two.
std::string performer_bucket(const PerformerShape& shape, int64_t features);
// Like choose_scan, for the causal Performer.
PerformerConfig choose_performer(const PerformerShape& shape, int64_t features, const runtime::DeviceInfo& device,
                                 bool use_db, std::string* source);

// The causal prefix scan of a configuration loaded for m features and a dtype on `device`
// (shared memory checked: kUnsupported), and its launch over the fp32 feature maps and
// values: what Performer::forward runs last and the autotuner times.
struct PerformerCausalKernel {
  PerformerConfig config;
  int features = 0;
  const engine::JitKernel* jit = nullptr;
  std::string program;

  static PerformerCausalKernel load(const PerformerConfig& config, int features, DType dtype,
                                    const runtime::DeviceInfo& device);
  int smem_bytes() const { return config.smem_bytes(features); }
  void launch(const SpattnCausalParams& params, CUstream stream) const;
};

// Tolerances of the linear kernels against their fp64 references, per element:
//   |out - ref| <= rtol |ref| + atol max|ref|
// scan:      fp32 (1e-4, 1e-4)  fp16 (2^-11, 5e-4)  bf16 (2^-8, 4e-3)
// performer: fp32 (1e-4, 1e-4)  fp16 (2^-11, 1e-3)  bf16 (2^-8, 8e-3)
// (fp32 state and products; the 16-bit cases add the rounding of the output).
struct LinearTolerance {
  double rtol = 0, atol = 0;
};
LinearTolerance scan_tolerance(DType dtype);
LinearTolerance performer_tolerance(DType dtype);

// An output against its reference at a tolerance.
struct LinearCheck {
  int64_t elements = 0, bad = 0, nonfinite = 0;
  int64_t first_bad = -1;  // index of the first element out of tolerance
  double max_abs_err = 0, max_ref = 0;
  double worst = 0;        // largest |err| over what the tolerance allows there (<= 1 passes)
  bool ok() const { return bad == 0 && nonfinite == 0; }
  std::string to_string() const;
};
LinearCheck check_output(const std::vector<float>& out, const std::vector<double>& ref, LinearTolerance tol);

// The bits of `x` in a 16-bit dtype, rounded to nearest even.
uint16_t to_half_bits(float x, DType dtype);

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
