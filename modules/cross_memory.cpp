#include <spattn/modules.hpp>

#include <cmath>
#include <utility>

#include "modules/cuda_check.hpp"

namespace spattn {
namespace {

float checked_ratio(float ratio) {
  SPATTN_MODULES_REQUIRE(std::isfinite(ratio),
                         "CrossMemoryAttention: fusion_ratio must be finite (0: the features alone, 1: the full "
                         "memory read); got {}",
                         ratio);
  return ratio;
}

// The options, once their own fields are checked (before the inner module touches the GPU).
CrossMemoryOptions&& checked(CrossMemoryOptions&& options) {
  checked_ratio(options.fusion_ratio);
  return std::move(options);
}

}  // namespace

CrossMemoryAttention::CrossMemoryAttention(int64_t embed_dim, int64_t num_heads, int64_t kv_heads,
                                           Pattern memory_pattern, CrossMemoryOptions options)
    : attention_(embed_dim, num_heads, kv_heads, std::move(memory_pattern),
                 checked(std::move(options)).attention),
      ratio_(options.fusion_ratio),
      fusion_(options.fusion) {}

CrossMemoryAttention::~CrossMemoryAttention() = default;
CrossMemoryAttention::CrossMemoryAttention(CrossMemoryAttention&&) noexcept = default;
CrossMemoryAttention& CrossMemoryAttention::operator=(CrossMemoryAttention&&) noexcept = default;

void CrossMemoryAttention::forward(const TensorView& x, const TensorView& memory, const TensorView& out,
                                   CUstream stream) {
  fuse(x, memory, nullptr, out, stream);
}

void CrossMemoryAttention::forward(const TensorView& x, const TensorView& memory, const TensorView& memory_used,
                                   const TensorView& out, CUstream stream) {
  KeyPadding padding;
  padding.seqused_k = memory_used;
  fuse(x, memory, &padding, out, stream);
}

void CrossMemoryAttention::fuse(const TensorView& x, const TensorView& memory, const KeyPadding* padding,
                                const TensorView& out, CUstream stream) {
  // The fusion is the output projection's epilogue: out = r * MHA(x, memory) + c * x.
  ForwardExtras extras;
  extras.residual = &x;
  extras.attention_scale = ratio_;
  extras.residual_scale = fusion_ == MemoryFusion::kResidual ? 1.0f : 1.0f - ratio_;
  extras.padding = padding;
  attention_.forward(x, memory, memory, out, extras, stream);
}

float CrossMemoryAttention::fusion_ratio() const { return ratio_; }
void CrossMemoryAttention::set_fusion_ratio(float ratio) { ratio_ = checked_ratio(ratio); }
MemoryFusion CrossMemoryAttention::fusion() const { return fusion_; }
MultiheadAttention& CrossMemoryAttention::attention() { return attention_; }

}  // namespace spattn
