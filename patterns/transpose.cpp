// Forward block tables (CSR per query tile) turned into CSR per key tile.
#include <spattn/layout.hpp>

#include <algorithm>

#include "common/check.hpp"

namespace spattn {

TransposedTable transpose_table(const BlockTable& table) {
  const int64_t nq = table.num_q_tiles, nk = table.num_k_tiles;
  SPATTN_REQUIRE(static_cast<int64_t>(table.row_ptr.size()) == nq + 1 &&
                     static_cast<int64_t>(table.full_count.size()) == nq,
                 "block table is malformed: {} query tiles but {} row offsets and {} full counts", nq,
                 table.row_ptr.size(), table.full_count.size());
  TransposedTable out;
  out.num_q_tiles = nq;
  out.num_k_tiles = nk;
  out.full_count.assign(static_cast<size_t>(nk), 0);
  std::vector<int64_t> partial(static_cast<size_t>(nk), 0);
  // Count per key tile, then place with a counting sort: query tiles are visited in
  // ascending order, so each key tile's full and partial lists come out ascending.
  for (int64_t q = 0; q < nq; ++q) {
    for (int64_t x = table.row_ptr[q]; x < table.row_ptr[q + 1]; ++x) {
      const int32_t k = table.cols[x];
      SPATTN_REQUIRE(k >= 0 && k < nk, "block table is malformed: key tile {} of query tile {} is outside [0, {})", k,
                     q, nk);
      if (x - table.row_ptr[q] < table.full_count[q]) ++out.full_count[k];
      else ++partial[k];
    }
  }
  out.col_ptr.assign(static_cast<size_t>(nk) + 1, 0);
  for (int64_t k = 0; k < nk; ++k) out.col_ptr[k + 1] = out.col_ptr[k] + out.full_count[k] + partial[k];
  out.rows.resize(static_cast<size_t>(out.col_ptr[nk]));
  std::vector<int64_t> next_full(out.col_ptr.begin(), out.col_ptr.end() - 1);
  std::vector<int64_t> next_partial(static_cast<size_t>(nk));
  for (int64_t k = 0; k < nk; ++k) next_partial[k] = out.col_ptr[k] + out.full_count[k];
  auto place = [&](int32_t k, int32_t q, bool full) {
    out.rows[static_cast<size_t>(full ? next_full[k]++ : next_partial[k]++)] = q;
  };
  for (int64_t q = 0; q < nq; ++q)
    for (int64_t x = table.row_ptr[q]; x < table.row_ptr[q + 1]; ++x)
      place(table.cols[x], static_cast<int32_t>(q), x - table.row_ptr[q] < table.full_count[q]);
  return out;
}

}  // namespace spattn
