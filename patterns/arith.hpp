// Integer helpers of the pattern compiler, also used by the engine (internal to the library).
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

namespace spattn::detail {

// Division by a divisor fixed at setup, as a multiplication: for 0 <= x < 2^32 and
// 2 <= d < 2^32, floor(x / d) is the high word of ceil(2^64 / d) * x. Token indices are
// below 2^30, so this is exact wherever the compiler uses it (per-row keys).
class FastDiv {
 public:
  FastDiv() = default;
  explicit FastDiv(int64_t d)
      : d_(d), m_(d > 1 && d <= int64_t{0xFFFFFFFF} ? UINT64_MAX / static_cast<uint64_t>(d) + 1 : 0) {}
  int64_t div(int64_t x) const {
    if (m_ != 0) return static_cast<int64_t>((static_cast<unsigned __int128>(m_) * static_cast<uint64_t>(x)) >> 64);
    return d_ == 1 ? x : x / d_;
  }
  int64_t mod(int64_t x) const { return x - div(x) * d_; }
  int64_t divisor() const { return d_; }

 private:
  int64_t d_ = 1;
  uint64_t m_ = 0;
};

}  // namespace spattn::detail
