/* spattn C ABI: sparse attention over device pointers, for FFI (Python ctypes, Rust...).
 *
 * Every call returns a status; on failure spattn_last_error() returns the message of
 * the last failed call on this thread (what failed and how to fix it). Handles are
 * opaque. Patterns are the JSON of DESIGN.md §8 (or a preset name). Tensors are device
 * pointers with shapes and strides in elements:
 *   Q [B, Nq, Hq, D], K/V [B, Nk, Hkv, D], O like Q, LSE [B, Hq, Nq] fp32 (optional).
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

typedef enum spattn_dtype { SPATTN_FP16 = 0, SPATTN_BF16 = 1, SPATTN_FP32 = 2 } spattn_dtype;

typedef struct spattn_tensor {
  void* data;
  spattn_dtype dtype;
  int32_t rank;        /* 4 for Q/K/V/O, 3 for LSE */
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
 *   new problem to a record file, as SPATTN_RECORD does) */
spattn_status spattn_attention_create(const char* pattern_json, const char* options_json, spattn_attention_t* out);
void spattn_attention_destroy(spattn_attention_t attn);

/* Asynchronous on `stream` (a CUstream / cudaStream_t; NULL: the default stream). */
spattn_status spattn_attention_forward(spattn_attention_t attn, const spattn_tensor* q, const spattn_tensor* k,
                                       const spattn_tensor* v, const spattn_tensor* o, const spattn_tensor* lse,
                                       void* stream);

/* Gradients of the forward pass: dq like q, dk and dv like k; lse (required) and o are
 * what forward wrote, d_o is like o. Asynchronous on `stream`. */
spattn_status spattn_attention_backward(spattn_attention_t attn, const spattn_tensor* q, const spattn_tensor* k,
                                        const spattn_tensor* v, const spattn_tensor* o, const spattn_tensor* lse,
                                        const spattn_tensor* d_o, const spattn_tensor* dq, const spattn_tensor* dk,
                                        const spattn_tensor* dv, void* stream);

/* Text of what the last forward ran. Writes at most `capacity` bytes (NUL-terminated)
 * and sets *needed to the full length + 1. */
spattn_status spattn_attention_explain(spattn_attention_t attn, char* buffer, size_t capacity, size_t* needed);

/* Layout statistics as a JSON object (density, allowed_pairs, tiles, useful_flops...). */
spattn_status spattn_pattern_stats(const char* pattern_json, int64_t nq, int64_t nk, int64_t heads, int64_t tile_m,
                                   int64_t tile_n, int64_t head_dim, char* buffer, size_t capacity, size_t* needed);

#ifdef __cplusplus
}
#endif

#endif /* SPATTN_H_ */
