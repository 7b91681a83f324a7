#include <spattn/tensor.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <vector>

#include "common/check.hpp"

namespace spattn {

const char* to_string(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return "fp16";
    case DType::kBFloat16: return "bf16";
    case DType::kFloat32: return "fp32";
    case DType::kInt32: return "int32";
  }
  return "?";
}

DType dtype_from_string(std::string_view name) {
  if (name == "fp16" || name == "float16" || name == "half" || name == "f16") return DType::kFloat16;
  if (name == "bf16" || name == "bfloat16") return DType::kBFloat16;
  if (name == "fp32" || name == "float32" || name == "float" || name == "f32") return DType::kFloat32;
  if (name == "int32" || name == "i32") return DType::kInt32;
  SPATTN_FAIL(ErrorCode::kInvalidArgument, "unknown dtype '{}'; supported: fp16, bf16 (fp32 for LSE, int32 for block indices)", name);
}

size_t dtype_size(DType dtype) { return dtype == DType::kFloat32 || dtype == DType::kInt32 ? 4 : 2; }

TensorView TensorView::contiguous(void* data, DType dtype, std::array<int64_t, 4> shape) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.rank = 4;
  t.shape = shape;
  t.strides = {shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3], 1};
  return t;
}

TensorView TensorView::contiguous3(void* data, DType dtype, std::array<int64_t, 3> shape) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.rank = 3;
  t.shape = {shape[0], shape[1], shape[2], 1};
  t.strides = {shape[1] * shape[2], shape[2], 1, 1};
  return t;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int d = 0; d < rank; ++d) n *= shape[d];
  return n;
}

std::string TensorView::describe() const {
  std::vector<int64_t> s(shape.begin(), shape.begin() + rank), st(strides.begin(), strides.begin() + rank);
  return fmt::format("{}[{}] strides [{}]", to_string(dtype), fmt::join(s, ", "), fmt::join(st, ", "));
}

}  // namespace spattn
