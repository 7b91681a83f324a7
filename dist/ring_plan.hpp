// The schedule of sequence-parallel (ring) attention over `world` ranks, computed on the
// host from the pattern alone: which rank's K/V shard each rank needs, what it moves and
// what it computes. A shard pair that holds no allowed (query, key) pair is neither sent
// nor computed, so sparse patterns move a point-to-point subset of the dense ring's data.
//
// Sharding: contiguous (rank r holds tokens [r·N/W, (r+1)·N/W)), or zigzag for causal
// patterns (the sequence in 2·W chunks; rank r holds chunks r and 2·W−1−r, which balances
// causal work). Self-attention (Nq = Nk); every predicate uses global token indices.
//
// Emptiness is exact: it is read off the pattern's layout in natural order (no token
// permutation) at a tile that divides the chunk length, and a layout lists a tile iff some
// pair in it is allowed (for any head), so a shard pair is non-empty iff one of its tiles
// is listed. Work per shard pair is counted in listed tiles of that layout.
#pragma once

#include <spattn/pattern.hpp>
#include <spattn/ring.hpp>
#include <spattn/tensor.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace spattn::dist {

using Sharding = RingSharding;  // spattn/ring.hpp

// Token ranges [begin, end) of one rank's shard, ascending.
struct Shard {
  std::vector<std::pair<int64_t, int64_t>> ranges;
  int64_t tokens() const;
};
// The shards of a sequence of n tokens over `world` ranks. Throws kInvalidArgument unless
// n is a multiple of world (2·world for zigzag) and world >= 1.
std::vector<Shard> shard_sequence(int64_t n, int world, Sharding sharding);

struct RingProblem {
  int64_t seq = 0;
  int64_t heads = 16, kv_heads = 16, head_dim = 128;
  DType dtype = DType::kBFloat16;
  int world = 2;
  Sharding sharding = Sharding::kContiguous;
};

struct RingPlan {
  RingProblem problem;
  std::vector<Shard> shards;
  int64_t tile = 0;  // of the layout the emptiness and work were read from
  // needs[r][s]: rank r's queries attend some key of rank s's shard (for some head).
  std::vector<std::vector<bool>> needs;
  // work[r][s]: listed tiles of the (r, s) shard pair, summed over the layout's tables
  // (a table serves several heads: counted once per head).
  std::vector<std::vector<int64_t>> work;
  // Steps of the point-to-point schedule: at step t (1 .. world-1) rank s sends its K/V
  // shard to rank (s + t) mod world when that rank needs it. Steps where nobody sends are
  // left out. Step 0 (each rank's own shard) moves nothing.
  struct Transfer {
    int src, dst;
  };
  struct Step {
    int offset;  // t
    std::vector<Transfer> transfers;
  };
  std::vector<Step> steps;

  int64_t shard_kv_bytes() const;            // one rank's K and V: 2 · tokens · kv_heads · D · dtype size
  int64_t bytes_received(int rank) const;    // K/V bytes rank receives
  int64_t bytes_moved() const;               // over all ranks
  int64_t dense_ring_bytes() const;          // a ring that sends every shard to every rank
  int64_t work_of(int rank) const;           // listed tiles the rank computes
  double balance() const;                    // mean / max work over ranks (1 = perfectly even)

  std::string to_json() const;   // pretty-printed object
  std::string to_table() const;  // per rank: shard, receives from, bytes, work; totals
};

// Plans ring attention of `pattern` for `problem`. Throws kInvalidArgument for a shape the
// pattern or the sharding cannot take (naming what), kUnsupported for adaptive patterns
// (their tables are built from the data).
RingPlan plan_ring(const Pattern& pattern, const RingProblem& problem);

}  // namespace spattn::dist
