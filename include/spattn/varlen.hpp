// Documents: packed variable-length sequences and padded batches.
//
// Packed documents (FlashAttention's varlen convention): Q [total_q, Hq, D], K and V
// [total_k, Hkv, D], O like Q, LSE [Hq, total_q] fp32. Document d holds query rows
// cu_seqlens_q[d] .. cu_seqlens_q[d + 1] - 1 and key rows cu_seqlens_k[d] ..
// cu_seqlens_k[d + 1] - 1 (device int32 [docs + 1], non-decreasing, within the tensors;
// an empty document is allowed). Rows outside every document are left as they are
// (but see below).
//
// Padded batches, the layout [B, N, H, D] of Attention::forward with per-batch lengths:
// batch b uses its first seqused_k[b] keys (the rest never attend) and its first
// seqused_q[b] queries (default: all Nq); the query rows past seqused_q[b] get O = 0
// and LSE = -inf.
//
// Every document is a problem of its own: the pattern sees positions relative to the
// document's first row and the document's lengths as Nq and Nk (causal aligned
// bottom-right per document, windows and global tokens per document, ...), exactly as
// if the document ran alone.
//
// Every static pattern runs (documents_supported() says why not for the others). The
// tables, in natural token order, are built
//  - on the GPU from the lengths in the call's stream, for patterns whose rows are key
//    ranges (dense, causal, windows, global + local, hierarchical levels, head groups,
//    unions and intersections of those). Lengths are checked there before any row is
//    read through them. With AttentionOptions::check_lengths (the default) the host then
//    waits for that check (one 16-byte copy) and throws kInvalidArgument naming the bad
//    entry; without it nothing waits (the call can be captured in a CUDA graph), and bad
//    lengths leave every output row unwritten — never an out-of-bounds access. The
//    tables' capacity (query tiles of all documents, key tiles of the longest) grows
//    when a call needs more, which reallocates it: capture after a call at least as
//    large as those the graph will replay (more rows, documents or a longer max_seqlen_k
//    than any call before the capture need a new capture);
//  - on the host for the others (LongNet, strides, grids, custom blocks, ...): the
//    lengths are copied to the host (the call waits for them and cannot be captured),
//    checked there, and the layout of each distinct document shape is compiled once and
//    kept. A grid pattern needs every document to have its grid's length.
// explain() says which path ran. Patterns whose rows some part leaves without a key
// table (LongNet rows in no branch of their head) and multi-part patterns write O = 0,
// LSE = -inf also into rows outside every document.
//
// Gradients (Attention::backward_varlen / backward_padded, the same lengths and tensors
// as the forward call, with its LSE): for patterns whose tables are built on the GPU, the
// documents, the forward rows at the backward kernel's tiles and their transposition
// (the query tiles of each key tile) are built from the lengths in the call's stream,
// checked and capturable as above; every document is again a problem of its own, and
// rows outside every document (padding) get zero gradients — with the check off, bad
// lengths give zero gradients everywhere. Patterns whose tables come from the host throw
// kUnsupported (run them per document through Attention::backward).
#pragma once

#include <spattn/pattern.hpp>
#include <spattn/tensor.hpp>

#include <cstdint>
#include <string>

namespace spattn {

struct Documents {
  TensorView cu_seqlens_q;   // int32 [docs + 1], device
  TensorView cu_seqlens_k;   // int32 [docs + 1], device
  int64_t max_seqlen_q = 0;  // the longest document's query rows (an upper bound; checked)
  int64_t max_seqlen_k = 0;  // and key rows: the tables' row capacity
};

struct KeyPadding {
  TensorView seqused_k;  // int32 [B], device: keys used per batch
  TensorView seqused_q;  // int32 [B], device, or data == nullptr: every query row is used
};

// The checks Attention::forward_padded / backward_padded make of `padding` for a batch of
// `batch` before any GPU work: at least one of the two tensors, each a contiguous,
// 4-byte aligned device int32 [batch]. Throws kInvalidArgument naming the tensor. (The
// values are checked on the GPU, as above.)
void check_key_padding(const KeyPadding& padding, int64_t batch);

// Whether documents can run `pattern` with `heads` query heads; if not, `why` says why.
bool documents_supported(const Pattern& pattern, int64_t heads, std::string* why = nullptr);

}  // namespace spattn
