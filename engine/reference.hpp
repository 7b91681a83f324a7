// fp32 reference attention on the GPU over bit masks built on the host from
// Pattern::allowed_in_branch — shares nothing with the block tables, the code
// generator or the forward template, so it checks all three. Practical up to ~16k
// tokens with a few heads (the masks are Nq x Nk bits per head and branch).
#pragma once

#include <spattn/pattern.hpp>
#include <spattn/tensor.hpp>

#include <vector>

#include "engine/forward.hpp"
#include "runtime/device.hpp"

namespace spattn::engine {

struct ReferenceResult {
  std::vector<float> o;    // [B, Nq, Hq, D]
  std::vector<float> lse;  // [B, Hq, Nq]
};

// Host-side masks: [branches][Hq][Nq][ceil(Nk/32)] words (multithreaded).
std::vector<uint32_t> build_masks(const Pattern& pattern, const Problem& problem);

// Runs the reference kernel on the current device over q/k/v (device tensors).
ReferenceResult reference_forward(const Pattern& pattern, const Problem& problem, const TensorView& q,
                                  const TensorView& k, const TensorView& v, float scale);
// The same over masks built by the caller ([branches][Hq][Nq][ceil(Nk/32)] words, shared
// by every batch row): patterns whose allowed pairs depend on the data (adaptive).
ReferenceResult reference_forward_masks(const std::vector<uint32_t>& masks, int branches, const Problem& problem,
                                        const TensorView& q, const TensorView& k, const TensorView& v, float scale);

}  // namespace spattn::engine

namespace spattn::engine {

// Fills a device fp16/bf16 tensor (n elements at `data`) with uniform values in
// [-scale, scale) derived from `seed` (asynchronous on `stream`).
void fill_random(void* data, int64_t n, DType dtype, uint64_t seed, float scale = 1.0f, CUstream stream = nullptr);

// Error of a kernel output against the fp32 reference.
struct Comparison {
  double max_abs_err = 0;
  double rel_l2_err = 0;          // ||out - ref|| / ||ref||
  double max_lse_err = 0;         // over rows with finite reference LSE
  int64_t nonfinite = 0;          // NaN/Inf in the output (never acceptable)
  int64_t lse_mismatch = 0;       // rows where exactly one of out/ref LSE is -inf
  std::string to_string() const;
};
// out: [B, Nq, Hq, D] 16-bit values downloaded from the device; lse may be empty.
Comparison compare(const std::vector<uint16_t>& out, DType dtype, const std::vector<float>& lse,
                   const ReferenceResult& ref);
float half_bits_to_float(uint16_t bits, DType dtype);
// The first n values of a device buffer in `dtype` (16-bit or fp32) as host floats
// (synchronous).
std::vector<float> download_values(const runtime::DeviceBuffer& buf, size_t n, DType dtype);

}  // namespace spattn::engine
