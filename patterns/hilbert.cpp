#include "patterns/hilbert.hpp"

#include "common/check.hpp"

namespace spattn::detail {

int bits_for(uint64_t n) {
  int b = 0;
  while (b < 63 && (uint64_t{1} << b) < n) ++b;
  return b;
}

// The "transpose" formulation of the Hilbert curve: the coordinates are rewritten in
// place, from the most significant bit down, into the transposed Gray code of the
// index (at each level the lower bits are reflected or swapped between axes to follow
// the curve's rotation), and the index is read off by interleaving the bits.
uint64_t hilbert_index(const uint64_t* coords, int dims, int bits) {
  SPATTN_ASSERT(dims >= 1 && dims <= 3 && dims * bits <= 63);
  if (bits == 0) return 0;
  uint64_t x[3] = {0, 0, 0};
  for (int a = 0; a < dims; ++a) x[a] = coords[a];
  const uint64_t top = uint64_t{1} << (bits - 1);
  for (uint64_t q = top; q > 1; q >>= 1) {
    const uint64_t low = q - 1;
    for (int a = 0; a < dims; ++a) {
      if (x[a] & q) {
        x[0] ^= low;  // reflect
      } else {
        const uint64_t t = (x[0] ^ x[a]) & low;  // swap the low bits of axis 0 and axis a
        x[0] ^= t;
        x[a] ^= t;
      }
    }
  }
  for (int a = 1; a < dims; ++a) x[a] ^= x[a - 1];
  uint64_t flip = 0;
  for (uint64_t q = top; q > 1; q >>= 1) {
    if (x[dims - 1] & q) flip ^= q - 1;
  }
  for (int a = 0; a < dims; ++a) x[a] ^= flip;
  uint64_t index = 0;
  for (int b = bits - 1; b >= 0; --b) {
    for (int a = 0; a < dims; ++a) index = (index << 1) | ((x[a] >> b) & 1);
  }
  return index;
}

}  // namespace spattn::detail
