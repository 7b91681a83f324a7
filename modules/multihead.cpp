#include <spattn/modules.hpp>

#include <cmath>
#include <cstring>
#include <utility>

#include "modules/cuda_check.hpp"
#include "modules/gemm.hpp"
#include "modules/half.hpp"
#include "modules/init.hpp"
#include "modules/kernels.hpp"

namespace spattn {
namespace {

using modules::Dims;

constexpr size_t kElement = 2;  // bytes of a bf16 / fp16 element
constexpr size_t kAlign = 256;  // alignment of every buffer carved out of one allocation

size_t align_up(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

void* offset(void* base, int64_t elements) { return static_cast<char*>(base) + elements * static_cast<int64_t>(kElement); }
const void* offset(const void* base, int64_t elements) {
  return static_cast<const char*>(base) + elements * static_cast<int64_t>(kElement);
}

// A [B, N, E] activation as the GEMMs see it: B * N rows of E elements, evenly spaced.
struct Rows {
  int64_t batch = 0, tokens = 0;
  int64_t stride = 0;  // elements between consecutive tokens (also across the batch boundary)
};

// Checks a [B, N, E] view (B and N: -1 to take them from the view) and returns its rows.
Rows check_activation(const TensorView& t, const char* name, int64_t batch, int64_t tokens, int64_t embed,
                      DType dtype) {
  SPATTN_MODULES_REQUIRE(t.rank == 3, "MultiheadAttention: {} must be a rank-3 view [B, N, E] (E = {}); got {}", name,
                         embed, t.describe());
  SPATTN_MODULES_REQUIRE(t.data != nullptr, "MultiheadAttention: {} is a null pointer", name);
  SPATTN_MODULES_REQUIRE(t.dtype == dtype, "MultiheadAttention: {} has dtype {} but the module's dtype is {}", name,
                         to_string(t.dtype), to_string(dtype));
  SPATTN_MODULES_REQUIRE(t.shape[0] >= 1 && t.shape[1] >= 1 && t.shape[2] == embed,
                         "MultiheadAttention: {} must have shape [B, N, {}] with B, N >= 1 (kdim and vdim other than "
                         "embed_dim are not supported); got {}",
                         name, embed, t.describe());
  SPATTN_MODULES_REQUIRE(batch < 0 || t.shape[0] == batch,
                         "MultiheadAttention: {} has batch {} but the query has batch {}; got {}", name, t.shape[0],
                         batch, t.describe());
  SPATTN_MODULES_REQUIRE(tokens < 0 || t.shape[1] == tokens, "MultiheadAttention: {} must have {} tokens; got {}", name,
                         tokens, t.describe());
  SPATTN_MODULES_REQUIRE(t.strides[2] == 1, "MultiheadAttention: {} must be contiguous in its last dimension; got {}",
                         name, t.describe());
  Rows r{t.shape[0], t.shape[1], 0};
  r.stride = t.shape[1] > 1 ? t.strides[1] : (t.shape[0] > 1 ? t.strides[0] : embed);
  SPATTN_MODULES_REQUIRE(t.shape[0] == 1 || t.shape[1] == 1 || t.strides[0] == t.shape[1] * t.strides[1],
                         "MultiheadAttention: {} must have evenly spaced tokens (batch stride = N x token stride, as a "
                         "contiguous tensor has) for the projection GEMMs; got {} (make it contiguous)",
                         name, t.describe());
  SPATTN_MODULES_REQUIRE(r.stride >= embed && r.stride % 8 == 0,
                         "MultiheadAttention: {}'s token stride must be >= E and a multiple of 8 elements (16-byte "
                         "rows for cuBLASLt's tensor-core kernels); got {}",
                         name, t.describe());
  SPATTN_MODULES_REQUIRE(reinterpret_cast<uintptr_t>(t.data) % 16 == 0,
                         "MultiheadAttention: {} ({}) must be 16-byte aligned", name, t.data);
  return r;
}

bool same_view(const TensorView& a, const TensorView& b) {
  return a.data == b.data && a.rank == b.rank && a.shape == b.shape && a.strides == b.strides && a.dtype == b.dtype;
}

}  // namespace

struct MultiheadAttention::Impl {
  Dims dims;
  MultiheadAttentionOptions options;
  Pattern pattern;
  Attention attention;
  int device = -1;  // resolved on first need
  modules::DeviceBuffer own_weights;
  MultiheadWeights weights;
  modules::DeviceBuffer workspace;
  modules::Gemm gemm;
  int64_t checked_nq = -1, checked_nk = -1;  // the last (Nq, Nk) the pattern was validated for
  std::string last;                          // summary of the last forward

  Impl(const Dims& d, MultiheadAttentionOptions o, Pattern p)
      : dims(d), options(std::move(o)), pattern(p), attention(std::move(p), options.attention) {}

  bool bf16() const { return options.dtype == DType::kBFloat16; }

  int ensure_device() {
    if (device < 0) device = modules::resolve_device(options.attention.device);
    return device;
  }

  // Allocates the module's own weights and uploads their initial values (rounded to the dtype).
  void init_own_weights() {
    const HostWeights host = modules::initial_weights(dims, options);
    const std::vector<float>* parts[] = {&host.in_proj_weight, &host.in_proj_bias, &host.out_proj_weight,
                                         &host.out_proj_bias,  &host.ln_weight,    &host.ln_bias};
    size_t total = 0;
    for (const auto* part : parts) total += align_up(part->size() * kElement);
    std::vector<uint16_t> staging(total / kElement, 0);
    size_t at = 0;
    size_t offsets[6];
    for (int i = 0; i < 6; ++i) {
      offsets[i] = at;
      for (size_t j = 0; j < parts[i]->size(); ++j)
        staging[at / kElement + j] = modules::float_to_half_bits((*parts[i])[j], options.dtype);
      at += align_up(parts[i]->size() * kElement);
    }
    modules::DeviceGuard guard(ensure_device());
    own_weights.reserve(total);
    SPATTN_MODULES_CUDA_CHECK(cudaMemcpy(own_weights.data(), staging.data(), total, cudaMemcpyHostToDevice));
    auto at_part = [&](int i) -> void* {
      return parts[i]->empty() ? nullptr : static_cast<char*>(own_weights.data()) + offsets[i];
    };
    weights = MultiheadWeights{at_part(0), at_part(1), at_part(2), at_part(3), at_part(4), at_part(5)};
  }
};

MultiheadAttention::MultiheadAttention(int64_t embed_dim, int64_t num_heads, int64_t kv_heads, Pattern pattern,
                                       MultiheadAttentionOptions options) {
  const Dims dims = modules::validate_module(embed_dim, num_heads, kv_heads, options);
  impl_ = std::make_unique<Impl>(dims, std::move(options), std::move(pattern));
  if (impl_->options.weights)
    impl_->weights = *impl_->options.weights;
  else
    impl_->init_own_weights();
}

MultiheadAttention::~MultiheadAttention() = default;
MultiheadAttention::MultiheadAttention(MultiheadAttention&&) noexcept = default;
MultiheadAttention& MultiheadAttention::operator=(MultiheadAttention&&) noexcept = default;

HostWeights MultiheadAttention::initial_weights(int64_t embed_dim, int64_t num_heads, int64_t kv_heads,
                                                const MultiheadAttentionOptions& options) {
  return modules::initial_weights(modules::validate_module(embed_dim, num_heads, kv_heads, options), options);
}

void MultiheadAttention::forward(const TensorView& query, const TensorView& key, const TensorView& value,
                                 const TensorView& out, CUstream stream) {
  forward(query, key, value, out, ForwardExtras{}, stream);
}

void MultiheadAttention::forward(const TensorView& query, const TensorView& key, const TensorView& value,
                                 const TensorView& out, const ForwardExtras& extras, CUstream stream) {
  Impl& m = *impl_;
  const Dims& d = m.dims;
  const DType dtype = m.options.dtype;

  // --- everything is checked before the first GPU call --------------------------------
  const Rows q = check_activation(query, "query", -1, -1, d.embed, dtype);
  const Rows k = check_activation(key, "key", q.batch, -1, d.embed, dtype);
  const Rows v = check_activation(value, "value", q.batch, k.tokens, d.embed, dtype);
  const Rows o = check_activation(out, "out", q.batch, q.tokens, d.embed, dtype);
  Rows res{};
  if (extras.residual) {
    res = check_activation(*extras.residual, "residual", q.batch, q.tokens, d.embed, dtype);
    SPATTN_MODULES_REQUIRE(extras.residual->data != out.data || same_view(*extras.residual, out),
                           "MultiheadAttention: the residual shares out's memory but not its view ({} against {}); "
                           "pass out itself for an in-place update",
                           extras.residual->describe(), out.describe());
  }
  SPATTN_MODULES_REQUIRE(std::isfinite(extras.attention_scale) && std::isfinite(extras.residual_scale),
                         "MultiheadAttention: attention_scale and residual_scale must be finite (got {} and {})",
                         extras.attention_scale, extras.residual_scale);
  const int64_t B = q.batch, Nq = q.tokens, Nk = k.tokens;
  if (Nq != m.checked_nq || Nk != m.checked_nk) {
    m.pattern.validate(Shape{Nq, Nk, d.heads});
    m.checked_nq = Nq;
    m.checked_nk = Nk;
  }
  const bool self = same_view(query, key) && same_view(key, value);
  const bool fused_kv = !self && same_view(key, value);
  KeyPadding padding;
  if (extras.padding) {
    padding = *extras.padding;
    if (!padding.seqused_q.data && self) padding.seqused_q = padding.seqused_k;
    try {
      check_key_padding(padding, B);
    } catch (const Error& e) {
      throw Error(e.code(), fmt::format("MultiheadAttention: padding: {}", e.what()));
    }
  }

  // --- workspace: projections (Q/K/V), attention output, scaled output bias ------------
  const int64_t Tq = B * Nq, Tk = B * Nk;
  const int64_t kv_row = 2 * d.kv_dim;  // K and V of a token side by side
  const bool scaled_bias = m.options.bias && extras.attention_scale != 1.0f;
  const size_t qkv_bytes = self ? align_up(Tq * d.in_rows * kElement)
                                : align_up(Tq * d.embed * kElement) + align_up(Tk * kv_row * kElement);
  const size_t attn_bytes = align_up(Tq * d.embed * kElement);
  const size_t bias_bytes = scaled_bias ? align_up(d.embed * kElement) : 0;

  modules::DeviceGuard guard(m.ensure_device());
  const cudaStream_t s = stream;  // CUstream and cudaStream_t are one type
  m.workspace.reserve(qkv_bytes + attn_bytes + bias_bytes);
  char* ws = static_cast<char*>(m.workspace.data());
  void* qbuf = ws;  // self: [Tq, E + 2 Ekv] (Q | K | V per token); cross: Q [Tq, E]
  void* kvbuf = self ? offset(qbuf, d.embed) : ws + align_up(Tq * d.embed * kElement);  // cross: [Tk, 2 Ekv] (K | V)
  void* attn = ws + qkv_bytes;
  void* bias_out = ws + qkv_bytes + attn_bytes;
  const MultiheadWeights& w = m.weights;
  const bool bf16 = m.bf16();
  m.gemm.clear_shapes();

  // --- input projections --------------------------------------------------------------
  auto in_bias = [&](int64_t row) { return w.in_proj_bias ? offset(w.in_proj_bias, row) : nullptr; };
  auto project = [&](int64_t first_row, int64_t rows, const TensorView& x, const Rows& xr, void* y, int64_t ldy) {
    modules::GemmArgs a;
    a.m = rows;
    a.n = xr.batch * xr.tokens;
    a.k = d.embed;
    a.w = offset(w.in_proj_weight, first_row * d.embed);
    a.ldw = d.embed;
    a.x = x.data;
    a.ldx = xr.stride;
    a.y = y;
    a.ldy = ldy;
    a.bias = in_bias(first_row);
    m.gemm.run(a, bf16, s);
  };
  int64_t q_ld = 0, kv_ld = 0;
  if (self) {
    project(0, d.in_rows, query, q, qbuf, d.in_rows);
    q_ld = kv_ld = d.in_rows;
  } else {
    project(0, d.embed, query, q, qbuf, d.embed);
    if (fused_kv) {
      project(d.embed, kv_row, key, k, kvbuf, kv_row);
    } else {
      project(d.embed, d.kv_dim, key, k, kvbuf, kv_row);
      project(d.embed + d.kv_dim, d.kv_dim, value, v, offset(kvbuf, d.kv_dim), kv_row);
    }
    q_ld = d.embed;
    kv_ld = kv_row;
  }

  // --- rotary embedding on Q and K ----------------------------------------------------
  const RotaryOptions& rot = m.options.rotary;
  try {
    if (rot.enabled) {
      const auto base = static_cast<float>(rot.base);
      const int D = static_cast<int>(d.head_dim);
      if (self) {  // Q and K heads are adjacent in each row: one launch over H + Hkv heads
        modules::launch_rotary(qbuf, bf16, Tq, Nq, q_ld, static_cast<int>(d.heads + d.kv_heads), D, 0, base,
                               rot.interleaved, s);
      } else {
        modules::launch_rotary(qbuf, bf16, Tq, Nq, q_ld, static_cast<int>(d.heads), D, Nk - Nq, base, rot.interleaved,
                               s);
        modules::launch_rotary(kvbuf, bf16, Tk, Nk, kv_ld, static_cast<int>(d.kv_heads), D, 0, base, rot.interleaved,
                               s);
      }
    }
  } catch (const std::runtime_error& e) {
    throw Error(ErrorCode::kCuda, fmt::format("MultiheadAttention: {}", e.what()));
  }

  // --- attention ----------------------------------------------------------------------
  auto head_view = [&](void* data, int64_t tokens, int64_t heads, int64_t ld) {
    TensorView t;
    t.data = data;
    t.dtype = dtype;
    t.rank = 4;
    t.shape = {B, tokens, heads, d.head_dim};
    t.strides = {tokens * ld, ld, d.head_dim, 1};
    return t;
  };
  const TensorView qv = head_view(qbuf, Nq, d.heads, q_ld);
  const TensorView kv = head_view(kvbuf, Nk, d.kv_heads, kv_ld);
  const TensorView vv = head_view(offset(kvbuf, d.kv_dim), Nk, d.kv_heads, kv_ld);
  const TensorView ov = TensorView::contiguous(attn, dtype, {B, Nq, d.heads, d.head_dim});
  if (extras.padding)
    m.attention.forward_padded(qv, kv, vv, ov, nullptr, padding, stream);
  else
    m.attention.forward(qv, kv, vv, ov, nullptr, stream);

  // --- sub-LayerNorm, output projection (bias, residual in the epilogue) ---------------
  try {
    if (m.options.sub_layernorm)
      modules::launch_layernorm(attn, w.ln_weight, w.ln_bias, bf16, Tq, static_cast<int>(d.embed),
                                static_cast<float>(m.options.layernorm_eps), s);
    if (scaled_bias) modules::launch_scale(w.out_proj_bias, bias_out, bf16, d.embed, extras.attention_scale, s);
  } catch (const std::runtime_error& e) {
    throw Error(ErrorCode::kCuda, fmt::format("MultiheadAttention: {}", e.what()));
  }
  modules::GemmArgs a;
  a.m = d.embed;
  a.n = Tq;
  a.k = d.embed;
  a.w = w.out_proj_weight;
  a.ldw = d.embed;
  a.x = attn;
  a.ldx = d.embed;
  a.y = out.data;
  a.ldy = o.stride;
  a.bias = scaled_bias ? bias_out : w.out_proj_bias;
  a.alpha = extras.attention_scale;
  if (extras.residual && extras.residual_scale != 0.0f) {
    a.c = extras.residual->data;
    a.ldc = res.stride;
    a.beta = extras.residual_scale;
  }
  m.gemm.run(a, bf16, s);

  m.last = fmt::format(
      "MultiheadAttention E={} H={} Hkv={} D={} {} {}{}{}; B={} Nq={} Nk={}{}\nprojections (m x n x k) {}{}\n", d.embed,
      d.heads, d.kv_heads, d.head_dim, to_string(dtype),
      self ? "self-attention (fused QKV)" : fused_kv ? "cross-attention (Q, fused KV)" : "cross-attention (Q, K, V)",
      rot.enabled ? (rot.interleaved ? ", rotary (interleaved)" : ", rotary") : "",
      m.options.sub_layernorm ? ", sub-LayerNorm" : "", B, Nq, Nk,
      extras.padding ? (padding.seqused_q.data ? " (padded: seqused_k, seqused_q)" : " (padded: seqused_k)") : "",
      m.gemm.last_shapes(),
      extras.residual ? fmt::format(", residual x {} + attention x {}", extras.residual_scale, extras.attention_scale)
                      : "");
}

MultiheadWeights MultiheadAttention::weights() const { return impl_->weights; }
int64_t MultiheadAttention::embed_dim() const { return impl_->dims.embed; }
int64_t MultiheadAttention::num_heads() const { return impl_->dims.heads; }
int64_t MultiheadAttention::kv_heads() const { return impl_->dims.kv_heads; }
int64_t MultiheadAttention::head_dim() const { return impl_->dims.head_dim; }
int64_t MultiheadAttention::in_proj_rows() const { return impl_->dims.in_rows; }
const MultiheadAttentionOptions& MultiheadAttention::options() const { return impl_->options; }
size_t MultiheadAttention::workspace_bytes() const {
  return impl_->workspace.bytes() + impl_->gemm.workspace_bytes();
}
Attention& MultiheadAttention::attention() { return impl_->attention; }

std::string MultiheadAttention::explain() const {
  if (impl_->last.empty()) return "spattn::MultiheadAttention: nothing has run yet (call forward())\n";
  return impl_->last + impl_->attention.explain();
}

}  // namespace spattn
