// Integer helpers shared by the pattern compiler (internal to patterns/).
#pragma once

#include <cstdint>

namespace spattn::detail {

// Floor and ceiling division for any signs of a, with b > 0.
inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }
// a mod b in [0, b), b > 0.
inline int64_t pos_mod(int64_t a, int64_t b) {
  const int64_t r = a % b;
  return r < 0 ? r + b : r;
}
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

}  // namespace spattn::detail
