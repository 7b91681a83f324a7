// spattn forward attention for Hopper (sm_90a): wgmma for Q·Kᵀ and P·V with fp32
// accumulators in registers, Q/K/V tiles brought into 128-byte-swizzled shared memory
// by TMA (natural token order, or copies of permuted rows in slot order) or by cp.async
// gathers (permuted layouts without copies), mbarrier
// pipelines between a producer warpgroup and one to three consumer warpgroups, and a
// persistent grid that walks the work list.
//
// The generated translation unit defines `struct Cfg` (tile shape, stages, head dim,
// dtype, the partial-tile predicate, and the wgmma wrappers MmaS / MmaO for the two
// products' N) and then includes this file. Results are those of the sm80 family: the
// same block tables (full tiles, then partial tiles with the generated mask), the same
// slots, LSE, split rows and part outputs.
//
// Roles (warpgroups of 128 threads):
//   0      producer: per work item loads the Q tile once, then for every listed key
//          tile the K tile and the V tile into the next stage of a ring of kStages,
//          each stage guarded by a "full" and an "empty" mbarrier.
//   1..C   consumers: warpgroup c owns query rows [64(c-1), 64c) of the tile. For each
//          key tile: S = Q Kᵀ (wgmma, both operands in shared memory), release K, mask
//          (partial tiles), online softmax in registers, O += P V (wgmma, P from
//          registers, V in shared memory), release V. Epilogue through shared memory.
//          With Cfg::kTurns (two or three consumers) they take turns issuing their
//          products (named barriers, FlashAttention-3's warpgroup ping-pong): while one
//          warpgroup's products run on the tensor cores the next one computes its softmax.
// Shared-memory tiles use sm90.cuh's swizzled chunk layout.
#pragma once

#include "spattn/sm90.cuh"

namespace spattn {
namespace sm90 {

// ---- the kernel body -------------------------------------------------------------------

template <class Cfg>
struct Forward {
  static constexpr int D = Cfg::kHeadDim;
  static constexpr int BM = Cfg::kBlockM;
  static constexpr int BN = Cfg::kBlockN;
  static constexpr int kStages = Cfg::kStages;
  static constexpr bool kBf16 = Cfg::kBf16;
  static constexpr int kConsumers = BM / 64;             // consumer warpgroups, 64 query rows each
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kProducerWarps = 4;
  static constexpr int kConsumerWarps = 4 * kConsumers;
  using Loader = TileLoader<D>;
  static constexpr int kRowChunks = Loader::kRowChunks;  // 16-byte chunks per row
  static constexpr int kNS = BN / 2;                     // S accumulators per thread (64 x BN per warpgroup)
  static constexpr int kNO = D / 2;                      // O accumulators per thread (64 x D per warpgroup)
  static constexpr int kSWords = (kNS + 31) / 32;        // mask words of a general-predicate partial tile
  static constexpr int kORow = D + 8;                    // staged output row (elements), 16 bytes of padding
  // Named barriers: 1 + c stages consumer c's outputs; kTurnBar + c is consumer c's turn
  // to issue matrix instructions (Cfg::kTurns).
  static constexpr bool kTurns = Cfg::kTurns;
  static constexpr int kTurnBar = 4;
  static_assert(!kTurns || kConsumers >= 2, "turns need two or three consumer warpgroups");

  static_assert(BM % 64 == 0 && kConsumers >= 1 && kConsumers <= 3, "tile_m must be 64, 128 or 192");
  static_assert(BN % 16 == 0 && BN >= 16 && BN <= 256, "tile_n must be a multiple of 16 up to 256");
  static_assert(D % 64 == 0 && D <= 256, "head dim must be 64, 128 or 256");
  static_assert(kStages >= 1 && kStages <= 4, "stages must be 1 to 4");
  static_assert(Cfg::MmaS::kN == BN && Cfg::MmaO::kN == D, "wgmma wrappers of the wrong width");

  // Shared memory, from a 1024-byte aligned base (the swizzle atom): Q, K stages, V
  // stages, staged outputs, query tokens of the staged rows, mbarriers.
  static constexpr int kQBytes = BM * D * 2;
  static constexpr int kKVBytes = BN * D * 2;
  static constexpr int kOffK = kQBytes;
  static constexpr int kOffV = kOffK + kStages * kKVBytes;
  static constexpr int kOffO = kOffV + kStages * kKVBytes;
  static constexpr int kOBytes = Cfg::kStageO ? kConsumers * 64 * kORow * 2 : 0;
  static constexpr int kOffQTok = kOffO + kOBytes;
  static constexpr int kOffBar = kOffQTok + kConsumers * 64 * 4;
  static constexpr int kBarriers = 2 + 4 * kStages;      // q full/empty, then k full/empty, v full/empty per stage
  static constexpr int kSmemBytes = 1024 + kOffBar + kBarriers * 8;  // + alignment slack
  static_assert(kSmemBytes == Cfg::kSmemBytes, "host and template disagree on the shared memory size");

  using elem = unsigned short;

  // The mbarriers' shared addresses: q full/empty, then per stage k full/empty, v full/empty.
  struct Barriers {
    uint32_t at;
    __device__ uint32_t q_full() const { return at; }
    __device__ uint32_t q_empty() const { return at + 8; }
    __device__ uint32_t k_full(int s) const { return at + 16 + s * 32; }
    __device__ uint32_t k_empty(int s) const { return at + 24 + s * 32; }
    __device__ uint32_t v_full(int s) const { return at + 32 + s * 32; }
    __device__ uint32_t v_empty(int s) const { return at + 40 + s * 32; }
  };

  // A work item. Documents (Cfg::kVarlen): q_tile is a tile of the tables, q_local its
  // tile within its document, and the document gives ob (the batch index of inputs and
  // outputs), the first query and key rows and the lengths; otherwise q_local = q_tile,
  // ob = b, rows from 0 and the problem's lengths.
  struct Item {
    int table, q_tile, head, first, n_tiles, n_full, split_slot, b;
    int ob, q_local, q_row0, k_row0, nq, nk;
    SpattnTable t;
    const int32_t* cols;
  };

  static __device__ __forceinline__ Item fetch(const SpattnFwdParams& p, int idx) {
    Item it;
    // Documents carry their batch index: the work list is walked once, not per batch.
    const int item = Cfg::kVarlen ? idx : idx / p.batch;
    it.b = Cfg::kVarlen ? 0 : idx % p.batch;
    const int32_t* w = p.work + 6 * item;
    it.table = __ldg(w);
    it.q_tile = __ldg(w + 1);
    it.head = __ldg(w + 2);
    it.first = __ldg(w + 3);
    it.n_tiles = __ldg(w + 4) - it.first;
    it.split_slot = __ldg(w + 5);
    it.t = p.tables[it.table];
    const int32_t* rows = p.arena + (int64_t)it.b * p.arena_stride_b;  // this batch's CSR
    const int row_begin = __ldg(rows + it.t.row_ptr + it.q_tile) + it.first;
    it.n_full = __ldg(rows + it.t.full_count + it.q_tile) - it.first;
    it.cols = rows + it.t.cols + row_begin;
    it.ob = it.b, it.q_local = it.q_tile, it.q_row0 = 0, it.k_row0 = 0, it.nq = p.nq, it.nk = p.nk;
    if constexpr (Cfg::kVarlen) {
      const int doc = __ldg(p.vl_tiles + 2 * it.q_tile);
      if (doc < 0) {  // capacity no document uses: no loads, no rows
        it.n_tiles = 0;
        it.nq = 0;
      } else {
        it.q_local = __ldg(p.vl_tiles + 2 * it.q_tile + 1);
        const int32_t* d = p.vl_docs + kSpattnDocInts * doc;
        it.ob = __ldg(d);
        it.q_row0 = __ldg(d + 1);
        it.nq = __ldg(d + 2);
        it.k_row0 = __ldg(d + 3);
        it.nk = __ldg(d + 4);
      }
    }
    return it;
  }

  // ---- producer ------------------------------------------------------------------------

  static __device__ void produce(const SpattnFwd90Params& P, uint32_t base) {
    const SpattnFwdParams& p = P.base;
    const Barriers bar{base + kOffBar};
    const uint32_t q_full = bar.q_full(), q_empty = bar.q_empty();
    auto k_full = [&](int s) { return bar.k_full(s); };
    auto k_empty = [&](int s) { return bar.k_empty(s); };
    auto v_full = [&](int s) { return bar.v_full(s); };
    auto v_empty = [&](int s) { return bar.v_empty(s); };
    int stage = 0;
    uint32_t phase = 0, q_phase = 0, pending = 0;
    for (int idx = blockIdx.x; idx < P.total_items; idx += gridDim.x) {
      const Item it = fetch(p, idx);
      if (it.n_tiles <= 0) continue;
      const int kvh = it.head / p.kv_group;
      const elem* qbase = static_cast<const elem*>(p.q) + it.ob * p.q_stride_b + it.head * p.q_stride_h;
      const elem* kbase = static_cast<const elem*>(p.k) + it.ob * p.k_stride_b + kvh * p.k_stride_h;
      const elem* vbase = static_cast<const elem*>(p.v) + it.ob * p.v_stride_b + kvh * p.v_stride_h;
      const int32_t* qslots = it.t.q_slots >= 0 ? p.arena + it.t.q_slots : nullptr;
      const int32_t* kslots = it.t.k_slots >= 0 ? p.arena + it.t.k_slots : nullptr;

      // Rows copied in slot order (":copy") load by TMA from the copies, at row
      // copy + slot of map head 0; otherwise natural order by TMA, or gathered.
      const int q_copy = P.q_copy_row ? __ldg(P.q_copy_row + it.table * p.heads + it.head) : -1;
      const int kv_copy =
          P.kv_copy_row ? __ldg(P.kv_copy_row + it.table * (p.heads / p.kv_group) + kvh) : -1;
      const bool q_copied = q_copy >= 0, kv_copied = kv_copy >= 0;

      // A document's rows: TMA addresses them from the tensor's row 0; gathers read its
      // slots (tokens of the document) from its first row.
      const bool tma_q = q_copied || (P.tma_q && !qslots);
      Loader::wait_free(q_empty, q_phase ^ 1, pending);
      Loader::load(base, q_full, tma_q, q_copied ? P.tm_qc : P.tm_q, q_copied ? 0 : it.head, it.ob,
                   qbase + (int64_t)it.q_row0 * p.q_stride_n, p.q_stride_n, BM,
                   tma_q ? (q_copied ? q_copy : 0) + it.q_row0 + it.q_local * BM : it.q_local * BM, it.nq, qslots,
                   pending);
      q_phase ^= 1;
      const bool tma_kv = kv_copied || (P.tma_kv && !kslots);
      const SpattnTensorMap& tm_k = kv_copied ? P.tm_kc : P.tm_k;
      const SpattnTensorMap& tm_v = kv_copied ? P.tm_vc : P.tm_v;
      const int map_kvh = kv_copied ? 0 : kvh;
      const int kv_row0 = kv_copied ? kv_copy : tma_kv ? it.k_row0 : 0;
      const elem* kdoc = kbase + (int64_t)it.k_row0 * p.k_stride_n;
      const elem* vdoc = vbase + (int64_t)it.k_row0 * p.v_stride_n;
#pragma unroll 1
      for (int n = 0; n < it.n_tiles; ++n) {
        const int col = __ldg(it.cols + n);
        Loader::wait_free(k_empty(stage), phase ^ 1, pending);
        Loader::load(base + kOffK + stage * kKVBytes, k_full(stage), tma_kv, tm_k, map_kvh, it.ob, kdoc, p.k_stride_n,
                     BN, kv_row0 + col * BN, it.nk, kslots, pending);
        Loader::wait_free(v_empty(stage), phase ^ 1, pending);
        Loader::load(base + kOffV + stage * kKVBytes, v_full(stage), tma_kv, tm_v, map_kvh, it.ob, vdoc, p.v_stride_n,
                     BN, kv_row0 + col * BN, it.nk, kslots, pending);
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
    }
    Loader::flush(pending);
  }

  // ---- consumers -----------------------------------------------------------------------

  static __device__ void consume(const SpattnFwd90Params& P, uint32_t base, int* qtok_s, elem* stage_o, int cw) {
    const SpattnFwdParams& p = P.base;
    const int tid = threadIdx.x - 128 * (cw + 1);
    const int warp = tid / 32;
    const int lane = tid % 32;
    const int row0 = warp * 16 + lane / 4;  // this thread's rows in the warpgroup: row0, row0 + 8
    const Barriers bar{base + kOffBar};
    const uint32_t q_full = bar.q_full(), q_empty = bar.q_empty();
    auto k_full = [&](int s) { return bar.k_full(s); };
    auto k_empty = [&](int s) { return bar.k_empty(s); };
    auto v_full = [&](int s) { return bar.v_full(s); };
    auto v_empty = [&](int s) { return bar.v_empty(s); };
    // Q rows of this warpgroup, K and V of stage 0; later stages and k-steps add offsets.
    const uint64_t q_desc = make_desc(base + cw * 64 * 128, 16, 1024);
    const uint64_t k_desc = make_desc(base + kOffK, 16, 1024);
    const uint64_t v_desc = make_desc(base + kOffV, BN * 128, 1024);
    typename Cfg::MaskCtx mask_ctx{p.mask_nq, p.mask_nk, p.heads, p.q_offset, p.k_offset};
    const float ln2 = 0.6931471805599453f;

    // Turns: wait for this warpgroup's, issue, pass it to the next consumer. A barrier of
    // 256 threads completes with this warpgroup's wait and the previous one's pass; every
    // consumer walks the same items and takes the same number of turns.
    auto turn_wait = [&] {
      if constexpr (kTurns) bar_sync(kTurnBar + cw, 256);
    };
    auto turn_pass = [&] {
      if constexpr (kTurns) bar_arrive(kTurnBar + (cw + 1) % kConsumers, 256);
    };
    if constexpr (kTurns)
      if (cw == 0) bar_arrive(kTurnBar, 256);  // the first turn is consumer 0's

    int stage = 0;
    uint32_t phase = 0, q_phase = 0;
    float acc_s[kNS];
#pragma unroll
    for (int x = 0; x < kNS; ++x) acc_s[x] = 0.f;

    for (int idx = blockIdx.x; idx < P.total_items; idx += gridDim.x) {
      const Item it = fetch(p, idx);
      const int h = it.head;
      if constexpr (Cfg::kVarlen) mask_ctx = typename Cfg::MaskCtx{it.nq, it.nk, p.heads, 0, 0};
      const int32_t* qslots = it.t.q_slots >= 0 ? p.arena + it.t.q_slots : nullptr;
      // Key tokens of a gathered tile, for the masks of partial tiles (L1-resident slots).
      const int32_t* kslots = Cfg::kPermutedKeys && it.t.k_slots >= 0 ? p.arena + it.t.k_slots : nullptr;
      int qtok[2];
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int slot = it.q_local * BM + cw * 64 + row0 + 8 * hr;
        const int token = qslots ? __ldg(qslots + slot) : slot;
        qtok[hr] = token >= 0 && token < it.nq ? token : -1;
      }

      float acc_o[kNO];
#pragma unroll
      for (int x = 0; x < kNO; ++x) acc_o[x] = 0.f;
      float row_max[2] = {neg_inf(), neg_inf()};
      float row_sum[2] = {0.f, 0.f};

      if (it.n_tiles > 0) {
        mbar_wait(q_full, q_phase);
        q_phase ^= 1;
      }

      // S = Q Kᵀ of the tile in `st` (asynchronous: completes at the next wait). The
      // callers wait for the stage and then fence before issuing: nothing but the
      // matrix instructions may sit between the fence and them.
      auto issue_qk = [&](int st) {
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          const uint32_t q_off = (kk / 4) * BM * 128 + (kk % 4) * 32;
          const uint32_t k_off = st * kKVBytes + (kk / 4) * BN * 128 + (kk % 4) * 32;
          Cfg::MmaS::ss(acc_s, q_desc + (q_off >> 4), k_desc + (k_off >> 4), kk > 0 ? 1 : 0);
        }
        wgmma_commit();
      };
      // O += P V of the tile in `st`, P from registers (asynchronous).
      auto issue_pv = [&](int st, const uint32_t (&pf)[BN / 16][4]) {
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) Cfg::MmaO::rs(acc_o, pf[kk], v_desc + ((st * kKVBytes + kk * 16 * 128) >> 4));
        wgmma_commit();
      };
      // Mask (partial tiles) and online softmax of tile n, whose S is in acc_s and
      // whose K/V are in `st`: acc_s becomes P (fp32), the row maxima and sums move on,
      // and the factors that rescale O to the new maxima are returned in scale_o.
      auto softmax = [&](int n, float (&scale_o)[2]) {
        if (n >= it.n_full) {
          const int col = __ldg(it.cols + n);
          auto key = [&](int c) {
            const int j = kslots ? __ldg(kslots + col * BN + c) : col * BN + c;
            return j < it.nk ? j : -1;  // slots of padding are -1
          };
          if constexpr (Cfg::kIntervalMask) {
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
              int lo0 = 1, hi0 = 0, lo1 = 1, hi1 = 0;
              if (qtok[hr] >= 0) Cfg::row_bounds(it.t.part, h, qtok[hr], mask_ctx, lo0, hi0, lo1, hi1);
#pragma unroll
              for (int jn = 0; jn < BN / 8; ++jn) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                  const int j = key(jn * 8 + (lane % 4) * 2 + e);
                  const bool ok = j >= 0 && ((lo0 <= j && j <= hi0) || (lo1 <= j && j <= hi1));
                  if (!ok) acc_s[jn * 4 + hr * 2 + e] = neg_inf();
                }
              }
            }
          } else {
            // General predicate: evaluated in a rolled loop into bits (its code is not
            // repeated per accumulator), applied with constant register indices.
            uint32_t bits[kSWords];
#pragma unroll
            for (int wd = 0; wd < kSWords; ++wd) {
              uint32_t word = 0;
#pragma unroll 1
              for (int x = wd * 32; x < wd * 32 + 32 && x < kNS; ++x) {
                const int i = qtok[(x >> 1) & 1];
                const int j = key((x / 4) * 8 + (lane % 4) * 2 + (x & 1));
                if (i >= 0 && j >= 0 && Cfg::allowed(it.t.part, h, i, j, mask_ctx)) word |= 1u << (x % 32);
              }
              bits[wd] = word;
            }
#pragma unroll
            for (int x = 0; x < kNS; ++x)
              if (!((bits[x / 32] >> (x % 32)) & 1u)) acc_s[x] = neg_inf();
          }
        }
        if constexpr (Cfg::kGates) {  // log g of the tile's block, in score units
          if (p.gates.gates) {
            const float bias =
                gate_log2(p.gates, it.b, p.heads, h, it.q_tile, __ldg(it.cols + n)) * p.gates.inv_scale_log2;
#pragma unroll
            for (int x = 0; x < kNS; ++x) acc_s[x] += bias;
          }
        }
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          float mx = row_max[hr];
#pragma unroll
          for (int jn = 0; jn < BN / 8; ++jn) mx = fmaxf(mx, fmaxf(acc_s[jn * 4 + hr * 2], acc_s[jn * 4 + hr * 2 + 1]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          // A row that has seen only masked keys keeps max -inf; exponentiate against 0
          // then so that exp2(-inf) = 0 instead of NaN.
          const float m_scaled = mx == neg_inf() ? 0.f : mx * p.scale_log2;
          scale_o[hr] = exp2_approx(row_max[hr] * p.scale_log2 - m_scaled);
          row_max[hr] = mx;
          float sum = 0.f;
#pragma unroll
          for (int jn = 0; jn < BN / 8; ++jn) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float pv = exp2_approx(acc_s[jn * 4 + hr * 2 + e] * p.scale_log2 - m_scaled);
              acc_s[jn * 4 + hr * 2 + e] = pv;
              sum += pv;
            }
          }
          row_sum[hr] = row_sum[hr] * scale_o[hr] + sum;
        }
      };
      auto rescale_o = [&](const float (&scale_o)[2]) {
        // Once the running maxima settle most tiles leave them unchanged: skip the
        // rescale when no row of the warp moved (a warp-uniform branch).
        if (__any_sync(0xffffffffu, scale_o[0] != 1.f || scale_o[1] != 1.f)) {
#pragma unroll
          for (int jn = 0; jn < D / 8; ++jn) {
            acc_o[jn * 4 + 0] *= scale_o[0];
            acc_o[jn * 4 + 1] *= scale_o[0];
            acc_o[jn * 4 + 2] *= scale_o[1];
            acc_o[jn * 4 + 3] *= scale_o[1];
          }
        }
      };
      // P as the A operand of the second product: the accumulator layout of S is the
      // register-fragment layout of A, k-step by k-step.
      uint32_t pf[BN / 16][4];
      auto pack_p = [&]() {
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
          pf[kk][0] = pack2<kBf16>(acc_s[8 * kk + 0], acc_s[8 * kk + 1]);
          pf[kk][1] = pack2<kBf16>(acc_s[8 * kk + 2], acc_s[8 * kk + 3]);
          pf[kk][2] = pack2<kBf16>(acc_s[8 * kk + 4], acc_s[8 * kk + 5]);
          pf[kk][3] = pack2<kBf16>(acc_s[8 * kk + 6], acc_s[8 * kk + 7]);
        }
      };
      auto release_k = [&](int st, int n) {
        if (lane == 0) {
          mbar_arrive(k_empty(st));
          if (n == it.n_tiles - 1) mbar_arrive(q_empty);
        }
      };
      auto release_v = [&](int st) {
        if (lane == 0) mbar_arrive(v_empty(st));
      };


      // Tile 0 alone; then each step issues S of tile n and P V of tile n - 1 together,
      // and runs tile n's softmax while P V runs on the tensor cores (FlashAttention-3's
      // intra-warpgroup overlap). O is rescaled to tile n's maxima once P V is done.
      if (it.n_tiles > 0) {
        float scale_o[2];
        mbar_wait(k_full(stage), phase);
        turn_wait();
        wgmma_fence();
        issue_qk(stage);
        turn_pass();
        wgmma_wait_all();
        fence_operands(acc_s);
        release_k(stage, 0);
        softmax(0, scale_o);
        pack_p();
      }
      int prev = stage;  // stage and phase of tile n - 1
      uint32_t prev_phase = phase;
      if (it.n_tiles > 0 && ++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
#pragma unroll 1
      for (int n = 1; n < it.n_tiles; ++n) {
        float scale_o[2];
        mbar_wait(k_full(stage), phase);
        mbar_wait(v_full(prev), prev_phase);
        turn_wait();
        wgmma_fence();
        issue_qk(stage);
        issue_pv(prev, pf);
        turn_pass();
        wgmma_wait_one();
        fence_operands(acc_s);
        release_k(stage, n);
        softmax(n, scale_o);
        wgmma_wait_all();
        fence_operands(acc_o);
        release_v(prev);
        rescale_o(scale_o);
        pack_p();
        prev = stage;
        prev_phase = phase;
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
      if (it.n_tiles > 0) {
        mbar_wait(v_full(prev), prev_phase);
        turn_wait();
        wgmma_fence();
        issue_pv(prev, pf);
        turn_pass();
        wgmma_wait_all();
        fence_operands(acc_o);
        release_v(prev);
      }

      // ---- epilogue: normalise, write O and LSE (or this part's / piece's fp32 output)
      float inv[2], lse[2];
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        float sum = row_sum[hr];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const bool empty = !(sum > 0.f);
        inv[hr] = empty ? 0.f : 1.f / sum;
        lse[hr] = empty ? neg_inf() : (row_max[hr] * p.scale_log2 + __log2f(sum)) * ln2;
      }
      if (it.split_slot >= 0 || p.write_parts) {
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const int i = qtok[hr];
          if (i < 0) continue;
          float* out;
          float* lse_out;
          if (it.split_slot >= 0) {
            const int64_t row = ((int64_t)it.b * p.num_split_slots + it.split_slot) * BM + cw * 64 + row0 + 8 * hr;
            out = p.split_o + row * D;
            lse_out = p.split_lse + row;
          } else {
            out = p.part_o + ((((int64_t)it.t.part * p.batch + it.ob) * p.nq + it.q_row0 + i) * p.heads + h) * D;
            lse_out = p.part_lse + (((int64_t)it.t.part * p.batch + it.ob) * p.heads + h) * p.nq + it.q_row0 + i;
          }
#pragma unroll
          for (int jn = 0; jn < D / 8; ++jn)
            *reinterpret_cast<float2*>(out + jn * 8 + (lane % 4) * 2) =
                make_float2(acc_o[jn * 4 + hr * 2] * inv[hr], acc_o[jn * 4 + hr * 2 + 1] * inv[hr]);
          if (lane % 4 == 0) *lse_out = lse[hr];
        }
        continue;
      }
      if (p.lse && lane % 4 == 0) {
#pragma unroll
        for (int hr = 0; hr < 2; ++hr)
          if (qtok[hr] >= 0) p.lse[it.ob * p.lse_stride_b + h * p.lse_stride_h + it.q_row0 + qtok[hr]] = lse[hr];
      }
      elem* obase = static_cast<elem*>(p.o) + it.ob * p.o_stride_b + (int64_t)it.q_row0 * p.o_stride_n + h * p.o_stride_h;
      if constexpr (Cfg::kStageO) {
        // Rows through shared memory, then 16-byte stores along each output row.
        elem* so = stage_o + cw * 64 * kORow;
        int* qt = qtok_s + cw * 64;
        bar_sync(1 + cw, 128);  // the previous item's stores have read the staging rows
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const int r = row0 + 8 * hr;
#pragma unroll
          for (int jn = 0; jn < D / 8; ++jn)
            *reinterpret_cast<uint32_t*>(so + r * kORow + jn * 8 + (lane % 4) * 2) =
                pack2<kBf16>(acc_o[jn * 4 + hr * 2] * inv[hr], acc_o[jn * 4 + hr * 2 + 1] * inv[hr]);
          if (lane % 4 == 0) qt[r] = qtok[hr];
        }
        bar_sync(1 + cw, 128);
#pragma unroll 1
        for (int x = tid; x < 64 * kRowChunks; x += 128) {
          const int r = x / kRowChunks;
          const int c = x % kRowChunks;
          const int i = qt[r];
          if (i >= 0)
            *reinterpret_cast<uint4*>(obase + (int64_t)i * p.o_stride_n + c * 8) =
                *reinterpret_cast<const uint4*>(so + r * kORow + c * 8);
        }
      } else {
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          if (qtok[hr] < 0) continue;
          elem* out = obase + (int64_t)qtok[hr] * p.o_stride_n;
#pragma unroll
          for (int jn = 0; jn < D / 8; ++jn)
            *reinterpret_cast<uint32_t*>(out + jn * 8 + (lane % 4) * 2) =
                pack2<kBf16>(acc_o[jn * 4 + hr * 2] * inv[hr], acc_o[jn * 4 + hr * 2 + 1] * inv[hr]);
        }
      }
    }
  }

  static __device__ void run(const SpattnFwd90Params& P) {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t raw = smem_addr(smem_raw);
    const uint32_t base = (raw + 1023) & ~1023u;
    unsigned char* gbase = smem_raw + (base - raw);
    int* qtok_s = reinterpret_cast<int*>(gbase + kOffQTok);
    elem* stage_o = reinterpret_cast<elem*>(gbase + kOffO);

    if (threadIdx.x == 0) {
      // Full barriers: one arrival per producer warp; empty ones: one per consumer warp.
      const Barriers bar{base + kOffBar};
      mbar_init(bar.q_full(), kProducerWarps);
      mbar_init(bar.q_empty(), kConsumerWarps);
      for (int s = 0; s < kStages; ++s) {
        mbar_init(bar.k_full(s), kProducerWarps);
        mbar_init(bar.k_empty(s), kConsumerWarps);
        mbar_init(bar.v_full(s), kProducerWarps);
        mbar_init(bar.v_empty(s), kConsumerWarps);
      }
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    const int wg = threadIdx.x / 128;
    if (wg == 0) {
      if constexpr (Cfg::kProducerRegs > 0) regs_dealloc<Cfg::kProducerRegs>();
      produce(P, base);
    } else {
      if constexpr (Cfg::kConsumerRegs > 0) regs_alloc<Cfg::kConsumerRegs>();
      consume(P, base, qtok_s, stage_o, wg - 1);
    }
  }
};

}  // namespace sm90
}  // namespace spattn
