// GPU test helpers: skip cleanly without a GPU; device buffers to and from host values.
#pragma once

#include <gtest/gtest.h>

#include <spattn/tensor.hpp>
#include <spattn/varlen.hpp>

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

// Packed documents of lq query and lk key rows each (lk empty: as lq): their offsets
// (cu_seqlens, on the host and the device) and the Documents of them, max_seqlen the
// longest document's rows.
struct DeviceDocuments {
  std::vector<int32_t> cu_q{0}, cu_k{0};
  runtime::DeviceBuffer dev_q, dev_k;
  Documents docs;
  DeviceDocuments(const std::vector<int32_t>& lq, const std::vector<int32_t>& lk_or_empty) {
    const std::vector<int32_t>& lk = lk_or_empty.empty() ? lq : lk_or_empty;
    for (size_t x = 0; x < lq.size(); ++x) {
      cu_q.push_back(cu_q.back() + lq[x]);
      cu_k.push_back(cu_k.back() + lk[x]);
    }
    dev_q = upload_i32(cu_q);
    dev_k = upload_i32(cu_k);
    docs.cu_seqlens_q = i32_view(dev_q, static_cast<int64_t>(cu_q.size()));
    docs.cu_seqlens_k = i32_view(dev_k, static_cast<int64_t>(cu_k.size()));
    docs.max_seqlen_q = lq.empty() ? 0 : *std::max_element(lq.begin(), lq.end());
    docs.max_seqlen_k = lk.empty() ? 0 : *std::max_element(lk.begin(), lk.end());
  }
};

// A buffer as the fp32 LSE [heads, rows] of packed documents (rank 2, contiguous).
inline TensorView packed_lse_view(const runtime::DeviceBuffer& b, int64_t heads, int64_t rows) {
  TensorView t;
  t.data = b.data();
  t.dtype = DType::kFloat32;
  t.rank = 2;
  t.shape = {heads, rows, 1, 1};
  t.strides = {rows, 1, 1, 1};
  return t;
}

}  // namespace spattn::test
