#include "engine/device_layout.hpp"

#include <algorithm>
#include <limits>
#include <type_traits>

#include "common/check.hpp"

namespace spattn::engine {

namespace {

int32_t checked_i32(int64_t v, const char* what) {
  if (v > std::numeric_limits<int32_t>::max())
    SPATTN_FAIL(ErrorCode::kUnsupported, "{} ({}) exceeds the 32-bit range of the device tables; use larger tiles",
                what, v);
  return static_cast<int32_t>(v);
}

template <class T>
void upload(runtime::DeviceBuffer& buf, const std::vector<T>& v) {
  if (v.empty()) return;
  buf = runtime::DeviceBuffer(v.size() * sizeof(T));
  buf.upload(v.data(), v.size() * sizeof(T));
}

}  // namespace

int64_t longest_first_heads_per_group(int64_t l2_bytes, int64_t nk, int64_t head_dim, int64_t kv_group) {
  const int64_t kv_bytes = nk * head_dim * 2 * 2;
  return std::max<int64_t>(1, l2_bytes / 2 / std::max<int64_t>(1, kv_bytes)) * kv_group;
}

WorkList build_work_list(const Layout& layout, int64_t concurrent, bool longest_first, int64_t heads_per_group) {
  struct Piece {
    int32_t table, q_tile, head, begin, end, slot;
  };
  std::vector<Piece> pieces;
  int64_t total = 0;
  auto row_length = [&](const WorkItem& w) {
    const BlockTable& t = layout.tables[w.table];
    return t.row_ptr[w.q_tile + 1] - t.row_ptr[w.q_tile];
  };
  for (const WorkItem& w : layout.schedule) total += row_length(w);
  // A row longer than a fair share of the work (total / concurrent) would still be
  // running when everything else is done: cut it into pieces of half a fair share.
  const int64_t fair = std::max<int64_t>(1, total / std::max<int64_t>(1, concurrent));
  const int64_t piece = std::max<int64_t>(8, fair / 2);
  WorkList out;
  for (const WorkItem& w : layout.schedule) {
    const int64_t len = row_length(w);
    if (len <= fair || len <= 2 * piece) {
      pieces.push_back({w.table, w.q_tile, w.head, 0, static_cast<int32_t>(len), -1});
      continue;
    }
    const int64_t n = (len + piece - 1) / piece;
    out.groups.insert(out.groups.end(), {out.split_slots, static_cast<int32_t>(n), w.table, w.q_tile, w.head});
    for (int64_t k = 0; k < n; ++k) {
      const int64_t b = len * k / n, e = len * (k + 1) / n;
      pieces.push_back({w.table, w.q_tile, w.head, static_cast<int32_t>(b), static_cast<int32_t>(e),
                        out.split_slots++});
    }
  }
  if (longest_first) {
    auto group = [&](const Piece& p) { return heads_per_group > 0 ? p.head / heads_per_group : 0; };
    std::stable_sort(pieces.begin(), pieces.end(), [&](const Piece& a, const Piece& b) {
      if (group(a) != group(b)) return group(a) < group(b);
      return a.end - a.begin > b.end - b.begin;
    });
  }
  out.items.reserve(pieces.size() * 6);
  for (const Piece& p : pieces) {
    out.items.insert(out.items.end(), {p.table, p.q_tile, p.head, p.begin, p.end, p.slot});
    out.max_piece = std::max<int64_t>(out.max_piece, p.end - p.begin);
  }
  return out;
}

namespace {

// Appends values to an int32 arena, returning their offset; throws when the device
// format's 32-bit offsets or entries cannot hold them.
struct Arena {
  std::vector<int32_t> data;
  // Appends `values` and returns their offset. The whole arena stays within 32-bit
  // offsets; 64-bit values are range-checked in one pass, then copied in bulk (tables
  // at 1M tokens hold tens of millions of entries).
  template <class Values>
  int32_t append(const Values& values) {
    const int64_t off = static_cast<int64_t>(data.size());
    checked_i32(off + static_cast<int64_t>(values.size()), "table arena size");
    using V = typename Values::value_type;
    if constexpr (!std::is_same_v<V, int32_t>) {
      if (!values.empty()) {
        const auto [lo, hi] = std::minmax_element(values.begin(), values.end());
        checked_i32(static_cast<int64_t>(*hi), "table entry");
        SPATTN_REQUIRE(static_cast<int64_t>(*lo) >= std::numeric_limits<int32_t>::min(),
                       "table entry ({}) is below the 32-bit range of the device tables", static_cast<int64_t>(*lo));
      }
    }
    data.insert(data.end(), values.begin(), values.end());
    return static_cast<int32_t>(off);
  }
  // Room for n more entries: one allocation for a table's arrays rather than the
  // vector's doublings (each a copy of the arena so far into fresh pages).
  void reserve_more(size_t n) {
    if (data.capacity() < data.size() + n) data.reserve(std::max(data.size() + n, 2 * data.capacity()));
  }
  // The fields both descriptor kinds share: part, tile counts, token orders.
  template <class Desc>
  Desc descriptor(const BlockTable& t) {
    Desc d{};
    d.part = t.part;
    d.num_q_tiles = checked_i32(t.num_q_tiles, "query tiles");
    d.num_k_tiles = checked_i32(t.num_k_tiles, "key tiles");
    d.q_slots = t.q_slots.empty() ? -1 : append(t.q_slots);
    d.k_slots = t.k_slots.empty() ? -1 : append(t.k_slots);
    return d;
  }
  // The arena as uploaded: never empty (a device buffer of zero bytes is not allocated).
  std::vector<int32_t> take() {
    if (data.empty()) data.push_back(0);
    return std::move(data);
  }
};

}  // namespace

PackedTables pack_tables(const Layout& layout) {
  PackedTables out;
  Arena arena;
  for (const BlockTable& t : layout.tables) {
    arena.reserve_more(t.q_slots.size() + t.k_slots.size() + t.row_ptr.size() + t.full_count.size() + t.cols.size());
    SpattnTable d = arena.descriptor<SpattnTable>(t);
    d.row_ptr = arena.append(t.row_ptr);
    d.full_count = arena.append(t.full_count);
    d.cols = arena.append(t.cols);
    out.tables.push_back(d);
  }
  out.arena = arena.take();
  return out;
}

namespace {

void check_unique_tokens(const std::vector<int32_t>& slots, const char* what, size_t table) {
  if (slots.empty()) return;
  std::vector<char> seen(static_cast<size_t>(*std::max_element(slots.begin(), slots.end())) + 1, 0);
  for (int32_t s : slots) {
    if (s < 0) continue;
    if (seen[static_cast<size_t>(s)]++)
      SPATTN_FAIL(ErrorCode::kUnsupported,
                  "deterministic backward: table {} holds {} token {} twice, so two work items would write its "
                  "gradient row; use the default (atomic) backward for this layout",
                  table, what, s);
  }
}

// Whether the tables' heads partition the query heads (each head in exactly one table).
bool heads_partitioned(const Layout& layout) {
  std::vector<int32_t> tables_of_head(static_cast<size_t>(layout.shape.heads), 0);
  for (const BlockTable& t : layout.tables)
    for (int32_t h : t.heads)
      if (h < 0 || h >= layout.shape.heads || tables_of_head[static_cast<size_t>(h)]++) return false;
  return std::find(tables_of_head.begin(), tables_of_head.end(), 0) == tables_of_head.end();
}

// Whether the key tiles of t that have work (a nonempty column of tr) hold every key
// token exactly once; `covered` is scratch of Nk entries.
bool covers_keys_once(const Layout& layout, const BlockTable& t, const TransposedTable& tr,
                      std::vector<char>& covered) {
  covered.assign(static_cast<size_t>(layout.shape.nk), 0);
  int64_t count = 0;
  for (int64_t k = 0; k < tr.num_k_tiles; ++k) {
    if (tr.col_ptr[k + 1] == tr.col_ptr[k]) continue;
    for (int64_t r = 0; r < layout.tile_n; ++r) {
      const int64_t slot = k * layout.tile_n + r;
      const int64_t token = t.k_slots.empty() ? slot : t.k_slots[static_cast<size_t>(slot)];
      if (token < 0 || token >= layout.shape.nk) continue;
      if (covered[static_cast<size_t>(token)]++) return false;
      ++count;
    }
  }
  return count == layout.shape.nk;
}

}  // namespace

PackedBackwardTables pack_backward_tables(const Layout& layout, const BackwardPacking& packing) {
  SPATTN_REQUIRE(packing.kv_group >= 1, "kv_group must be at least 1 (got {})", packing.kv_group);
  PackedBackwardTables out;
  Arena arena;
  auto item = [](std::vector<int32_t>& list, size_t table, int64_t tile, size_t first, size_t count) {
    list.insert(list.end(), {static_cast<int32_t>(table), static_cast<int32_t>(tile), static_cast<int32_t>(first),
                             static_cast<int32_t>(count)});
  };
  out.sole_key_writer = packing.kv_group == 1 && heads_partitioned(layout);
  std::vector<char> covered;
  for (size_t ti = 0; ti < layout.tables.size(); ++ti) {
    const BlockTable& t = layout.tables[ti];
    const TransposedTable tr = transpose_table(t);
    if (out.sole_key_writer) out.sole_key_writer = covers_keys_once(layout, t, tr, covered);
    arena.reserve_more(t.q_slots.size() + t.k_slots.size() + tr.col_ptr.size() + tr.full_count.size() +
                       tr.rows.size() + t.heads.size() +
                       (packing.deterministic ? t.row_ptr.size() + t.full_count.size() + t.cols.size() : 0));
    SpattnBwdTable d = arena.descriptor<SpattnBwdTable>(t);
    d.col_ptr = arena.append(tr.col_ptr);
    d.full_count = arena.append(tr.full_count);
    d.rows = arena.append(tr.rows);
    std::vector<int32_t> heads(t.heads.begin(), t.heads.end());
    std::sort(heads.begin(), heads.end());
    d.heads = arena.append(heads);
    d.row_ptr = d.row_full = d.cols = -1;
    d.col_len = d.row_len = -1;  // lengths from the offsets
    out.work_begin.push_back(out.num_items());
    out.dq_begin.push_back(out.num_dq_items());
    if (packing.deterministic) {
      check_unique_tokens(t.q_slots, "query", ti);
      check_unique_tokens(t.k_slots, "key", ti);
      d.row_ptr = arena.append(t.row_ptr);
      d.row_full = arena.append(t.full_count);
      d.cols = arena.append(t.cols);
    }
    // Runs of consecutive heads of one KV head (deterministic), or single heads.
    std::vector<std::pair<size_t, size_t>> runs;
    for (size_t x = 0; x < heads.size(); ++x) {
      if (packing.deterministic && !runs.empty() &&
          heads[x] / packing.kv_group == heads[runs.back().first] / packing.kv_group)
        ++runs.back().second;
      else
        runs.emplace_back(x, 1);
    }
    for (int64_t k = 0; k < tr.num_k_tiles; ++k) {
      if (tr.col_ptr[k + 1] == tr.col_ptr[k]) continue;
      for (const auto& [first, count] : runs) item(out.work, ti, k, first, count);
    }
    if (packing.deterministic)
      for (int64_t q = 0; q < t.num_q_tiles; ++q) {
        if (t.row_ptr[q + 1] == t.row_ptr[q]) continue;
        for (size_t x = 0; x < heads.size(); ++x) item(out.dq_work, ti, q, x, 1);
      }
    out.tables.push_back(d);
  }
  out.work_begin.push_back(out.num_items());
  out.dq_begin.push_back(out.num_dq_items());
  for (int64_t n : {out.num_items(), out.num_dq_items()})
    checked_i32(n, "backward work items");
  out.arena = arena.take();
  return out;
}

DeviceBackwardLayout::DeviceBackwardLayout(const Layout& layout, const BackwardPacking& packing)
    : DeviceBackwardLayout(pack_backward_tables(layout, packing)) {}

DeviceBackwardLayout::DeviceBackwardLayout(const PackedBackwardTables& packed) {
  work_begin_ = packed.work_begin;
  dq_begin_ = packed.dq_begin;
  sole_key_writer_ = packed.sole_key_writer;
  for (const SpattnBwdTable& t : packed.tables) slot_offsets_.push_back({t.q_slots, t.k_slots});
  upload(arena_, packed.arena);
  upload(tables_, packed.tables);
  upload(work_, packed.work);
  upload(dq_work_, packed.dq_work);
}

DeviceLayout::DeviceLayout(const Layout& layout, WorkList work, int64_t batch_copies)
    : work_list_(std::move(work)) {
  SPATTN_REQUIRE(batch_copies >= 1, "device layout: {} batch copies", batch_copies);
  PackedTables packed = pack_tables(layout);
  for (const SpattnTable& t : packed.tables) slot_offsets_.push_back({t.q_slots, t.k_slots});
  if (batch_copies > 1) {
    const int64_t one = static_cast<int64_t>(packed.arena.size());
    checked_i32(one * batch_copies, "table arena size of all batch copies");
    arena_stride_ = static_cast<int32_t>(one);
    packed.arena.reserve(static_cast<size_t>(one * batch_copies));
    for (int64_t b = 1; b < batch_copies; ++b)
      packed.arena.insert(packed.arena.end(), packed.arena.begin(), packed.arena.begin() + one);
  }
  batch_copies_ = batch_copies;
  upload(arena_, packed.arena);
  upload(tables_, packed.tables);
  upload(work_, work_list_.items);
  upload(groups_, work_list_.groups);
}

}  // namespace spattn::engine
