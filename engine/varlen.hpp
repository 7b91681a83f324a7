// The run-time half of documents (spattn/varlen.hpp): per call, the documents and their
// block tables, in natural token order, with the query tiles of every document one
// after another.
//  - On the GPU, for patterns whose rows are key ranges: built from the lengths in the
//    call's stream (templates/varlen.cuh). The tables have a fixed capacity (query tiles
//    x key tiles of the longest document) that grows when a call needs more; calls
//    within it allocate nothing, so they can be captured in a CUDA graph (with the
//    lengths check off: it waits on the host).
//  - On the host, for every other pattern: the lengths are copied to the host (the call
//    waits for them), each distinct document shape's layout is compiled once and kept,
//    and the call's tables are assembled from them and uploaded.
#pragma once

#include <spattn/layout.hpp>
#include <spattn/pattern.hpp>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/device_layout.hpp"
#include "engine/jit.hpp"
#include "runtime/device.hpp"

typedef struct CUstream_st* CUstream;

namespace spattn::engine {

// A call's lengths, device int32 arrays. Packed documents: cu_q, cu_k of docs + 1
// entries over tensors of nq, nk rows. Padded batches: used_q (optional), used_k of
// `docs` (= the batch) entries over tensors of nq, nk rows per batch.
struct DocumentLengths {
  const int32_t* cu_q = nullptr;
  const int32_t* cu_k = nullptr;
  const int32_t* used_q = nullptr;
  const int32_t* used_k = nullptr;
  int64_t docs = 0;
  int64_t nq = 0, nk = 0;
  int64_t max_q = 0, max_k = 0;  // packed: the longest document (checked); padded: nq, nk
  bool packed() const { return cu_q != nullptr; }
};

// The layout options of a documents plan: natural token order (the tables are key ranges).
LayoutOptions documents_layout_options(LayoutOptions options);
// The same for a plan of `pattern` with `heads` query heads; throws kUnsupported with the
// reason where documents cannot run it (documents_supported()).
LayoutOptions documents_plan_options(const Pattern& pattern, int64_t heads, LayoutOptions options);

// Whether documents of a layout with these parts build their tables on the GPU: exactly
// when the parts have per-row key ranges (codegen::render_row_bounds); otherwise the
// tables come from the host, with each document shape's token orders.
bool document_tables_on_gpu(const std::vector<LayoutPart>& parts);

// The documents kernel (templates/varlen.cuh, spattn_varlen_docs) for a call on `stream`,
// after zeroing `status` (4 ints): the documents into `docs` (kSpattnDocInts ints each),
// their query tiles of tile_m rows into `tiles` (tile_capacity pairs), and where `keys`
// has tiles (the backward pass) their key tiles of keys.tile_n keys too.
struct DocumentKeyTiles {
  int32_t* tiles = nullptr;
  int tile_n = 0;
  int64_t capacity = 0;
};
void launch_documents_kernel(const JitKernel& kernel, const DocumentLengths& lengths, int tile_m,
                             int64_t tile_capacity, int32_t* tiles, int32_t* docs, const runtime::DeviceBuffer& status,
                             const DocumentKeyTiles& keys, CUstream stream);
// Waits for the documents kernel's status and throws the length error it names (refusing
// a stream under CUDA graph capture, which cannot wait).
void check_document_lengths(const runtime::DeviceBuffer& status, int64_t docs, CUstream stream);

// Throws kInvalidArgument for the status {code, document, value, limit} of a lengths check
// (SpattnVarlenError), naming the entry; kInternal for a code that is no length error.
[[noreturn]] void throw_length_error(const std::array<int32_t, 4>& status, int64_t documents);

// The host path's tables of one call. HostLengths: host copies of the call's lengths
// (the arrays DocumentLengths points at; empty where it has none). The tables cover every
// document's query tiles one after another (vl_tiles / vl_docs as the GPU builder writes
// them): one table per (document shape, table of that shape's layout), where a tile of a
// document of that shape has the shape's row and every other tile is empty, plus an empty
// table for documents with queries but no keys; the work list has every (table, tile,
// head) with keys once, longest rows first. Checks the lengths as the GPU does.
struct HostLengths {
  std::vector<int32_t> cu_q, cu_k, used_q, used_k;
};
struct HostDocumentTables {
  Layout layout;
  WorkList work;
  std::vector<int32_t> tiles, docs;
  bool needs_fill = false;  // some document shape leaves rows without a table
  size_t shapes = 0;        // distinct document shapes
};
using ShapeLayoutFn = std::function<const Layout&(int64_t nq, int64_t nk, int64_t doc)>;
HostDocumentTables assemble_document_tables(const DocumentLengths& lengths, const HostLengths& host, int tile_m,
                                            int tile_n, int64_t heads, const std::vector<LayoutPart>& parts,
                                            const ShapeLayoutFn& shape_layout);

class DocumentTables {
 public:
  // `tmpl`: the pattern's natural-order layout at some shape (its parts and the heads of
  // each table; the tables themselves are rebuilt per call). `program`: the plan's
  // rendered forward program, which holds the builder kernels when the tables are built
  // on the GPU (document_tables_on_gpu).
  // `kv_group`, `head_dim`, `l2_bytes`: for the work list's order on the GPU (longest
  // rows first within groups of heads whose keys and values share the L2).
  DocumentTables(const Pattern& pattern, const Layout& tmpl, const codegen::RenderedKernel& program, int device,
                 int64_t heads, int64_t kv_group, int64_t head_dim, int64_t l2_bytes);

  // This call's documents and tables on `stream`. With `check`, waits for the lengths
  // check and throws kInvalidArgument naming the bad entry.
  void build(const DocumentLengths& lengths, bool check, CUstream stream);

  const DeviceLayout& tables() const { return tables_; }
  // The work list the forward kernel walks: the tables' (host path), or its reordering
  // longest rows first (GPU path).
  const int32_t* work() const {
    return on_gpu() ? reinterpret_cast<const int32_t*>(ordered_work_.get()) : tables_.work();
  }
  bool on_gpu() const { return docs_kernel_ != nullptr; }
  // Whether the last call's tables leave some row of a document without a table (the
  // plan then writes O = 0, LSE = -inf everywhere first).
  bool needs_fill() const { return needs_fill_; }
  const int32_t* tiles() const { return reinterpret_cast<const int32_t*>(vl_tiles_.get()); }
  const int32_t* docs() const { return reinterpret_cast<const int32_t*>(vl_docs_.get()); }
  std::string describe() const;

 private:
  void build_on_gpu(const DocumentLengths& lengths, bool check, CUstream stream);
  void build_on_host(const DocumentLengths& lengths, CUstream stream);
  void reserve(int64_t tile_capacity, int64_t row_capacity, int64_t entries);
  // The layout of one document shape (host path), compiled once.
  const Layout& shape_layout(int64_t nq, int64_t nk, int64_t doc);

  Pattern pattern_;
  Layout template_;
  int64_t heads_, kv_group_, head_dim_, l2_bytes_;
  std::map<std::pair<int64_t, int64_t>, Layout> shapes_;  // host path: layouts by document shape
  bool needs_fill_ = false;
  int tile_m_, tile_n_;
  const JitKernel* docs_kernel_ = nullptr;
  const JitKernel* tables_kernel_ = nullptr;
  const JitKernel* order_kernel_ = nullptr;
  int64_t tile_capacity_ = 0, row_capacity_ = 0, doc_capacity_ = 0;
  DeviceLayout tables_;
  runtime::DeviceBuffer vl_tiles_, vl_docs_, status_, table_info_, ordered_work_, order_bins_;
  std::string last_ = "not run yet";
};

// The backward pass's tables of one documents call, built on the GPU from the lengths
// (patterns whose rows are key ranges, document_tables_on_gpu): the documents and their
// query and key tiles, the forward CSR at the backward tiles (spattn_varlen_tables, for
// the transposition and deterministic mode's dQ pass), and its transposition per key
// tile (spattn_varlen_transpose), into one arena of fixed capacity that grows when a call
// needs more. The work lists cover the capacity (items of unused tiles do nothing); with
// one table per query head and no GQA every key row has one work item.
class DocumentBackwardTables {
 public:
  // `tmpl`: the pattern's natural-order layout at the backward tiles (its parts and the
  // heads of each table); `program`: the rendered backward program of documents, which
  // holds the builders.
  DocumentBackwardTables(const Layout& tmpl, const codegen::RenderedKernel& program, int device, int64_t heads,
                         int64_t kv_group, bool deterministic);

  // This call's tables on `stream`; with `check`, waits for the lengths check and throws
  // kInvalidArgument naming the bad entry.
  void build(const DocumentLengths& lengths, bool check, CUstream stream);

  const DeviceBackwardLayout& tables() const { return tables_; }
  const int32_t* tiles() const { return reinterpret_cast<const int32_t*>(vl_tiles_.get()); }
  const int32_t* key_tiles() const { return reinterpret_cast<const int32_t*>(vl_ktiles_.get()); }
  const int32_t* docs() const { return reinterpret_cast<const int32_t*>(vl_docs_.get()); }

 private:
  void reserve(int64_t tiles, int64_t rows, int64_t key_tiles, int64_t cols, int64_t entries);

  Layout template_;
  int64_t heads_, kv_group_;
  bool deterministic_;
  int tile_m_, tile_n_;
  const JitKernel* docs_kernel_ = nullptr;
  const JitKernel* tables_kernel_ = nullptr;
  const JitKernel* transpose_kernel_ = nullptr;
  int64_t tile_capacity_ = 0, row_capacity_ = 0, ktile_capacity_ = 0, col_capacity_ = 0, doc_capacity_ = 0;
  int32_t row_len_ = 0;  // arena offset of every table's row lengths (table t at + t * tile capacity)
  DeviceBackwardLayout tables_;
  runtime::DeviceBuffer fwd_tables_, table_info_, vl_tiles_, vl_ktiles_, vl_docs_, status_;
};

}  // namespace spattn::engine
