#include "api/tools.hpp"

#include <spattn/varlen.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <fstream>
#include <sstream>

#include "autotune/harness.hpp"
#include "autotune/search_space.hpp"
#include "autotune/tuning_db.hpp"
#include "common/check.hpp"
#include "engine/backward.hpp"
#include "engine/forward.hpp"
#include "engine/jit.hpp"
#include "engine/reference.hpp"
#include "engine/select.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"
#include "runtime/nvrtc.hpp"

namespace spattn::tools {

Toolchain toolchain() { return {runtime::cuda_home(), runtime::nvrtc_version(), runtime::supported_archs()}; }

void check_arch(const std::string& arch) { runtime::check_arch(arch); }

namespace {

Gpu gpu_of(const runtime::DeviceInfo& info) {
  Gpu g;
  g.ordinal = info.ordinal;
  g.name = info.name;
  g.arch = info.arch();
  g.driver = info.driver_version_string();
  g.cc_major = info.cc_major;
  g.cc_minor = info.cc_minor;
  g.sms = info.sm_count;
  g.l2_bytes = info.l2_bytes;
  g.smem_per_block_optin = info.smem_per_block_optin;
  g.memory_bytes = info.total_memory;
  g.peak_bandwidth = info.peak_bandwidth();
  return g;
}

int64_t elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

bool has_gpu() { return runtime::has_gpu(); }
std::string no_gpu_reason() { return runtime::no_gpu_reason(); }

std::vector<Gpu> gpus() {
  std::vector<Gpu> out;
  if (!runtime::has_gpu()) return out;
  for (int d = 0; d < runtime::device_count(); ++d) out.push_back(gpu_of(runtime::device_info(d)));
  return out;
}

Gpu current_gpu() { return gpu_of(runtime::device_info(runtime::current_device())); }

void synchronize() { runtime::synchronize(); }

struct DeviceTensor::Impl {
  DType dtype;
  std::vector<int64_t> shape;
  runtime::DeviceBuffer buffer;
};

DeviceTensor::DeviceTensor(DType dtype, std::vector<int64_t> shape) : impl_(std::make_unique<Impl>()) {
  SPATTN_REQUIRE(!shape.empty() && shape.size() <= 4, "a device tensor has 1 to 4 dimensions (got {})",
                 shape.size());
  impl_->dtype = dtype;
  impl_->shape = std::move(shape);
  impl_->buffer = runtime::DeviceBuffer(static_cast<size_t>(elements(impl_->shape)) * dtype_size(dtype));
}
DeviceTensor::~DeviceTensor() = default;
DeviceTensor::DeviceTensor(DeviceTensor&&) noexcept = default;
DeviceTensor& DeviceTensor::operator=(DeviceTensor&&) noexcept = default;

void DeviceTensor::fill_random(uint64_t seed, float scale) {
  SPATTN_REQUIRE(impl_->dtype == DType::kFloat16 || impl_->dtype == DType::kBFloat16,
                 "random fill is for fp16/bf16 tensors (got {})", to_string(impl_->dtype));
  engine::fill_random(impl_->buffer.data(), elements(impl_->shape), impl_->dtype, seed, scale);
}

void DeviceTensor::fill_bytes(uint8_t value) { impl_->buffer.fill_bytes(value); }

void DeviceTensor::upload(const std::vector<float>& values) {
  SPATTN_REQUIRE(impl_->dtype == DType::kFloat32, "upload is for fp32 tensors");
  SPATTN_REQUIRE(static_cast<int64_t>(values.size()) == elements(impl_->shape),
                 "upload: {} values for a tensor of {} elements", values.size(), elements(impl_->shape));
  impl_->buffer.upload(values.data(), values.size() * 4);
}

void DeviceTensor::upload_int32(const std::vector<int32_t>& values) {
  SPATTN_REQUIRE(impl_->dtype == DType::kInt32, "upload_int32 is for int32 tensors (got {})", to_string(impl_->dtype));
  SPATTN_REQUIRE(static_cast<int64_t>(values.size()) == elements(impl_->shape),
                 "upload_int32: {} values for a tensor of {} elements", values.size(), elements(impl_->shape));
  impl_->buffer.upload(values.data(), values.size() * 4);
}

std::vector<int32_t> DeviceTensor::download_int32() const {
  SPATTN_REQUIRE(impl_->dtype == DType::kInt32, "download_int32 is for int32 tensors (got {})", to_string(impl_->dtype));
  std::vector<int32_t> out(static_cast<size_t>(elements(impl_->shape)));
  impl_->buffer.download(out.data(), out.size() * 4);
  return out;
}

TensorView DeviceTensor::view() const {
  const auto& s = impl_->shape;
  if (s.size() == 3) return TensorView::contiguous3(impl_->buffer.data(), impl_->dtype, {s[0], s[1], s[2]});
  if (s.size() == 4) return TensorView::contiguous(impl_->buffer.data(), impl_->dtype, {s[0], s[1], s[2], s[3]});
  // Rank 1 or 2: the contiguous view of [s..., 1, ...] with the rank it has.
  TensorView v = TensorView::contiguous(impl_->buffer.data(), impl_->dtype,
                                        {s[0], s.size() > 1 ? s[1] : 1, 1, 1});
  v.rank = static_cast<int>(s.size());
  return v;
}

Stream::Stream() { SPATTN_CU_CHECK(cuStreamCreate(&stream_, CU_STREAM_NON_BLOCKING)); }
Stream::~Stream() {
  if (stream_) runtime::driver().cuStreamDestroy(stream_);
}
void Stream::synchronize() const { SPATTN_CU_CHECK(cuStreamSynchronize(stream_)); }
void make_current(int device) { runtime::make_current(device); }
int current_device() { return runtime::current_device(); }

struct Timer::Impl {
  runtime::Event start, stop;
};
Timer::Timer() : impl_(std::make_unique<Impl>()) {}
Timer::~Timer() = default;
void Timer::start() { impl_->start.record(); }
float Timer::stop_ms() {
  impl_->stop.record();
  impl_->stop.synchronize();
  return impl_->stop.elapsed_ms_since(impl_->start);
}

PatternBuild compile_pattern(const Pattern& pattern, const std::string& arch, int64_t nq, int64_t heads, int head_dim,
                             DType dtype, const std::optional<KernelConfig>& config, TunePass pass,
                             bool deterministic, bool documents) {
  runtime::check_arch(arch);
  engine::Problem problem;
  problem.nq = problem.nk = nq;
  problem.heads = problem.kv_heads = heads;
  problem.head_dim = head_dim;
  problem.dtype = dtype;
  check_problem_supported(head_dim, dtype);
  pattern.validate(problem.shape());
  runtime::DeviceInfo device = autotune::typical_device(arch);
  if (runtime::has_gpu()) {
    const runtime::DeviceInfo local = runtime::device_info(runtime::current_device());
    if (local.arch() == arch) device = local;
  }
  PatternBuild out;
  if (config) {
    out.config = *config;
    out.config_source = "forced";
  } else {
    const engine::KernelChoice choice = engine::heuristic_for_pass(pass, pattern, problem, device);
    out.config = choice.config;
    out.config_source = choice.source;
  }
  autotune::check_config(pass, out.config, head_dim, dtype, arch, device.smem_per_block_optin);
  const auto t0 = std::chrono::steady_clock::now();
  if (std::string why; documents && !documents_supported(pattern, heads, &why))
    SPATTN_FAIL(ErrorCode::kUnsupported, "{}", why);
  const LayoutOptions options = documents ? engine::documents_layout_options(out.config.layout_options())
                                          : out.config.layout_options();
  const Layout layout = engine::forward_layout(pattern, problem.shape(), options);
  if (documents && pass == TunePass::kBackward) engine::check_documents_backward(pattern, layout);
  out.stats = engine::forward_layout_stats(pattern, layout, head_dim);
  out.layout_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  codegen::KernelSpec spec = engine::kernel_spec_for(layout, out.config, problem, arch, documents);
  spec.deterministic = pass == TunePass::kBackward && deterministic;
  const codegen::RenderedKernel main =
      pass == TunePass::kForward ? codegen::render_forward(spec) : codegen::render_backward(spec);
  std::vector<codegen::RenderedKernel> programs{main};
  for (codegen::RenderedKernel& r : engine::companion_kernels(pattern)) programs.push_back(std::move(r));
  for (const codegen::RenderedKernel& r : programs) {
    const auto t = std::chrono::steady_clock::now();
    const CacheLookup found = engine::compile_cached(r, arch);
    KernelBuild b;
    b.program = r.program_name;
    b.key = found.key;
    b.source = r.source;
    b.log = found.kernel.log;
    b.cubin = found.kernel.cubin;
    b.cache_hit = found.hit;
    b.stored = found.stored;
    b.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
    b.nvrtc_ms = found.kernel.compile_ms;
    b.registers = found.kernel.registers;
    b.local_bytes = found.kernel.local_bytes;
    out.kernels.push_back(std::move(b));
  }
  return out;
}

Check check_against_reference(const Pattern& pattern, const TensorView& q, const TensorView& k, const TensorView& v,
                              const TensorView& o, const TensorView* lse) {
  const engine::Problem p = engine::problem_from_tensors(q, k, v, o, lse);
  SPATTN_REQUIRE(o.strides[3] == 1 && o.strides[2] == p.head_dim && o.strides[1] == p.heads * p.head_dim,
                 "the reference check reads O as a contiguous tensor; got {}", o.describe());
  const engine::ReferenceResult ref = engine::reference_forward(pattern, p, q, k, v, 0);
  std::vector<uint16_t> out(static_cast<size_t>(p.batch * p.nq * p.heads * p.head_dim));
  SPATTN_CU_CHECK(cuMemcpyDtoH(out.data(), reinterpret_cast<CUdeviceptr>(o.data), out.size() * 2));
  std::vector<float> lse_out;
  if (lse) {
    lse_out.resize(static_cast<size_t>(p.batch * p.heads * p.nq));
    SPATTN_CU_CHECK(cuMemcpyDtoH(lse_out.data(), reinterpret_cast<CUdeviceptr>(lse->data), lse_out.size() * 4));
  }
  const engine::Comparison cmp = engine::compare(out, p.dtype, lse_out, ref);
  Check c;
  c.rel_l2_err = cmp.rel_l2_err;
  const autotune::Tolerance tol = autotune::tolerance_for(p.dtype);  // the tuner's correctness gate
  c.ok = cmp.nonfinite == 0 && cmp.lse_mismatch == 0 && cmp.rel_l2_err <= tol.rel_l2 && cmp.max_abs_err <= tol.max_abs;
  c.text = cmp.to_string();
  return c;
}

std::vector<std::pair<std::string, std::string>> tuning_attachments(const std::filesystem::path& cache_dir,
                                                                    const std::string& selector) {
  std::vector<std::pair<std::string, std::string>> out;
  if (selector == "none") return out;
  const std::filesystem::path dir = cache_dir / "tuning";
  std::vector<std::string> available;
  for (const autotune::TuningDb& db : autotune::TuningDb::load_all(dir)) {
    const std::string hash = db.file.stem().string();
    available.push_back(fmt::format("{} ({})", hash, db.fingerprint ? db.fingerprint->name : "?"));
    if (selector != "all" && selector != hash && !(db.fingerprint && db.fingerprint->name == selector)) continue;
    std::ifstream in(db.file, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    if (!in) SPATTN_FAIL(ErrorCode::kIo, "cannot read the tuning database {}", db.file.string());
    out.emplace_back("tuning/" + db.file.filename().string(), text.str());
  }
  if (out.empty() && selector != "all")
    SPATTN_FAIL(ErrorCode::kInvalidArgument, "--tuning {}: no tuning database in {} matches; there are: {}", selector,
                dir.string(), available.empty() ? std::string("none") : fmt::format("{}", fmt::join(available, ", ")));
  return out;
}

std::vector<TuningImport> import_tuning(const std::filesystem::path& cache_dir,
                                        const std::vector<std::pair<std::string, std::string>>& attachments) {
  const std::filesystem::path dir = cache_dir / "tuning";
  std::vector<TuningImport> out;
  for (const auto& [name, bytes] : attachments) {
    if (name.rfind("tuning/", 0) != 0) continue;
    TuningImport t;
    t.attachment = name;
    try {
      const autotune::TuningDb db = autotune::TuningDb::parse(bytes, name);
      t.gpu = db.fingerprint->describe();
      t.file = autotune::TuningDb::file_for(dir, *db.fingerprint).string();
      for (const autotune::MergeOutcome& m : autotune::TuningDb::merge(dir, db)) {
        t.added += m.status == "added";
        t.updated += m.status == "updated";
        t.kept += m.status == "kept";
        t.same += m.status == "same";
        if (!m.detail.empty()) t.conflicts.push_back(m.key + ": " + m.detail);
      }
    } catch (const Error& e) {
      t.error = e.what();
    }
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace spattn::tools
