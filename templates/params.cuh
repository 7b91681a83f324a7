// Kernel parameter structs, shared verbatim by host code (C++20) and the NVRTC-compiled
// kernels: plain fixed-width fields only, so both compilers agree on the layout.
#pragma once

#ifdef __CUDACC_RTC__
typedef signed char int8_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#else
#include <cstdint>
#endif

// Documents (spattn/varlen.hpp): a document's description in the vl_docs array of the
// kernels that take documents, kSpattnDocInts ints: batch index, first query row, query
// rows, first key row, key rows, its first query tile and first key tile among the
// tables' tiles (the tiles of every document one after another), unused.
constexpr int kSpattnDocInts = 8;

// One block table on the device (see spattn::BlockTable). Offsets index the int32 arena.
struct SpattnTable {
  int32_t part;         // softmax part: selects the predicate and the partial-output slot
  int32_t num_q_tiles;
  int32_t num_k_tiles;
  int32_t q_slots;      // arena offset of the query slots, or -1 for identity order
  int32_t k_slots;      // arena offset of the key slots, or -1 for identity order
  int32_t row_ptr;      // arena offset of num_q_tiles + 1 CSR row offsets (into cols)
  int32_t full_count;   // arena offset of num_q_tiles counts of leading full tiles
  int32_t cols;         // arena offset of the key tile indices
};

// Adaptive patterns' block gates (spattn::AdaptiveInputs::gates): the logits of query
// block I and key block J of (batch b, query head h) get log g[b][h][I][J] added; a gate
// <= 0 (or NaN) removes the block. gates null: none (kernels rendered without
// KernelSpec::gates never read this).
struct SpattnGates {
  const float* gates;       // [B, Hq, rows, cols] fp32 contiguous
  int32_t rows, cols;       // query blocks, key blocks
  int32_t q_tiles, k_tiles; // the kernel's query tiles and key tiles per block
  float inv_scale_log2;     // 1 / (softmax scale * log2(e)): the forward adds log2 g in score units
  // Backward with gate gradients (null partials: none): each (query tile, key tile) pair
  // of a chosen block stores the sum of its dS (the gradient of its logits) at
  // partials[b][h][I][slot][qt % q_tiles][kt % k_tiles], where slot is J's position in
  // chosen[b][h][I][0 .. max_k) (ascending, -1 past k_I); the gate-gradient kernel adds
  // them up.
  const int32_t* chosen;
  float* partials;
  int32_t max_k;
};

// Forward attention over block tables. Strides are in elements; the last dimension
// (head dim) is contiguous.
struct SpattnFwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  float* lse;               // [B, Hq, Nq] or null
  int64_t q_stride_b, q_stride_n, q_stride_h;
  int64_t k_stride_b, k_stride_n, k_stride_h;
  int64_t v_stride_b, v_stride_n, v_stride_h;
  int64_t o_stride_b, o_stride_n, o_stride_h;
  int64_t lse_stride_b, lse_stride_h;
  int32_t nq, nk, heads, kv_group;   // kv_group = Hq / Hkv
  float scale_log2;                   // softmax scale * log2(e)
  const int32_t* arena;
  const SpattnTable* tables;
  // 6 ints per work item: table, q_tile, head, first key tile, end key tile (positions
  // in the query tile's CSR row), split slot (-1: the whole row, write the output;
  // >= 0: one piece of a split row, write split_o/split_lse at that slot).
  const int32_t* work;
  int32_t num_work;
  float* split_o;                     // [B][num_split_slots][tile_m][D] fp32
  float* split_lse;                   // [B][num_split_slots][tile_m]
  int32_t num_split_slots;
  // Multi-part layouts write each part's normalised output and LSE here (fp32,
  // [parts][B][Nq][Hq][D] and [parts][B][Hq][Nq]); a merge kernel combines them.
  float* part_o;
  float* part_lse;
  int32_t write_parts;                // 0: write o/lse directly; 1: write part_o/part_lse
  int32_t batch;
  // The tensors may hold a sub-rectangle of a larger problem (ring attention's shard
  // pairs): local query row i is token i + q_offset and local key j token j + k_offset of
  // a mask_nq x mask_nk problem, which is what the pattern's predicate sees. A whole
  // problem has offsets 0 and mask_nq = nq, mask_nk = nk.
  int32_t q_offset, k_offset, mask_nq, mask_nk;
  // Tables built on the GPU per call (adaptive patterns) hold one copy of their row
  // offsets, full counts and columns per batch: batch b reads them at arena + b *
  // arena_stride_b. 0 for tables shared by the whole batch.
  int32_t arena_stride_b;
  // Documents (KernelSpec::varlen, spattn/varlen.hpp): the tables' query tiles are the
  // tiles of every document one after another. vl_tiles[2 g], [2 g + 1]: the document of
  // tile g (-1: capacity no document uses; the work item does nothing) and its tile
  // within the document. vl_docs: kSpattnDocInts ints per document (above). Token
  // indices are then relative to the document, the predicate sees its lengths as nq and
  // nk, and outputs go to row first query row + i of batch index (O, LSE and part
  // buffers alike). Null otherwise.
  const int32_t* vl_tiles;
  const int32_t* vl_docs;
  SpattnGates gates;  // adaptive patterns (KernelSpec::gates)
};

// A TMA tensor map (the driver's CUtensorMap: 128 opaque bytes, 64-byte aligned),
// encoded on the host by cuTensorMapEncodeTiled and passed to the kernel by value.
struct alignas(64) SpattnTensorMap {
  uint64_t opaque[16];
};

// The Hopper family's parameters: the common forward parameters plus tensor maps of
// Q, K and V over [B, N, H, D] (boxes of 64 head-dim elements x tile rows, 128-byte
// swizzle). tma_q / tma_kv are 0 when a tensor cannot be described by a tensor map
// (e.g. a zero stride); the producer then gathers its rows with cp.async instead.
//
// Copied rows (KernelConfig ":copy"): tables with permuted tokens read the copies the
// gather kernel wrote in their slot order instead of gathering rows. q_copy_row[t * Hq
// + h] is the first row of table t's copy for query head h (-1: no copy, load as
// above), kv_copy_row[t * Hkv + kvh] that of its keys and values for KV head kvh; the
// copies are [B][rows][D] with tensor maps tm_qc, tm_kc, tm_vc over dims (D, rows, 1,
// B) and the same boxes as tm_q, tm_k, tm_v. Both pointers are null without copies.
struct SpattnFwd90Params {
  SpattnFwdParams base;
  SpattnTensorMap tm_q;
  SpattnTensorMap tm_k;
  SpattnTensorMap tm_v;
  SpattnTensorMap tm_qc;
  SpattnTensorMap tm_kc;
  SpattnTensorMap tm_vc;
  const int32_t* q_copy_row;
  const int32_t* kv_copy_row;
  int32_t tma_q;
  int32_t tma_kv;
  int32_t total_items;  // base.num_work * base.batch: what the persistent CTAs walk
};

// Copies token rows of one or two [B, N, H, D] tensors (K and V share their slots) in
// the order of table slots into contiguous [B][rows_per_batch][D] buffers: 4 ints per
// segment (first destination row, arena offset of the slots, rows, source head); a slot
// of padding (-1, or >= limit) gives a row of zeros.
struct SpattnGatherParams {
  const void* src[2];
  void* dst[2];
  int64_t src_stride_b[2], src_stride_n[2], src_stride_h[2];
  const int32_t* segments;
  const int32_t* arena;
  int64_t rows_per_batch;
  int32_t tensors, num_segments, limit, head_dim;
};

// Backward over transposed tables (spattn::TransposedTable): per key tile, the query
// tiles that attend it, full tiles first. Offsets index the int32 arena.
struct SpattnBwdTable {
  int32_t part;         // softmax part: selects the predicate
  int32_t num_q_tiles;
  int32_t num_k_tiles;
  int32_t q_slots;      // arena offset of the query slots, or -1 for identity order
  int32_t k_slots;      // arena offset of the key slots, or -1 for identity order
  int32_t col_ptr;      // arena offset of num_k_tiles + 1 offsets (into rows)
  int32_t full_count;   // arena offset of num_k_tiles counts of leading full query tiles
  int32_t rows;         // arena offset of the query tile indices
  int32_t heads;        // arena offset of the table's query heads, ascending
  int32_t row_ptr;      // deterministic mode, the forward CSR for the dQ pass: row offsets,
  int32_t row_full;     //   counts of leading full key tiles, key tile indices
  int32_t cols;         //   (arena offsets; -1 otherwise)
  // Tables built on the GPU per call (documents) give every key tile, and every query
  // tile of the forward CSR, a fixed capacity: their lengths are then read from these
  // arena offsets (col_len[k_tile], row_len[q_tile]) instead of col_ptr / row_ptr
  // differences (-1).
  int32_t col_len;
  int32_t row_len;
};

// dQ, dK, dV of attention over a layout (FlashAttention-2's algorithm per key tile).
// Gradients accumulate in fp32 ([B, N, H, D], contiguous); a conversion kernel writes
// them out. Every part uses the merged LSE and the row sums D = rowsum(dO * O) of the
// merged output: the layout's parts are one softmax.
// By default the key-tile kernel also computes dQ, and several query heads (GQA), parts
// and key tiles add to the same rows with fp32 atomics. In deterministic mode the host
// launches the key-tile kernel once per table, each work item covering the table's query
// heads of one KV head, and a dQ kernel over the forward rows once per table: every
// accumulator row has one writer per launch and launches add in a fixed order.
struct SpattnBwdParams {
  const void* q;
  const void* k;
  const void* v;
  const void* d_o;
  const float* lse;         // [B, Hq, Nq] from the forward pass
  const float* dsum;        // [B, Hq, Nq] contiguous, from the preprocessing kernel
  float* dq_acc;            // [B, Nq, Hq, D] fp32
  float* dk_acc;            // [B, Nk, Hkv, D] fp32
  float* dv_acc;            // [B, Nk, Hkv, D] fp32
  // With one work item per key row (the tables' sole_key_writer): the 16-bit dK and dV
  // outputs, which the kernel stores to directly (dk_acc, dv_acc unused); else null.
  void* dk_out;
  void* dv_out;
  int64_t dk_stride_b, dk_stride_n, dk_stride_h;
  int64_t dv_stride_b, dv_stride_n, dv_stride_h;
  int64_t q_stride_b, q_stride_n, q_stride_h;
  int64_t k_stride_b, k_stride_n, k_stride_h;
  int64_t v_stride_b, v_stride_n, v_stride_h;
  int64_t do_stride_b, do_stride_n, do_stride_h;
  int64_t lse_stride_b, lse_stride_h;
  int32_t nq, nk, heads, kv_group, batch;
  float scale, scale_log2;
  const int32_t* arena;
  const SpattnBwdTable* tables;
  // Elements between per-batch copies of the tables' columns and rows (col_ptr,
  // full_count, rows, col_len; row_ptr, row_full, cols): tables the GPU writes per batch
  // (adaptive patterns); 0: one copy serves every batch. Heads and token slots are read
  // from the first copy.
  int32_t arena_stride_b;
  // 4 ints per item: table, tile (a key tile; for the dQ kernel a query tile), first
  // index into the table's heads, number of heads (consecutive, of one KV head).
  const int32_t* work;
  int32_t num_work;
  // Documents (KernelSpec::varlen): the tables' key tiles are the key tiles of every
  // document one after another, and their query tiles those of SpattnFwdParams::vl_tiles.
  // vl_ktiles[2 k], [2 k + 1]: the document of key tile k (-1: capacity no document
  // uses) and its tile within the document; vl_tiles the same for the forward CSR's query
  // tiles (the dQ pass); vl_docs as in SpattnFwdParams. A key tile's column lists query
  // tiles within its document. Tokens are relative to the document, whose lengths the
  // predicate sees; rows go to the document's first rows of its batch. Null otherwise.
  const int32_t* vl_tiles;
  const int32_t* vl_ktiles;
  const int32_t* vl_docs;
  SpattnGates gates;  // adaptive patterns (KernelSpec::gates); the key-tile kernel stores the partials
};

// The sm90 family's backward kernel: the common parameters and tensor maps for TMA
// loads of Q and dO (boxes of 64 head-dim elements x tile_m rows) and of K and V (x
// tile_n rows); a view TMA cannot describe (tma_* = 0) is gathered with cp.async.
struct SpattnBwd90Params {
  SpattnBwdParams base;
  SpattnTensorMap tm_q;
  SpattnTensorMap tm_do;
  SpattnTensorMap tm_k;
  SpattnTensorMap tm_v;
  int32_t tma_q;   // Q and dO
  int32_t tma_kv;  // K and V
  // ":copy": maps over the copies of permuted rows ([B, rows, 1, D]) and, per (table,
  // query head) / (table, KV head), the first copy row (-1: not copied); null: none.
  SpattnTensorMap tm_qc, tm_doc, tm_kc, tm_vc;
  const int32_t* q_copy_row;
  const int32_t* kv_copy_row;
};

// D = rowsum(dO * O) per (batch, head, query row), fp32 [B, Hq, Nq].
struct SpattnBwdPrepParams {
  const void* o;
  const void* d_o;
  float* dsum;
  int64_t o_stride_b, o_stride_n, o_stride_h;
  int64_t do_stride_b, do_stride_n, do_stride_h;
  int32_t batch, nq, heads, head_dim;
};

// Writes an fp32 [B, N, H, D] accumulator into a 16-bit tensor with strides.
struct SpattnBwdConvertParams {
  const float* acc;
  void* out;
  int64_t out_stride_b, out_stride_n, out_stride_h;
  int32_t batch, n, heads, head_dim;
};

// LSE-weighted merge of the pieces of split rows. groups: 5 ints per split query tile
// (first slot, pieces, table, q_tile, head); the result goes where the unsplit work item
// would have written it (O/LSE, or the part buffers).
struct SpattnSplitMergeParams {
  const float* split_o;
  const float* split_lse;
  const int32_t* groups;
  const int32_t* arena;
  const SpattnTable* tables;
  void* o;
  float* lse;
  int64_t o_stride_b, o_stride_n, o_stride_h;
  int64_t lse_stride_b, lse_stride_h;
  float* part_o;
  float* part_lse;
  int32_t write_parts;
  int32_t num_groups, num_split_slots, batch, tile_m, head_dim, nq, heads;
};

// LSE-weighted merge of part outputs into O and LSE.
struct SpattnMergeParams {
  const float* part_o;
  const unsigned short* part_o16;  // instead of part_o: 16-bit parts of the output's dtype
  const float* part_lse;
  void* o;
  float* lse;
  int64_t o_stride_b, o_stride_n, o_stride_h;
  int64_t lse_stride_b, lse_stride_h;
  int32_t parts, batch, nq, heads, head_dim;
};

// Writes O = 0 and LSE = -inf for every row (rows no table covers).
struct SpattnFillParams {
  void* o;
  float* lse;
  int64_t o_stride_b, o_stride_n, o_stride_h;
  int64_t lse_stride_b, lse_stride_h;
  int32_t batch, nq, heads, head_dim;
};

// Naive fp32 reference attention over explicit bit masks, one warp per (batch, head,
// query row). Used to check kernels (tests, the demo, the autotuner's correctness gate).
// masks: [branches][Hq][Nq][words] bits, bit j of row i set iff key j is allowed;
// branches are merged with LSE weights (a branch whose row has no bit set is skipped).
struct SpattnReferenceParams {
  const void* q;
  const void* k;
  const void* v;
  float* o;                 // [B, Nq, Hq, D] fp32
  float* lse;               // [B, Hq, Nq] fp32
  const uint32_t* masks;
  int64_t q_stride_b, q_stride_n, q_stride_h;
  int64_t k_stride_b, k_stride_n, k_stride_h;
  int64_t v_stride_b, v_stride_n, v_stride_h;
  int32_t batch, nq, nk, heads, kv_group, head_dim, branches, words, bf16;
  float scale;
};

// Adaptive patterns (templates/adaptive.cuh): the mean of every block of `block` tokens
// of a [B, N, H, D] tensor (the last block may be shorter), fp32 [B][heads][blocks][D].
struct SpattnAdaptivePoolParams {
  const void* src;
  int64_t stride_b, stride_n, stride_h;
  float* out;
  int32_t batch, n, heads, block, blocks, head_dim;
};

// Adaptive patterns: per (batch, head, query block) the chosen key blocks from the
// scores (fp32, last dim contiguous), written ascending to `chosen` ([B][H][nq_blocks]
// [max_k], -1 past k), then expanded into the key tiles of every query tile of the block
// in this batch's copy of the table arena (table h serves head h). k, diagonal and
// allowed are the host's geometry per query block (spattn::AdaptiveGeometry).
struct SpattnAdaptiveSelectParams {
  const float* scores;
  int64_t s_stride_b, s_stride_h, s_stride_row;
  const int32_t* k;
  const int32_t* diagonal;
  const int32_t* allowed;
  int32_t* chosen;
  int64_t c_stride_b, c_stride_h, c_stride_row;
  int32_t* arena;
  const SpattnTable* tables;
  int32_t arena_stride_b;
  int32_t batch, heads, nq_blocks, nk_blocks, max_k;
  int32_t q_tiles_per_block, k_tiles_per_block, tile_m, tile_n, num_q_tiles;
  int32_t nq, nk, causal;
  // 1: each warp first copies its row of scores into shared memory and keeps its picks
  // there ((nk_blocks + max_k) * 4 bytes per warp of dynamic shared memory); 0: both in
  // global memory (rows too long for shared memory).
  int32_t stage_row;
};

// Adaptive patterns' backward tables (templates/adaptive.cuh), per call after the
// selection has written the forward rows at the backward tiles into each batch's copy of
// the arena (table h serves head h):
//  - columns (one CTA per (batch, head)): counts per key block the query blocks that chose
//    it (`chosen` as the selection wrote it, -1 past k_I) into `counts` (nk_blocks ints
//    per (batch, head), scratch), then col_ptr: every key tile of block J gets room for
//    counts[J] * q_tiles_per_block query tiles;
//  - transpose (one CTA per (key tile, batch x head)): the key tile's column, full query
//    tiles first (as the forward rows classify them), partial ones whose causal mask
//    allows any pair, then full_count and col_len.
struct SpattnAdaptiveColumnsParams {
  const int32_t* chosen;  // [B, Hq, nq_blocks, max_k]
  int32_t* counts;        // [B * Hq, nk_blocks]
  int32_t* arena;
  const SpattnBwdTable* tables;
  int32_t arena_stride_b;
  int32_t heads, nq_blocks, nk_blocks, max_k;
  int32_t q_tiles_per_block, k_tiles_per_block, tile_m, tile_n;
  int32_t num_q_tiles, num_k_tiles;  // tiles of the problem (key tiles inside Nk)
  int32_t nq, nk, causal;
};
constexpr int kSpattnAdaptiveColumnsThreads = 256;

// Adaptive patterns' gate gradients after the backward kernels (one thread per (batch,
// head, query block, slot)): dL/dg[b][h][I][J] = (the sum of its tile pairs' partials,
// SpattnGates) / g for every chosen block J with g > 0; 0 for a gate that removes its
// block. Entries of blocks not chosen are left as they are (the host zeroes them).
struct SpattnAdaptiveGateGradParams {
  SpattnGates gates;
  float* grad;  // [B, Hq, rows, cols] fp32 contiguous
  int64_t entries;  // B * Hq * rows * max_k
};

// Documents (templates/varlen.cuh), first kernel: the documents of a call from its
// lengths and every table query tile's document. Packed documents (cu_q non-null):
// document d holds query rows cu_q[d] .. cu_q[d + 1] and keys cu_k[d] .. cu_k[d + 1] of
// batch 0. Padded batches (cu_q null): document b is batch b with used_q[b] (or nq)
// queries and used_k[b] (or nk) keys, and document docs + b its query rows past
// used_q[b] (no keys: O = 0, LSE = -inf). Lengths are checked (monotone offsets within
// the tensors, lengths up to max_q / max_k, tiles within the capacity); on the first
// violation status gets {code, document, value, limit} and every document is empty.
enum SpattnVarlenError {
  kSpattnVarlenOk = 0,
  kSpattnVarlenQOutside = 1,     // cu_seqlens_q[document] = value outside [0, limit]
  kSpattnVarlenKOutside = 2,     // cu_seqlens_k[document] = value outside [0, limit]
  kSpattnVarlenQDecreasing = 3,  // cu_seqlens_q[document] = value < limit = the entry before
  kSpattnVarlenKDecreasing = 4,
  kSpattnVarlenQLonger = 5,      // document has value query rows > limit = max_seqlen_q
  kSpattnVarlenKLonger = 6,
  kSpattnVarlenUsedQ = 7,        // seqused_q[document] = value outside [0, limit]
  kSpattnVarlenUsedK = 8,
  kSpattnVarlenCapacity = 9,     // tiles past the capacity (an internal error)
};
constexpr int kSpattnVarlenDocsThreads = 1024;   // the documents kernel: one CTA of these
constexpr int kSpattnVarlenTablesThreads = 128;  // the tables and transpose kernels' CTAs
struct SpattnVarlenDocsParams {
  const int32_t* cu_q;
  const int32_t* cu_k;
  const int32_t* used_q;
  const int32_t* used_k;
  int32_t docs;                 // packed: documents; padded: the batch
  int32_t nq, nk;               // packed: rows of the tensors; padded: their Nq, Nk
  int32_t max_q, max_k;         // the longest document the capacity holds
  int32_t tile_m;
  int32_t tile_capacity;        // query tiles the tables hold
  int32_t* vl_tiles;            // [tile_capacity][2]
  int32_t* vl_docs;             // [doc entries][kSpattnDocInts]
  int32_t* status;              // 4 ints, zeroed by the host before the launch
  // The backward pass's key tiles too (null: none): [ktile_capacity][2] as vl_tiles, of
  // tile_n keys.
  int32_t* vl_ktiles;
  int32_t tile_n;
  int32_t ktile_capacity;
};

// Documents, second kernel (one CTA per table and query tile): each listed tile's key
// tiles from the generated per-row key ranges on the document's shape, full tiles
// first, into the table's CSR (row_ptr fixed at g * row_capacity), and the row's length
// into the end key tile of each of its work items: table t's item for head index x and
// tile g is item item_base[t] + x * tile_capacity + (tile_capacity - 1 - g) (the last
// tiles first: under causal masks the longest rows start first).
struct SpattnVarlenTablesParams {
  const int32_t* vl_tiles;
  const int32_t* vl_docs;
  int32_t* arena;
  const SpattnTable* tables;
  const int32_t* table_info;    // 3 ints per table: first query head, heads, item_base
  int32_t* work;                // null: no forward work list (the backward's tables)
  int32_t* row_len;             // non-null: each row's length at [table * tile_capacity + g]
  int32_t tile_capacity, row_capacity, heads;
};

// Documents, third kernel (one CTA of kSpattnVarlenDocsThreads): the work list the
// tables kernel completed, reordered longest row first within groups of heads_per_group
// consecutive heads (the heads whose keys and values share the L2), into work_out:
// persistent CTAs take items round-robin, so equal lengths side by side keep them
// balanced. `bins` (groups * (row_capacity + 1) ints) is zeroed by the host first.
struct SpattnVarlenOrderParams {
  const int32_t* work_in;
  int32_t* work_out;
  int32_t* bins;
  int32_t num_items, row_capacity, heads_per_group, groups;
};

// Documents, backward (one CTA per table and key tile of the capacity): the transposed
// tables from the forward CSR that spattn_varlen_tables wrote into the same arena (the
// SpattnBwdTable's row_ptr, row_full, cols, row_len): for key tile k of document d, the
// document's query tiles (within the document, ascending) whose rows list it, full ones
// first, at rows + k * col_capacity; the counts into full_count and col_len.
struct SpattnVarlenTransposeParams {
  const int32_t* vl_ktiles;
  const int32_t* vl_docs;
  int32_t* arena;
  const SpattnBwdTable* tables;
  int32_t col_capacity, tile_m;
};

// Fills n 16-bit values with uniform random numbers in [-scale, scale) from a counter
// hash of (seed, index): fresh inputs for tests and benchmarks without host traffic.
struct SpattnRandomParams {
  void* data;
  int64_t n;
  uint64_t seed;
  float scale;
  int32_t bf16;
};
