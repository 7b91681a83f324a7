// The selective scan's configurations, input validation, heuristic and launch.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <spattn/linear.hpp>

#include <algorithm>
#include <charconv>
#include <limits>
#include <sstream>

#include "common/check.hpp"
#include "common/log.hpp"
#include "engine/jit.hpp"
#include "linear/kernels.hpp"
#include "linear/views.hpp"
#include "runtime/device.hpp"
#include "templates/linear_params.cuh"

namespace spattn {

namespace {
constexpr int kChannelChoices[] = {32, 64};
constexpr int kSegmentChoices[] = {1, 2, 4, 8, 16};
constexpr int kStepChoices[] = {4, 8, 16, 32};
constexpr int kMaxThreads = 512;  // __launch_bounds__ then leaves >= 128 registers per thread

template <size_t K>
bool one_of(int v, const int (&choices)[K]) {
  return std::find(std::begin(choices), std::end(choices), v) != std::end(choices);
}
}  // namespace

void ScanConfig::validate() const {
  SPATTN_REQUIRE(one_of(channels, kChannelChoices), "scan config {}: channels must be 32 or 64 (one per lane)",
                 to_string());
  SPATTN_REQUIRE(one_of(segments, kSegmentChoices), "scan config {}: segments must be 1, 2, 4, 8 or 16", to_string());
  SPATTN_REQUIRE(one_of(steps, kStepChoices), "scan config {}: steps must be 4, 8, 16 or 32", to_string());
  SPATTN_REQUIRE(threads() <= kMaxThreads, "scan config {}: channels x segments = {} threads, at most {}", to_string(),
                 threads(), kMaxThreads);
}

int ScanConfig::smem_bytes(int state) const {
  // templates/linear_scan.cuh: scan_smem_floats (the rendered source asserts they agree).
  const int chunk = segments * steps;
  const int floats = 2 * chunk * state + (segments > 1 ? segments * channels + (segments + 2) * state * channels : 0);
  return floats * 4;
}

std::string ScanConfig::to_string() const { return fmt::format("{}x{}x{}", channels, segments, steps); }

ScanConfig ScanConfig::parse(std::string_view text) {
  ScanConfig c;
  int* fields[] = {&c.channels, &c.segments, &c.steps};
  const char* p = text.data();
  const char* end = text.data() + text.size();
  for (int f = 0; f < 3; ++f) {
    const auto [next, ec] = std::from_chars(p, end, *fields[f]);
    const bool sep_ok = f == 2 ? next == end : (next != end && *next == 'x');
    if (ec != std::errc() || !sep_ok)
      SPATTN_FAIL(ErrorCode::kInvalidArgument,
                  "invalid scan config '{}': expected CHANNELSxSEGMENTSxSTEPS such as 32x8x16", text);
    p = next + (f < 2 ? 1 : 0);
  }
  c.validate();
  return c;
}

std::vector<ScanConfig> scan_configs() {
  // Sequential per channel (enough channels to fill the GPU), then more time segments
  // for fewer channels; chunks of 128-256 steps keep the combine (segments - 1 serial
  // state updates per thread) small next to the two passes (2 x steps updates).
  return {{32, 1, 16}, {32, 1, 32}, {32, 2, 16}, {32, 4, 16}, {32, 4, 32},
          {32, 8, 8},  {32, 8, 16}, {32, 16, 16}, {64, 4, 16}, {64, 8, 16}};
}

std::vector<int> scan_state_sizes() { return {4, 8, 16, 32}; }

std::string ScanExplanation::to_string() const {
  std::ostringstream s;
  s << "problem   " << problem << "\n";
  s << "device    " << device << " (" << arch << ")\n";
  s << "config    " << config.to_string() << " (channels x segments x steps) — " << config_source << "\n";
  s << "splits    " << splits << " of " << split_length << " steps along time — " << splits_source << "\n";
  s << "kernel    " << kernel << " key " << cache_key.substr(0, 16)
    << (cache_hit ? " (cache hit)" : fmt::format(" (compiled in {:.0f} ms)", compile_ms)) << "\n";
  return s.str();
}

ScanShape check_selective_scan(const SelectiveScanArgs& a) {
  using linear::require_tensor;
  require_tensor(a.x, "x", 3);
  ScanShape s;
  s.batch = a.x.shape[0];
  s.length = a.x.shape[1];
  s.channels = a.x.shape[2];
  s.dtype = a.x.dtype;
  SPATTN_REQUIRE(s.batch >= 1 && s.length >= 1 && s.channels >= 1, "x: {} must have B, L, channels >= 1",
                 a.x.describe());
  SPATTN_REQUIRE(s.batch <= 65535, "x: batch {} too large; at most 65535", s.batch);
  SPATTN_REQUIRE(s.length <= std::numeric_limits<int32_t>::max() && s.channels <= (int64_t{1} << 30),
                 "x: {}: length must be below 2^31 and channels at most 2^30", a.x.describe());
  if (s.dtype != DType::kFloat16 && s.dtype != DType::kBFloat16 && s.dtype != DType::kFloat32)
    SPATTN_FAIL(ErrorCode::kUnsupported, "x: dtype {} is not supported; supported: fp16, bf16, fp32",
                to_string(s.dtype));
  require_tensor(a.a_log, "a_log", 2);
  s.state = a.a_log.shape[1];
  const auto states = scan_state_sizes();
  if (std::find(states.begin(), states.end(), s.state) == states.end())
    SPATTN_FAIL(ErrorCode::kUnsupported, "a_log: {}: state size {} is not supported; supported: {}",
                a.a_log.describe(), s.state, fmt::join(states, ", "));
  const std::array<int64_t, 4> seq{s.batch, s.length, s.channels, 1};
  const std::array<int64_t, 4> bc{s.batch, s.length, s.state, 1};
  linear::require_like(a.delta, "delta", 3, seq, s.dtype, "x");
  linear::require_like(a.b, "b", 3, bc, s.dtype, "x");
  linear::require_like(a.c, "c", 3, bc, s.dtype, "x");
  linear::require_like(a.y, "y", 3, seq, s.dtype, "x");
  if (a.z.data) linear::require_like(a.z, "z", 3, seq, s.dtype, "x");
  linear::require_contiguous_fp32(a.a_log, "a_log", {s.channels, s.state});
  if (a.d.data) linear::require_contiguous_fp32(a.d, "d", {s.channels});
  if (a.delta_bias.data) linear::require_contiguous_fp32(a.delta_bias, "delta_bias", {s.channels});
  if (a.final_state.data)
    linear::require_contiguous_fp32(a.final_state, "final_state", {s.batch, s.channels, s.state});
  return s;
}

namespace linear {

ScanConfig scan_heuristic(const ScanShape& shape, const runtime::DeviceInfo& device, std::string* why) {
  // About 2048 resident threads per SM hide the latency of the dependent state updates.
  const int64_t channel_threads = shape.batch * ((shape.channels + 31) / 32) * 32;
  const int64_t target = static_cast<int64_t>(std::max(device.sm_count, 1)) * 2048;
  ScanConfig c{32, 1, 16};
  std::string reason;
  if (channel_threads >= target) {
    reason = fmt::format("{} channel rows fill {} SMs: sequential scan per channel", channel_threads, device.sm_count);
  } else {
    // Time parallelism comes first from splits of the sequence over CTAs (scan_splits),
    // which cost one extra pass; segments inside a chunk cost a combine per chunk.
    // Measured on an H200 (B=1, L=64k, 1536 channels, bf16): 4 segments with the
    // splits that fill the GPU 3.77 ms, 1 segment 3.93, 8 segments 3.90, 16 segments 4.52.
    constexpr int kSplitSegments = 4;
    // Splits only where 16 segments would leave the GPU under a quarter full (B=8 x 1536
    // channels: 16 segments unsplit 21.9 ms, 4 segments with 6 splits 31.0).
    const int64_t chunks = (shape.length + kSplitSegments * c.steps - 1) / (kSplitSegments * c.steps);
    const int64_t needed = target / (channel_threads * kSplitSegments);
    if (channel_threads * 16 * 4 < target && needed >= 4 && chunks / 4 >= needed) {
      c.segments = kSplitSegments;
      reason = fmt::format("{} channel rows for {} SMs: {} time segments per chunk, the sequence split over CTAs",
                           channel_threads, device.sm_count, kSplitSegments);
    } else {
      // Too short to split enough: more segments per chunk instead.
      int segments = 2;
      while (segments < 16 && channel_threads * segments < target) segments *= 2;
      // No more segments than the sequence has steps for.
      while (segments > 1 && static_cast<int64_t>(segments / 2) * c.steps >= shape.length) segments /= 2;
      c.segments = segments;
      reason = fmt::format("{} channel rows for {} SMs: {} time segments per chunk", channel_threads,
                           device.sm_count, segments);
    }
  }
  if (why) *why = "heuristic (" + reason + ")";
  return c;
}

}  // namespace linear

namespace linear {

ScanSplits scan_splits(const ScanConfig& config, const ScanShape& shape, const runtime::DeviceInfo& device,
                       int requested, std::string* why) {
  SPATTN_REQUIRE(requested >= 0, "selective scan: splits must be >= 0 (0: chosen from the problem), got {}", requested);
  const int64_t chunk = int64_t{config.segments} * config.steps;
  const int64_t chunks = std::max<int64_t>(1, (shape.length + chunk - 1) / chunk);
  constexpr int64_t kMaxSplits = 1024;  // the composition of the splits before one is serial
  int64_t want = 1;
  std::string reason;
  if (requested > 0) {
    want = std::min<int64_t>({requested, chunks, kMaxSplits});
    reason = fmt::format("forced {}", requested);
  } else {
    const int64_t threads = shape.batch * ((shape.channels + config.channels - 1) / config.channels) * config.threads();
    // Splits cost a second pass over the inputs (the summarising launch): only worth it
    // for at least 4x the parallelism (H200, B=8 x 1536 channels, 32x16x16: 2 splits
    // 35.7 ms, unsplit 21.9).
    const int64_t target = int64_t{std::max(device.sm_count, 1)} * 2048;
    want = std::clamp<int64_t>(target / threads, 1, std::max<int64_t>(1, std::min<int64_t>(chunks / 4, kMaxSplits)));
    if (want < 4) want = 1;
    reason = fmt::format("{} threads per split for {} SMs, splits of at least 4 chunks of {} steps (none below 4)",
                         threads, device.sm_count, chunk);
  }
  want = std::max<int64_t>(want, 1);
  ScanSplits out;
  out.split_length = (chunks + want - 1) / want * chunk;
  out.splits = static_cast<int>((shape.length + out.split_length - 1) / out.split_length);
  if (out.splits <= 1) {
    out.splits = 1;
    out.split_length = shape.length;
  }
  if (why) *why = reason;
  return out;
}

ScanKernel ScanKernel::load(const ScanConfig& config, const ScanShape& shape, const runtime::DeviceInfo& device,
                            int requested_splits, std::string* splits_why) {
  const codegen::RenderedKernel rendered = render_scan(config, static_cast<int>(shape.state), shape.dtype);
  if (rendered.smem_bytes > device.smem_per_block_optin)
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "selective scan config {} needs {} B of shared memory at state {}; {} offers {} B per block: "
                "choose fewer segments or steps",
                config.to_string(), rendered.smem_bytes, shape.state, device.name, device.smem_per_block_optin);
  const engine::JitKernel& kern = engine::load_kernel(rendered, device.ordinal);
  if (rendered.smem_bytes > 48 * 1024) kern.kernel.set_max_dynamic_shared(rendered.smem_bytes);
  return ScanKernel{config, scan_splits(config, shape, device, requested_splits, splits_why), shape.state, &kern,
                    rendered.program_name};
}

size_t ScanKernel::workspace_bytes(const ScanShape& shape) const {
  if (splits.splits <= 1) return 0;
  return static_cast<size_t>(shape.batch) * splits.splits * shape.channels * (shape.state + 1) * 4;
}

void ScanKernel::launch(const SelectiveScanArgs& a, const ScanShape& shape, runtime::DeviceBuffer& workspace,
                        CUstream stream) const {
  SPATTN_REQUIRE(shape.state == state, "scan kernel for state {} launched with state {}", state, shape.state);
  SPATTN_REQUIRE(splits.splits == 1 || splits.split_length * (splits.splits - 1) < shape.length,
                 "scan kernel split for length {} launched with length {}", splits.split_length * splits.splits,
                 shape.length);
  SpattnScanParams p{};
  p.x = a.x.data;
  p.delta = a.delta.data;
  p.z = a.z.data;
  p.b = a.b.data;
  p.c = a.c.data;
  p.y = a.y.data;
  p.a_log = static_cast<const float*>(a.a_log.data);
  p.d_skip = static_cast<const float*>(a.d.data);
  p.delta_bias = static_cast<const float*>(a.delta_bias.data);
  p.final_state = static_cast<float*>(a.final_state.data);
  p.x_stride_b = a.x.strides[0], p.x_stride_l = a.x.strides[1];
  p.delta_stride_b = a.delta.strides[0], p.delta_stride_l = a.delta.strides[1];
  if (a.z.data) p.z_stride_b = a.z.strides[0], p.z_stride_l = a.z.strides[1];
  p.y_stride_b = a.y.strides[0], p.y_stride_l = a.y.strides[1];
  p.b_stride_b = a.b.strides[0], p.b_stride_l = a.b.strides[1];
  p.c_stride_b = a.c.strides[0], p.c_stride_l = a.c.strides[1];
  p.batch = static_cast<int32_t>(shape.batch);
  p.length = static_cast<int32_t>(shape.length);
  p.channels = static_cast<int32_t>(shape.channels);
  p.delta_softplus = a.delta_softplus ? 1 : 0;
  p.splits = splits.splits;
  p.split_length = static_cast<int32_t>(splits.split_length);

  SPATTN_REQUIRE(shape.batch <= 65535, "selective scan: batch {} exceeds the launch grid limit 65535", shape.batch);
  const runtime::Dim3 grid{static_cast<unsigned>((shape.channels + config.channels - 1) / config.channels),
                           static_cast<unsigned>(splits.splits), static_cast<unsigned>(shape.batch)};
  const unsigned threads = static_cast<unsigned>(config.threads());
  const unsigned smem = static_cast<unsigned>(config.smem_bytes(state));
  if (splits.splits > 1) {
    const size_t bytes = workspace_bytes(shape);
    if (workspace.size() < bytes) workspace = runtime::DeviceBuffer(bytes);
    p.split_dsum = static_cast<float*>(workspace.data());
    p.split_h = p.split_dsum + static_cast<size_t>(shape.batch) * splits.splits * shape.channels;
    SpattnScanParams first = p;
    first.summarise = 1;
    void* args[] = {&first};
    jit->kernel.launch(grid, {threads}, smem, stream, args);
  }
  void* args[] = {&p};
  jit->kernel.launch(grid, {threads}, smem, stream, args);
}

}  // namespace linear

struct SelectiveScan::Impl {
  SelectiveScanOptions options;
  ScanExplanation last;
  bool has_last = false;
  runtime::DeviceBuffer workspace;  // the splits' end states and ΣΔ

  linear::ScanKernel prepare(const ScanShape& shape, int device, ScanExplanation& ex) {
    const runtime::DeviceInfo info = runtime::device_info(device);
    ScanConfig config;
    if (options.config) {
      config = *options.config;
      ex.config_source = "forced";
    } else {
      config = linear::choose_scan(shape, info, options.use_tuning_db, &ex.config_source);
    }
    const linear::ScanKernel kern =
        linear::ScanKernel::load(config, shape, info, options.splits, &ex.splits_source);
    ex.splits = kern.splits.splits;
    ex.split_length = kern.splits.split_length;
    ex.problem = fmt::format("B={} L={} channels={} state={} {}", shape.batch, shape.length, shape.channels,
                             shape.state, to_string(shape.dtype));
    ex.device = info.name;
    ex.arch = info.arch();
    ex.config = config;
    ex.kernel = kern.program;
    ex.cache_key = kern.jit->cache_key;
    ex.cache_hit = kern.jit->cache_hit;
    ex.compile_ms = kern.jit->compile_ms;
    log::debug("selective scan {}: config {} ({})", ex.problem, config.to_string(), ex.config_source);
    return kern;
  }
};

SelectiveScan::SelectiveScan(SelectiveScanOptions options) : impl_(std::make_unique<Impl>()) {
  if (options.config) options.config->validate();
  impl_->options = std::move(options);
}
SelectiveScan::~SelectiveScan() = default;
SelectiveScan::SelectiveScan(SelectiveScan&&) noexcept = default;
SelectiveScan& SelectiveScan::operator=(SelectiveScan&&) noexcept = default;

ScanExplanation SelectiveScan::prepare(const ScanShape& shape) {
  const int device = impl_->options.device >= 0 ? impl_->options.device : runtime::current_device();
  ScanExplanation ex;
  impl_->prepare(shape, device, ex);
  return ex;
}

void SelectiveScan::forward(const SelectiveScanArgs& a, CUstream stream) {
  const ScanShape shape = check_selective_scan(a);
  const int device = impl_->options.device >= 0 ? impl_->options.device : runtime::current_device();
  ScanExplanation ex;
  const linear::ScanKernel kern = impl_->prepare(shape, device, ex);
  kern.launch(a, shape, impl_->workspace, stream);
  impl_->last = std::move(ex);
  impl_->has_last = true;
}

std::string SelectiveScan::explain() const {
  return impl_->has_last ? impl_->last.to_string() : "no selective scan has run yet\n";
}

}  // namespace spattn
