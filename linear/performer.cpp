// Performer (FAVOR+): random features, validation, and the forward pass as cuBLAS GEMMs
// around the generated kernels of templates/linear_performer.cuh.
#include <fmt/format.h>

#include <spattn/linear.hpp>

#include <charconv>
#include <cmath>
#include <cstring>
#include <random>
#include <sstream>

#include "common/check.hpp"
#include "common/log.hpp"
#include "engine/jit.hpp"
#include "engine/reference.hpp"
#include "linear/kernels.hpp"
#include "linear/views.hpp"
#include "runtime/blas.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"
#include "templates/linear_params.cuh"

namespace spattn {

namespace {

// Standard normal values from mt19937_64's raw output (whose sequence the C++ standard
// fixes) by Box-Muller, so that a seed gives the same features with every standard library.
class Normal {
 public:
  explicit Normal(uint64_t seed) : gen_(seed) {}
  double operator()() {
    const double u1 = (static_cast<double>(gen_() >> 11) + 0.5) * 0x1p-53;
    const double u2 = (static_cast<double>(gen_() >> 11) + 0.5) * 0x1p-53;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  std::mt19937_64 gen_;
};

}  // namespace

uint16_t linear::to_half_bits(float x, DType dtype) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if (dtype == DType::kBFloat16) return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const float a = std::fabs(x);
  if (a >= 65504.f) return sign | 0x7bff;
  if (a < 6.103515625e-05f) return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
  int e = 0;
  const float m = std::frexp(a, &e);
  int mant = static_cast<int>(std::nearbyint((m * 2 - 1) * 1024));
  if (mant == 1024) mant = 0, ++e;
  return sign | static_cast<uint16_t>(((e - 1 + 15) << 10) | mant);
}

namespace {

void require_features(int64_t features) {
  if (features < 16 || features > 1024 || features % 16 != 0)
    SPATTN_FAIL(ErrorCode::kUnsupported, "performer: {} random features; supported: multiples of 16 from 16 to 1024",
                features);
}

}  // namespace

PerformerFeatures PerformerFeatures::draw(int64_t head_dim, int64_t features, uint64_t seed) {
  SPATTN_REQUIRE(head_dim >= 1 && head_dim <= 4096, "performer features: head_dim {} must be in [1, 4096]", head_dim);
  SPATTN_REQUIRE(features >= 1 && features <= (int64_t{1} << 20), "performer features: {} features must be >= 1",
                 features);
  PerformerFeatures f;
  f.head_dim = head_dim;
  f.features = features;
  f.seed = seed;
  f.omega.resize(static_cast<size_t>(features * head_dim));
  Normal normal(seed);
  const int64_t D = head_dim;
  std::vector<double> block(static_cast<size_t>(D * D));
  for (int64_t first = 0; first < features; first += D) {
    // Orthonormal rows by modified Gram-Schmidt (twice, for orthogonality to rounding).
    for (double& x : block) x = normal();
    for (int64_t i = 0; i < D; ++i) {
      double* r = &block[i * D];
      for (int pass = 0; pass < 2; ++pass)
        for (int64_t j = 0; j < i; ++j) {
          const double* q = &block[j * D];
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += r[d] * q[d];
          for (int64_t d = 0; d < D; ++d) r[d] -= dot * q[d];
        }
      double norm = 0;
      for (int64_t d = 0; d < D; ++d) norm += r[d] * r[d];
      norm = std::sqrt(norm);
      for (int64_t d = 0; d < D; ++d) r[d] /= norm;
    }
    // Each row gets the length of an independent Gaussian vector, so that marginally every
    // ω_i is N(0, I) (the estimator stays unbiased) while the rows of a block are orthogonal.
    const int64_t rows = std::min(D, features - first);
    for (int64_t i = 0; i < rows; ++i) {
      double len = 0;
      for (int64_t d = 0; d < D; ++d) {
        const double g = normal();
        len += g * g;
      }
      len = std::sqrt(len);
      for (int64_t d = 0; d < D; ++d) f.omega[(first + i) * D + d] = static_cast<float>(block[i * D + d] * len);
    }
  }
  return f;
}

std::vector<float> PerformerFeatures::rounded(DType dtype) const {
  std::vector<float> out = omega;
  if (dtype != DType::kFloat32)
    for (float& x : out) x = engine::half_bits_to_float(linear::to_half_bits(x, dtype), dtype);
  return out;
}

void PerformerConfig::validate() const {
  SPATTN_REQUIRE(chunk == 16 || chunk == 32 || chunk == 64, "performer config {}: chunk must be 16, 32 or 64",
                 to_string());
  SPATTN_REQUIRE(slice == 16 || slice == 32 || slice == 64, "performer config {}: slice must be 16, 32 or 64",
                 to_string());
}

int PerformerConfig::smem_bytes(int features) const {
  // templates/linear_performer.cuh: causal_smem_floats (the rendered source asserts they agree).
  const int floats = 2 * chunk * (features + 1) + chunk * slice + chunk * (chunk + 1) + chunk + features * slice +
                     features;
  return floats * 4;
}

std::string PerformerConfig::to_string() const { return fmt::format("{}x{}", chunk, slice); }

PerformerConfig PerformerConfig::parse(std::string_view text) {
  PerformerConfig c;
  const char* end = text.data() + text.size();
  const auto [p1, e1] = std::from_chars(text.data(), end, c.chunk);
  bool ok = e1 == std::errc() && p1 != end && *p1 == 'x';
  if (ok) {
    const auto [p2, e2] = std::from_chars(p1 + 1, end, c.slice);
    ok = e2 == std::errc() && p2 == end;
  }
  if (!ok)
    SPATTN_FAIL(ErrorCode::kInvalidArgument, "invalid performer config '{}': expected CHUNKxSLICE such as 32x32", text);
  c.validate();
  return c;
}

std::vector<PerformerConfig> performer_configs() {
  // In order of preference; the first whose shared memory fits the device is the default.
  return {{32, 32}, {16, 32}, {32, 64}, {64, 32}, {32, 16}, {16, 16}};
}

namespace linear {

PerformerConfig performer_heuristic(int64_t features, const runtime::DeviceInfo& device, std::string* why) {
  for (const PerformerConfig& c : performer_configs())
    if (c.smem_bytes(static_cast<int>(features)) <= device.smem_per_block_optin) {
      if (why) *why = "heuristic (the first of the table that fits the shared memory)";
      return c;
    }
  SPATTN_FAIL(ErrorCode::kUnsupported, "causal performer: no configuration fits {} features in the {} B of "
              "shared memory of {}; use fewer features", features, device.smem_per_block_optin, device.name);
}

PerformerCausalKernel PerformerCausalKernel::load(const PerformerConfig& config, int features, DType dtype,
                                                  const runtime::DeviceInfo& device) {
  const int smem = config.smem_bytes(features);
  if (smem > device.smem_per_block_optin)
    SPATTN_FAIL(ErrorCode::kUnsupported, "causal performer config {} needs {} B of shared memory for {} features; {} "
                "offers {} B", config.to_string(), smem, features, device.name, device.smem_per_block_optin);
  const codegen::RenderedKernel causal = render_performer_causal(config, features, dtype);
  const engine::JitKernel& scan = engine::load_kernel(causal, device.ordinal);
  if (smem > 48 * 1024) scan.kernel.set_max_dynamic_shared(smem);
  return PerformerCausalKernel{config, features, &scan, causal.program_name};
}

void PerformerCausalKernel::launch(const SpattnCausalParams& params, CUstream stream) const {
  SpattnCausalParams p = params;
  void* args[] = {&p};
  jit->kernel.launch({static_cast<unsigned>((p.dv + config.slice - 1) / config.slice), static_cast<unsigned>(p.heads),
                      static_cast<unsigned>(p.batch)},
                     {256}, static_cast<unsigned>(smem_bytes()), stream, args);
}

}  // namespace linear

PerformerShape check_performer(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                               bool causal, int64_t features) {
  linear::require_tensor(q, "q", 4);
  PerformerShape s;
  s.batch = q.shape[0];
  s.nq = q.shape[1];
  s.heads = q.shape[2];
  s.head_dim = q.shape[3];
  s.dtype = q.dtype;
  if (s.dtype != DType::kFloat16 && s.dtype != DType::kBFloat16 && s.dtype != DType::kFloat32)
    SPATTN_FAIL(ErrorCode::kUnsupported, "q: dtype {} is not supported; supported: fp16, bf16, fp32",
                to_string(s.dtype));
  if (s.head_dim < 16 || s.head_dim > 256 || s.head_dim % 8 != 0)
    SPATTN_FAIL(ErrorCode::kUnsupported, "q: {}: head dim {} is not supported; supported: multiples of 8 from 16 to 256",
                q.describe(), s.head_dim);
  linear::require_tensor(k, "k", 4);
  s.nk = k.shape[1];
  s.kv_heads = k.shape[2];
  linear::require_like(k, "k", 4, {s.batch, s.nk, s.kv_heads, s.head_dim}, s.dtype, "q");
  SPATTN_REQUIRE(s.heads % s.kv_heads == 0, "k: {} heads of q are not a multiple of the {} heads of k", s.heads,
                 s.kv_heads);
  linear::require_tensor(v, "v", 4);
  s.v_dim = v.shape[3];
  linear::require_like(v, "v", 4, {s.batch, s.nk, s.kv_heads, s.v_dim}, s.dtype, "q");
  if (s.v_dim > 512)
    SPATTN_FAIL(ErrorCode::kUnsupported, "v: {}: value head dim {} is not supported; at most 512", v.describe(),
                s.v_dim);
  linear::require_like(o, "o", 4, {s.batch, s.nq, s.heads, s.v_dim}, s.dtype, "q");
  if (causal)
    SPATTN_REQUIRE(s.nq == s.nk, "causal performer needs as many queries as keys (q has {}, k has {})", s.nq, s.nk);
  SPATTN_REQUIRE(s.batch <= 65535 && s.heads <= 65535, "q: {}: batch and heads must be at most 65535", q.describe());
  const int64_t max32 = 0x7fffffff;
  for (const auto* t : {&q, &k})
    SPATTN_REQUIRE(t->strides[1] <= max32, "{}: token stride {} exceeds 2^31 (cuBLAS leading dimension)",
                   t->describe(), t->strides[1]);
  SPATTN_REQUIRE(s.nq * (s.heads / s.kv_heads) <= max32 && s.nk <= max32, "sequence too long for 32-bit GEMM sizes");
  require_features(features);
  return s;
}

struct Performer::Impl {
  int64_t head_dim = 0;
  PerformerOptions options;
  PerformerFeatures feats;
  runtime::DeviceBuffer omega;  // feats.omega rounded to omega_dtype, on omega_device
  DType omega_dtype = DType::kFloat32;
  int omega_device = -1;
  runtime::DeviceBuffer workspace;
  std::string last;

  void upload_omega(DType dtype, int device) {
    if (omega.size() && omega_dtype == dtype && omega_device == device) return;
    runtime::DeviceBuffer buf(feats.omega.size() * dtype_size(dtype));
    if (dtype == DType::kFloat32) {
      buf.upload(feats.omega.data(), feats.omega.size() * 4);
    } else {
      std::vector<uint16_t> bits(feats.omega.size());
      for (size_t i = 0; i < bits.size(); ++i) bits[i] = linear::to_half_bits(feats.omega[i], dtype);
      buf.upload(bits.data(), bits.size() * 2);
    }
    omega = std::move(buf);
    omega_dtype = dtype;
    omega_device = device;
  }

  float* reserve(size_t floats) {
    if (workspace.size() < floats * 4) workspace = runtime::DeviceBuffer(floats * 4);
    return static_cast<float*>(workspace.data());
  }
};

Performer::Performer(int64_t head_dim, PerformerOptions options) : impl_(std::make_unique<Impl>()) {
  require_features(options.features);
  if (options.config) options.config->validate();
  impl_->head_dim = head_dim;
  impl_->options = std::move(options);
  impl_->feats = PerformerFeatures::draw(head_dim, impl_->options.features, impl_->options.seed);
}
Performer::~Performer() = default;
Performer::Performer(Performer&&) noexcept = default;
Performer& Performer::operator=(Performer&&) noexcept = default;

void Performer::redraw(uint64_t seed) {
  impl_->options.seed = seed;
  impl_->feats = PerformerFeatures::draw(impl_->head_dim, impl_->options.features, seed);
  impl_->omega = runtime::DeviceBuffer();  // uploaded again on the next forward
}

const PerformerFeatures& Performer::features() const { return impl_->feats; }
const PerformerOptions& Performer::options() const { return impl_->options; }
std::string Performer::explain() const { return impl_->last.empty() ? "no performer forward has run yet\n" : impl_->last; }

void Performer::forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                        CUstream stream) {
  Impl& im = *impl_;
  const PerformerOptions& opt = im.options;
  const PerformerShape s = check_performer(q, k, v, o, opt.causal, opt.features);
  SPATTN_REQUIRE(s.head_dim == im.head_dim, "q: head dim {} but this Performer was made for head dim {}", s.head_dim,
                 im.head_dim);
  // The GPU first: without one, "no GPU" is the reason, not the cuBLAS that came with it.
  const int device = opt.device >= 0 ? opt.device : runtime::current_device();
  runtime::make_current(device);
  if (!runtime::blas::available())
    SPATTN_FAIL(ErrorCode::kUnsupported, "performer needs cuBLAS: {}", runtime::blas::unavailable_reason());
  const runtime::DeviceInfo info = runtime::device_info(device);
  im.upload_omega(s.dtype, device);

  const int64_t B = s.batch, H = s.heads, Hkv = s.kv_heads, G = H / Hkv, Nq = s.nq, Nk = s.nk, D = s.head_dim,
                Dv = s.v_dim, M = opt.features;
  // Workspace (fp32), each region 256-byte aligned: φ(Q), φ(K), [V | 1], key maxima, and
  // without causality φ(K)ᵀ[V | 1] and the numerators.
  auto align = [](int64_t n) { return (n + 63) / 64 * 64; };
  const int64_t n_sq = align(B * H * Nq * M), n_sk = align(B * Hkv * Nk * M), n_vf = align(B * Hkv * Nk * (Dv + 1)),
                n_max = align(B * Hkv), n_kv = opt.causal ? 0 : align(B * Hkv * M * (Dv + 1)),
                n_num = opt.causal ? 0 : align(B * H * Nq * (Dv + 1));
  float* sq = im.reserve(static_cast<size_t>(n_sq + n_sk + n_vf + n_max + n_kv + n_num));
  float* sk = sq + n_sq;
  float* vf = sk + n_sk;
  float* kmax = vf + n_vf;
  float* kv = kmax + n_max;
  float* num = kv + n_kv;

  const codegen::RenderedKernel support = linear::render_performer_support(s.dtype);
  auto kernel = [&](const char* name) -> const engine::JitKernel& { return engine::load_kernel(support, device, name); };
  const size_t es = dtype_size(s.dtype);
  const float alpha = 1.0f / std::sqrt(std::sqrt(static_cast<float>(D)));  // x̂ = x D^(-1/4)

  // Projections s = ω x̂, one GEMM per head batched over the batch: rows of a head are
  // `stride_n` apart in the caller's tensor; the output is [B, heads, N, m].
  auto project = [&](const TensorView& x, int64_t heads, int64_t n, float* out) {
    for (int64_t h = 0; h < heads; ++h) {
      runtime::blas::Operand a{static_cast<const char*>(x.data) + h * x.strides[2] * es, s.dtype, x.strides[1],
                               x.strides[0], false};
      runtime::blas::Operand w{im.omega.data(), s.dtype, D, 0, true};
      runtime::blas::Output c{out + h * n * M, DType::kFloat32, M, heads * n * M};
      runtime::blas::gemm(n, M, D, B, alpha, a, w, 0.f, c, stream);
    }
  };
  project(q, H, Nq, sq);
  project(k, Hkv, Nk, sk);

  auto rows_grid = [](int64_t rows) { return runtime::Dim3{static_cast<unsigned>((rows + 7) / 8)}; };
  SpattnFeatureParams fq{};
  fq.x = q.data;
  fq.x_stride_b = q.strides[0], fq.x_stride_n = q.strides[1], fq.x_stride_h = q.strides[2];
  fq.s = sq;
  fq.batch = static_cast<int32_t>(B), fq.n = static_cast<int32_t>(Nq), fq.heads = static_cast<int32_t>(H);
  fq.head_dim = static_cast<int32_t>(D), fq.features = static_cast<int32_t>(M);
  fq.half_norm_scale = 0.5f / std::sqrt(static_cast<float>(D));
  fq.feature_scale = 1.0f / std::sqrt(static_cast<float>(M));
  SpattnFeatureParams fk = fq;
  fk.x = k.data;
  fk.x_stride_b = k.strides[0], fk.x_stride_n = k.strides[1], fk.x_stride_h = k.strides[2];
  fk.s = sk;
  fk.key_max = kmax;
  fk.n = static_cast<int32_t>(Nk), fk.heads = static_cast<int32_t>(Hkv);
  {
    void* args[] = {&fq};
    kernel("spattn_performer_query_features").kernel.launch(rows_grid(B * H * Nq), {256}, 0, stream, args);
  }
  SPATTN_CU_CHECK(cuMemsetD32Async(reinterpret_cast<CUdeviceptr>(kmax), 0xff800000u, static_cast<size_t>(B * Hkv),
                                   stream));  // -inf
  {
    void* args[] = {&fk};
    kernel("spattn_performer_key_exponents").kernel.launch(rows_grid(B * Hkv * Nk), {256}, 0, stream, args);
    const int64_t total = B * Hkv * Nk * M;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 16384));
    kernel("spattn_performer_key_features").kernel.launch({blocks}, {256}, 0, stream, args);
  }
  SpattnValueParams pv{};
  pv.v = v.data;
  pv.v_stride_b = v.strides[0], pv.v_stride_n = v.strides[1], pv.v_stride_h = v.strides[2];
  pv.out = vf;
  pv.batch = static_cast<int32_t>(B), pv.n = static_cast<int32_t>(Nk), pv.heads = static_cast<int32_t>(Hkv);
  pv.dv = static_cast<int32_t>(Dv);
  {
    void* args[] = {&pv};
    kernel("spattn_performer_convert_values").kernel.launch(rows_grid(B * Hkv * Nk), {256}, 0, stream, args);
  }

  std::ostringstream ex;
  ex << fmt::format("problem   B={} Nq={} Nk={} H={}/{} D={} Dv={} {}{}\n", B, Nq, Nk, H, Hkv, D, Dv,
                    to_string(s.dtype), opt.causal ? " causal" : "");
  ex << fmt::format("features  m={} seed {} (orthogonal blocks of {})\n", M, opt.seed, D);
  ex << fmt::format("device    {} ({}); cuBLAS {}\n", info.name, info.arch(), runtime::blas::library_path());
  const runtime::blas::Compute compute = opt.tf32 ? runtime::blas::Compute::kFastTf32 : runtime::blas::Compute::kFp32;
  if (!opt.causal) {
    // φ(K)ᵀ [V | 1] per (batch, kv head), then φ(Q) times it for the g query heads of the
    // group at once (their rows are adjacent), then numerator / denominator.
    runtime::blas::gemm(M, Dv + 1, Nk, B * Hkv, 1.f, {sk, DType::kFloat32, M, Nk * M, true},
                        {vf, DType::kFloat32, Dv + 1, Nk * (Dv + 1), false}, 0.f,
                        {kv, DType::kFloat32, Dv + 1, M * (Dv + 1)}, stream, compute);
    runtime::blas::gemm(G * Nq, Dv + 1, M, B * Hkv, 1.f, {sq, DType::kFloat32, M, G * Nq * M, false},
                        {kv, DType::kFloat32, Dv + 1, M * (Dv + 1), false}, 0.f,
                        {num, DType::kFloat32, Dv + 1, G * Nq * (Dv + 1)}, stream, compute);
    SpattnNormalizeParams pn{};
    pn.num = num;
    pn.o = o.data;
    pn.o_stride_b = o.strides[0], pn.o_stride_n = o.strides[1], pn.o_stride_h = o.strides[2];
    pn.batch = static_cast<int32_t>(B), pn.n = static_cast<int32_t>(Nq), pn.heads = static_cast<int32_t>(H);
    pn.dv = static_cast<int32_t>(Dv);
    void* args[] = {&pn};
    const engine::JitKernel& norm = kernel("spattn_performer_normalize");
    norm.kernel.launch(rows_grid(B * H * Nq), {256}, 0, stream, args);
    ex << fmt::format("kernels   {} (key {}, {}); GEMMs {}\n", support.program_name, norm.cache_key.substr(0, 16),
                      norm.cache_hit ? "cache hit" : "compiled", opt.tf32 ? "tf32" : "fp32");
  } else {
    PerformerConfig config;
    std::string source;
    if (opt.config) {
      config = *opt.config;
      source = "forced";
    } else {
      config = linear::choose_performer(s, M, info, opt.use_tuning_db, &source);
    }
    const linear::PerformerCausalKernel scan =
        linear::PerformerCausalKernel::load(config, static_cast<int>(M), s.dtype, info);
    SpattnCausalParams pc{};
    pc.q_features = sq;
    pc.k_features = sk;
    pc.values = vf;
    pc.o = o.data;
    pc.o_stride_b = o.strides[0], pc.o_stride_n = o.strides[1], pc.o_stride_h = o.strides[2];
    pc.batch = static_cast<int32_t>(B), pc.n = static_cast<int32_t>(Nq), pc.heads = static_cast<int32_t>(H);
    pc.kv_group = static_cast<int32_t>(G), pc.dv = static_cast<int32_t>(Dv);
    scan.launch(pc, stream);
    ex << fmt::format("config    {} (chunk x slice) — {}\n", config.to_string(), source);
    ex << fmt::format("kernels   {} + {} (key {}, {})\n", support.program_name, scan.program,
                      scan.jit->cache_key.substr(0, 16), scan.jit->cache_hit ? "cache hit" : "compiled");
  }
  im.last = ex.str();
  log::debug("performer: {}", im.last);
}

}  // namespace spattn
