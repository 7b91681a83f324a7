// The backward pass's document tables (DocumentBackwardTables, engine/varlen.hpp).
#include <algorithm>
#include <limits>

#include "common/check.hpp"
#include "engine/varlen.hpp"
#include "patterns/arith.hpp"
#include "runtime/driver.hpp"
#include "templates/params.cuh"

namespace spattn::engine {

namespace {

using detail::ceil_div;

}  // namespace

DocumentBackwardTables::DocumentBackwardTables(const Layout& tmpl, const codegen::RenderedKernel& program, int device,
                                               int64_t heads, int64_t kv_group, bool deterministic)
    : template_(tmpl),
      heads_(heads),
      kv_group_(kv_group),
      deterministic_(deterministic),
      tile_m_(static_cast<int>(tmpl.tile_m)),
      tile_n_(static_cast<int>(tmpl.tile_n)) {
  SPATTN_REQUIRE(document_tables_on_gpu(template_.parts),
                 "documents backward: tables of a pattern without per-row key ranges (internal)");
  for (const BlockTable& t : template_.tables)
    SPATTN_REQUIRE(t.q_slots.empty() && t.k_slots.empty(), "documents: a table with a token order (internal)");
  docs_kernel_ = &load_kernel(program, device, "spattn_varlen_docs");
  tables_kernel_ = &load_kernel(program, device, "spattn_varlen_tables");
  transpose_kernel_ = &load_kernel(program, device, "spattn_varlen_transpose");
  status_ = runtime::DeviceBuffer(16);
}

void DocumentBackwardTables::reserve(int64_t tiles, int64_t rows, int64_t key_tiles, int64_t cols, int64_t entries) {
  if (entries > doc_capacity_) {
    doc_capacity_ = std::max(entries, 2 * doc_capacity_);
    vl_docs_ = runtime::DeviceBuffer(static_cast<size_t>(doc_capacity_) * kSpattnDocInts * 4);
  }
  if (tiles <= tile_capacity_ && rows <= row_capacity_ && key_tiles <= ktile_capacity_ && cols <= col_capacity_)
    return;
  // Grow with headroom: lengths change from call to call, reallocation should not.
  const int64_t tc = std::max(tile_capacity_, ceil_div(tiles, 64) * 64);
  const int64_t rc = std::max(row_capacity_, rows);
  const int64_t kc = std::max(ktile_capacity_, ceil_div(key_tiles, 64) * 64);
  const int64_t cc = std::max(col_capacity_, cols);
  const int64_t n_tables = static_cast<int64_t>(template_.tables.size());
  const int64_t per_table = (tc + 1) + tc + tc * rc + (kc + 1) + kc + kc * cc + kc + heads_;
  SPATTN_REQUIRE(per_table * n_tables + tc * n_tables <= std::numeric_limits<int32_t>::max(),
                 "documents backward: {} table(s) of {} query tiles x {} key tiles and {} key tiles x {} query tiles "
                 "exceed the 32-bit table arena; use fewer or shorter documents per call, smaller max_seqlen_q / "
                 "max_seqlen_k, or larger tiles",
                 n_tables, tc, rc, kc, cc);
  PackedBackwardTables packed;
  std::vector<int32_t>& arena = packed.arena;
  auto put = [&](int64_t n, auto value_at) {
    const int32_t at = static_cast<int32_t>(arena.size());
    for (int64_t x = 0; x < n; ++x) arena.push_back(static_cast<int32_t>(value_at(x)));
    return at;
  };
  auto zeros = [&](int64_t n) { return put(n, [](int64_t) { return 0; }); };
  row_len_ = zeros(tc * n_tables);
  std::vector<SpattnTable> fwd;
  std::vector<int32_t> info;
  packed.sole_key_writer = kv_group_ == 1;
  std::vector<int> tables_of_head(static_cast<size_t>(heads_), 0);
  for (int64_t ti = 0; ti < n_tables; ++ti) {
    const BlockTable& t = template_.tables[static_cast<size_t>(ti)];
    std::vector<int32_t> heads(t.heads.begin(), t.heads.end());
    std::sort(heads.begin(), heads.end());
    for (int32_t h : heads) ++tables_of_head[static_cast<size_t>(h)];
    SpattnBwdTable d{};
    d.part = t.part;
    d.num_q_tiles = static_cast<int32_t>(tc);
    d.num_k_tiles = static_cast<int32_t>(kc);
    d.q_slots = d.k_slots = -1;
    d.heads = put(static_cast<int64_t>(heads.size()), [&](int64_t x) { return heads[static_cast<size_t>(x)]; });
    d.row_ptr = put(tc + 1, [&](int64_t g) { return g * rc; });
    d.row_full = zeros(tc);
    d.cols = zeros(tc * rc);
    d.row_len = row_len_ + static_cast<int32_t>(ti * tc);
    d.col_ptr = put(kc + 1, [&](int64_t k) { return k * cc; });
    d.full_count = zeros(kc);
    d.rows = zeros(kc * cc);
    d.col_len = zeros(kc);
    packed.tables.push_back(d);
    SpattnTable f{};
    f.part = t.part;
    f.num_q_tiles = static_cast<int32_t>(tc);
    f.num_k_tiles = static_cast<int32_t>(rc);
    f.q_slots = f.k_slots = -1;
    f.row_ptr = d.row_ptr;
    f.full_count = d.row_full;
    f.cols = d.cols;
    fwd.push_back(f);
    info.insert(info.end(), {heads.front(), static_cast<int32_t>(heads.size()), 0});
    // Work items over the capacity, grouped by table: every key tile for each query head,
    // or in deterministic mode for each run of the table's heads of one KV head, then
    // (deterministic) every query tile of the forward rows for each head.
    std::vector<std::pair<int32_t, int32_t>> runs;
    for (size_t x = 0; x < heads.size(); ++x) {
      if (deterministic_ && !runs.empty() && heads[x] / kv_group_ == heads[static_cast<size_t>(runs.back().first)] / kv_group_)
        ++runs.back().second;
      else
        runs.emplace_back(static_cast<int32_t>(x), 1);
    }
    packed.work_begin.push_back(packed.num_items());
    packed.dq_begin.push_back(packed.num_dq_items());
    for (const auto& [first, count] : runs)
      for (int64_t k = 0; k < kc; ++k)
        packed.work.insert(packed.work.end(), {static_cast<int32_t>(ti), static_cast<int32_t>(k), first, count});
    if (deterministic_)
      for (size_t x = 0; x < heads.size(); ++x)
        for (int64_t g = 0; g < tc; ++g)
          packed.dq_work.insert(packed.dq_work.end(),
                                {static_cast<int32_t>(ti), static_cast<int32_t>(g), static_cast<int32_t>(x), 1});
  }
  packed.work_begin.push_back(packed.num_items());
  packed.dq_begin.push_back(packed.num_dq_items());
  for (int n : tables_of_head) packed.sole_key_writer &= n == 1;
  SPATTN_REQUIRE(packed.num_items() <= std::numeric_limits<int32_t>::max() &&
                     packed.num_dq_items() <= std::numeric_limits<int32_t>::max(),
                 "documents backward: {} work items exceed the launch grid; use fewer documents per call",
                 std::max(packed.num_items(), packed.num_dq_items()));
  tables_ = DeviceBackwardLayout(packed);
  fwd_tables_ = runtime::DeviceBuffer(fwd.size() * sizeof(SpattnTable));
  fwd_tables_.upload(fwd.data(), fwd.size() * sizeof(SpattnTable));
  table_info_ = runtime::DeviceBuffer(info.size() * 4);
  table_info_.upload(info.data(), info.size() * 4);
  vl_tiles_ = runtime::DeviceBuffer(static_cast<size_t>(tc) * 2 * 4);
  vl_ktiles_ = runtime::DeviceBuffer(static_cast<size_t>(kc) * 2 * 4);
  tile_capacity_ = tc;
  row_capacity_ = rc;
  ktile_capacity_ = kc;
  col_capacity_ = cc;
}

void DocumentBackwardTables::build(const DocumentLengths& d, bool check, CUstream stream) {
  SPATTN_REQUIRE(d.docs >= 1, "documents: at least one document (or batch) is needed; got {}", d.docs);
  const bool packed = d.packed();
  // Query tiles as the forward's; key tiles: every document's (padded batches: the
  // padded query rows have no keys).
  const int64_t tiles = packed ? ceil_div(d.nq, tile_m_) + d.docs : d.docs * (ceil_div(d.nq, tile_m_) + 1);
  const int64_t key_tiles = packed ? ceil_div(d.nk, tile_n_) + d.docs : d.docs * ceil_div(d.nk, tile_n_);
  const int64_t rows = std::max<int64_t>(1, ceil_div(d.max_k, tile_n_));
  const int64_t cols = std::max<int64_t>(1, ceil_div(d.max_q, tile_m_));
  reserve(tiles, rows, std::max<int64_t>(1, key_tiles), cols, packed ? d.docs : 2 * d.docs);

  int32_t* arena = const_cast<int32_t*>(tables_.arena());
  launch_documents_kernel(*docs_kernel_, d, tile_m_, tile_capacity_, reinterpret_cast<int32_t*>(vl_tiles_.get()),
                          reinterpret_cast<int32_t*>(vl_docs_.get()), status_,
                          {reinterpret_cast<int32_t*>(vl_ktiles_.get()), tile_n_, ktile_capacity_}, stream);
  const unsigned n_tables = static_cast<unsigned>(template_.tables.size());
  {
    SpattnVarlenTablesParams tp{};
    tp.vl_tiles = this->tiles();
    tp.vl_docs = docs();
    tp.arena = arena;
    tp.tables = reinterpret_cast<const SpattnTable*>(fwd_tables_.get());
    tp.table_info = reinterpret_cast<const int32_t*>(table_info_.get());
    tp.work = nullptr;
    tp.row_len = arena + row_len_;
    tp.tile_capacity = static_cast<int32_t>(tile_capacity_);
    tp.row_capacity = static_cast<int32_t>(row_capacity_);
    tp.heads = static_cast<int32_t>(heads_);
    void* args[] = {&tp};
    tables_kernel_->kernel.launch({static_cast<unsigned>(tile_capacity_), n_tables}, {kSpattnVarlenTablesThreads}, 0,
                                  stream, args);
  }
  {
    SpattnVarlenTransposeParams xp{};
    xp.vl_ktiles = this->key_tiles();
    xp.vl_docs = docs();
    xp.arena = arena;
    xp.tables = tables_.tables();
    xp.col_capacity = static_cast<int32_t>(col_capacity_);
    xp.tile_m = tile_m_;
    void* args[] = {&xp};
    transpose_kernel_->kernel.launch({static_cast<unsigned>(ktile_capacity_), n_tables},
                                     {kSpattnVarlenTablesThreads}, 0, stream, args);
  }
  if (check) check_document_lengths(status_, d.docs, stream);
}

}  // namespace spattn::engine
