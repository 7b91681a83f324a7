// Brute-force checks of compiled layouts against the token predicate, and a random
// pattern generator (shared by the pattern tests).
#pragma once

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include <spattn/error.hpp>
#include <spattn/layout.hpp>
#include <spattn/pattern.hpp>

namespace spattn::test {

// The predicate a kernel evaluates in a partial tile of `part` (layout.hpp).
inline bool part_allows(const Shape& shape, const LayoutPart& part, int64_t h, int64_t i, int64_t j) {
  if (!part.pattern.allowed_in_branch(shape, part.branch, h, i, j)) return false;
  for (const Pattern& e : part.exclude) {
    if (e.allowed(shape, h, i, j)) return false;
  }
  return true;
}

// How many times key j counts for query i of head h (one per branch that allows it).
inline int multiplicity(const Pattern& p, const Shape& shape, int64_t h, int64_t i, int64_t j) {
  int n = 0;
  for (int b = 0; b < p.branch_count(); ++b) n += p.allowed_in_branch(shape, b, h, i, j) ? 1 : 0;
  return n;
}

// Checks every structural and semantic property of `layout` (see layout.hpp) by
// enumerating all (head, query, key) triples. Reports failures through gtest with
// `what` describing the configuration.
inline void check_layout(const Pattern& pattern, const Shape& shape, const LayoutOptions& options,
                         const Layout& layout, const std::string& what) {
  SCOPED_TRACE(what);
  const int64_t nq = shape.nq, nk = shape.nk, H = shape.heads;
  const int64_t tm = options.tile_m, tn = options.tile_n;
  ASSERT_EQ(layout.tile_m, tm);
  ASSERT_EQ(layout.tile_n, tn);
  const size_t P = layout.parts.size();
  ASSERT_GE(P, 1u);

  // Predicate of every part for every head, computed once.
  std::vector<std::vector<char>> pred(P * static_cast<size_t>(H));
  for (size_t p = 0; p < P; ++p) {
    for (int64_t h = 0; h < H; ++h) {
      auto& m = pred[p * H + h];
      m.assign(static_cast<size_t>(nq * nk), 0);
      for (int64_t i = 0; i < nq; ++i) {
        for (int64_t j = 0; j < nk; ++j) m[i * nk + j] = part_allows(shape, layout.parts[p], h, i, j);
      }
    }
  }

  // Multiset semantics: LSE-merging the parts counts key j once per branch allowing it.
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t i = 0; i < nq; ++i) {
      for (int64_t j = 0; j < nk; ++j) {
        int parts = 0;
        for (size_t p = 0; p < P; ++p) parts += pred[p * H + h][i * nk + j];
        const int want = multiplicity(pattern, shape, h, i, j);
        if (parts != want) {
          ADD_FAILURE() << "head " << h << " pair (" << i << ", " << j << "): parts allow it " << parts
                        << " times, branches " << want;
          return;
        }
      }
    }
  }

  std::vector<int> table_of(P * static_cast<size_t>(H), -1);
  for (size_t t = 0; t < layout.tables.size(); ++t) {
    const BlockTable& bt = layout.tables[t];
    SCOPED_TRACE("table " + std::to_string(t));
    ASSERT_GE(bt.part, 0);
    ASSERT_LT(bt.part, static_cast<int>(P));
    ASSERT_FALSE(bt.heads.empty());
    for (size_t k = 0; k < bt.heads.size(); ++k) {
      ASSERT_GE(bt.heads[k], 0);
      ASSERT_LT(bt.heads[k], H);
      if (k > 0) {
        ASSERT_LT(bt.heads[k - 1], bt.heads[k]);
      }
      ASSERT_EQ(table_of[bt.part * H + bt.heads[k]], -1) << "head " << bt.heads[k] << " in two tables of a part";
      table_of[bt.part * H + bt.heads[k]] = static_cast<int>(t);
    }
    // Slots: sizes, ranges, each token at most once.
    if (bt.q_slots.empty()) {
      ASSERT_EQ(bt.num_q_tiles, (nq + tm - 1) / tm);
    } else {
      ASSERT_EQ(static_cast<int64_t>(bt.q_slots.size()), bt.num_q_tiles * tm);
    }
    if (bt.k_slots.empty()) {
      ASSERT_EQ(bt.num_k_tiles, (nk + tn - 1) / tn);
    } else {
      ASSERT_EQ(static_cast<int64_t>(bt.k_slots.size()), bt.num_k_tiles * tn);
    }
    std::vector<int64_t> q_slot_of(static_cast<size_t>(nq), -1), k_slot_of(static_cast<size_t>(nk), -1);
    auto q_token = [&](int64_t s) -> int64_t {
      if (bt.q_slots.empty()) return s < nq ? s : -1;
      return bt.q_slots[s];
    };
    auto k_token = [&](int64_t s) -> int64_t {
      if (bt.k_slots.empty()) return s < nk ? s : -1;
      return bt.k_slots[s];
    };
    for (int64_t s = 0; s < bt.num_q_tiles * tm; ++s) {
      const int64_t tok = q_token(s);
      ASSERT_GE(tok, -1);
      ASSERT_LT(tok, nq);
      if (tok < 0) continue;
      ASSERT_EQ(q_slot_of[tok], -1) << "query token " << tok << " in two slots";
      q_slot_of[tok] = s;
    }
    for (int64_t s = 0; s < bt.num_k_tiles * tn; ++s) {
      const int64_t tok = k_token(s);
      ASSERT_GE(tok, -1);
      ASSERT_LT(tok, nk);
      if (tok < 0) continue;
      ASSERT_EQ(k_slot_of[tok], -1) << "key token " << tok << " in two slots";
      k_slot_of[tok] = s;
    }
    // Every query tile holds a real row (no all-padding work items).
    for (int64_t qt = 0; qt < bt.num_q_tiles; ++qt) {
      bool any = false;
      for (int64_t s = qt * tm; s < (qt + 1) * tm; ++s) any = any || q_token(s) >= 0;
      ASSERT_TRUE(any) << "query tile " << qt << " has only padding";
    }
    // CSR shape.
    ASSERT_EQ(static_cast<int64_t>(bt.row_ptr.size()), bt.num_q_tiles + 1);
    ASSERT_EQ(static_cast<int64_t>(bt.full_count.size()), bt.num_q_tiles);
    ASSERT_EQ(bt.row_ptr[0], 0);
    ASSERT_EQ(bt.row_ptr.back(), static_cast<int64_t>(bt.cols.size()));
    std::vector<char> listed(static_cast<size_t>(bt.num_q_tiles * bt.num_k_tiles), 0);
    for (int64_t qt = 0; qt < bt.num_q_tiles; ++qt) {
      const int64_t lo = bt.row_ptr[qt], hi = bt.row_ptr[qt + 1];
      ASSERT_LE(lo, hi);
      ASSERT_GE(bt.full_count[qt], 0);
      ASSERT_LE(bt.full_count[qt], hi - lo);
      for (int64_t c = lo; c < hi; ++c) {
        const int32_t kt = bt.cols[c];
        ASSERT_GE(kt, 0);
        ASSERT_LT(kt, bt.num_k_tiles);
        ASSERT_EQ(listed[qt * bt.num_k_tiles + kt], 0) << "key tile listed twice";
        listed[qt * bt.num_k_tiles + kt] = 1;
        if (c > lo && c != lo + bt.full_count[qt]) {
          ASSERT_LT(bt.cols[c - 1], kt) << "tiles not ascending";
        }
        const bool full = c < lo + bt.full_count[qt];
        // Decode the tile for every head of the table.
        for (int32_t h : bt.heads) {
          const auto& m = pred[bt.part * H + h];
          int64_t allowed = 0, real_pairs = 0;
          bool padding_key = false;
          for (int64_t ks = kt * tn; ks < (kt + 1) * tn; ++ks) padding_key = padding_key || k_token(ks) < 0;
          for (int64_t qs = qt * tm; qs < (qt + 1) * tm; ++qs) {
            const int64_t i = q_token(qs);
            if (i < 0) continue;
            for (int64_t ks = kt * tn; ks < (kt + 1) * tn; ++ks) {
              const int64_t j = k_token(ks);
              if (j < 0) continue;
              ++real_pairs;
              allowed += m[i * nk + j];
            }
          }
          ASSERT_GT(allowed, 0) << "empty tile (" << qt << ", " << kt << ") listed for head " << h;
          const bool truly_full = !padding_key && allowed == real_pairs;
          ASSERT_EQ(full, truly_full) << "tile (" << qt << ", " << kt << ") head " << h << " listed "
                                      << (full ? "full" : "partial") << " but " << allowed << "/" << real_pairs
                                      << " pairs allowed" << (padding_key ? " with padding keys" : "");
        }
      }
    }
    // Every allowed pair of the part lies in a listed tile of this table; the pair count.
    for (int32_t h : bt.heads) {
      const auto& m = pred[bt.part * H + h];
      int64_t count = 0;
      for (int64_t i = 0; i < nq; ++i) {
        for (int64_t j = 0; j < nk; ++j) {
          if (!m[i * nk + j]) continue;
          ++count;
          ASSERT_GE(q_slot_of[i], 0) << "query " << i << " has allowed keys but no slot";
          ASSERT_GE(k_slot_of[j], 0) << "key " << j << " is allowed but has no slot";
          ASSERT_TRUE(listed[(q_slot_of[i] / tm) * bt.num_k_tiles + k_slot_of[j] / tn])
              << "allowed pair (" << i << ", " << j << ") of head " << h << " is in no listed tile";
        }
      }
      ASSERT_EQ(bt.allowed_pairs, count) << "head " << h;
    }
  }
  // Heads without a table in a part have no pair in it.
  for (size_t p = 0; p < P; ++p) {
    for (int64_t h = 0; h < H; ++h) {
      if (table_of[p * H + h] >= 0) continue;
      const auto& m = pred[p * H + h];
      for (size_t x = 0; x < m.size(); ++x) {
        ASSERT_EQ(m[x], 0) << "part " << p << " head " << h << " allows (" << x / nk << ", " << x % nk
                           << ") but has no table";
      }
    }
  }
  // covers_all_rows.
  bool covered = true;
  for (int64_t h = 0; h < H && covered; ++h) {
    std::vector<char> rows(static_cast<size_t>(nq), 0);
    for (const BlockTable& bt : layout.tables) {
      if (std::find(bt.heads.begin(), bt.heads.end(), h) == bt.heads.end()) continue;
      for (int64_t s = 0; s < bt.num_q_tiles * tm; ++s) {
        const int64_t tok = bt.q_slots.empty() ? (s < nq ? s : -1) : bt.q_slots[s];
        if (tok >= 0) rows[tok] = 1;
      }
    }
    covered = std::all_of(rows.begin(), rows.end(), [](char c) { return c != 0; });
  }
  ASSERT_EQ(layout.covers_all_rows, covered);
  // Schedule: every (table, query tile, head) exactly once.
  size_t expected = 0;
  for (const BlockTable& bt : layout.tables) expected += bt.heads.size() * static_cast<size_t>(bt.num_q_tiles);
  ASSERT_EQ(layout.schedule.size(), expected);
  std::vector<std::vector<char>> seen(layout.tables.size());
  for (size_t t = 0; t < layout.tables.size(); ++t) {
    seen[t].assign(static_cast<size_t>(layout.tables[t].num_q_tiles * H), 0);
  }
  for (const WorkItem& w : layout.schedule) {
    ASSERT_GE(w.table, 0);
    ASSERT_LT(w.table, static_cast<int32_t>(layout.tables.size()));
    const BlockTable& bt = layout.tables[w.table];
    ASSERT_TRUE(std::find(bt.heads.begin(), bt.heads.end(), w.head) != bt.heads.end());
    ASSERT_GE(w.q_tile, 0);
    ASSERT_LT(w.q_tile, bt.num_q_tiles);
    char& s = seen[w.table][w.q_tile * H + w.head];
    ASSERT_EQ(s, 0) << "work item scheduled twice";
    s = 1;
  }
}

inline void compile_and_check(const Pattern& pattern, const Shape& shape, const LayoutOptions& options,
                              const std::string& what) {
  Layout layout;
  try {
    layout = compile_layout(pattern, shape, options);
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": compile_layout threw: " << e.what();
    return;
  }
  check_layout(pattern, shape, options, layout, what);
}

inline std::string describe(const Pattern& p, const Shape& s, const LayoutOptions& o) {
  return p.to_json() + " Nq=" + std::to_string(s.nq) + " Nk=" + std::to_string(s.nk) + " H=" +
         std::to_string(s.heads) + " tile=" + std::to_string(o.tile_m) + "x" + std::to_string(o.tile_n) +
         " permute=" + (o.permute ? "1" : "0") + " schedule=" + to_string(o.schedule);
}

// --- random patterns -----------------------------------------------------------------

class RandomPatterns {
 public:
  explicit RandomPatterns(uint64_t seed) : rng_(seed) {}

  int64_t uniform(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng_); }
  bool coin(double p = 0.5) { return std::bernoulli_distribution(p)(rng_); }
  std::mt19937_64& rng() { return rng_; }

  // A random single-branch leaf valid for `shape` (self-attention leaves only when
  // Nq == Nk).
  Pattern leaf(const Shape& shape, bool allow_longnet = true) {
    const bool self = shape.nq == shape.nk;
    const int64_t n = std::max(shape.nq, shape.nk);
    for (;;) {
      const int kind = static_cast<int>(uniform(0, 11));
      const bool causal = coin(0.3);
      switch (kind) {
        case 0:
          return Pattern(Dense{}, causal);
        case 1:
          return Pattern(LocalWindow{uniform(0, n / 2), uniform(0, n / 2)}, causal);
        case 2:
          return Pattern(GlobalLocal{uniform(0, n / 4), uniform(0, n / 3), uniform(0, n / 3)}, causal);
        case 3:
          return Pattern(Strided{uniform(1, std::min<int64_t>(n, 24)), coin() ? StrideMode::kRelative : StrideMode::kColumns},
                         causal);
        case 4: {
          DilatedSparse d;
          d.block = uniform(1, 24);
          d.rates.clear();
          const int nr = static_cast<int>(uniform(1, 3));
          for (int r = 0; r < nr; ++r) d.rates.push_back(uniform(1, 5));
          d.reach = uniform(0, 3);
          return Pattern(d, causal);
        }
        case 5: {
          Hierarchical hp;
          const int nl = static_cast<int>(uniform(1, 3));
          for (int l = 0; l < nl; ++l) {
            HierarchicalLevel lv;
            lv.block = uniform(1, 24);
            lv.stride = uniform(1, 64);
            lv.window = coin(0.25) ? -1 : uniform(0, 96);
            hp.levels.push_back(lv);
          }
          return Pattern(hp, causal);
        }
        case 6: {
          if (!self) continue;
          return Pattern(neighborhood(n), causal);
        }
        case 7: {
          Custom c;
          c.block = uniform(1, 32);
          const int64_t qb = (shape.nq + c.block - 1) / c.block, kb = (shape.nk + c.block - 1) / c.block;
          const int np = static_cast<int>(uniform(0, 20));
          for (int k = 0; k < np; ++k) c.pairs.emplace_back(uniform(0, qb - 1), uniform(0, kb - 1));
          return Pattern(c, causal);
        }
        case 8:
          return Pattern(Butterfly{uniform(1, 24)}, causal);
        case 9:
        case 10: {
          if (!self || !allow_longnet) continue;
          LongNet l;
          l.segments = {uniform(1, n + 8)};
          l.rates = {uniform(1, 5)};
          return Pattern(l, causal);
        }
        default:
          // Strided + window, the Sparse Transformer combination.
          return Pattern(Union{{Pattern(Strided{uniform(2, 16), coin() ? StrideMode::kRelative : StrideMode::kColumns}),
                                Pattern(LocalWindow{uniform(0, 12), uniform(0, 12)})}},
                         causal);
      }
    }
  }

  // A random neighborhood pattern on a grid of exactly n cells.
  Neighborhood neighborhood(int64_t n) {
    std::vector<int64_t> dims{n};
    const int target = static_cast<int>(uniform(1, 3));
    while (static_cast<int>(dims.size()) < target) {
      // Split the largest dimension by one of its divisors.
      auto it = std::max_element(dims.begin(), dims.end());
      std::vector<int64_t> divisors;
      for (int64_t d = 2; d * d <= *it; ++d) {
        if (*it % d == 0) divisors.push_back(d);
      }
      if (divisors.empty()) break;
      const int64_t d = divisors[uniform(0, static_cast<int64_t>(divisors.size()) - 1)];
      const int64_t rest = *it / d;
      *it = d;
      dims.insert(dims.begin() + uniform(0, static_cast<int64_t>(dims.size())), rest);
    }
    Neighborhood p;
    p.grid = dims;
    for (int64_t g : dims) {
      p.window.push_back(uniform(1, std::max<int64_t>(1, std::min<int64_t>(g + 1, 9))));
      p.dilation.push_back(coin(0.6) ? 1 : uniform(1, std::max<int64_t>(1, std::min<int64_t>(g, 4))));
    }
    return p;
  }

  // A random pattern of any form, up to `depth` levels of composition.
  Pattern pattern(const Shape& shape, int depth = 2) {
    if (depth <= 0 || coin(0.35)) return leaf(shape);
    const int form = static_cast<int>(uniform(0, 5));
    switch (form) {
      case 0:
      case 1: {
        std::vector<Pattern> items;
        const int n = static_cast<int>(uniform(2, 3));
        for (int k = 0; k < n; ++k) items.push_back(single_branch(shape, depth - 1));
        return form == 0 ? Pattern(Union{items}, coin(0.2)) : Pattern(Intersect{items}, coin(0.2));
      }
      case 2: {
        std::vector<Pattern> items;
        const int n = static_cast<int>(uniform(1, 3));
        for (int k = 0; k < n; ++k) items.push_back(pattern(shape, depth - 1));
        return Pattern(Branches{items}, coin(0.2));
      }
      case 3: {
        if (shape.nq != shape.nk) return leaf(shape);
        LongNet l;
        const int n = static_cast<int>(uniform(1, 3));
        for (int k = 0; k < n; ++k) {
          l.segments.push_back(uniform(1, shape.nq + 8));
          l.rates.push_back(uniform(1, 5));
        }
        return Pattern(l, coin(0.4));
      }
      default: {
        HeadGroups g;
        int64_t first = 0;
        while (first < shape.heads) {
          const int64_t count = uniform(1, shape.heads - first);
          Shape sub = shape;
          sub.heads = count;
          g.groups.push_back(HeadGroup{first, count, std::make_shared<const Pattern>(pattern(sub, depth - 1))});
          first += count;
        }
        return Pattern(g, coin(0.2));
      }
    }
  }

  Pattern single_branch(const Shape& shape, int depth) {
    for (;;) {
      Pattern p = coin(0.6) ? leaf(shape) : pattern(shape, depth);
      if (p.branch_count() == 1) return p;
    }
  }

  Shape shape(int64_t max_n, int64_t max_heads) {
    Shape s;
    s.nq = uniform(1, max_n);
    s.nk = coin(0.55) ? s.nq : uniform(1, max_n);
    s.heads = uniform(1, max_heads);
    return s;
  }

  LayoutOptions options() {
    static const int64_t kTiles[] = {1, 3, 16, 16, 32, 32, 64, 24, 40, 128};
    LayoutOptions o;
    o.tile_m = kTiles[uniform(0, 9)];
    o.tile_n = coin(0.5) ? o.tile_m : kTiles[uniform(0, 9)];
    o.permute = coin(0.7);
    o.schedule = static_cast<ScheduleOrder>(uniform(0, 2));
    return o;
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace spattn::test
