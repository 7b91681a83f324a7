// Helpers of the linear-time kernel tests: host values rounded to a storage dtype,
// device buffers holding them, C ABI tensor descriptors, and the ptxas spill check.
#pragma once

#include <gtest/gtest.h>

#include <spattn/spattn.h>
#include <spattn/tensor.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "tests/support/gpu.hpp"

namespace spattn::test {

// Bits of `x` in a 16-bit dtype (round to nearest; the tests only need valid bits whose
// decoded values the references then use).
inline uint16_t to_half_bits(float x, DType dtype) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if (dtype == DType::kBFloat16) {
    u += 0x7fffu + ((u >> 16) & 1u);  // finite inputs only
    return static_cast<uint16_t>(u >> 16);
  }
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const float a = std::fabs(x);
  if (a >= 65504.f) return sign | 0x7bff;
  if (a < 6.103515625e-05f) return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
  int e = 0;
  const float m = std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1)
  int mant = static_cast<int>(std::nearbyint((m * 2 - 1) * 1024));
  if (mant == 1024) mant = 0, ++e;
  return sign | static_cast<uint16_t>(((e - 1 + 15) << 10) | mant);
}

// Rounds host values to what the dtype stores (in place).
inline void round_to(std::vector<float>& v, DType dtype) {
  if (dtype == DType::kFloat32) return;
  for (float& x : v) x = engine::half_bits_to_float(to_half_bits(x, dtype), dtype);
}

// Device copy of host values in a dtype (already representable: see round_to).
inline runtime::DeviceBuffer upload_as(const std::vector<float>& v, DType dtype) {
  runtime::DeviceBuffer buf(std::max<size_t>(v.size(), 1) * dtype_size(dtype));
  if (dtype == DType::kFloat32) {
    buf.upload(v.data(), v.size() * 4);
  } else {
    std::vector<uint16_t> bits(v.size());
    for (size_t k = 0; k < v.size(); ++k) bits[k] = to_half_bits(v[k], dtype);
    buf.upload(bits.data(), bits.size() * 2);
  }
  return buf;
}

inline std::vector<float> uniform(size_t n, float lo, float hi, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// A C ABI descriptor of a contiguous (row-major) tensor at data.
inline spattn_tensor c_tensor(void* data, spattn_dtype dtype, const std::vector<int64_t>& shape) {
  spattn_tensor t{};
  t.data = data;
  t.dtype = dtype;
  t.rank = static_cast<int32_t>(shape.size());
  int64_t stride = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.shape[d] = shape[d];
    t.strides[d] = stride;
    stride *= shape[d];
  }
  return t;
}

// A fake, aligned device address: argument validation reads only shapes, strides and
// alignment, so C ABI calls that must fail before any GPU work can take it.
inline void* fake_address(uintptr_t n) { return reinterpret_cast<void*>(uintptr_t{1} << 32 | n << 8); }
inline spattn_tensor fake_tensor(spattn_dtype dtype, const std::vector<int64_t>& shape, uintptr_t id) {
  return c_tensor(fake_address(id), dtype, shape);
}

// Expects status `want` with a last-error message containing `needle`.
inline void expect_status(spattn_status got, spattn_status want, const std::string& needle) {
  const std::string message = spattn_last_error();
  EXPECT_EQ(got, want) << message;
  EXPECT_NE(message.find(needle), std::string::npos) << "message: " << message << "\nexpected: " << needle;
}

// spattn_attention_explain's text (asserting success).
inline std::string explain_text(spattn_attention_t attn) {
  size_t needed = 0;
  EXPECT_EQ(spattn_attention_explain(attn, nullptr, 0, &needed), SPATTN_OK);
  std::string text(needed, '\0');
  EXPECT_EQ(spattn_attention_explain(attn, text.data(), text.size(), &needed), SPATTN_OK);
  return text;
}

// Every ptxas "N bytes spill stores/loads" line of a log (one per kernel) reads 0.
inline void expect_no_spills(const std::string& log, const std::string& what) {
  const std::regex spill(R"((\d+) bytes spill (stores|loads))");
  int lines = 0;
  for (auto it = std::sregex_iterator(log.begin(), log.end(), spill); it != std::sregex_iterator(); ++it, ++lines)
    EXPECT_EQ((*it)[1], "0") << what << ":\n" << log;
  EXPECT_GT(lines, 0) << what << ": no ptxas resource lines in the log:\n" << log;
}

}  // namespace spattn::test
