/* spattn C ABI: sparse attention, the Mamba selective scan and Performer attention over
 * device pointers, for FFI (Python ctypes, Rust...).
 *
 * Every call returns a status; on failure spattn_last_error() returns the message of
 * the last failed call on this thread (what failed and how to fix it). Handles are
 * opaque. Patterns are the JSON of DESIGN.md §8 (or a preset name). Tensors are device
 * pointers with shapes and strides in elements:
 *   Q [B, Nq, Hq, D], K/V [B, Nk, Hkv, D], O like Q, LSE [B, Hq, Nq] fp32 (optional).
 * Packed variable-length documents and padded batches (include/spattn/varlen.hpp):
 * spattn_attention_forward_varlen and spattn_attention_forward_padded, and their gradients
 * spattn_attention_backward_varlen and spattn_attention_backward_padded.
 * Adaptive patterns ({"type": "adaptive", ...}, include/spattn/adaptive.hpp) also take
 * block scores, projections and a chosen-blocks output: spattn_attention_forward_adaptive.
 */
#ifndef SPATTN_H_
#define SPATTN_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum spattn_status {
  SPATTN_OK = 0,
  SPATTN_ERROR_INVALID_ARGUMENT = 1,
  SPATTN_ERROR_UNSUPPORTED = 2,
  SPATTN_ERROR_NO_GPU = 3,
  SPATTN_ERROR_COMPILE = 4,
  SPATTN_ERROR_CUDA = 5,
  SPATTN_ERROR_IO = 6,
  SPATTN_ERROR_CORRUPT = 7,
  SPATTN_ERROR_INTERNAL = 8
} spattn_status;

/* SPATTN_INT32 only for index tensors (the chosen blocks of adaptive patterns, the offsets
 * and lengths of documents). */
typedef enum spattn_dtype { SPATTN_FP16 = 0, SPATTN_BF16 = 1, SPATTN_FP32 = 2, SPATTN_INT32 = 3 } spattn_dtype;

typedef struct spattn_tensor {
  void* data;
  spattn_dtype dtype;
  int32_t rank;        /* 4 for Q/K/V/O, 3 for LSE (3 and 2 for packed documents, 1 for their
                        * offsets and lengths); 1 to 3 for the scan's tensors; 2 to 4 for adaptive inputs */
  int64_t shape[4];
  int64_t strides[4];  /* elements */
} spattn_tensor;

typedef struct spattn_attention* spattn_attention_t;

const char* spattn_version(void);
/* Message of the last failed call on this thread ("" if none). */
const char* spattn_last_error(void);

/* options_json may be NULL or an object with any of:
 *   "scale": float (default 1/sqrt(D)), "device": int, "config": "128x64w4s2" or
 *   "sm90:128x128s2", "backward_config": "64x128w8s2", "use_tuning_db": bool,
 *   "deterministic": bool (bitwise reproducible backward), "record": "FILE" (append each
 *   new problem to a record file, as SPATTN_RECORD does), "check_lengths": bool (default
 *   true: forward_varlen / forward_padded wait for the GPU's check of the lengths and fail
 *   on bad ones; false: nothing waits, the call can be captured in a CUDA graph, and bad
 *   lengths leave the outputs unwritten) */
spattn_status spattn_attention_create(const char* pattern_json, const char* options_json, spattn_attention_t* out);
void spattn_attention_destroy(spattn_attention_t attn);

/* Asynchronous on `stream` (a CUstream / cudaStream_t; NULL: the default stream). */
spattn_status spattn_attention_forward(spattn_attention_t attn, const spattn_tensor* q, const spattn_tensor* k,
                                       const spattn_tensor* v, const spattn_tensor* o, const spattn_tensor* lse,
                                       void* stream);

/* The forward of an adaptive pattern (include/spattn/adaptive.hpp) with its per-call
 * inputs, all optional (NULL, or a descriptor with a NULL data pointer: absent):
 *   scores [B, Hq, nq_blocks, nk_blocks] fp32, last dimension contiguous: the block
 *     scores to choose from instead of computing them from block means (exclusive with
 *     wq / wk);
 *   wq, wk: projections of the pooled blocks, fp32, contiguous: [D, P] shared by every
 *     head, or [Hq, D, P] (wq) / [Hkv, D, P] (wk) per head; both or neither;
 *   blocks [B, Hq, nq_blocks, max_k] SPATTN_INT32, contiguous: written with the chosen key
 *     blocks, ascending per row, -1 past the row's count (the grid: spattn_adaptive_geometry);
 *   gates [B, Hq, nq_blocks, nk_blocks] fp32, contiguous: block gates; a chosen block's
 *     logits get log g added, a gate <= 0 (or NaN) removes the block.
 * With all five absent it is spattn_attention_forward (scores from the block means, for
 * adaptive patterns); other patterns refuse any adaptive input. Asynchronous on `stream`:
 * the selection runs on the GPU in the same stream before the attention. */
spattn_status spattn_attention_forward_adaptive(spattn_attention_t attn, const spattn_tensor* q,
                                                const spattn_tensor* k, const spattn_tensor* v,
                                                const spattn_tensor* o, const spattn_tensor* lse,
                                                const spattn_tensor* scores, const spattn_tensor* wq,
                                                const spattn_tensor* wk, const spattn_tensor* blocks,
                                                const spattn_tensor* gates, void* stream);

/* Packed variable-length documents (FlashAttention's varlen convention): q [total_q, Hq, D],
 * k and v [total_k, Hkv, D], o like q (rank 3), lse [Hq, total_q] fp32 (rank 2) or NULL;
 * cu_seqlens_q and cu_seqlens_k SPATTN_INT32 [documents + 1] (rank 1, contiguous, device):
 * non-decreasing offsets within the tensors, empty documents allowed. Document d is a
 * problem of its own: query rows cu_seqlens_q[d] .. cu_seqlens_q[d + 1] - 1 attend key rows
 * cu_seqlens_k[d] .. cu_seqlens_k[d + 1] - 1 under the pattern, positions relative to the
 * document's first row; rows outside every document are not written (multi-part patterns
 * may write O = 0 there; varlen.hpp). max_seqlen_q and max_seqlen_k bound the longest
 * document (checked). Patterns whose rows are key ranges check the lengths on the GPU:
 * with "check_lengths" (the default) the call waits for that check and a bad entry is
 * SPATTN_ERROR_INVALID_ARGUMENT naming it; without it nothing waits. Other static patterns
 * copy the lengths to the host (the call waits for them) and check them there. Otherwise
 * asynchronous on `stream`. SPATTN_ERROR_UNSUPPORTED for adaptive patterns. */
spattn_status spattn_attention_forward_varlen(spattn_attention_t attn, const spattn_tensor* q, const spattn_tensor* k,
                                              const spattn_tensor* v, const spattn_tensor* o, const spattn_tensor* lse,
                                              const spattn_tensor* cu_seqlens_q, const spattn_tensor* cu_seqlens_k,
                                              int64_t max_seqlen_q, int64_t max_seqlen_k, void* stream);

/* The batched layout of spattn_attention_forward with per-batch used lengths, SPATTN_INT32
 * [B] (rank 1, contiguous, device): batch b uses its first seqused_k[b] keys (the others
 * never attend) and its first seqused_q[b] queries; the query rows past seqused_q[b] get
 * O = 0 and LSE = -inf. Either may be absent (NULL, or a NULL data pointer: every key /
 * every query row used), not both. Lengths checked as in spattn_attention_forward_varlen. */
spattn_status spattn_attention_forward_padded(spattn_attention_t attn, const spattn_tensor* q, const spattn_tensor* k,
                                              const spattn_tensor* v, const spattn_tensor* o, const spattn_tensor* lse,
                                              const spattn_tensor* seqused_q, const spattn_tensor* seqused_k,
                                              void* stream);

/* Gradients of the forward pass: dq like q, dk and dv like k; lse (required) and o are
 * what forward wrote, d_o is like o. Asynchronous on `stream`. */
spattn_status spattn_attention_backward(spattn_attention_t attn, const spattn_tensor* q, const spattn_tensor* k,
                                        const spattn_tensor* v, const spattn_tensor* o, const spattn_tensor* lse,
                                        const spattn_tensor* d_o, const spattn_tensor* dq, const spattn_tensor* dk,
                                        const spattn_tensor* dv, void* stream);

/* Gradients of spattn_attention_forward_adaptive: the tensors of spattn_attention_backward,
 * and the forward's scores or wq / wk (NULL, or a NULL data pointer, where the forward had
 * none): the selection runs again on them and chooses the forward's blocks; blocks, when
 * given, receives them again; gates are the forward's. Gradients flow through the
 * attention over the chosen blocks, not through the selection; gates_grad (optional,
 * needs gates; like gates) receives dL/dg: the sum of the logits' gradients over each
 * chosen block divided by its gate, 0 for blocks not chosen or removed.
 * SPATTN_ERROR_UNSUPPORTED for blocks that are not multiples of 64. */
spattn_status spattn_attention_backward_adaptive(spattn_attention_t attn, const spattn_tensor* q,
                                                 const spattn_tensor* k, const spattn_tensor* v,
                                                 const spattn_tensor* o, const spattn_tensor* lse,
                                                 const spattn_tensor* d_o, const spattn_tensor* dq,
                                                 const spattn_tensor* dk, const spattn_tensor* dv,
                                                 const spattn_tensor* scores, const spattn_tensor* wq,
                                                 const spattn_tensor* wk, const spattn_tensor* blocks,
                                                 const spattn_tensor* gates, const spattn_tensor* gates_grad,
                                                 void* stream);

/* Gradients of spattn_attention_forward_varlen / _padded with the same lengths: tensors
 * as those calls take them (lse required: [Hq, total_q], or [B, Hq, Nq] for padded
 * batches), dq like q, dk and dv like k. Rows outside every document (padding) get zero
 * gradients. The lengths check as for the forward calls. SPATTN_ERROR_UNSUPPORTED for
 * patterns whose document tables are not built on the GPU (their rows are not key
 * ranges: strided, LongNet, grids, custom blocks) and for adaptive patterns. */
spattn_status spattn_attention_backward_varlen(spattn_attention_t attn, const spattn_tensor* q,
                                               const spattn_tensor* k, const spattn_tensor* v, const spattn_tensor* o,
                                               const spattn_tensor* lse, const spattn_tensor* d_o,
                                               const spattn_tensor* dq, const spattn_tensor* dk,
                                               const spattn_tensor* dv, const spattn_tensor* cu_seqlens_q,
                                               const spattn_tensor* cu_seqlens_k, int64_t max_seqlen_q,
                                               int64_t max_seqlen_k, void* stream);
spattn_status spattn_attention_backward_padded(spattn_attention_t attn, const spattn_tensor* q,
                                               const spattn_tensor* k, const spattn_tensor* v, const spattn_tensor* o,
                                               const spattn_tensor* lse, const spattn_tensor* d_o,
                                               const spattn_tensor* dq, const spattn_tensor* dk,
                                               const spattn_tensor* dv, const spattn_tensor* seqused_q,
                                               const spattn_tensor* seqused_k, void* stream);

/* Text of what the last forward ran. Writes at most `capacity` bytes (NUL-terminated)
 * and sets *needed to the full length + 1. */
spattn_status spattn_attention_explain(spattn_attention_t attn, char* buffer, size_t capacity, size_t* needed);

/* Layout statistics as a JSON object (density, allowed_pairs, tiles, useful_flops...). */
spattn_status spattn_pattern_stats(const char* pattern_json, int64_t nq, int64_t nk, int64_t heads, int64_t tile_m,
                                   int64_t tile_n, int64_t head_dim, char* buffer, size_t capacity, size_t* needed);

/* The block grid of an adaptive pattern at Nq x Nk queries x keys (no GPU needed): the
 * query and key block counts (ceil(N / block)) and max_k, the most blocks a query block
 * keeps (the chosen-blocks tensor's last dimension). Any output pointer may be NULL.
 * SPATTN_ERROR_INVALID_ARGUMENT for a pattern that is not one adaptive pattern or an empty
 * shape. */
spattn_status spattn_adaptive_geometry(const char* pattern_json, int64_t nq, int64_t nk, int64_t* nq_blocks,
                                       int64_t* nk_blocks, int64_t* max_k);

/* ---- Mamba selective scan (S6), include/spattn/linear.hpp ---------------------------
 * Sequence tensors x, delta, z, y [B, L, channels] and b, c [B, L, state] (rank 3, one
 * dtype: fp16, bf16 or fp32, last dimension contiguous); a_log [channels, state] (rank 2),
 * d and delta_bias [channels] (rank 1), final_state [B, channels, state]: fp32 and
 * contiguous. d, delta_bias, z and final_state are optional (NULL: D = 0, no bias, no
 * gate, state not written). */
typedef struct spattn_selective_scan* spattn_selective_scan_t;

/* options_json may be NULL or an object with any of:
 *   "device": int, "config": "32x8x16" (channels x segments x steps; default: heuristic),
 *   "splits": int (CTAs per sequence along time; 0 or absent: chosen), "use_tuning_db": bool */
spattn_status spattn_selective_scan_create(const char* options_json, spattn_selective_scan_t* out);
void spattn_selective_scan_destroy(spattn_selective_scan_t scan);

/* y (and final_state) from the inputs; delta_softplus != 0: delta = softplus(delta + bias).
 * Asynchronous on `stream` (NULL: the default stream). */
spattn_status spattn_selective_scan_forward(spattn_selective_scan_t scan, const spattn_tensor* x,
                                            const spattn_tensor* delta, const spattn_tensor* a_log,
                                            const spattn_tensor* b, const spattn_tensor* c, const spattn_tensor* d,
                                            const spattn_tensor* delta_bias, const spattn_tensor* z,
                                            const spattn_tensor* y, const spattn_tensor* final_state,
                                            int32_t delta_softplus, void* stream);

/* Text of what the last forward ran (as spattn_attention_explain). */
spattn_status spattn_selective_scan_explain(spattn_selective_scan_t scan, char* buffer, size_t capacity,
                                            size_t* needed);

/* ---- Performer (FAVOR+) attention, include/spattn/linear.hpp --------------------------
 * Q [B, Nq, H, D], K [B, Nk, Hkv, D], V [B, Nk, Hkv, Dv], O [B, Nq, H, Dv] (H % Hkv == 0),
 * one dtype (fp16, bf16 or fp32), head dim contiguous. */
typedef struct spattn_performer* spattn_performer_t;

/* options_json may be NULL or an object with any of:
 *   "features": int (m, a multiple of 16 from 16 to 1024; default 256), "seed": int
 *   (of the random features, default 0), "causal": bool, "device": int,
 *   "config": "32x32" (chunk x slice of the causal scan), "tf32": bool */
spattn_status spattn_performer_create(int64_t head_dim, const char* options_json, spattn_performer_t* out);
void spattn_performer_destroy(spattn_performer_t performer);

/* Draws new random features from `seed` (a FAVOR+ redraw; no GPU needed). */
spattn_status spattn_performer_redraw(spattn_performer_t performer, uint64_t seed);

/* The random features omega [features, head_dim] as fp32, row-major: writes at most
 * `capacity` floats and sets *needed to features * head_dim. */
spattn_status spattn_performer_features(spattn_performer_t performer, float* omega, size_t capacity,
                                        size_t* needed);

/* O from Q, K, V; asynchronous on `stream`. The handle owns the device workspace and
 * must outlive the launches that use it. */
spattn_status spattn_performer_forward(spattn_performer_t performer, const spattn_tensor* q, const spattn_tensor* k,
                                       const spattn_tensor* v, const spattn_tensor* o, void* stream);

/* Text of what the last forward ran (as spattn_attention_explain). */
spattn_status spattn_performer_explain(spattn_performer_t performer, char* buffer, size_t capacity, size_t* needed);

/* ---- Ring attention (sequence parallel over NCCL), include/spattn/ring.hpp --------
 * Each rank holds its shard of the sequence: q, o [B, n, Hq, D], k, v [B, n, Hkv, D]
 * contiguous, lse [B, Hq, n] (optional), n = N / world (zigzag: chunk r, then chunk
 * 2*world-1-r). Rank 0 makes a 128-byte NCCL unique id, every rank receives it (e.g.
 * through torch.distributed) and creates its handle. NCCL is loaded at run time. */
typedef struct spattn_ring* spattn_ring_t;
spattn_status spattn_nccl_unique_id(char id[128]);
/* options_json may be NULL or an object with any of: "sharding": "contiguous" or
 * "zigzag", "scale": float, "device": int, "config": "128x64w4s2", "timing": bool */
spattn_status spattn_ring_create(const char* pattern_json, const char* options_json, const char id[128], int rank,
                                 int world, spattn_ring_t* out);
void spattn_ring_destroy(spattn_ring_t ring);
spattn_status spattn_ring_forward(spattn_ring_t ring, const spattn_tensor* q, const spattn_tensor* k,
                                  const spattn_tensor* v, const spattn_tensor* o, const spattn_tensor* lse,
                                  void* stream);
/* The schedule of the last forward on this rank (explain), or its timings (needs
 * "timing": true; waits for the forward to finish). */
spattn_status spattn_ring_explain(spattn_ring_t ring, char* buffer, size_t capacity, size_t* needed);
spattn_status spattn_ring_timings(spattn_ring_t ring, char* buffer, size_t capacity, size_t* needed);

#ifdef __cplusplus
}
#endif

#endif /* SPATTN_H_ */
