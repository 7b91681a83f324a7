// Element loads and stores of the linear-time kernels: fp16, bf16 or fp32 in memory,
// fp32 in registers. kDtype: 0 fp16, 1 bf16, 2 fp32 (the codegen writes it).
#pragma once

#include "spattn/linear_params.cuh"

namespace spattn::linear {

template <int kDtype>
__device__ __forceinline__ float load_elem(const void* base, int64_t index) {
  if constexpr (kDtype == 2) {
    return static_cast<const float*>(base)[index];
  } else {
    const unsigned short bits = static_cast<const unsigned short*>(base)[index];
    if constexpr (kDtype == 1) {
      return __uint_as_float(static_cast<unsigned>(bits) << 16);
    } else {
      float f;
      asm("cvt.f32.f16 %0, %1;\n" : "=f"(f) : "h"(bits));
      return f;
    }
  }
}

template <int kDtype>
__device__ __forceinline__ void store_elem(void* base, int64_t index, float value) {
  if constexpr (kDtype == 2) {
    static_cast<float*>(base)[index] = value;
  } else {
    unsigned short bits;
    if constexpr (kDtype == 1) {
      asm("cvt.rn.bf16.f32 %0, %1;\n" : "=h"(bits) : "f"(value));
    } else {
      asm("cvt.rn.f16.f32 %0, %1;\n" : "=h"(bits) : "f"(value));
    }
    static_cast<unsigned short*>(base)[index] = bits;
  }
}

// 2^x on the SFU (relative error about 2^-22; results below 2^-126 flush to zero, which
// is what a decay factor exp(ΔA) with ΔA very negative should become).
__device__ __forceinline__ float fast_exp2(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(r) : "f"(x));
  return r;
}

}  // namespace spattn::linear
