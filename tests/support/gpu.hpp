// GPU test helpers: skip cleanly without a GPU; device buffers to and from host values.
#pragma once

#include <gtest/gtest.h>

#include <spattn/tensor.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

// Skips the current test, with the reason, on a host without a usable NVIDIA GPU.
#define SPATTN_REQUIRE_GPU()                                                      \
  do {                                                                            \
    if (!::spattn::runtime::has_gpu())                                            \
      GTEST_SKIP() << "needs an NVIDIA GPU: " << ::spattn::runtime::no_gpu_reason(); \
  } while (0)

namespace spattn::test {

// Host values of a device buffer of n elements in a dtype.
inline std::vector<float> download_as(const runtime::DeviceBuffer& buf, size_t n, DType dtype) {
  return engine::download_values(buf, n, dtype);
}

// A device copy of int32 values (at least 4 bytes, so that an empty one has an address).
inline runtime::DeviceBuffer upload_i32(const std::vector<int32_t>& v) {
  runtime::DeviceBuffer b(std::max<size_t>(4, v.size() * 4));
  if (!v.empty()) b.upload(v.data(), v.size() * 4);
  return b;
}

// The first n int32 values of a buffer as a contiguous rank-1 view (lengths, offsets).
inline TensorView i32_view(const runtime::DeviceBuffer& b, int64_t n) {
  TensorView t;
  t.data = b.data();
  t.dtype = DType::kInt32;
  t.rank = 1;
  t.shape = {n, 1, 1, 1};
  t.strides = {1, 1, 1, 1};
  return t;
}

}  // namespace spattn::test
