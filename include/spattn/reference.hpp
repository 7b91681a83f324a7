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

// Gradients of reference_attention (fp64): given dO [B, Nq, Hq, D], writes dq like q and
// dk, dv like k (GQA: dk/dv summed over a group's query heads). The multiset softmax of
// the pattern (a key counted once per branch that allows it) is one softmax, so its
// gradient is the plain softmax gradient over that multiset: with P_ij = m_ij
// exp(s_ij - lse_i), dV = Pᵀ dO, dS = P ∘ (dO Vᵀ - rowsum(dO ∘ O)), dQ = scale dS K,
// dK = scale dSᵀ Q. Rows with no allowed key get zero gradients.
void reference_attention_backward(const Pattern& pattern, const Shape& shape, int64_t batch, int64_t kv_heads,
                                  int64_t head_dim, const float* q, const float* k, const float* v, const float* d_o,
                                  double scale, std::vector<double>& dq, std::vector<double>& dk,
                                  std::vector<double>& dv, int threads = 0);

}  // namespace spattn
