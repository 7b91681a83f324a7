// Tensor checks of the linear-time kernels' entry points: each names the tensor, what
// it got and what was expected.
#pragma once

#include <spattn/tensor.hpp>

#include <array>
#include <cstdint>
#include <initializer_list>

namespace spattn::linear {

// Present (non-null data), of this rank, with the last dimension contiguous, strides >= 0
// and data aligned to its element size.
void require_tensor(const TensorView& t, const char* name, int rank);
// require_tensor plus this shape (the first `rank` entries) and dtype ("like <like>").
void require_like(const TensorView& t, const char* name, int rank, const std::array<int64_t, 4>& shape, DType dtype,
                  const char* like);
// A contiguous fp32 tensor of exactly this shape.
void require_contiguous_fp32(const TensorView& t, const char* name, std::initializer_list<int64_t> shape);

}  // namespace spattn::linear
