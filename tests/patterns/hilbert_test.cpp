// The Hilbert index used for grid layouts and schedules: a bijection whose consecutive
// cells are neighbours.
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#include "patterns/hilbert.hpp"

namespace spattn::test {
namespace {

TEST(Hilbert, ConsecutiveIndicesAreNeighbours) {
  for (int dims = 1; dims <= 3; ++dims) {
    for (int bits = 0; bits <= (dims == 3 ? 4 : 6); ++bits) {
      const uint64_t side = uint64_t{1} << bits;
      uint64_t cells = 1;
      for (int a = 0; a < dims; ++a) cells *= side;
      std::vector<std::vector<uint64_t>> at(cells);
      for (uint64_t c = 0; c < cells; ++c) {
        uint64_t x[3] = {0, 0, 0};
        uint64_t rest = c;
        for (int a = 0; a < dims; ++a) {
          x[a] = rest % side;
          rest /= side;
        }
        const uint64_t h = detail::hilbert_index(x, dims, bits);
        ASSERT_LT(h, cells);
        ASSERT_TRUE(at[h].empty()) << "index " << h << " used twice";
        at[h].assign(x, x + dims);
      }
      for (uint64_t h = 1; h < cells; ++h) {
        int64_t dist = 0;
        for (int a = 0; a < dims; ++a) dist += std::llabs(int64_t(at[h][a]) - int64_t(at[h - 1][a]));
        ASSERT_EQ(dist, 1) << "dims " << dims << " bits " << bits << " step " << h;
      }
    }
  }
}

TEST(Hilbert, BitsFor) {
  EXPECT_EQ(detail::bits_for(1), 0);
  EXPECT_EQ(detail::bits_for(2), 1);
  EXPECT_EQ(detail::bits_for(3), 2);
  EXPECT_EQ(detail::bits_for(1024), 10);
  EXPECT_EQ(detail::bits_for(1025), 11);
}

}  // namespace
}  // namespace spattn::test
