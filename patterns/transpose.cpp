// Forward block tables (CSR per query tile) turned into CSR per key tile.
#include "patterns/transpose.hpp"

#include <spattn/layout.hpp>

#include <algorithm>
#include <bit>

#include "common/check.hpp"
#include "patterns/layout_internal.hpp"

namespace spattn {

namespace {

void check_shape(const BlockTable& table) {
  const int64_t nq = table.num_q_tiles;
  SPATTN_REQUIRE(static_cast<int64_t>(table.row_ptr.size()) == nq + 1 &&
                     static_cast<int64_t>(table.full_count.size()) == nq,
                 "block table is malformed: {} query tiles but {} row offsets and {} full counts", nq,
                 table.row_ptr.size(), table.full_count.size());
}

void check_key(int64_t k, int64_t q, int64_t nk) {
  SPATTN_REQUIRE(k >= 0 && k < nk, "block table is malformed: key tile {} of query tile {} is outside [0, {})", k, q,
                 nk);
}

// A run of consecutive key tiles [k0, k1) of one query tile, all full or all partial.
struct Run {
  int32_t q, k0, k1;
  bool full;
};

// The runs of a table's rows (each row: the full list, then the partial list, each
// ascending), or stops early with false once there are more than `limit`.
bool runs_of(const BlockTable& table, int64_t limit, std::vector<Run>& runs) {
  const int64_t nq = table.num_q_tiles, nk = table.num_k_tiles;
  for (int64_t q = 0; q < nq; ++q) {
    const int64_t begin = table.row_ptr[q], end = table.row_ptr[q + 1], split = begin + table.full_count[q];
    for (int64_t x = begin; x < end;) {
      const bool full = x < split;
      const int64_t stop = full ? split : end;
      const int32_t k0 = table.cols[x];
      check_key(k0, q, nk);
      // Extend the run while the keys go on by one (eight at a time first: this scan
      // reads every listed tile). Its keys are in [k0, k1), so checking k1 - 1 suffices.
      int32_t k1 = k0 + 1;
      ++x;
      while (x + 8 <= stop) {
        bool on = true;
        for (int i = 0; i < 8; ++i) on &= table.cols[x + i] == k1 + i;
        if (!on) break;
        x += 8;
        k1 += 8;
      }
      for (; x < stop && table.cols[x] == k1; ++x) ++k1;
      check_key(k1 - 1, q, nk);
      if (static_cast<int64_t>(runs.size()) >= limit) return false;
      runs.push_back({static_cast<int32_t>(q), k0, k1, full});
    }
  }
  return true;
}

}  // namespace

namespace detail {

TransposedTable transpose_by_counting(const BlockTable& table) {
  check_shape(table);
  const int64_t nq = table.num_q_tiles, nk = table.num_k_tiles;
  TransposedTable out;
  out.num_q_tiles = nq;
  out.num_k_tiles = nk;
  out.full_count.assign(static_cast<size_t>(nk), 0);
  std::vector<int64_t> partial(static_cast<size_t>(nk), 0);
  // Count per key tile, then place with a counting sort: query tiles are visited in
  // ascending order, so each key tile's full and partial lists come out ascending. Each
  // row's lists must be ascending without repeats, and disjoint.
  for (int64_t q = 0; q < nq; ++q) {
    const int64_t begin = table.row_ptr[q], end = table.row_ptr[q + 1], split = begin + table.full_count[q];
    for (int64_t x = begin; x < end; ++x) {
      const int32_t k = table.cols[x];
      check_key(k, q, nk);
      SPATTN_REQUIRE(x == begin || x == split || table.cols[x - 1] < k,
                     "block table is malformed: query tile {} lists key tiles out of ascending order", q);
      if (x < split) ++out.full_count[k];
      else ++partial[k];
    }
    for (int64_t f = begin, g = split; f < split && g < end;) {  // the lists are disjoint
      SPATTN_REQUIRE(table.cols[f] != table.cols[g],
                     "block table is malformed: query tile {} lists key tile {} as both full and partial", q,
                     table.cols[f]);
      table.cols[f] < table.cols[g] ? ++f : ++g;
    }
  }
  out.col_ptr.assign(static_cast<size_t>(nk) + 1, 0);
  for (int64_t k = 0; k < nk; ++k) out.col_ptr[k + 1] = out.col_ptr[k] + out.full_count[k] + partial[k];
  out.rows.resize(static_cast<size_t>(out.col_ptr[nk]));
  std::vector<int64_t> next_full(out.col_ptr.begin(), out.col_ptr.end() - 1);
  std::vector<int64_t> next_partial(static_cast<size_t>(nk));
  for (int64_t k = 0; k < nk; ++k) next_partial[k] = out.col_ptr[k] + out.full_count[k];
  for (int64_t q = 0; q < nq; ++q)
    for (int64_t x = table.row_ptr[q]; x < table.row_ptr[q + 1]; ++x) {
      const bool full = x - table.row_ptr[q] < table.full_count[q];
      out.rows[static_cast<size_t>(full ? next_full[table.cols[x]]++ : next_partial[table.cols[x]]++)] =
          static_cast<int32_t>(q);
    }
  return out;
}

std::optional<TransposedTable> transpose_by_runs(const BlockTable& table, int64_t max_runs) {
  check_shape(table);
  const int64_t nq = table.num_q_tiles, nk = table.num_k_tiles;
  std::vector<Run> runs;
  if (!runs_of(table, max_runs, runs)) return std::nullopt;
  // Sweep the key tiles in order with the query tiles that attend the current one as
  // two bit sets (full, partial): a run sets its bit at k0 and clears it at k1. Each key
  // tile's lists are the set bits in ascending order, written out sequentially.
  std::vector<int64_t> at(static_cast<size_t>(nk) + 2, 0);  // events per key tile: starts and ends
  for (const Run& r : runs) {
    ++at[static_cast<size_t>(r.k0) + 1];
    ++at[static_cast<size_t>(r.k1) + 1];
  }
  for (size_t k = 1; k < at.size(); ++k) at[k] += at[k - 1];
  // An event: the run index, negated for an end (ends apply before starts at a tile).
  std::vector<int64_t> events(static_cast<size_t>(at.back()));
  {
    std::vector<int64_t> next(at.begin(), at.end() - 1);
    for (size_t i = 0; i < runs.size(); ++i) {
      events[static_cast<size_t>(next[static_cast<size_t>(runs[i].k0)]++)] = static_cast<int64_t>(i) + 1;
      events[static_cast<size_t>(next[static_cast<size_t>(runs[i].k1)]++)] = -(static_cast<int64_t>(i) + 1);
    }
  }
  const size_t words = static_cast<size_t>((nq + 63) / 64);
  std::vector<uint64_t> full(words, 0), partial(words, 0);
  TransposedTable out;
  out.num_q_tiles = nq;
  out.num_k_tiles = nk;
  out.full_count.assign(static_cast<size_t>(nk), 0);
  out.col_ptr.assign(static_cast<size_t>(nk) + 1, 0);
  // Reserved, not resized: the rows are written once, in order (no zero-fill pass over
  // tens of MiB at 1M tokens).
  out.rows.reserve(table.cols.size());
  advise_huge_pages(out.rows.data(), out.rows.capacity() * sizeof(int32_t));
  int64_t n_full = 0, n_partial = 0;
  // Words that may hold set bits: [lo, hi) grows with starts and is trimmed on emission.
  size_t lo = words, hi = 0;
  std::vector<int32_t>& rows = out.rows;
  auto emit = [&](const std::vector<uint64_t>& bits) {
    for (size_t w = lo; w < hi; ++w) {
      const uint64_t word = bits[w];
      const int32_t q0 = static_cast<int32_t>(w * 64);
      if (word == ~uint64_t{0}) {  // 64 query tiles in a row (dense and blocked patterns)
        const size_t at = rows.size();
        rows.resize(at + 64);
        for (int32_t b = 0; b < 64; ++b) rows[at + static_cast<size_t>(b)] = q0 + b;
        continue;
      }
      for (uint64_t b = word; b; b &= b - 1) rows.push_back(q0 + std::countr_zero(b));
    }
  };
  for (int64_t k = 0; k < nk; ++k) {
    for (int pass = 0; pass < 2; ++pass) {  // ends first, then starts
      for (int64_t e = at[static_cast<size_t>(k)]; e < at[static_cast<size_t>(k) + 1]; ++e) {
        const int64_t ev = events[static_cast<size_t>(e)];
        if ((ev < 0) != (pass == 0)) continue;
        const Run& r = runs[static_cast<size_t>((ev < 0 ? -ev : ev) - 1)];
        std::vector<uint64_t>& bits = r.full ? full : partial;
        const size_t w = static_cast<size_t>(r.q) / 64;
        const uint64_t bit = uint64_t{1} << (r.q % 64);
        if (ev < 0) {
          bits[w] &= ~bit;
          --(r.full ? n_full : n_partial);
        } else {
          bits[w] |= bit;
          ++(r.full ? n_full : n_partial);
          lo = std::min(lo, w);
          hi = std::max(hi, w + 1);
        }
      }
    }
    if (n_full + n_partial == 0) {
      lo = words, hi = 0;
    } else {
      while (lo < hi && !(full[lo] | partial[lo])) ++lo;
      while (hi > lo && !(full[hi - 1] | partial[hi - 1])) --hi;
      for (size_t w = lo; w < hi; ++w)
        SPATTN_REQUIRE(!(full[w] & partial[w]),
                       "block table is malformed: query tile {} lists key tile {} as both full and partial",
                       w * 64 + static_cast<size_t>(std::countr_zero(full[w] & partial[w])), k);
    }
    emit(full);
    emit(partial);
    out.full_count[static_cast<size_t>(k)] = static_cast<int32_t>(n_full);
    out.col_ptr[static_cast<size_t>(k) + 1] = static_cast<int64_t>(rows.size());
  }
  SPATTN_REQUIRE(rows.size() == table.cols.size(),
                 "block table is malformed: a query tile lists a key tile twice ({} distinct pairs of {} listed)",
                 rows.size(), table.cols.size());
  return out;
}

}  // namespace detail

TransposedTable transpose_table(const BlockTable& table) {
  // Rows of patterns with structure (windows, blocks, dilated classes in their
  // permuted order) are few runs of consecutive key tiles: the sweep writes the output
  // in order and costs O(key tiles x query tiles / 64 + listed tiles). Rows without
  // that structure go through the counting sort, whose scattered writes are its cost.
  const int64_t listed = static_cast<int64_t>(table.cols.size());
  if (std::optional<TransposedTable> t = detail::transpose_by_runs(table, listed / 4)) return std::move(*t);
  return detail::transpose_by_counting(table);
}

}  // namespace spattn
