// An independent statement of torchscale's LongNet index logic (shared by the tests).
#pragma once

#include <cstdint>
#include <vector>

namespace spattn::test {

// torchscale's dilated attention, on index arrays: for branch (w, r) the sequence is cut
// into segments of w; inside a segment, dense_to_sparse keeps positions l * r + o for
// head h, where heads (padded to a multiple of r) split into r groups of ceil(H / r);
// attention runs among the kept positions of a segment (causally, by position). Padding
// positions (past the segment or the sequence) never take part (DESIGN.md §3).
inline std::vector<std::vector<char>> torchscale_branch(int64_t n, int64_t heads, int64_t w, int64_t r, bool causal) {
  std::vector<std::vector<char>> allowed(static_cast<size_t>(heads), std::vector<char>(static_cast<size_t>(n * n), 0));
  const int64_t heads_per_group = (heads + r - 1) / r;  // padded heads / r
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t o = h / heads_per_group;  // the diagonal of (r1, r2) after the rearrange
    for (int64_t seg = 0; seg * w < n; ++seg) {
      std::vector<int64_t> kept;
      const int64_t padded = (w + r - 1) / r * r;
      for (int64_t l = 0; l * r < padded; ++l) {
        const int64_t in_seg = l * r + o;
        const int64_t pos = seg * w + in_seg;
        if (in_seg < w && pos < n) kept.push_back(pos);
      }
      for (int64_t qi : kept) {
        for (int64_t kj : kept) {
          if (!causal || kj <= qi) allowed[h][qi * n + kj] = 1;
        }
      }
    }
  }
  return allowed;
}

}  // namespace spattn::test
