// spattn backward attention for Hopper (sm_90a): FlashAttention-2's algorithm per key
// tile over the transposed tables, with wgmma for all five products, fp32 accumulators
// in registers, Q/dO tiles by TMA (natural token order) or cp.async gathers (permuted
// layouts) into a ring of query-tile stages.
//
// The generated translation unit defines `struct Cfg` (query tile BM = 64, key tile BN
// = 64 per warpgroup, stages, head dim, dtype, deterministic mode, the
// partial-tile predicate, and the wgmma wrappers MmaT / MmaKV / MmaQ for the products'
// widths BM, D and D / warpgroups) and then includes this file. Results are those of the
// sm80 family's backward (templates/backward.cuh): the same tables, predicate, LSE and
// row sums, accumulators and deterministic mode.
//
// One CTA per work item (a key tile of one transposed table for one query head; in
// deterministic mode for the table's query heads of one KV head, in order), one
// warpgroup of 128 threads per 64 keys of the tile and no producer warpgroup: every
// thread keeps all 255 registers (dK, dV, Sᵀ and dPᵀ of 64 keys take 192 at head dim
// 128). K and V load once (TMA, or gathered by all threads); Q, dO and the rows'
// tokens, LSE and row sums go through a ring of kStages query-tile stages that
// warp 0 refills (TMA, or cp.async gathers completed one step later) as soon as every
// thread has released a stage. Warpgroup c owns keys [64c, 64c + 64), and dK, dV of them
// in registers. Per query tile, with S = scale Q Kᵀ:
//   Sᵀ = K Qᵀ, dPᵀ = V dOᵀ                   (A, B from shared memory)
//   Pᵀ = exp(Sᵀ - LSE), dSᵀ = Pᵀ ∘ (dPᵀ - D)
//   dV += Pᵀ dO, dK += dSᵀ Q                 (A = Pᵀ, dSᵀ from registers)
// and by default dS goes to shared memory (stmatrix, transposed) so that warpgroup c
// computes columns [c D/C, (c + 1) D/C) of dQ = dS K over all BN keys, added to the
// fp32 accumulator with vector reductions.
// Deterministic mode leaves dQ to the sm80 family's dQ pass (BackwardDq) and adds dK, dV
// once per launch without atomics.
// Where each key row has one work item (DeviceBackwardLayout::sole_key_writer), dK and dV
// are stored straight into the 16-bit outputs (SpattnBwdParams::dk_out, dv_out).
#pragma once

#include "spattn/sm90.cuh"

namespace spattn {
namespace sm90 {

template <class Cfg>
struct Backward {
  static constexpr int D = Cfg::kHeadDim;
  static constexpr int BM = Cfg::kBlockM;  // queries per step
  static constexpr int BN = Cfg::kBlockN;  // keys per CTA
  static constexpr int kStages = Cfg::kStages;
  static constexpr bool kBf16 = Cfg::kBf16;
  static constexpr bool kDeterministic = Cfg::kDeterministic;
  static constexpr int kConsumers = BN / 64;  // warpgroups
  static constexpr int kThreads = 128 * kConsumers;
  static constexpr int kChunks = D / 64;       // 128-byte column chunks per row
  static constexpr int kRowChunks = D / 8;     // 16-byte chunks per row
  static constexpr int kDqCols = D / kConsumers;  // dQ columns per warpgroup
  static constexpr int kNT = BM / 2;              // Sᵀ, dPᵀ accumulators per thread (64 keys x BM)
  static constexpr int kNKV = D / 2;              // dK, dV accumulators per thread (64 keys x D)
  static constexpr int kNQ = kDqCols / 2;         // dQ accumulators per thread (BM x kDqCols)
  static constexpr int kTWords = (kNT + 31) / 32; // mask words of a partial tile
  using elem = unsigned short;

  static_assert(BM == 64, "the sm90 backward takes 64 queries per step");
  static_assert(BN % 64 == 0 && kConsumers >= 1 && kConsumers <= 2, "tile_n must be 64 or 128 keys");
  static_assert(D % 64 == 0 && kDqCols % 64 == 0, "each warpgroup's dQ columns must be whole 64-column chunks");
  static_assert(kStages >= 1 && kStages <= 3, "stages must be 1 to 3");
  static_assert(Cfg::MmaT::kN == BM && Cfg::MmaKV::kN == D && Cfg::MmaQ::kN == kDqCols,
                "wgmma wrappers of the wrong width");

  // Shared memory, from a 1024-byte aligned base: K, V (D/64 chunks of [BN][128 B]),
  // Q and dO per stage (chunks of [BM][128 B]), two dS buffers ([BM][BN], chunks of
  // [BM][128 B]), per stage the rows' LSE, row sums and tokens, the key
  // tokens, mbarriers.
  static constexpr int kKVBytes = BN * D * 2;
  static constexpr int kQBytes = BM * D * 2;
  static constexpr int kDsBytes = BM * BN * 2;
  static constexpr int kOffV = kKVBytes;
  static constexpr int kOffQ = 2 * kKVBytes;
  static constexpr int kOffDo = kOffQ + kStages * kQBytes;
  static constexpr int kOffDs = kOffDo + kStages * kQBytes;
  static constexpr int kOffStats = kOffDs + 2 * kDsBytes;
  static constexpr int kStatsBytes = BM * 12;
  static constexpr int kOffKTok = kOffStats + kStages * kStatsBytes;
  static constexpr int kOffBar = kOffKTok + BN * 4;
  static constexpr int kBarriers = 1 + 2 * kStages;  // K/V full, then q full/empty per stage
  static constexpr int kSmemBytes = 1024 + kOffBar + kBarriers * 8;
  static_assert(kSmemBytes == Cfg::kSmemBytes, "host and template disagree on the shared memory size");

  struct Barriers {
    uint32_t at;
    __device__ uint32_t kv_full() const { return at; }
    __device__ uint32_t q_full(int s) const { return at + 8 + s * 16; }
    __device__ uint32_t q_empty(int s) const { return at + 16 + s * 16; }
  };

  // A work item. Documents (Cfg::kVarlen): k_tile is a key tile of the tables, k_local
  // its tile within the document `doc` describes, and query tiles are the document's.
  struct Item {
    SpattnBwdTable t;
    int table, k_tile, k_local, n_tiles, n_full, n_heads, kvh;
    DocRows doc;
    const int32_t* q_list;
    const int32_t* heads;
  };

  static __device__ __forceinline__ Item fetch(const SpattnBwdParams& p) {
    Item it;
    const int32_t* w = p.work + 4 * blockIdx.x;
    it.table = __ldg(w);
    it.t = p.tables[it.table];
    it.k_tile = __ldg(w + 1);
    it.heads = p.arena + it.t.heads + __ldg(w + 2);
    it.n_heads = __ldg(w + 3);
    it.kvh = __ldg(it.heads) / p.kv_group;
    it.k_local = it.k_tile;
    it.doc = DocRows::whole(blockIdx.y, p.nq, p.nk);
    if constexpr (Cfg::kVarlen) {
      const int d = __ldg(p.vl_ktiles + 2 * it.k_tile);
      if (d < 0) {  // capacity no document uses: nothing to do
        it.n_tiles = 0;
        return it;
      }
      it.k_local = __ldg(p.vl_ktiles + 2 * it.k_tile + 1);
      it.doc = DocRows::of(p.vl_docs, d);
    }
    const int32_t* columns = p.arena + (int64_t)it.doc.b * p.arena_stride_b;  // this batch's columns
    const int begin = __ldg(columns + it.t.col_ptr + it.k_tile);
    it.n_tiles = it.t.col_len >= 0 ? __ldg(columns + it.t.col_len + it.k_tile)
                                   : __ldg(columns + it.t.col_ptr + it.k_tile + 1) - begin;
    it.n_full = __ldg(columns + it.t.full_count + it.k_tile);
    it.q_list = columns + it.t.rows + begin;
    return it;
  }

  // Per-stage row statistics in shared memory.
  static __device__ __forceinline__ float* lse2_of(unsigned char* g, int s) {
    return reinterpret_cast<float*>(g + kOffStats + s * kStatsBytes);
  }

  // ---- loads -----------------------------------------------------------------------------

  // `rows` rows of a [B, N, H, D] tensor into the swizzled chunks at dst with cp.async
  // (16 bytes per request) from `threads` threads starting at thread `first`; token
  // slots[slot0 + r] (or slot0 + r) for row r, zeros for padding.
  static __device__ __forceinline__ void gather(uint32_t dst, const elem* base, int64_t stride, int rows, int slot0,
                                                int limit, const int32_t* slots, int t, int threads) {
#pragma unroll 1
    for (int x = t; x < rows * kRowChunks; x += threads) {
      const int r = x / kRowChunks, c = x % kRowChunks;
      const int token = slots ? __ldg(slots + slot0 + r) : slot0 + r;
      const bool valid = token >= 0 && token < limit;
      cp_async_16(dst + (c / 8) * rows * 128 + swizzled(r, c % 8), base + (int64_t)(valid ? token : 0) * stride + c * 8,
                  valid);
    }
  }

  // Step y's query tile into stage s, by warp 0: the rows' tokens, and their LSE and row
  // sums by 4-byte cp.async (warp 0 issues them and goes on: its warpgroup's products do
  // not wait for these loads), then Q and dO by TMA (the stage's full barrier completes
  // with their bytes and every lane's copies) or as one cp.async group that
  // complete_gather publishes later.
  static __device__ __forceinline__ void issue_step(const SpattnBwd90Params& P, const Item& it, uint32_t base,
                                                    unsigned char* g, int y, int s, bool tma) {
    const SpattnBwdParams& p = P.base;
    const Barriers bar{base + kOffBar};
    const int lane = threadIdx.x % 32;
    const int b = it.doc.b;
    const int q_tile = __ldg(it.q_list + y % it.n_tiles);
    const int h = __ldg(it.heads + y / it.n_tiles);
    const bool permuted = it.t.q_slots >= 0;
    float* lse2 = lse2_of(g, s);
    const int64_t q_row0 = it.doc.q_row0;
    const uint32_t lse_dst = smem_addr(lse2);
#pragma unroll
    for (int r = lane; r < BM; r += 32) {
      const int token = permuted ? __ldg(p.arena + it.t.q_slots + q_tile * BM + r) : q_tile * BM + r;
      const bool valid = token >= 0 && token < it.doc.nq;
      if (valid) {
        cp_async_4(lse_dst + 4 * r, p.lse + b * p.lse_stride_b + h * p.lse_stride_h + q_row0 + token);
        cp_async_4(lse_dst + 4 * (BM + r), p.dsum + ((int64_t)b * p.heads + h) * p.nq + q_row0 + token);
      } else {
        lse2[r] = __int_as_float(0x7f800000);  // +inf LSE for padding rows: their P is 0
        lse2[BM + r] = 0.f;
      }
      reinterpret_cast<int*>(lse2)[2 * BM + r] = valid ? token : -1;
    }
    const uint32_t q_dst = base + kOffQ + s * kQBytes, do_dst = base + kOffDo + s * kQBytes;
    if (tma) {
      // Every lane arrives twice: now (releasing its own stores; lane 0 with the tiles'
      // bytes) and once its row copies are complete. Rows copied in slot order (":copy")
      // load from the copies at row copy + slot, head 0.
      mbar_arrive_on_copies(bar.q_full(s));
      if (lane == 0) {
        const int copy = P.q_copy_row ? __ldg(P.q_copy_row + it.table * p.heads + h) : -1;
        const bool copied = copy >= 0;
        const int row = (copied ? copy : static_cast<int>(q_row0)) + q_tile * BM, map_h = copied ? 0 : h;
        mbar_arrive_expect_tx(bar.q_full(s), 2 * kQBytes);
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
          tma_load(q_dst + c * BM * 128, copied ? P.tm_qc : P.tm_q, bar.q_full(s), c * 64, row, map_h, b);
          tma_load(do_dst + c * BM * 128, copied ? P.tm_doc : P.tm_do, bar.q_full(s), c * 64, row, map_h, b);
        }
      } else {
        mbar_arrive(bar.q_full(s));
      }
      return;
    }
    const elem* qbase = static_cast<const elem*>(p.q) + b * p.q_stride_b + q_row0 * p.q_stride_n + h * p.q_stride_h;
    const elem* dobase =
        static_cast<const elem*>(p.d_o) + b * p.do_stride_b + q_row0 * p.do_stride_n + h * p.do_stride_h;
    const int32_t* qslots = permuted ? p.arena + it.t.q_slots : nullptr;
    gather(q_dst, qbase, p.q_stride_n, BM, q_tile * BM, it.doc.nq, qslots, lane, 32);
    gather(do_dst, dobase, p.do_stride_n, BM, q_tile * BM, it.doc.nq, qslots, lane, 32);
    cp_async_commit();
  }

  // Gathers: the oldest of the kStages groups in flight is complete, fenced for the
  // async proxy that wgmma reads through, and published on stage s's full barrier by
  // every lane of warp 0 (each arrival releases that lane's copies and stores).
  static __device__ __forceinline__ void complete_gather(uint32_t base, int s) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 1) : "memory");
    fence_proxy_async();
    mbar_arrive(Barriers{base + kOffBar}.q_full(s));
  }

  // First copy row of the item's K and V (":copy"), -1 when they are not copied.
  static __device__ __forceinline__ int kv_copy(const SpattnBwd90Params& P, const Item& it) {
    return P.kv_copy_row ? __ldg(P.kv_copy_row + it.table * (P.base.heads / P.base.kv_group) + it.kvh) : -1;
  }
  // Whether the item's query rows are copied (then for every head of its table).
  static __device__ __forceinline__ bool q_copied(const SpattnBwd90Params& P, const Item& it) {
    return P.q_copy_row && __ldg(P.q_copy_row + it.table * P.base.heads + __ldg(it.heads)) >= 0;
  }

  // K and V of the key tile and its key tokens, by all threads (TMA: thread 0).
  static __device__ __forceinline__ void load_kv(const SpattnBwd90Params& P, const Item& it, uint32_t base,
                                                 unsigned char* g, bool tma) {
    const SpattnBwdParams& p = P.base;
    const int tid = threadIdx.x;
    const int b = it.doc.b;
    const int32_t* kslots = Cfg::kPermutedKeys && it.t.k_slots >= 0 ? p.arena + it.t.k_slots : nullptr;
    int* ktok = reinterpret_cast<int*>(g + kOffKTok);
    for (int r = tid; r < BN; r += kThreads) {
      const int token = kslots ? __ldg(kslots + it.k_local * BN + r) : it.k_local * BN + r;
      ktok[r] = token >= 0 && token < it.doc.nk ? token : -1;
    }
    if (tma) {
      if (tid == 0) {
        const uint32_t full = Barriers{base + kOffBar}.kv_full();
        const int copy = kv_copy(P, it);
        const bool copied = copy >= 0;
        const int row = (copied ? copy : static_cast<int>(it.doc.k_row0)) + it.k_local * BN, map_h = copied ? 0 : it.kvh;
        mbar_arrive_expect_tx(full, 2 * kKVBytes);
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
          tma_load(base + c * BN * 128, copied ? P.tm_kc : P.tm_k, full, c * 64, row, map_h, b);
          tma_load(base + kOffV + c * BN * 128, copied ? P.tm_vc : P.tm_v, full, c * 64, row, map_h, b);
        }
      }
      return;
    }
    const int64_t k_row0 = it.doc.k_row0;
    const elem* kbase = static_cast<const elem*>(p.k) + b * p.k_stride_b + k_row0 * p.k_stride_n + it.kvh * p.k_stride_h;
    const elem* vbase = static_cast<const elem*>(p.v) + b * p.v_stride_b + k_row0 * p.v_stride_n + it.kvh * p.v_stride_h;
    gather(base, kbase, p.k_stride_n, BN, it.k_local * BN, it.doc.nk, kslots, tid, kThreads);
    gather(base + kOffV, vbase, p.v_stride_n, BN, it.k_local * BN, it.doc.nk, kslots, tid, kThreads);
    cp_async_commit();
    cp_async_wait_all();
    fence_proxy_async();
  }

  // ---- the warpgroups' work ------------------------------------------------------------

  // A fragment kk (16 columns) of packed accumulators: words 4 kk .. 4 kk + 3, where
  // word w holds accumulators 2w and 2w + 1 (rows r / r + 8 of n8 blocks 2kk, 2kk + 1).
  static __device__ __forceinline__ void fragment(const uint32_t (&w)[kNT / 2], int kk, uint32_t (&a)[4]) {
    a[0] = w[4 * kk];
    a[1] = w[4 * kk + 1];
    a[2] = w[4 * kk + 2];
    a[3] = w[4 * kk + 3];
  }

  // Warp 0, once step x has released stage s: step x + kStages into it (after every
  // warp's release), and with gathers the group of step x + 1 published.
  static __device__ __forceinline__ void refill(const SpattnBwd90Params& P, const Item& it, uint32_t base,
                                                unsigned char* g, int x, int n_steps, int s, uint32_t phase, bool tma,
                                                int warp) {
    if (warp != 0) return;
    if (x + kStages < n_steps) {
      mbar_wait(Barriers{base + kOffBar}.q_empty(s), phase);
      issue_step(P, it, base, g, x + kStages, s, tma);
    } else if (!tma) {
      cp_async_commit();  // an empty group keeps kStages groups in flight
    }
    if (!tma && x + 1 < n_steps) complete_gather(base, (x + 1) % kStages);
  }

  static __device__ __forceinline__ void compute(const SpattnBwd90Params& P, const Item& it, uint32_t base,
                                                 unsigned char* g, int cw, bool tma_kv, bool tma_q) {
    const SpattnBwdParams& p = P.base;
    const Barriers bar{base + kOffBar};
    const int tid = threadIdx.x - 128 * cw;
    const int warp = tid / 32;
    const int lane = tid % 32;
    const int b = it.doc.b;
    const int kv_heads = p.heads / p.kv_group;

    // Descriptors (stage 0, dS buffer 0, k-step 0; offsets are added per use):
    // A operands: this warpgroup's 64 rows of K and V (K-major); B operands of Sᵀ, dPᵀ:
    // Q and dO rows (K-major); B of dV, dK: dO and Q as queries x head dim (N-major);
    // A of dQ: dS rows (K-major over keys); B of dQ: K as keys x this warpgroup's dQ
    // columns (N-major).
    const uint64_t k_a0 = make_desc(base + cw * 64 * 128, 16, 1024);
    const uint64_t v_a0 = make_desc(base + kOffV + cw * 64 * 128, 16, 1024);
    const uint64_t q_b0 = make_desc(base + kOffQ, 16, 1024);
    const uint64_t do_b0 = make_desc(base + kOffDo, 16, 1024);
    const uint64_t q_n0 = make_desc(base + kOffQ, BM * 128, 1024);
    const uint64_t do_n0 = make_desc(base + kOffDo, BM * 128, 1024);
    const uint64_t ds_a0 = make_desc(base + kOffDs, 16, 1024);
    const uint64_t k_n0 = make_desc(base + (cw * kDqCols / 64) * BN * 128, BN * 128, 1024);
    // This thread's stmatrix row address in a dS buffer, per 16-query group jj: query
    // 8 (2 jj + (lane / 8) / 2) + lane % 8, 16-byte unit 2 warp + (lane / 8) % 2 of this
    // warpgroup's 64-key chunk.
    const int st_q = ((lane / 8) / 2) * 8 + lane % 8;
    const int st_unit = 2 * warp + (lane / 8) % 2;
    typename Cfg::MaskCtx mask_ctx{it.doc.nq, it.doc.nk, p.heads, 0, 0};

    if (tma_kv) mbar_wait(bar.kv_full(), 0);
    const int* ktok = reinterpret_cast<const int*>(g + kOffKTok);
    const int key_row = cw * 64 + warp * 16 + lane / 4;  // this thread's keys: key_row, key_row + 8

    float acc_dk[kNKV], acc_dv[kNKV];
#pragma unroll
    for (int x = 0; x < kNKV; ++x) acc_dk[x] = acc_dv[x] = 0.f;

    int stage = 0, i = 0, hi = 0;
    uint32_t phase = 0;
    int h = __ldg(it.heads);
    const int n_steps = it.n_tiles * it.n_heads;
#pragma unroll 1
    for (int x = 0; x < n_steps; ++x) {
      const uint32_t qoff = stage * kQBytes;
      const float* lse2 = lse2_of(g, stage);
      const float* dsum = lse2 + BM;
      const int* qtok = reinterpret_cast<const int*>(lse2 + 2 * BM);
      mbar_wait(bar.q_full(stage), phase);
      const uint64_t k_a = opaque(k_a0), v_a = opaque(v_a0), q_b = opaque(q_b0), do_b = opaque(do_b0);
      const uint64_t q_n = opaque(q_n0), do_n = opaque(do_n0), ds_a = opaque(ds_a0), k_n = opaque(k_n0);

      // ---- Sᵀ = K Qᵀ and dPᵀ = V dOᵀ, two groups in flight: (64 rows of a) x (rows of
      // b)ᵀ over the head dim, both K-major
      auto rows_times_rows_t = [&](float (&acc)[kNT], uint64_t a, uint64_t b_rows) {
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          const uint32_t a_off = (kk / 4) * BN * 128 + (kk % 4) * 32;
          const uint32_t b_off = qoff + (kk / 4) * BM * 128 + (kk % 4) * 32;
          Cfg::MmaT::ss(acc, a + (a_off >> 4), b_rows + (b_off >> 4), kk > 0 ? 1 : 0);
        }
        wgmma_commit();
      };
      float acc_s[kNT], acc_dp[kNT];
      wgmma_fence();
      rows_times_rows_t(acc_s, k_a, q_b);
      rows_times_rows_t(acc_dp, v_a, do_b);
      wgmma_wait_one();
      fence_operands(acc_s);

      // ---- Pᵀ = exp(Sᵀ - LSE) in place (fp32); masked pairs (partial tiles) and padding
      // give 0. This runs while dPᵀ is computed.
      const bool partial = i >= it.n_full;
      // Adaptive gates: log2 g of the step's block joins the logits (a removed block: P = 0).
      float gl2 = 0.f;
      int q_tile_x = 0;
      if constexpr (Cfg::kGates) {
        if (p.gates.gates) {
          q_tile_x = __ldg(it.q_list + i);
          gl2 = gate_log2(p.gates, b, p.heads, h, q_tile_x, it.k_tile);
        }
      }
      const bool removed = Cfg::kGates && gl2 == neg_inf();
      uint32_t bits[kTWords];
      if (partial) {
#pragma unroll
        for (int wd = 0; wd < kTWords; ++wd) {
          uint32_t word = 0;
#pragma unroll 1
          for (int y = wd * 32; y < wd * 32 + 32 && y < kNT; ++y) {
            const int j = ktok[key_row + (y & 2) * 4];
            const int q = qtok[(y / 4) * 8 + (lane % 4) * 2 + (y & 1)];
            if (q >= 0 && j >= 0 && Cfg::allowed(it.t.part, h, q, j, mask_ctx)) word |= 1u << (y % 32);
          }
          bits[wd] = word;
        }
      }
#pragma unroll
      for (int jn = 0; jn < BM / 8; ++jn) {
        const float2 l = *reinterpret_cast<const float2*>(lse2 + jn * 8 + (lane % 4) * 2);
        const float2 l2 = make_float2(l.x * 1.4426950408889634f - gl2, l.y * 1.4426950408889634f - gl2);  // LSE·log2(e)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int y = jn * 4 + e;
          float pv = exp2_approx(acc_s[y] * p.scale_log2 - ((e & 1) ? l2.y : l2.x));
          if (partial && !((bits[y / 32] >> (y % 32)) & 1u)) pv = 0.f;
          if (removed) pv = 0.f;
          acc_s[y] = pv;
        }
      }
      wgmma_wait_all();
      fence_operands(acc_dp);

      // ---- dSᵀ = Pᵀ ∘ (dPᵀ - D); P and dS rounded to 16 bits as the A operands of dV
      // and dK (and dS as the A operand of dQ)
      uint32_t pw[kNT / 2], dw[kNT / 2];
      float ds_sum = 0.f;
#pragma unroll
      for (int jn = 0; jn < BM / 8; ++jn) {
        const float2 d2 = *reinterpret_cast<const float2*>(dsum + jn * 8 + (lane % 4) * 2);
        float ds[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) ds[e] = acc_s[jn * 4 + e] * (acc_dp[jn * 4 + e] - ((e & 1) ? d2.y : d2.x));
        if constexpr (Cfg::kGates) ds_sum += (ds[0] + ds[1]) + (ds[2] + ds[3]);
        pw[jn * 2] = pack2<kBf16>(acc_s[jn * 4], acc_s[jn * 4 + 1]);
        pw[jn * 2 + 1] = pack2<kBf16>(acc_s[jn * 4 + 2], acc_s[jn * 4 + 3]);
        dw[jn * 2] = pack2<kBf16>(ds[0], ds[1]);
        dw[jn * 2 + 1] = pack2<kBf16>(ds[2], ds[3]);
      }
      if constexpr (Cfg::kGates) {
        // The gate's gradient: this pair's sum of dS (the warps' sums added in order).
        if (p.gates.partials) {
          __shared__ float gate_sums[2][4 * kConsumers];
          ds_sum = warp_sum(ds_sum);
          if (lane == 0) gate_sums[x & 1][cw * 4 + warp] = ds_sum;
          bar_sync(2, 128 * kConsumers);  // a slot is rewritten two steps later, after thread 0 passed the next one
          if (cw == 0 && warp == 0 && lane == 0) {
            float total = 0.f;
            for (int w = 0; w < 4 * kConsumers; ++w) total += gate_sums[x & 1][w];
            store_gate_partial(p.gates, b, p.heads, h, q_tile_x, it.k_tile, total);
          }
        }
      }

      // ---- dV += Pᵀ dO, dK += dSᵀ Q (scaled at the end), in flight while dS is stored
      // acc += (packed words, as A fragments over the tile's queries) x (the stage's
      // query-row tile as queries x head dim, N-major)
      auto packed_times_tile = [&](float (&acc)[kNKV], const uint32_t (&w)[kNT / 2], uint64_t tile) {
#pragma unroll
        for (int kk = 0; kk < BM / 16; ++kk) {
          uint32_t a[4];
          fragment(w, kk, a);
          Cfg::MmaKV::rs(acc, a, tile + ((qoff + kk * 16 * 128) >> 4));
        }
      };
      wgmma_fence();
      packed_times_tile(acc_dv, pw, do_n);
      packed_times_tile(acc_dk, dw, q_n);
      wgmma_commit();

      const uint32_t ds_buf = kOffDs + (x & 1) * kDsBytes;
      if (!kDeterministic) {
        // dS (queries x keys) into this warpgroup's 64-key chunk of the buffer.
#pragma unroll
        for (int jj = 0; jj < BM / 16; ++jj) {
          uint32_t a[4];
          fragment(dw, jj, a);
          stmatrix_x4_trans(base + ds_buf + cw * BM * 128 + swizzled(16 * jj + st_q, st_unit), a);
        }
        fence_proxy_async();
      }

      if constexpr (!kDeterministic) {
        // ---- dQ[:, this warpgroup's columns] += scale dS K, once every warpgroup's dS
        // is in shared memory (issued behind dV and dK)
        bar_sync(1, 128 * kConsumers);
        float acc_q[kNQ];
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
          const uint32_t a_off = ds_buf - kOffDs + (kk / 4) * BM * 128 + (kk % 4) * 32;
          Cfg::MmaQ::ss_bt(acc_q, ds_a + (a_off >> 4), k_n + ((kk * 16 * 128) >> 4), kk > 0 ? 1 : 0);
        }
        wgmma_commit();
        // dV and dK, the last readers of the stage's Q and dO, are done: the stage is
        // released (its rows' tokens read first) and refilled while dQ runs.
        wgmma_wait_one();
        fence_operands(acc_dk);
        fence_operands(acc_dv);
        const int q_rows[2] = {qtok[warp * 16 + lane / 4], qtok[warp * 16 + lane / 4 + 8]};
        mbar_arrive(bar.q_empty(stage));
        refill(P, it, base, g, x, n_steps, stage, phase, tma_q, cw * 4 + warp);
        wgmma_wait_all();
        fence_operands(acc_q);
        float* dq_base =
            p.dq_acc + ((int64_t)b * p.nq + it.doc.q_row0) * p.heads * D + h * D + cw * kDqCols + (lane % 4) * 2;
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const int q = q_rows[hr];
          if (q < 0) continue;
          float* out = dq_base + (int64_t)q * p.heads * D;
#pragma unroll
          for (int jn = 0; jn < kDqCols / 8; ++jn)
            red_add2(out + jn * 8, p.scale * acc_q[jn * 4 + hr * 2], p.scale * acc_q[jn * 4 + hr * 2 + 1]);
        }
      } else {
        wgmma_wait_all();
        fence_operands(acc_dk);
        fence_operands(acc_dv);
        mbar_arrive(bar.q_empty(stage));
        refill(P, it, base, g, x, n_steps, stage, phase, tma_q, cw * 4 + warp);
      }

      if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
      if (++i == it.n_tiles) {
        i = 0;
        if (++hi < it.n_heads) h = __ldg(it.heads + hi);
      }
    }

    // ---- dK (scaled), dV of their key rows: into the outputs when this item is the rows'
    // only writer, else into the fp32 accumulators
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int jl = ktok[key_row + hr * 8];
      if (jl < 0) continue;
      const int j = static_cast<int>(it.doc.k_row0) + jl;  // the row in the tensors
      const int col = (lane % 4) * 2;
      const int64_t row = (((int64_t)b * p.nk + j) * kv_heads + it.kvh) * D + col;
      elem* dk = static_cast<elem*>(key_grad_row(p.dk_out, p.dk_stride_b, p.dk_stride_n, p.dk_stride_h, b, j, it.kvh, col));
      elem* dv = static_cast<elem*>(key_grad_row(p.dv_out, p.dv_stride_b, p.dv_stride_n, p.dv_stride_h, b, j, it.kvh, col));
#pragma unroll
      for (int jn = 0; jn < D / 8; ++jn) {
        write_key_grad2<!kDeterministic, kBf16>(dk ? dk + jn * 8 : nullptr, p.dk_acc + row + jn * 8,
                                                p.scale * acc_dk[jn * 4 + hr * 2], p.scale * acc_dk[jn * 4 + hr * 2 + 1]);
        write_key_grad2<!kDeterministic, kBf16>(dv ? dv + jn * 8 : nullptr, p.dv_acc + row + jn * 8,
                                                acc_dv[jn * 4 + hr * 2], acc_dv[jn * 4 + hr * 2 + 1]);
      }
    }
  }

  static __device__ void run(const SpattnBwd90Params& P) {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t raw = smem_addr(smem_raw);
    const uint32_t base = (raw + 1023) & ~1023u;
    unsigned char* g = smem_raw + (base - raw);
    const Item it = fetch(P.base);
    if (it.n_tiles <= 0) return;  // the work list holds only key tiles that some query tile attends
    const bool tma_kv = kv_copy(P, it) >= 0 || (P.tma_kv && !(Cfg::kPermutedKeys && it.t.k_slots >= 0));
    const bool tma_q = q_copied(P, it) || (P.tma_q && it.t.q_slots < 0);

    if (threadIdx.x == 0) {
      // K/V full: thread 0's expected bytes; q full: the 32 lanes of warp 0 (lane 0 with
      // TMA's bytes), with TMA twice each (issue_step); q empty: every thread once done
      // with the stage. (An arrival releases only the arriving thread's own accesses.)
      const Barriers bar{base + kOffBar};
      mbar_init(bar.kv_full(), 1);
      for (int s = 0; s < kStages; ++s) {
        mbar_init(bar.q_full(s), tma_q ? 64 : 32);
        mbar_init(bar.q_empty(s), kThreads);
      }
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    load_kv(P, it, base, g, tma_kv);
    // The first kStages query tiles (with gathers, kStages groups, empty past the end).
    const int n_steps = it.n_tiles * it.n_heads;
    if (threadIdx.x < 32) {
      for (int y = 0; y < kStages; ++y) {
        if (y < n_steps)
          issue_step(P, it, base, g, y, y, tma_q);
        else if (!tma_q)
          cp_async_commit();
      }
      if (!tma_q) complete_gather(base, 0);
    }
    __syncthreads();  // key tokens (and gathered K/V) are in shared memory

    // Broadcast from lane 0, the warpgroup index is warp-uniform to the compiler: what
    // derives from it (descriptors, offsets) can live in uniform registers.
    const int wg = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / 128, 0);
    compute(P, it, base, g, wg, tma_kv, tma_q);
  }
};

}  // namespace sm90
}  // namespace spattn
