// Tensor views: a device pointer with a dtype, a shape and strides (in elements).
// spattn never owns user tensors; views describe memory the caller allocated (with
// cudaMalloc, PyTorch, ...), in the layouts of DESIGN.md §2:
//   Q [B, Nq, Hq, D], K/V [B, Nk, Hkv, D], O like Q, LSE [B, Hq, Nq] fp32.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace spattn {

// kInt32 only for index tensors (the chosen blocks of adaptive patterns).
enum class DType { kFloat16, kBFloat16, kFloat32, kInt32 };

const char* to_string(DType dtype);
DType dtype_from_string(std::string_view name);  // "fp16"/"float16"/"half", "bf16"/"bfloat16", "fp32", "int32"; throws
size_t dtype_size(DType dtype);

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kBFloat16;
  int rank = 4;
  std::array<int64_t, 4> shape{};
  std::array<int64_t, 4> strides{};  // elements

  // A contiguous (row-major) view.
  static TensorView contiguous(void* data, DType dtype, std::array<int64_t, 4> shape);
  static TensorView contiguous3(void* data, DType dtype, std::array<int64_t, 3> shape);  // e.g. LSE [B, H, N]
  int64_t numel() const;
  std::string describe() const;  // "bf16[1, 4096, 16, 128] strides [..]"
};

}  // namespace spattn
