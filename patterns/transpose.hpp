// The two ways transpose_table (spattn/layout.hpp) builds a transposed table, exposed
// for the tests that hold them to the same result.
#pragma once

#include <spattn/layout.hpp>

#include <cstdint>
#include <optional>

namespace spattn::detail {

// Counting sort over the listed tiles: any table.
TransposedTable transpose_by_counting(const BlockTable& table);

// A sweep over key tiles with the rows' runs of consecutive key tiles; nullopt when the
// rows hold more than max_runs runs (then the counting sort is the cheaper way).
std::optional<TransposedTable> transpose_by_runs(const BlockTable& table, int64_t max_runs);

}  // namespace spattn::detail
