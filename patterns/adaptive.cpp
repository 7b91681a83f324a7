// Adaptive patterns on the host: the block geometry, the reference selection and the
// host part of their layout (spattn/adaptive.hpp). The selection itself runs on the GPU
// (templates/adaptive.cuh) with the same definition.
#include <spattn/adaptive.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/check.hpp"

namespace spattn {

bool is_adaptive(const Pattern& pattern) { return std::holds_alternative<Adaptive>(pattern.node()); }

AdaptiveGeometry adaptive_geometry(const Pattern& pattern, int64_t nq, int64_t nk) {
  const auto* a = std::get_if<Adaptive>(&pattern.node());
  SPATTN_REQUIRE(a != nullptr, "adaptive geometry of a '{}' pattern: only a lone adaptive pattern has one",
                 pattern.kind());
  SPATTN_REQUIRE(nq >= 1 && nk >= 1, "adaptive geometry of an empty problem (Nq={}, Nk={})", nq, nk);
  SPATTN_REQUIRE(a->block >= 1, "adaptive block must be >= 1 (got {})", a->block);
  AdaptiveGeometry g;
  g.block = a->block;
  g.nq = nq;
  g.nk = nk;
  g.causal = pattern.causal();
  g.nq_blocks = (nq + g.block - 1) / g.block;
  g.nk_blocks = (nk + g.block - 1) / g.block;
  const int64_t shift = nk - nq;
  g.k.resize(g.nq_blocks);
  g.diagonal.resize(g.nq_blocks);
  g.allowed.resize(g.nq_blocks);
  for (int64_t I = 0; I < g.nq_blocks; ++I) {
    const int64_t reach = std::min((I + 1) * g.block, nq) - 1 + shift;
    // Floor division (reach may be negative when Nk < Nq).
    const int64_t d = std::clamp(reach >= 0 ? reach / g.block : -1, int64_t{0}, g.nk_blocks - 1);
    int64_t allowed = g.nk_blocks;
    if (g.causal) allowed = reach < 0 ? 0 : d + 1;
    int64_t k = 0;
    if (allowed > 0) {
      if (a->top_k) {
        k = std::min(*a->top_k, allowed);
      } else {
        const double want = *a->keep_ratio * static_cast<double>(allowed);
        k = static_cast<int64_t>(std::ceil(want - 1e-9));
        k = std::clamp<int64_t>(k, 1, allowed);
      }
    }
    g.allowed[I] = static_cast<int32_t>(allowed);
    g.k[I] = static_cast<int32_t>(k);
    g.diagonal[I] = k > 0 ? static_cast<int32_t>(d) : -1;
    g.max_k = std::max(g.max_k, k);
  }
  return g;
}

std::vector<int32_t> adaptive_select_reference(const AdaptiveGeometry& g, const float* scores) {
  std::vector<int32_t> out(static_cast<size_t>(g.nq_blocks * g.max_k), -1);
  std::vector<std::pair<float, int32_t>> cand;
  for (int64_t I = 0; I < g.nq_blocks; ++I) {
    const int k = g.k[I];
    if (k == 0) continue;
    const float* row = scores + I * g.nk_blocks;
    cand.clear();
    for (int32_t J = 0; J < g.allowed[I]; ++J) {
      if (J == g.diagonal[I]) continue;
      const float s = std::isnan(row[J]) ? -std::numeric_limits<float>::infinity() : row[J];
      cand.emplace_back(s, J);
    }
    // Highest score first, ties to the lower block index.
    std::sort(cand.begin(), cand.end(),
              [](const auto& x, const auto& y) { return x.first != y.first ? x.first > y.first : x.second < y.second; });
    std::vector<int32_t> chosen{g.diagonal[I]};
    for (int n = 0; n + 1 < k; ++n) chosen.push_back(cand[n].second);
    std::sort(chosen.begin(), chosen.end());
    std::copy(chosen.begin(), chosen.end(), out.begin() + I * g.max_k);
  }
  return out;
}

Layout adaptive_layout(const Pattern& pattern, const Shape& shape, const LayoutOptions& options) {
  const AdaptiveGeometry g = adaptive_geometry(pattern, shape.nq, shape.nk);
  const TokenRect whole{0, shape.nq, 0, shape.nk};
  const bool whole_problem = options.rect == TokenRect{} || options.rect == whole;
  SPATTN_REQUIRE(whole_problem,
                 "adaptive patterns run on whole problems only (no sub-rectangles, e.g. ring attention's shard pairs)");
  SPATTN_REQUIRE(options.tile_m >= 1 && options.tile_n >= 1 && g.block % options.tile_m == 0 &&
                     g.block % options.tile_n == 0,
                 "adaptive block {} needs kernel tiles that divide it; the config's tiles are {}x{} (query x key)",
                 g.block, options.tile_m, options.tile_n);
  SPATTN_REQUIRE(shape.heads >= 1, "adaptive layout needs at least one head (got {})", shape.heads);
  const int64_t q_per_block = g.block / options.tile_m;
  const int64_t k_per_block = g.block / options.tile_n;
  const int64_t num_q_tiles = (shape.nq + options.tile_m - 1) / options.tile_m;

  Layout layout;
  layout.shape = shape;
  layout.rect = TokenRect{0, shape.nq, 0, shape.nk};
  layout.tile_m = options.tile_m;
  layout.tile_n = options.tile_n;
  layout.adaptive_block = g.block;
  // Inside the chosen tiles the kernel's predicate is causal alone (every key otherwise).
  layout.parts.push_back(LayoutPart{Pattern(Dense{}, g.causal), 0, {}});

  BlockTable t;
  t.num_q_tiles = num_q_tiles;
  t.num_k_tiles = g.nk_blocks * k_per_block;
  t.row_ptr.resize(num_q_tiles + 1);
  t.row_ptr[0] = 0;
  for (int64_t qt = 0; qt < num_q_tiles; ++qt) t.row_ptr[qt + 1] = t.row_ptr[qt] + g.k[qt / q_per_block] * k_per_block;
  t.full_count.assign(num_q_tiles, 0);
  t.cols.assign(static_cast<size_t>(t.row_ptr.back()), 0);
  // Useful pairs (an upper bound: a chosen last block shorter than B counts as whole):
  // every query of block I against k_I blocks of B keys, the diagonal block clipped by causal.
  const int64_t shift = shape.nk - shape.nq;
  for (int64_t I = 0; I < g.nq_blocks; ++I) {
    if (g.k[I] == 0) continue;
    const int64_t i0 = I * g.block, i1 = std::min((I + 1) * g.block, shape.nq);
    for (int64_t i = i0; i < i1; ++i) {
      int64_t keys = int64_t{g.k[I]} * g.block;
      if (g.causal) {
        const int64_t d0 = int64_t{g.diagonal[I]} * g.block;
        keys -= std::clamp(d0 + g.block - 1 - (i + shift), int64_t{0}, g.block);
      }
      t.allowed_pairs += std::max<int64_t>(0, keys);
    }
  }
  for (int64_t h = 0; h < shape.heads; ++h) {
    BlockTable th = t;
    th.heads = {static_cast<int32_t>(h)};
    layout.tables.push_back(std::move(th));
    for (int64_t qt = 0; qt < num_q_tiles; ++qt)
      layout.schedule.push_back(WorkItem{static_cast<int32_t>(h), static_cast<int32_t>(qt), static_cast<int32_t>(h)});
  }
  layout.covers_all_rows = true;  // every row is in its head's table (rows with no tile get O = 0, LSE = -inf)
  return layout;
}

LayoutStats adaptive_stats(const Layout& layout, int64_t head_dim) {
  LayoutStats s;
  s.parts = static_cast<int>(layout.parts.size());
  for (const BlockTable& t : layout.tables) {
    const int64_t heads = static_cast<int64_t>(t.heads.size());
    s.allowed_pairs_total += t.allowed_pairs * heads;
    s.total_tiles += t.num_q_tiles * t.num_k_tiles * heads;
    s.active_tiles += (t.row_ptr.empty() ? 0 : t.row_ptr.back()) * heads;
    s.table_bytes += static_cast<int64_t>((t.row_ptr.size() * 8 + t.full_count.size() * 4 + t.cols.size() * 4));
  }
  const double cells = static_cast<double>(layout.shape.nq) * static_cast<double>(layout.shape.nk) *
                       static_cast<double>(std::max<int64_t>(1, layout.shape.heads));
  s.allowed_pairs = static_cast<double>(s.allowed_pairs_total) / std::max<int64_t>(1, layout.shape.heads);
  s.density = static_cast<double>(s.allowed_pairs_total) / cells;
  s.tile_density = static_cast<double>(s.active_tiles) * layout.tile_m * layout.tile_n / cells;
  s.natural_block_density = s.total_tiles > 0 ? static_cast<double>(s.active_tiles) / s.total_tiles : 0;
  s.useful_flops = 4.0 * static_cast<double>(head_dim) * static_cast<double>(s.allowed_pairs_total);
  return s;
}

}  // namespace spattn
