#include "linear/views.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <vector>

#include "common/check.hpp"

namespace spattn::linear {

void require_tensor(const TensorView& t, const char* name, int rank) {
  SPATTN_REQUIRE(t.data != nullptr, "{} is missing (null data pointer)", name);
  SPATTN_REQUIRE(t.rank == rank, "{}: {} has rank {}, expected {}", name, t.describe(), t.rank, rank);
  SPATTN_REQUIRE(t.strides[rank - 1] == 1 || t.shape[rank - 1] == 1, "{}: {}: the last dimension must be contiguous",
                 name, t.describe());
  for (int d = 0; d < rank; ++d) {
    SPATTN_REQUIRE(t.shape[d] >= 1, "{}: {}: every dimension must be >= 1", name, t.describe());
    SPATTN_REQUIRE(t.strides[d] >= 0, "{}: {}: negative strides are not supported", name, t.describe());
  }
  SPATTN_REQUIRE(reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype) == 0,
                 "{}: data pointer is not aligned to its {}-byte elements", name, dtype_size(t.dtype));
}

void require_like(const TensorView& t, const char* name, int rank, const std::array<int64_t, 4>& shape, DType dtype,
                  const char* like) {
  require_tensor(t, name, rank);
  SPATTN_REQUIRE(t.dtype == dtype, "{}: {} must have the dtype of {} ({})", name, t.describe(), like, to_string(dtype));
  for (int d = 0; d < rank; ++d)
    SPATTN_REQUIRE(t.shape[d] == shape[d], "{}: {} must have shape [{}]", name, t.describe(),
                   fmt::join(std::vector<int64_t>(shape.begin(), shape.begin() + rank), ", "));
}

void require_contiguous_fp32(const TensorView& t, const char* name, std::initializer_list<int64_t> shape) {
  const std::vector<int64_t> want(shape);
  const int rank = static_cast<int>(want.size());
  require_tensor(t, name, rank);
  SPATTN_REQUIRE(t.dtype == DType::kFloat32, "{}: {} must be fp32", name, t.describe());
  int64_t stride = 1;
  for (int d = rank - 1; d >= 0; --d) {
    SPATTN_REQUIRE(t.shape[d] == want[d], "{}: {} must have shape [{}]", name, t.describe(), fmt::join(want, ", "));
    SPATTN_REQUIRE(t.strides[d] == stride || want[d] == 1, "{}: {} must be contiguous", name, t.describe());
    stride *= want[d];
  }
}

}  // namespace spattn::linear
