// Adaptive (content-based) block selection: {"type": "adaptive", "block": B, "top_k": k}
// or {"type": "adaptive", "block": B, "keep_ratio": f}, optionally "causal": true.
//
// The problem is cut into blocks of B tokens (the last block of each axis may be
// shorter): query blocks I < nq_blocks = ceil(Nq / B), key blocks J < nk_blocks =
// ceil(Nk / B). Per batch and query head, every query block keeps k_I key blocks, chosen
// on the GPU at run time from block scores S[I, J]:
//   - computed: S = mean(Q_I) · mean(K_J) (means over the block's tokens; through
//     projections mean(Q_I) Wq · mean(K_J) Wk when given), or
//   - supplied by the caller, [B, Hq, nq_blocks, nk_blocks] fp32.
// Selection, per query block I (with shift = Nk - Nq, the bottom-right alignment that
// causal uses everywhere):
//   - reach(I) = min((I + 1) B, Nq) - 1 + shift, the last key the block's last query
//     may see under causal; the "diagonal" block is d(I) = clamp(floor(reach / B), 0,
//     nk_blocks - 1);
//   - allowed(I): causal: blocks 0 .. d(I) (none when reach < 0: such rows attend
//     nothing, O = 0, LSE = -inf); otherwise all nk_blocks;
//   - k_I = min(top_k, allowed(I)), or ceil(keep_ratio * allowed(I)) (a product within
//     1e-9 of an integer counts as that integer);
//   - d(I) is always kept; the other k_I - 1 are the highest scores among the allowed
//     blocks, ties to the lower block index (a NaN score counts as -inf).
// A query i of block I then attends every key j of its chosen blocks (with causal:
// j <= i + shift; a block's keys past Nk do not exist).
#pragma once

#include <spattn/layout.hpp>
#include <spattn/pattern.hpp>
#include <spattn/tensor.hpp>

#include <cstdint>
#include <vector>

namespace spattn {

// The block grid of an adaptive pattern at one problem shape: what the selection
// chooses from, independent of the data.
struct AdaptiveGeometry {
  int64_t block = 0;
  int64_t nq = 0, nk = 0;
  int64_t nq_blocks = 0, nk_blocks = 0;
  bool causal = false;
  int64_t max_k = 0;               // max over query blocks of k_I: the chosen-blocks tensor's last dim
  std::vector<int32_t> k;          // per query block: k_I (0 for a causal block that sees nothing)
  std::vector<int32_t> diagonal;   // per query block: d(I), -1 where k_I = 0
  std::vector<int32_t> allowed;    // per query block: the blocks it chooses from are 0 .. allowed - 1
};

// True for a pattern that is one adaptive leaf (causal or not). Adaptive leaves inside
// compositions or head groups are not supported yet (kUnsupported where they are run).
bool is_adaptive(const Pattern& pattern);

// The geometry at Nq x Nk. Throws kInvalidArgument for a pattern that is not one
// adaptive leaf or an empty shape.
AdaptiveGeometry adaptive_geometry(const Pattern& pattern, int64_t nq, int64_t nk);

// The selection of one (batch, head) on the host, by the definition above: scores
// [nq_blocks][nk_blocks] row-major in, the chosen blocks out as [nq_blocks][max_k],
// ascending per row, -1 past k_I. The reference the GPU selection is tested against.
std::vector<int32_t> adaptive_select_reference(const AdaptiveGeometry& geometry, const float* scores);

// The host part of an adaptive layout: one table per query head in natural token order,
// every query tile of block I listing k_I * B / tile_n key tiles (tile_m and tile_n must
// divide B), with zero columns; the GPU writes each call's columns and full counts. The
// chosen blocks' tiles are listed in ascending order, full before partial; a key tile
// past Nk (a chosen last block shorter than B) or above the causal diagonal is listed as
// partial and contributes nothing. Throws kInvalidArgument when a tile does not divide B.
Layout adaptive_layout(const Pattern& pattern, const Shape& shape, const LayoutOptions& options);

// Statistics of an adaptive layout: listed tiles and useful pairs as adaptive_layout
// counts them (an upper bound where a chosen last block is short); full and partial
// tiles are left 0, since which tiles are full depends on the blocks chosen.
LayoutStats adaptive_stats(const Layout& layout, int64_t head_dim = 128);

// Per-call inputs of an adaptive pattern's forward pass (all optional; device tensors
// of the call's GPU).
struct AdaptiveInputs {
  // [B, Hq, nq_blocks, nk_blocks] fp32 (last dim contiguous): the block scores to select
  // from instead of computing them. Exclusive with wq / wk.
  const TensorView* scores = nullptr;
  // Projections of the pooled blocks, fp32, contiguous: [D, P] shared by every head, or
  // [Hq, D, P] (wq) / [Hkv, D, P] (wk) per head; both or neither.
  const TensorView* wq = nullptr;
  const TensorView* wk = nullptr;
  // Output: the chosen key blocks, [B, Hq, nq_blocks, max_k] int32 contiguous, ascending
  // per row, -1 past k_I.
  const TensorView* blocks = nullptr;
  // Block gates, [B, Hq, nq_blocks, nk_blocks] fp32 contiguous (e.g. a Gumbel-softmax or
  // straight-through scorer's weights): the logits of query block I against a chosen key
  // block J get log g[I, J] added, so the block's attention weights are scaled by g
  // before the softmax normalisation. Read only at chosen blocks; a gate <= 0 (or NaN)
  // removes its block. The backward pass needs the forward's gates.
  const TensorView* gates = nullptr;
  // Backward output with gates: dL/dg, same shape as gates, fp32 contiguous. Every entry
  // is written: (sum of dL/dlogit over the block's pairs) / g at chosen blocks with
  // g > 0, 0 elsewhere. The forward pass refuses it.
  const TensorView* gates_grad = nullptr;
};

}  // namespace spattn
