// Host conversions between fp32 and the 16-bit dtypes (round to nearest even, as the
// device's __float2bfloat16_rn / __float2half_rn), for uploading host-initialised weights;
// the tests round their references with the same functions.
#pragma once

#include <spattn/tensor.hpp>

#include <bit>
#include <cmath>
#include <cstdint>

namespace spattn::modules {

inline uint16_t float_to_bf16_bits(float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  if (std::isnan(x)) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN, sign kept
  const uint32_t rounding = 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

inline float bf16_bits_to_float(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

inline uint16_t float_to_fp16_bits(float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const uint32_t abs = u & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00;  // NaN
  if (abs >= 0x477ff000) return sign | 0x7c00;  // rounds to >= 65520: infinity
  if (abs < 0x38800000) {                        // below 2^-14: a subnormal half (or zero)
    // The value in units of 2^-24, rounded to nearest even.
    const double scaled = std::ldexp(static_cast<double>(std::bit_cast<float>(abs)), 24);
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 23-bit mantissa to 10 bits.
  const uint32_t rebased = abs - (112u << 23);
  const uint32_t rounding = 0xfff + ((rebased >> 13) & 1);
  return sign | static_cast<uint16_t>((rebased + rounding) >> 13);
}

inline float fp16_bits_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1f;
  const uint32_t mantissa = bits & 0x3ff;
  if (exponent == 0) {
    const float value = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -value : value;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000 | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

inline uint16_t float_to_half_bits(float x, DType dtype) {
  return dtype == DType::kBFloat16 ? float_to_bf16_bits(x) : float_to_fp16_bits(x);
}

inline float half_bits_to_float(uint16_t bits, DType dtype) {
  return dtype == DType::kBFloat16 ? bf16_bits_to_float(bits) : fp16_bits_to_float(bits);
}

// x rounded to the dtype, as fp32.
inline float round_to(float x, DType dtype) { return half_bits_to_float(float_to_half_bits(x, dtype), dtype); }

}  // namespace spattn::modules
