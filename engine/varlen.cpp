#include "engine/varlen.hpp"

#include <spattn/adaptive.hpp>
#include <spattn/varlen.hpp>

#include <algorithm>
#include <limits>

#include "codegen/kernel_spec.hpp"
#include "common/check.hpp"
#include "runtime/driver.hpp"
#include "templates/params.cuh"

namespace spattn {

namespace {
constexpr const char* kSupported =
    "documents run patterns whose rows are key ranges in natural token order: dense, causal, local windows, "
    "global + local, hierarchical levels, head groups, and unions / intersections of those";
}

bool documents_supported(const Pattern& pattern, int64_t heads, std::string* why) {
  auto no = [&](std::string reason) {
    if (why) *why = std::move(reason);
    return false;
  };
  if (is_adaptive(pattern))
    return no(fmt::format("an adaptive pattern chooses its blocks from the data, not from lengths; {}", kSupported));
  // Parts and the heads of each table do not depend on the shape in natural order; a
  // small problem shows them.
  const Shape shape{512, 512, std::max<int64_t>(heads, 1)};
  try {
    pattern.validate(shape);
  } catch (const Error& e) {
    return no(e.what());
  }
  LayoutOptions options;
  options.permute = false;
  const Layout layout = compile_layout(pattern, shape, options);
  if (!codegen::render_row_bounds(layout.parts, "row_bounds", "inline"))
    return no(fmt::format("the rows of a '{}' pattern are not key ranges in natural order (tables of documents are "
                          "built on the GPU from per-row key ranges); {}",
                          pattern.kind(), kSupported));
  return true;
}

}  // namespace spattn

namespace spattn::engine {

namespace {

int32_t i32(int64_t v, const char* what) {
  SPATTN_REQUIRE(v >= 0 && v <= std::numeric_limits<int32_t>::max(),
                 "documents: {} ({}) exceeds the 32-bit range of the table kernels", what, v);
  return static_cast<int32_t>(v);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

LayoutOptions documents_layout_options(LayoutOptions options) {
  options.permute = false;
  options.schedule = ScheduleOrder::kRowMajor;
  return options;
}

DocumentTables::DocumentTables(const Layout& tmpl, const codegen::RenderedKernel& program, int device, int64_t heads)
    : template_(tmpl), heads_(heads), tile_m_(static_cast<int>(tmpl.tile_m)), tile_n_(static_cast<int>(tmpl.tile_n)) {
  for (const BlockTable& t : template_.tables)
    SPATTN_REQUIRE(t.q_slots.empty() && t.k_slots.empty(), "documents: a table with a token order (internal)");
  docs_kernel_ = &load_kernel(program, device, "spattn_varlen_docs");
  tables_kernel_ = &load_kernel(program, device, "spattn_varlen_tables");
  status_ = runtime::DeviceBuffer(16);
}

void DocumentTables::reserve(int64_t tile_capacity, int64_t row_capacity, int64_t entries) {
  if (entries > doc_capacity_) {
    doc_capacity_ = std::max(entries, 2 * doc_capacity_);
    vl_docs_ = runtime::DeviceBuffer(static_cast<size_t>(doc_capacity_) * 5 * 4);
  }
  if (tile_capacity <= tile_capacity_ && row_capacity <= row_capacity_) return;
  // Grow with headroom: lengths change from call to call, reallocation should not.
  const int64_t tiles = std::max(tile_capacity_, ceil_div(tile_capacity, 64) * 64);
  const int64_t rows = std::max(row_capacity_, row_capacity);
  const int64_t tables = static_cast<int64_t>(template_.tables.size());
  SPATTN_REQUIRE(tiles * rows <= (std::numeric_limits<int32_t>::max() - 4 * tiles) / std::max<int64_t>(tables, 1),
                 "documents: {} table(s) of {} query tiles x {} key tiles exceed the 32-bit table arena; use fewer "
                 "or shorter documents per call, a smaller max_seqlen_k, or larger tiles",
                 tables, tiles, rows);
  Layout layout;
  layout.shape = Shape{tiles * tile_m_, rows * tile_n_, heads_};
  layout.rect = TokenRect{0, layout.shape.nq, 0, layout.shape.nk};
  layout.tile_m = tile_m_;
  layout.tile_n = tile_n_;
  layout.parts = template_.parts;
  layout.covers_all_rows = template_.covers_all_rows;
  std::vector<int32_t> info;
  WorkList work;
  int64_t items = 0;
  for (const BlockTable& t : template_.tables) {
    BlockTable b;
    b.part = t.part;
    b.heads = t.heads;
    b.num_q_tiles = tiles;
    b.num_k_tiles = rows;
    b.row_ptr.resize(static_cast<size_t>(tiles + 1));
    for (int64_t g = 0; g <= tiles; ++g) b.row_ptr[g] = g * rows;
    b.full_count.assign(static_cast<size_t>(tiles), 0);
    b.cols.assign(static_cast<size_t>(tiles * rows), 0);
    info.insert(info.end(), {t.heads.front(), static_cast<int32_t>(t.heads.size()), i32(items, "work items")});
    // Item base + x * tiles + (tiles - 1 - g): each head's tiles from the last one.
    const int32_t table = static_cast<int32_t>(layout.tables.size());
    for (int32_t h : t.heads)
      for (int64_t g = tiles - 1; g >= 0; --g) work.items.insert(work.items.end(), {table, static_cast<int32_t>(g), h, 0, 0, -1});
    items += static_cast<int64_t>(t.heads.size()) * tiles;
    layout.tables.push_back(std::move(b));
  }
  i32(items, "work items");
  work.max_piece = rows;
  tables_ = DeviceLayout(layout, std::move(work));
  table_info_ = runtime::DeviceBuffer(info.size() * 4);
  table_info_.upload(info.data(), info.size() * 4);
  vl_tiles_ = runtime::DeviceBuffer(static_cast<size_t>(tiles) * 2 * 4);
  tile_capacity_ = tiles;
  row_capacity_ = rows;
}

void DocumentTables::build(const DocumentLengths& d, bool check, CUstream stream) {
  SPATTN_REQUIRE(d.docs >= 1, "documents: at least one document (or batch) is needed; got {}", d.docs);
  const bool packed = d.packed();
  SPATTN_REQUIRE(packed ? d.cu_k != nullptr : d.used_k != nullptr || d.used_q != nullptr,
                 "documents: lengths missing (internal)");
  const int64_t tiles = packed ? ceil_div(d.nq, tile_m_) + d.docs : d.docs * (ceil_div(d.nq, tile_m_) + 1);
  const int64_t rows = std::max<int64_t>(1, ceil_div(packed ? d.max_k : d.nk, tile_n_));
  const int64_t entries = packed ? d.docs : 2 * d.docs;
  reserve(tiles, rows, entries);

  SpattnVarlenDocsParams dp{};
  dp.cu_q = d.cu_q;
  dp.cu_k = d.cu_k;
  dp.used_q = d.used_q;
  dp.used_k = d.used_k;
  dp.docs = i32(d.docs, "documents");
  dp.nq = i32(d.nq, "query rows");
  dp.nk = i32(d.nk, "key rows");
  dp.max_q = i32(packed ? d.max_q : d.nq, "max_seqlen_q");
  dp.max_k = i32(packed ? d.max_k : d.nk, "max_seqlen_k");
  dp.tile_m = tile_m_;
  dp.tile_capacity = static_cast<int32_t>(tile_capacity_);
  dp.vl_tiles = reinterpret_cast<int32_t*>(vl_tiles_.get());
  dp.vl_docs = reinterpret_cast<int32_t*>(vl_docs_.get());
  dp.status = reinterpret_cast<int32_t*>(status_.get());
  SPATTN_CU_CHECK(cuMemsetD32Async(status_.get(), 0, 4, stream));
  {
    void* args[] = {&dp};
    docs_kernel_->kernel.launch({1}, {1024}, 0, stream, args);
  }
  SpattnVarlenTablesParams tp{};
  tp.vl_tiles = dp.vl_tiles;
  tp.vl_docs = dp.vl_docs;
  tp.arena = const_cast<int32_t*>(tables_.arena());
  tp.tables = tables_.tables();
  tp.table_info = reinterpret_cast<const int32_t*>(table_info_.get());
  tp.work = const_cast<int32_t*>(tables_.work());
  tp.tile_capacity = static_cast<int32_t>(tile_capacity_);
  tp.row_capacity = static_cast<int32_t>(row_capacity_);
  tp.heads = static_cast<int32_t>(heads_);
  {
    void* args[] = {&tp};
    tables_kernel_->kernel.launch({static_cast<unsigned>(tile_capacity_), static_cast<unsigned>(template_.tables.size())},
                                  {128}, 0, stream, args);
  }
  last_ = fmt::format("documents: tables built on the GPU from {} ({} {}), {} query tiles x {} key tiles of "
                      "capacity; lengths {}",
                      packed ? "cu_seqlens" : "seqused", d.docs, packed ? "documents" : "batches", tile_capacity_,
                      row_capacity_, check ? "checked (the host waits for the check)" : "not checked on the host");
  if (!check) return;
  CUstreamCaptureStatus capturing = CU_STREAM_CAPTURE_STATUS_NONE;
  SPATTN_CU_CHECK(cuStreamIsCapturing(stream, &capturing));
  SPATTN_REQUIRE(capturing == CU_STREAM_CAPTURE_STATUS_NONE,
                 "documents: the lengths check waits on the host, which a stream under CUDA graph capture cannot; "
                 "set AttentionOptions::check_lengths = false to capture (bad lengths then leave the outputs "
                 "unwritten)");
  int32_t status[4] = {0, 0, 0, 0};
  SPATTN_CU_CHECK(cuMemcpyDtoHAsync(status, status_.get(), sizeof status, stream));
  SPATTN_CU_CHECK(cuStreamSynchronize(stream));
  if (status[0] != kSpattnVarlenOk) throw_status(status, d);
}

void DocumentTables::throw_status(const int32_t (&s)[4], const DocumentLengths& d) const {
  const int doc = s[1], value = s[2], limit = s[3];
  switch (s[0]) {
    case kSpattnVarlenQOutside:
    case kSpattnVarlenKOutside: {
      const char* name = s[0] == kSpattnVarlenQOutside ? "cu_seqlens_q" : "cu_seqlens_k";
      SPATTN_FAIL(ErrorCode::kInvalidArgument,
                  "documents: {}[{}] = {} lies outside [0, {}] (the rows of the packed tensor); offsets must be "
                  "non-decreasing row indices within it",
                  name, doc, value, limit);
    }
    case kSpattnVarlenQDecreasing:
    case kSpattnVarlenKDecreasing: {
      const char* name = s[0] == kSpattnVarlenQDecreasing ? "cu_seqlens_q" : "cu_seqlens_k";
      SPATTN_FAIL(ErrorCode::kInvalidArgument,
                  "documents: {}[{}] = {} is below {}[{}] = {}; offsets must be non-decreasing", name, doc, value,
                  name, doc - 1, limit);
    }
    case kSpattnVarlenQLonger:
    case kSpattnVarlenKLonger:
      SPATTN_FAIL(ErrorCode::kInvalidArgument, "documents: document {} has {} {} rows, more than max_seqlen_{} = {}",
                  doc, value, s[0] == kSpattnVarlenQLonger ? "query" : "key",
                  s[0] == kSpattnVarlenQLonger ? "q" : "k", limit);
    case kSpattnVarlenUsedQ:
    case kSpattnVarlenUsedK:
      SPATTN_FAIL(ErrorCode::kInvalidArgument, "padding: {}[{}] = {} lies outside [0, {}] (the tensors' {})",
                  s[0] == kSpattnVarlenUsedQ ? "seqused_q" : "seqused_k", doc, value, limit,
                  s[0] == kSpattnVarlenUsedQ ? "Nq" : "Nk");
    default:
      SPATTN_FAIL(ErrorCode::kInternal, "documents: table builder status {} (document {}, {} of {}) for {} entries",
                  s[0], doc, value, limit, d.docs);
  }
}

std::string DocumentTables::describe() const { return last_; }

}  // namespace spattn::engine
