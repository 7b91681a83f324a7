// Host reference attention (fp64) over any pattern, for tests and small problems.
//
// This is the semantic reference of DESIGN.md §2-3 that every kernel is checked
// against: one softmax per branch over the keys Pattern::allowed_in_branch() admits,
// branches merged with weights exp(lse_b) / sum_b' exp(lse_b') over the branches in
// which the query takes part. A query with no allowed key gets output 0 and LSE -inf.
// Cost is O(B * Hq * Nq * Nk * branches): a few thousand tokens at most.
#pragma once

#include <cstdint>
#include <vector>

#include <spattn/pattern.hpp>

namespace spattn {

// q: [B, Nq, Hq, D], k and v: [B, Nk, Hkv, D], contiguous (shape.heads = Hq, and
// Hq % kv_heads == 0; query head h reads kv head h / (Hq / kv_heads)). Writes out
// [B, Nq, Hq, D] and lse [B, Hq, Nq] (natural log). scale multiplies q.k (typically
// 1 / sqrt(D)). threads <= 0: one per hardware thread. Throws kInvalidArgument for a
// bad shape or pattern, kUnsupported for adaptive patterns.
void reference_attention(const Pattern& pattern, const Shape& shape, int64_t batch, int64_t kv_heads,
                         int64_t head_dim, const float* q, const float* k, const float* v, double scale,
                         std::vector<double>& out, std::vector<double>& lse, int threads = 0);

}  // namespace spattn
