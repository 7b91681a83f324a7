#include "engine/varlen.hpp"

#include <spattn/adaptive.hpp>
#include <spattn/varlen.hpp>

#include <algorithm>
#include <array>
#include <limits>

#include "codegen/kernel_spec.hpp"
#include "common/check.hpp"
#include "patterns/arith.hpp"
#include "patterns/limits.hpp"
#include "runtime/driver.hpp"
#include "templates/params.cuh"

namespace spattn {

bool documents_supported(const Pattern& pattern, int64_t heads, std::string* why) {
  if (is_adaptive(pattern)) {
    if (why)
      *why = "documents run static patterns: an adaptive pattern chooses its blocks from each problem's data "
             "(run each document through Attention::forward instead)";
    return false;
  }
  if (heads < 1 || heads > limits::kMaxHeads) {
    if (why) *why = fmt::format("documents: heads must be in [1, {}] (got {})", limits::kMaxHeads, heads);
    return false;
  }
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

using detail::ceil_div;

}  // namespace

LayoutOptions documents_layout_options(LayoutOptions options) {
  options.permute = false;
  options.schedule = ScheduleOrder::kRowMajor;
  return options;
}

LayoutOptions documents_plan_options(const Pattern& pattern, int64_t heads, LayoutOptions options) {
  std::string why;
  if (!documents_supported(pattern, heads, &why)) SPATTN_FAIL(ErrorCode::kUnsupported, "{}", why);
  return documents_layout_options(options);
}

bool document_tables_on_gpu(const std::vector<LayoutPart>& parts) {
  return codegen::render_row_bounds(parts, "row_bounds", "inline").has_value();
}

namespace {

// Refuses a stream under CUDA graph capture for work that must wait on the host.
void require_not_capturing(CUstream stream, const std::string& why) {
  CUstreamCaptureStatus capturing = CU_STREAM_CAPTURE_STATUS_NONE;
  SPATTN_CU_CHECK(cuStreamIsCapturing(stream, &capturing));
  SPATTN_REQUIRE(capturing == CU_STREAM_CAPTURE_STATUS_NONE, "{}", why);
}

}  // namespace

DocumentTables::DocumentTables(const Pattern& pattern, const Layout& tmpl, const codegen::RenderedKernel& program,
                               int device, int64_t heads, int64_t kv_group, int64_t head_dim, int64_t l2_bytes)
    : pattern_(pattern),
      template_(tmpl),
      heads_(heads),
      kv_group_(kv_group),
      head_dim_(head_dim),
      l2_bytes_(l2_bytes),
      tile_m_(static_cast<int>(tmpl.tile_m)),
      tile_n_(static_cast<int>(tmpl.tile_n)) {
  for (const BlockTable& t : template_.tables)
    SPATTN_REQUIRE(t.q_slots.empty() && t.k_slots.empty(), "documents: a table with a token order (internal)");
  if (document_tables_on_gpu(template_.parts)) {
    docs_kernel_ = &load_kernel(program, device, "spattn_varlen_docs");
    tables_kernel_ = &load_kernel(program, device, "spattn_varlen_tables");
    order_kernel_ = &load_kernel(program, device, "spattn_varlen_order");
  }
  needs_fill_ = !template_.covers_all_rows;
  status_ = runtime::DeviceBuffer(16);
}

void DocumentTables::reserve(int64_t tile_capacity, int64_t row_capacity, int64_t entries) {
  if (entries > doc_capacity_) {
    doc_capacity_ = std::max(entries, 2 * doc_capacity_);
    vl_docs_ = runtime::DeviceBuffer(static_cast<size_t>(doc_capacity_) * kSpattnDocInts * 4);
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
  ordered_work_ = runtime::DeviceBuffer(static_cast<size_t>(std::max<int64_t>(items, 1)) * 6 * 4);
  table_info_ = runtime::DeviceBuffer(info.size() * 4);
  table_info_.upload(info.data(), info.size() * 4);
  vl_tiles_ = runtime::DeviceBuffer(static_cast<size_t>(tiles) * 2 * 4);
  tile_capacity_ = tiles;
  row_capacity_ = rows;
}

void DocumentTables::build(const DocumentLengths& d, bool check, CUstream stream) {
  SPATTN_REQUIRE(d.docs >= 1, "documents: at least one document (or batch) is needed; got {}", d.docs);
  SPATTN_REQUIRE(d.packed() ? d.cu_k != nullptr : d.used_k != nullptr || d.used_q != nullptr,
                 "documents: lengths missing (internal)");
  if (on_gpu()) {
    build_on_gpu(d, check, stream);
  } else {
    build_on_host(d, stream);
  }
}

void DocumentTables::build_on_gpu(const DocumentLengths& d, bool check, CUstream stream) {
  const bool packed = d.packed();
  const int64_t tiles = packed ? ceil_div(d.nq, tile_m_) + d.docs : d.docs * (ceil_div(d.nq, tile_m_) + 1);
  const int64_t rows = std::max<int64_t>(1, ceil_div(d.max_k, tile_n_));
  const int64_t entries = packed ? d.docs : 2 * d.docs;
  reserve(tiles, rows, entries);

  launch_documents_kernel(*docs_kernel_, d, tile_m_, tile_capacity_, reinterpret_cast<int32_t*>(vl_tiles_.get()),
                          reinterpret_cast<int32_t*>(vl_docs_.get()), status_, {}, stream);
  SpattnVarlenTablesParams tp{};
  tp.vl_tiles = reinterpret_cast<const int32_t*>(vl_tiles_.get());
  tp.vl_docs = reinterpret_cast<const int32_t*>(vl_docs_.get());
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
                                  {kSpattnVarlenTablesThreads}, 0, stream, args);
  }
  {
    // Longest rows first within head groups sized for the longest document's keys.
    SpattnVarlenOrderParams op{};
    op.work_in = tables_.work();
    op.work_out = reinterpret_cast<int32_t*>(ordered_work_.get());
    op.num_items = static_cast<int32_t>(tables_.work_list().num_items());
    op.row_capacity = static_cast<int32_t>(row_capacity_);
    op.heads_per_group = static_cast<int32_t>(
        std::min<int64_t>(heads_, longest_first_heads_per_group(l2_bytes_, d.max_k, head_dim_, kv_group_)));
    op.groups = static_cast<int32_t>(ceil_div(heads_, op.heads_per_group));
    const size_t bins = static_cast<size_t>(op.groups) * static_cast<size_t>(row_capacity_ + 1);
    if (order_bins_.size() < bins * 4) order_bins_ = runtime::DeviceBuffer(bins * 4);
    op.bins = reinterpret_cast<int32_t*>(order_bins_.get());
    SPATTN_CU_CHECK(cuMemsetD32Async(order_bins_.get(), 0, bins, stream));
    void* args[] = {&op};
    order_kernel_->kernel.launch({1}, {kSpattnVarlenDocsThreads}, 0, stream, args);
  }
  last_ = fmt::format("documents: tables built on the GPU from {} ({} {}), {} query tiles x {} key tiles of "
                      "capacity, longest rows first; lengths {}",
                      packed ? "cu_seqlens" : "seqused", d.docs, packed ? "documents" : "batches", tile_capacity_,
                      row_capacity_, check ? "checked (the host waits for the check)" : "not checked on the host");
  if (check) check_document_lengths(status_, d.docs, stream);
}

void launch_documents_kernel(const JitKernel& kernel, const DocumentLengths& d, int tile_m, int64_t tile_capacity,
                             int32_t* tiles, int32_t* docs, const runtime::DeviceBuffer& status,
                             const DocumentKeyTiles& keys, CUstream stream) {
  SpattnVarlenDocsParams dp{};
  dp.cu_q = d.cu_q;
  dp.cu_k = d.cu_k;
  dp.used_q = d.used_q;
  dp.used_k = d.used_k;
  dp.docs = i32(d.docs, "documents");
  dp.nq = i32(d.nq, "query rows");
  dp.nk = i32(d.nk, "key rows");
  dp.max_q = i32(d.max_q, "max_seqlen_q");
  dp.max_k = i32(d.max_k, "max_seqlen_k");
  dp.tile_m = tile_m;
  dp.tile_capacity = i32(tile_capacity, "query tiles");
  dp.vl_tiles = tiles;
  dp.vl_docs = docs;
  dp.status = reinterpret_cast<int32_t*>(status.get());
  dp.vl_ktiles = keys.tiles;
  dp.tile_n = keys.tile_n;
  dp.ktile_capacity = i32(keys.capacity, "key tiles");
  SPATTN_CU_CHECK(cuMemsetD32Async(status.get(), 0, 4, stream));
  void* args[] = {&dp};
  kernel.kernel.launch({1}, {kSpattnVarlenDocsThreads}, 0, stream, args);
}

void check_document_lengths(const runtime::DeviceBuffer& status_buffer, int64_t docs, CUstream stream) {
  require_not_capturing(stream,
                        "documents: the lengths check waits on the host, which a stream under CUDA graph capture "
                        "cannot; set AttentionOptions::check_lengths = false to capture (bad lengths then leave the "
                        "outputs unwritten)");
  std::array<int32_t, 4> status{};
  SPATTN_CU_CHECK(cuMemcpyDtoHAsync(status.data(), status_buffer.get(), sizeof status, stream));
  SPATTN_CU_CHECK(cuStreamSynchronize(stream));
  if (status[0] != kSpattnVarlenOk) throw_length_error(status, docs);
}

namespace {

// The device builder's checks (templates/varlen.cuh) on host copies of the lengths: the
// first violation, as {code, document, value, limit}.
std::array<int32_t, 4> check_on_host(const DocumentLengths& d, const std::vector<int32_t>& cu_q,
                                     const std::vector<int32_t>& cu_k, const std::vector<int32_t>& used_q,
                                     const std::vector<int32_t>& used_k) {
  auto at = [](int code, int64_t doc, int64_t value, int64_t limit) {
    return std::array<int32_t, 4>{code, static_cast<int32_t>(doc), static_cast<int32_t>(value),
                                  static_cast<int32_t>(limit)};
  };
  for (int64_t e = 0; e < d.docs; ++e) {
    if (d.packed()) {
      const int64_t q0 = cu_q[e], q1 = cu_q[e + 1], k0 = cu_k[e], k1 = cu_k[e + 1];
      if (e == 0 && (q0 < 0 || q0 > d.nq)) return at(kSpattnVarlenQOutside, 0, q0, d.nq);
      if (e == 0 && (k0 < 0 || k0 > d.nk)) return at(kSpattnVarlenKOutside, 0, k0, d.nk);
      if (q1 < q0) return at(kSpattnVarlenQDecreasing, e + 1, q1, q0);
      if (k1 < k0) return at(kSpattnVarlenKDecreasing, e + 1, k1, k0);
      if (q1 > d.nq) return at(kSpattnVarlenQOutside, e + 1, q1, d.nq);
      if (k1 > d.nk) return at(kSpattnVarlenKOutside, e + 1, k1, d.nk);
      if (q1 - q0 > d.max_q) return at(kSpattnVarlenQLonger, e, q1 - q0, d.max_q);
      if (k1 - k0 > d.max_k) return at(kSpattnVarlenKLonger, e, k1 - k0, d.max_k);
    } else {
      const int64_t uq = used_q.empty() ? d.nq : used_q[e], uk = used_k.empty() ? d.nk : used_k[e];
      if (uq < 0 || uq > d.nq) return at(kSpattnVarlenUsedQ, e, uq, d.nq);
      if (uk < 0 || uk > d.nk) return at(kSpattnVarlenUsedK, e, uk, d.nk);
    }
  }
  return {0, 0, 0, 0};
}

std::vector<int32_t> to_host(const int32_t* device, int64_t n, CUstream stream) {
  std::vector<int32_t> out;
  if (!device) return out;
  out.resize(static_cast<size_t>(n));
  SPATTN_CU_CHECK(cuMemcpyDtoHAsync(out.data(), reinterpret_cast<CUdeviceptr>(device), out.size() * 4, stream));
  return out;
}

}  // namespace

const Layout& DocumentTables::shape_layout(int64_t nq, int64_t nk, int64_t doc) {
  const auto key = std::pair{nq, nk};
  if (auto it = shapes_.find(key); it != shapes_.end()) return it->second;
  if (shapes_.size() >= 1024) shapes_.clear();  // a bound on what many distinct lengths keep
  // One kernel serves every document shape: the parts must be the template's (its
  // natural-order ones). The layout with token orders where they pay (compile_layout's
  // choice) when its parts are those, else natural order.
  auto same_parts = [&](const Layout& l) {
    bool same = l.parts.size() == template_.parts.size();
    for (size_t p = 0; same && p < l.parts.size(); ++p)
      same = l.parts[p].branch == template_.parts[p].branch &&
             l.parts[p].pattern.to_json() == template_.parts[p].pattern.to_json() &&
             l.parts[p].exclude.size() == template_.parts[p].exclude.size();
    return same;
  };
  LayoutOptions options;
  options.tile_m = tile_m_;
  options.tile_n = tile_n_;
  Layout layout;
  try {
    layout = compile_layout(pattern_, Shape{nq, nk, heads_}, options);
    if (!same_parts(layout)) layout = compile_layout(pattern_, Shape{nq, nk, heads_}, documents_layout_options(options));
  } catch (const Error& e) {
    throw Error(e.code(), fmt::format("documents: document {} ({} queries x {} keys): {}", doc, nq, nk, e.what()));
  }
  if (!same_parts(layout))
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "documents: a '{}' pattern decomposes into different parts at {} x {} than at the longest document; "
                "run such documents one by one through Attention::forward",
                pattern_.kind(), nq, nk);
  return shapes_.emplace(key, std::move(layout)).first->second;
}

HostDocumentTables assemble_document_tables(const DocumentLengths& d, const HostLengths& h, int tile_m, int tile_n,
                                            int64_t heads, const std::vector<LayoutPart>& parts,
                                            const ShapeLayoutFn& shape_layout) {
  const std::vector<int32_t>&cu_q = h.cu_q, &cu_k = h.cu_k, &used_q = h.used_q, &used_k = h.used_k;
  if (const std::array<int32_t, 4> status = check_on_host(d, cu_q, cu_k, used_q, used_k); status[0] != 0)
    throw_length_error(status, d.docs);
  const bool packed = d.packed();
  // The documents (as the device builder describes them) and their query tiles.
  std::vector<int32_t> docs, tiles;
  const int64_t entries = packed ? d.docs : 2 * d.docs;
  for (int64_t e = 0; e < entries; ++e) {
    int32_t x[kSpattnDocInts] = {};  // kSpattnDocInts: the host path maps no key tiles
    x[5] = static_cast<int32_t>(tiles.size() / 2);
    if (packed) {
      x[0] = 0, x[1] = cu_q[e], x[2] = cu_q[e + 1] - cu_q[e], x[3] = cu_k[e], x[4] = cu_k[e + 1] - cu_k[e];
    } else {
      const int64_t b = e < d.docs ? e : e - d.docs;
      const int32_t uq = used_q.empty() ? static_cast<int32_t>(d.nq) : used_q[b];
      const int32_t uk = used_k.empty() ? static_cast<int32_t>(d.nk) : used_k[b];
      if (e < d.docs) x[0] = static_cast<int32_t>(b), x[1] = 0, x[2] = uq, x[3] = 0, x[4] = uk;
      else x[0] = static_cast<int32_t>(b), x[1] = uq, x[2] = static_cast<int32_t>(d.nq) - uq, x[3] = 0, x[4] = 0;
    }
    docs.insert(docs.end(), x, x + kSpattnDocInts);
    // A token order may pad a document's queries to more tiles than natural order.
    int64_t count = (x[2] + tile_m - 1) / tile_m;
    if (x[2] > 0 && x[4] > 0)
      for (const BlockTable& t : shape_layout(x[2], x[4], e).tables) count = std::max(count, t.num_q_tiles);
    for (int32_t t = 0; t < count; ++t) tiles.insert(tiles.end(), {static_cast<int32_t>(e), t});
  }
  const int64_t G = static_cast<int64_t>(tiles.size() / 2);
  // One table per (document shape, template table), over all G tiles: a tile of a
  // document of that shape takes the shape's row, every other tile is empty. Documents
  // with queries but no keys get an empty table's rows (O = 0, LSE = -inf).
  Layout layout;
  layout.tile_m = tile_m;
  layout.tile_n = tile_n;
  layout.parts = parts;
  std::map<std::pair<int64_t, int64_t>, int32_t> first_table;  // document shape -> its first table
  std::vector<std::array<int32_t, 6>> work;  // SpattnFwdParams::work items
  bool needs_fill = false;
  auto table_for = [&](const Layout& shape, int64_t t) -> BlockTable {
    BlockTable b;
    b.part = shape.tables[t].part;
    b.heads = shape.tables[t].heads;
    b.num_q_tiles = G;
    b.num_k_tiles = shape.tables[t].num_k_tiles;
    b.q_slots = shape.tables[t].q_slots;
    b.k_slots = shape.tables[t].k_slots;
    b.row_ptr.assign(static_cast<size_t>(G + 1), 0);
    b.full_count.assign(static_cast<size_t>(G), 0);
    b.cols = shape.tables[t].cols;
    b.row_ptr[G] = static_cast<int64_t>(b.cols.size());
    return b;
  };
  int32_t empty_table = -1;
  for (int64_t g = 0; g < G; ++g) {
    const int32_t e = tiles[2 * g], local = tiles[2 * g + 1];
    const int32_t nq = docs[kSpattnDocInts * e + 2], nk = docs[kSpattnDocInts * e + 4];
    if (nk == 0) {
      if (empty_table < 0) {
        empty_table = static_cast<int32_t>(layout.tables.size());
        BlockTable b;
        b.part = 0;
        for (int32_t h = 0; h < heads; ++h) b.heads.push_back(h);
        b.num_q_tiles = G;
        b.num_k_tiles = 1;
        b.row_ptr.assign(static_cast<size_t>(G + 1), 0);
        b.full_count.assign(static_cast<size_t>(G), 0);
        layout.tables.push_back(std::move(b));
      }
      for (int32_t h = 0; h < heads; ++h) work.push_back({empty_table, static_cast<int32_t>(g), h, 0, 0, -1});
      continue;
    }
    const Layout& shape = shape_layout(nq, nk, e);
    needs_fill |= !shape.covers_all_rows;
    auto [it, fresh] = first_table.try_emplace({nq, nk}, static_cast<int32_t>(layout.tables.size()));
    if (fresh)
      for (size_t t = 0; t < shape.tables.size(); ++t) layout.tables.push_back(table_for(shape, static_cast<int64_t>(t)));
    for (size_t t = 0; t < shape.tables.size(); ++t) {
      const BlockTable& src = shape.tables[t];
      if (local >= src.num_q_tiles) continue;
      BlockTable& dst = layout.tables[it->second + t];
      dst.row_ptr[g] = src.row_ptr[local];
      dst.full_count[g] = src.full_count[local];
      const int32_t len = static_cast<int32_t>(src.row_ptr[local + 1] - src.row_ptr[local]);
      for (int32_t h : src.heads) work.push_back({it->second + static_cast<int32_t>(t), static_cast<int32_t>(g), h, 0, len, -1});
    }
  }
  // Longest rows (end key tile) first, stable, so that the long causal rows do not finish last.
  std::stable_sort(work.begin(), work.end(), [](const auto& a, const auto& b) { return a[4] > b[4]; });
  WorkList list;
  list.items.reserve(6 * work.size());
  for (const auto& item : work) list.items.insert(list.items.end(), item.begin(), item.end());
  i32(list.num_items(), "work items");
  HostDocumentTables out;
  out.layout = std::move(layout);
  out.work = std::move(list);
  out.tiles = std::move(tiles);
  out.docs = std::move(docs);
  out.needs_fill = needs_fill;
  out.shapes = first_table.size();
  return out;
}

void DocumentTables::build_on_host(const DocumentLengths& d, CUstream stream) {
  require_not_capturing(stream, fmt::format("documents: the tables of a '{}' pattern are built on the host from the "
                                            "lengths, which waits for them; a stream under CUDA graph capture cannot "
                                            "(patterns whose rows are key ranges build their tables on the GPU and "
                                            "can be captured)",
                                            pattern_.kind()));
  const bool packed = d.packed();
  HostLengths h;
  h.cu_q = to_host(d.cu_q, d.docs + 1, stream);
  h.cu_k = to_host(d.cu_k, d.docs + 1, stream);
  h.used_q = to_host(d.used_q, d.docs, stream);
  h.used_k = to_host(d.used_k, d.docs, stream);
  SPATTN_CU_CHECK(cuStreamSynchronize(stream));
  HostDocumentTables t = assemble_document_tables(
      d, h, tile_m_, tile_n_, heads_, template_.parts,
      [this](int64_t nq, int64_t nk, int64_t doc) -> const Layout& { return shape_layout(nq, nk, doc); });
  needs_fill_ = t.needs_fill;
  tables_ = DeviceLayout(t.layout, std::move(t.work));
  auto upload = [](runtime::DeviceBuffer& buf, const std::vector<int32_t>& v) {
    if (buf.size() < std::max<size_t>(4, v.size() * 4)) buf = runtime::DeviceBuffer(std::max<size_t>(4, v.size() * 4));
    if (!v.empty()) buf.upload(v.data(), v.size() * 4);
  };
  upload(vl_tiles_, t.tiles);
  upload(vl_docs_, t.docs);
  tile_capacity_ = static_cast<int64_t>(t.tiles.size() / 2);
  last_ = fmt::format("documents: tables built on the host from {} ({} {}; {} document shape(s) this call, {} "
                      "kept): the lengths are copied to the host, so the call waits for them",
                      packed ? "cu_seqlens" : "seqused", d.docs, packed ? "documents" : "batches", t.shapes,
                      shapes_.size());
}

void throw_length_error(const std::array<int32_t, 4>& s, int64_t documents) {
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
                  s[0], doc, value, limit, documents);
  }
}

std::string DocumentTables::describe() const { return last_; }

}  // namespace spattn::engine
