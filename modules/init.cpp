#include "modules/init.hpp"

#include <spattn/config.hpp>

#include <cmath>

#include "modules/cuda_check.hpp"

namespace spattn::modules {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// n values uniform in [-bound, bound): 24 random bits each, so every draw is an exact float.
std::vector<float> uniform(size_t n, double bound, uint64_t seed, uint64_t tensor) {
  std::vector<float> out(n);
  const uint64_t key = splitmix64(seed ^ splitmix64(tensor));
  for (size_t i = 0; i < n; ++i) {
    const double u = static_cast<double>(splitmix64(key + i) >> 40) * 0x1p-24;  // [0, 1)
    out[i] = static_cast<float>((2.0 * u - 1.0) * bound);
  }
  return out;
}

// Tensor identities of the generator (fixed: changing them changes every module's weights).
constexpr uint64_t kInProjWeight = 1, kOutProjWeight = 2;

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

Dims validate_module(int64_t embed_dim, int64_t num_heads, int64_t kv_heads, const MultiheadAttentionOptions& options) {
  SPATTN_MODULES_REQUIRE(embed_dim >= 1 && num_heads >= 1 && kv_heads >= 1,
                         "MultiheadAttention: embed_dim, num_heads and kv_heads must be >= 1 (got embed_dim={}, "
                         "num_heads={}, kv_heads={})",
                         embed_dim, num_heads, kv_heads);
  SPATTN_MODULES_REQUIRE(embed_dim % num_heads == 0,
                         "MultiheadAttention: embed_dim ({}) must be divisible by num_heads ({}): each head gets "
                         "embed_dim / num_heads features; choose num_heads dividing {}",
                         embed_dim, num_heads, embed_dim);
  SPATTN_MODULES_REQUIRE(num_heads % kv_heads == 0,
                         "MultiheadAttention: num_heads ({}) must be a multiple of kv_heads ({}) for GQA/MQA "
                         "(kv_heads = num_heads without GQA, 1 for MQA)",
                         num_heads, kv_heads);
  Dims d;
  d.embed = embed_dim;
  d.heads = num_heads;
  d.kv_heads = kv_heads;
  d.head_dim = embed_dim / num_heads;
  d.kv_dim = kv_heads * d.head_dim;
  d.in_rows = embed_dim + 2 * d.kv_dim;
  // The attention kernels' own check of head dim and dtype (one list, in libspattn).
  try {
    check_problem_supported(d.head_dim, options.dtype);
  } catch (const Error& e) {
    throw Error(e.code(), fmt::format("MultiheadAttention(embed_dim={}, num_heads={}): head dim {} = embed_dim / "
                                      "num_heads, dtype {}: {}",
                                      embed_dim, num_heads, d.head_dim, to_string(options.dtype), e.what()));
  }
  const RotaryOptions& r = options.rotary;
  if (r.enabled) {
    SPATTN_MODULES_REQUIRE(std::isfinite(r.base) && r.base > 1.0,
                           "MultiheadAttention: rotary.base must be a finite number > 1 (typically 10000); got {}",
                           r.base);
    SPATTN_MODULES_REQUIRE(d.head_dim % 2 == 0, "MultiheadAttention: rotary embedding needs an even head dim; got {}",
                           d.head_dim);
  }
  if (options.sub_layernorm)
    SPATTN_MODULES_REQUIRE(std::isfinite(options.layernorm_eps) && options.layernorm_eps > 0,
                           "MultiheadAttention: layernorm_eps must be a finite number > 0 (typically 1e-5); got {}",
                           options.layernorm_eps);
  SPATTN_MODULES_REQUIRE(std::isfinite(options.attention.scale),
                         "MultiheadAttention: attention.scale must be finite (<= 0 means 1/sqrt(head_dim)); got {}",
                         options.attention.scale);
  if (options.weights) check_weights(*options.weights, options);
  return d;
}

void check_weights(const MultiheadWeights& w, const MultiheadAttentionOptions& options) {
  const struct {
    const char* name;
    const void* p;
    bool needed;
    const char* flag;
  } parts[] = {{"in_proj_weight", w.in_proj_weight, true, nullptr},
               {"out_proj_weight", w.out_proj_weight, true, nullptr},
               {"in_proj_bias", w.in_proj_bias, options.bias, "bias"},
               {"out_proj_bias", w.out_proj_bias, options.bias, "bias"},
               {"ln_weight", w.ln_weight, options.sub_layernorm, "sub_layernorm"},
               {"ln_bias", w.ln_bias, options.sub_layernorm, "sub_layernorm"}};
  for (const auto& part : parts) {
    if (part.needed)
      SPATTN_MODULES_REQUIRE(part.p != nullptr, "MultiheadAttention: weights.{} is null{}", part.name,
                             part.flag ? fmt::format(" but options.{} is set", part.flag) : std::string());
    else
      SPATTN_MODULES_REQUIRE(part.p == nullptr,
                             "MultiheadAttention: weights.{} is given but options.{} is off: set options.{} = true "
                             "to use it, or pass null",
                             part.name, part.flag, part.flag);
    if (part.p)
      SPATTN_MODULES_REQUIRE(aligned16(part.p), "MultiheadAttention: weights.{} ({}) must be 16-byte aligned",
                             part.name, part.p);
  }
}

HostWeights initial_weights(const Dims& d, const MultiheadAttentionOptions& options) {
  HostWeights w;
  // xavier_uniform_ over the fused [E + 2 Ekv, E] in_proj: fan_in = E, fan_out = E + 2 Ekv.
  const double in_bound = std::sqrt(6.0 / static_cast<double>(d.embed + d.in_rows));
  w.in_proj_weight = uniform(static_cast<size_t>(d.in_rows * d.embed), in_bound, options.seed, kInProjWeight);
  // nn.Linear's kaiming_uniform_(a = sqrt(5)) over [E, E]: bound 1 / sqrt(fan_in).
  const double out_bound = 1.0 / std::sqrt(static_cast<double>(d.embed));
  w.out_proj_weight = uniform(static_cast<size_t>(d.embed * d.embed), out_bound, options.seed, kOutProjWeight);
  if (options.bias) {
    w.in_proj_bias.assign(static_cast<size_t>(d.in_rows), 0.0f);
    w.out_proj_bias.assign(static_cast<size_t>(d.embed), 0.0f);
  }
  if (options.sub_layernorm) {
    w.ln_weight.assign(static_cast<size_t>(d.embed), 1.0f);
    w.ln_bias.assign(static_cast<size_t>(d.embed), 0.0f);
  }
  return w;
}

}  // namespace spattn::modules
