// Hilbert curve index in 2 or 3 dimensions (internal to patterns/). Used for grid token
// layouts and for the Hilbert schedule of work items.
#pragma once

#include <cstdint>

// Internal to libspattn: hidden, so that the per-row calls bind directly.
#pragma GCC visibility push(hidden)
namespace spattn::detail {

// Position of the cell `coords` (each < 2^bits) along the Hilbert curve that fills the
// cube of side 2^bits in `dims` dimensions (1..3, dims * bits <= 63). Consecutive
// indices are neighbouring cells.
uint64_t hilbert_index(const uint64_t* coords, int dims, int bits);

// Smallest b with 2^b >= n (n >= 1).
int bits_for(uint64_t n);

}  // namespace spattn::detail
#pragma GCC visibility pop
