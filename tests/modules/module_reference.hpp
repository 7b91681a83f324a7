// Host fp64 reference of the attention modules, and the one statement of their GPU
// tolerances.
//
// The reference follows the module's data flow and rounds to the dtype exactly where the
// module stores 16-bit values (the projected Q, K, V; Q and K after the rotary embedding;
// the attention output; after the sub-LayerNorm; a scaled output bias); everything else
// is fp64: the GEMMs, the rotary angles, spattn::reference_attention, the LayerNorm
// statistics, the final output (not rounded). What remains between the two is the
// attention kernel's own error, the GEMMs' fp32 accumulation and the output's rounding.
#pragma once

#include <spattn/modules.hpp>
#include <spattn/pattern.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace spattn::test {

struct ModuleProblem {
  int64_t batch = 1, nq = 0, nk = 0;  // nk == nq for self-attention
  int64_t embed = 0, heads = 0, kv_heads = 0;
  MultiheadAttentionOptions options;  // dtype, bias, rotary, sub_layernorm, eps, attention.scale
  ForwardExtras extras;               // attention_scale, residual_scale (residual: given to the reference apart)
};

// query [B, Nq, E], key and value [B, Nk, E], residual [B, Nq, E] or empty, weights with
// the values the module holds (already rounded to the dtype). Returns out [B, Nq, E].
std::vector<double> reference_module(const Pattern& pattern, const ModuleProblem& p, const HostWeights& w,
                                     const std::vector<float>& query, const std::vector<float>& key,
                                     const std::vector<float>& value, const std::vector<float>& residual);

// GPU tolerances of the modules' outputs against reference_module, per dtype: relative L2
// error over the output, and the largest |error| over the largest |reference|. The
// attention kernels are held to rel. L2 1e-2 (bf16) / 2e-3 (fp16) against an fp32
// reference (tests/engine); the module adds the GEMMs' accumulation order, rounding flips
// at the stored intermediates and the output's own rounding (2^-9 / 2^-12 relative), so
// the bounds here are those of the kernels with about 1.5x headroom:
//   bf16: rel. L2 <= 1.5e-2, max |err| / max |ref| <= 4e-2
//   fp16: rel. L2 <= 3e-3,   max |err| / max |ref| <= 8e-3
struct ModuleTolerance {
  double rel_l2;
  double max_rel;
};
ModuleTolerance module_tolerance(DType dtype);

struct ModuleError {
  double rel_l2 = 0, max_abs = 0, max_ref = 0;
  int64_t nonfinite = 0;
  bool within(const ModuleTolerance& tol) const {
    return nonfinite == 0 && rel_l2 <= tol.rel_l2 && max_abs <= tol.max_rel * max_ref;
  }
  std::string to_string() const;
};
// got: 16-bit values of the dtype as downloaded.
ModuleError compare_output(const std::vector<uint16_t>& got, DType dtype, const std::vector<double>& ref);

// Uniform values in [-bound, bound) rounded to the dtype (a seeded std::mt19937_64).
std::vector<float> random_rounded(size_t n, double bound, uint64_t seed, DType dtype);

}  // namespace spattn::test
