// What the constructor of a MultiheadAttention checks, and the weights it initialises
// itself with: host code only, so both run (and are tested) without a GPU.
#pragma once

#include <spattn/modules.hpp>

#include <cstdint>

namespace spattn::modules {

struct Dims {
  int64_t embed = 0;     // E
  int64_t heads = 0;     // H
  int64_t kv_heads = 0;  // Hkv
  int64_t head_dim = 0;  // D = E / H
  int64_t kv_dim = 0;    // Ekv = Hkv * D
  int64_t in_rows = 0;   // E + 2 Ekv
};

// Checks the module's arguments and options (not the caller's weight pointers, see
// check_weights); throws kInvalidArgument, or kUnsupported for a head dim or dtype the
// attention kernels do not serve (their own message, with the module's context).
Dims validate_module(int64_t embed_dim, int64_t num_heads, int64_t kv_heads, const MultiheadAttentionOptions& options);

// Caller-owned weights: the pointers the options need are there and 16-byte aligned.
void check_weights(const MultiheadWeights& weights, const MultiheadAttentionOptions& options);

// torch.nn.MultiheadAttention's initialisation (see MultiheadAttentionOptions::weights),
// from a counter-based generator: element i of a tensor depends only on the seed, the
// tensor and i, so it is reproducible on any host.
HostWeights initial_weights(const Dims& dims, const MultiheadAttentionOptions& options);

}  // namespace spattn::modules
