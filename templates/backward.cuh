// spattn backward attention over block tables, FlashAttention-2's algorithm with
// mma.sync (m16n8k16, fp32 accumulate) for sm_80 and newer.
//
// The generated translation unit defines `struct Cfg` (query tile, key tile = 16 rows
// per warp, head dim, dtype, buffers, deterministic mode, the partial-tile predicate)
// and includes this file.
//
// Key-tile pass (Backward): one CTA per work item, a key tile of one transposed table
// for one query head (deterministic mode: for the table's query heads of one KV head, in
// order). It keeps the tile's K and V in shared memory and dK, dV in registers, and walks
// the query tiles that attend it (full tiles first, then partial tiles, where the same
// predicate as the forward pass is evaluated); with two buffers the next query tile's Q,
// dO, LSE and row sums load while this one computes. Per query tile, with S = scale Q Kᵀ:
//   Pᵀ = exp(Sᵀ - LSE),  dV += Pᵀ dO,  dPᵀ = V dOᵀ,  dSᵀ = Pᵀ ∘ (dPᵀ - D),
//   dK += scale dSᵀ Q,   and (default mode) dQ += scale dS K through shared memory with
// fp32 atomics. Every product is oriented so that its A operand is a tile in shared
// memory or an accumulator already in registers. At the end dK, dV are added into
// their fp32 accumulators, or, where each key row has one work item
// (DeviceBackwardLayout::sole_key_writer), stored straight into the 16-bit outputs.
//
// dQ pass (BackwardDq, deterministic mode): one CTA per query tile and head over the
// forward rows, 16 queries per warp: S = Q Kᵀ, P, dP = dO Vᵀ, dS, dQ += dS K in
// registers, added once to the fp32 accumulator.
#pragma once

#include "spattn/params.cuh"
#include "spattn/ptx.cuh"

namespace spattn {
namespace bwd {

using elem = unsigned short;

// Warp-level products over 16-bit tiles in shared memory whose rows are kRow elements
// (head dim + 8: conflict-free ldmatrix), and accumulators of 16 rows per warp.
template <bool kBf16, int D>
struct Tiles {
  static constexpr int kRow = D + 8;
  static constexpr int kChunksPerRow = D / 8;

  // kRows rows of a tile into shared memory with 16-byte cp.async from kThreads
  // threads: row r holds token slots[slot0 + r] (or slot0 + r in natural order); invalid
  // tokens read as zeros and are recorded as -1 in `tok` when given. Where the threads
  // cover whole rows, each thread keeps one 16-byte column of the rows it loads.
  template <int kThreads, int kRows>
  static __device__ __forceinline__ void load_rows(const elem* base, int64_t stride, uint32_t dst, int slot0,
                                                   int limit, const int32_t* slots, int* tok) {
    auto one = [&](int r, int chunk) {
      const int token = slots ? __ldg(slots + slot0 + r) : slot0 + r;
      const bool valid = token >= 0 && token < limit;
      cp_async_16(dst + (r * kRow + chunk * 8) * 2, base + (int64_t)(valid ? token : 0) * stride + chunk * 8, valid);
      if (tok && chunk == 0) tok[r] = valid ? token : -1;
    };
    if constexpr (kThreads % kChunksPerRow == 0) {
      constexpr int kRowsPerPass = kThreads / kChunksPerRow;
      const int chunk = threadIdx.x % kChunksPerRow;
#pragma unroll
      for (int r0 = 0; r0 < kRows; r0 += kRowsPerPass) {
        const int r = r0 + static_cast<int>(threadIdx.x) / kChunksPerRow;
        if (kRows % kRowsPerPass == 0 || r < kRows) one(r, chunk);
      }
    } else {
#pragma unroll 1
      for (int c = threadIdx.x; c < kRows * kChunksPerRow; c += kThreads) one(c / kChunksPerRow, c % kChunksPerRow);
    }
  }

  // Accumulators of n8 tiles rounded to 16 bits, two values per register: out[nt][0]
  // holds row r, out[nt][1] row r + 8. Two n8 tiles are the A fragment of one k16 step.
  template <int kN8>
  static __device__ __forceinline__ void pack_all(const float (&acc)[kN8][4], uint32_t (&out)[kN8][2]) {
#pragma unroll
    for (int nt = 0; nt < kN8; ++nt) {
      out[nt][0] = pack2<kBf16>(acc[nt][0], acc[nt][1]);
      out[nt][1] = pack2<kBf16>(acc[nt][2], acc[nt][3]);
    }
  }

  // acc = (the warp's 16 rows of `rows`) · (the kCols rows of `cols`)ᵀ over the head
  // dim: Sᵀ = K Qᵀ and dPᵀ = V dOᵀ (key-tile pass), S = Q Kᵀ and dP = dO Vᵀ (dQ pass).
  // `a_lane` and `b_lane` are the ldmatrix lane offsets (bytes).
  template <int kCols>
  static __device__ __forceinline__ void rows_times_cols_t(float (&acc)[kCols / 8][4], uint32_t rows, uint32_t cols,
                                                           uint32_t a_lane, uint32_t b_lane) {
#pragma unroll
    for (int nt = 0; nt < kCols / 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      ldmatrix_x4(a, rows + a_lane + kk * 32);
#pragma unroll
      for (int np = 0; np < kCols / 16; ++np) {
        uint32_t bf[4];
        ldmatrix_x4(bf, cols + b_lane + (np * 16 * kRow + kk * 16) * 2);
        mma_16816<kBf16>(acc[2 * np], a, bf[0], bf[1]);
        mma_16816<kBf16>(acc[2 * np + 1], a, bf[2], bf[3]);
      }
    }
  }

  // out += (packed accumulators over kK columns, pack_all) · (the kK rows of `tile`):
  // dV += Pᵀ dO, dK += dSᵀ Q (key-tile pass), dQ += dS K (dQ pass). `b_lane` is the
  // transposed ldmatrix lane offset (bytes); on_a(kk, a) sees each A fragment.
  struct NoOp {
    __device__ __forceinline__ void operator()(int, const uint32_t (&)[4]) const {}
  };
  template <int kK, class OnA = NoOp>
  static __device__ __forceinline__ void packed_times_tile(float (&out)[D / 8][4], const uint32_t (&a16)[kK / 8][2],
                                                           uint32_t tile, uint32_t b_lane, OnA on_a = {}) {
#pragma unroll
    for (int kk = 0; kk < kK / 16; ++kk) {
      const uint32_t a[4] = {a16[2 * kk][0], a16[2 * kk][1], a16[2 * kk + 1][0], a16[2 * kk + 1][1]};
      on_a(kk, a);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bf[4];
        ldmatrix_x4_trans(bf, tile + b_lane + (kk * 16 * kRow + dp * 16) * 2);
        mma_16816<kBf16>(out[2 * dp], a, bf[0], bf[1]);
        mma_16816<kBf16>(out[2 * dp + 1], a, bf[2], bf[3]);
      }
    }
  }

  // ldmatrix lane offsets (bytes): A operands from the warp's 16 rows (non-transposed),
  // B operands from a tile's rows as n8 x k16 (non-transposed, the forward kernel's K
  // pattern) or as k16 x n8 (transposed, its V pattern).
  static __device__ __forceinline__ uint32_t a_lane(int warp, int lane) {
    return ((warp * 16 + lane % 16) * kRow + (lane / 16) * 8) * 2;
  }
  static __device__ __forceinline__ uint32_t b_lane(int lane) {
    return ((lane % 8 + (lane / 16) * 8) * kRow + ((lane / 8) % 2) * 8) * 2;
  }
  static __device__ __forceinline__ uint32_t b_trans_lane(int lane) {
    return ((lane % 8 + ((lane / 8) % 2) * 8) * kRow + (lane / 16) * 8) * 2;
  }
};

// The LSE (times log2(e); +inf for padding rows, so that P is 0) and row sum of a query.
struct RowStats {
  float lse2 = 0.f, dsum = 0.f;
  static __device__ __forceinline__ RowStats of(const float* lse_row, const float* dsum_row, int token, int nq) {
    RowStats r;
    const bool valid = token >= 0 && token < nq;
    r.lse2 = valid ? __ldg(lse_row + token) * 1.4426950408889634f : __int_as_float(0x7f800000);
    r.dsum = valid ? __ldg(dsum_row + token) : 0.f;
    return r;
  }
};

template <class Cfg>
struct Backward {
  static constexpr int D = Cfg::kHeadDim;
  static constexpr int BM = Cfg::kBlockM;   // query rows per step
  static constexpr int BN = Cfg::kBlockN;   // keys per CTA
  static constexpr int kWarps = Cfg::kWarps;
  static constexpr int kThreads = kWarps * 32;
  static constexpr bool kBf16 = Cfg::kBf16;
  static constexpr bool kDeterministic = Cfg::kDeterministic;  // dQ by the dQ pass, no atomics
  static constexpr int kStages = Cfg::kStages;  // 2: the next query tile loads during this one
  using T = Tiles<kBf16, D>;
  static constexpr int kRow = T::kRow;
  static constexpr int kDsRow = BM + 8;
  static constexpr int kNTilesQ = BM / 8;    // n8 tiles of Sᵀ per warp (query columns)
  static constexpr int kNTilesD = D / 8;     // n8 tiles of dK, dV per warp
  static_assert(BN == 16 * kWarps, "each warp owns 16 keys of the tile");
  static_assert(BM % 16 == 0 && D % 16 == 0, "tile shapes must be multiples of 16");
  static_assert(kStages == 1 || kStages == 2, "one or two query-tile buffers");
  static_assert(BM <= kThreads, "one thread per query row fetches its LSE and row sum");

  static constexpr int kKVElems = BN * kRow;
  static constexpr int kQElems = BM * kRow;
  static constexpr int kSmemBytes =
      (2 * kKVElems + 2 * kStages * kQElems + BN * kDsRow) * 2 + BN * 4 + kStages * BM * 4 * 3;
  static_assert(kSmemBytes == Cfg::kSmemBytes, "host and template disagree on the shared memory size");

  static __device__ void run(const SpattnBwdParams& p) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    // K, V | Q, dO per stage | dSᵀ | key tokens | query tokens, LSE·log2(e), row sums per stage
    const uint32_t ks = smem_addr(smem_raw);
    const uint32_t vs = ks + kKVElems * 2;
    const uint32_t qs0 = vs + kKVElems * 2;  // stage s: Q at qs0 + s * kStageBytes, dO kQElems * 2 after
    constexpr uint32_t kStageBytes = 2 * kQElems * 2;
    const uint32_t dss = qs0 + kStages * kStageBytes;
    elem* ds_ptr = reinterpret_cast<elem*>(smem_raw + (2 * kKVElems + 2 * kStages * kQElems) * 2);
    int* ktok = reinterpret_cast<int*>(smem_raw + (2 * kKVElems + 2 * kStages * kQElems + BN * kDsRow) * 2);
    int* qtok0 = ktok + BN;
    float* lse2_0 = reinterpret_cast<float*>(qtok0 + kStages * BM);
    float* dsum0 = lse2_0 + kStages * BM;

    const int32_t* work = p.work + 4 * blockIdx.x;
    const SpattnBwdTable t = p.tables[work[0]];
    const int k_tile = work[1];
    // Documents (Cfg::kVarlen): the key tile's document gives the batch index, first rows
    // and lengths; token indices below are relative to it.
    int k_local = k_tile;
    DocRows doc = DocRows::whole(blockIdx.y, p.nq, p.nk);
    if constexpr (Cfg::kVarlen) {
      const int d = __ldg(p.vl_ktiles + 2 * k_tile);
      if (d < 0) return;  // capacity no document uses (uniform over the block)
      k_local = __ldg(p.vl_ktiles + 2 * k_tile + 1);
      doc = DocRows::of(p.vl_docs, d);
    }
    const int b = doc.b;
    const int32_t* heads = p.arena + t.heads + work[2];
    const int n_heads = work[3];
    const int kvh = __ldg(heads) / p.kv_group;
    const int tid = threadIdx.x;
    const int warp = tid / 32;
    const int lane = tid % 32;

    const int32_t* qslots = t.q_slots >= 0 ? p.arena + t.q_slots : nullptr;
    const int32_t* kslots = Cfg::kPermutedKeys && t.k_slots >= 0 ? p.arena + t.k_slots : nullptr;
    const int32_t* columns = p.arena + (int64_t)b * p.arena_stride_b;  // this batch's columns
    const int begin = __ldg(columns + t.col_ptr + k_tile);
    const int n_tiles = t.col_len >= 0 ? __ldg(columns + t.col_len + k_tile)
                                       : __ldg(columns + t.col_ptr + k_tile + 1) - begin;
    const int n_full = __ldg(columns + t.full_count + k_tile);
    const int32_t* q_list = columns + t.rows + begin;
    // The work list holds only key tiles that some query tile attends, or (documents)
    // the dK, dV outputs are zero where none does.
    if (n_tiles <= 0) return;
    const int n_steps = n_tiles * n_heads;  // query tiles of the first head, then of the next

    const elem* kbase = static_cast<const elem*>(p.k) + b * p.k_stride_b + doc.k_row0 * p.k_stride_n + kvh * p.k_stride_h;
    const elem* vbase = static_cast<const elem*>(p.v) + b * p.v_stride_b + doc.k_row0 * p.v_stride_n + kvh * p.v_stride_h;

    // Query tile `it` of head `h` into stage s: Q and dO by cp.async (one group), this
    // thread's row of LSE and row sum into registers (stored into shared memory by the
    // step that uses them).
    RowStats next;
    auto issue_step = [&](int q_tile, int h, int s) {
      const uint32_t qs = qs0 + s * kStageBytes;
      const elem* qbase = static_cast<const elem*>(p.q) + b * p.q_stride_b + doc.q_row0 * p.q_stride_n + h * p.q_stride_h;
      const elem* dobase =
          static_cast<const elem*>(p.d_o) + b * p.do_stride_b + doc.q_row0 * p.do_stride_n + h * p.do_stride_h;
      T::template load_rows<kThreads, BM>(qbase, p.q_stride_n, qs, q_tile * BM, doc.nq, qslots, qtok0 + s * BM);
      T::template load_rows<kThreads, BM>(dobase, p.do_stride_n, qs + kQElems * 2, q_tile * BM, doc.nq, qslots,
                                          nullptr);
      cp_async_commit();
      if (tid < BM) {
        const int token = qslots ? __ldg(qslots + q_tile * BM + tid) : q_tile * BM + tid;
        next = RowStats::of(p.lse + b * p.lse_stride_b + h * p.lse_stride_h + doc.q_row0,
                            p.dsum + ((int64_t)b * p.heads + h) * p.nq + doc.q_row0, token, doc.nq);
      }
    };

    T::template load_rows<kThreads, BN>(kbase, p.k_stride_n, ks, k_local * BN, doc.nk, kslots, ktok);
    T::template load_rows<kThreads, BN>(vbase, p.v_stride_n, vs, k_local * BN, doc.nk, kslots, nullptr);
    cp_async_commit();
    int h = __ldg(heads);
    issue_step(__ldg(q_list), h, 0);

    const uint32_t a_rows = T::a_lane(warp, lane);
    const uint32_t b_rows = T::b_lane(lane);
    const uint32_t b_trans = T::b_trans_lane(lane);
    // The A operand dS (m = queries, k = keys) from the stored dSᵀ rows (transposed).
    const uint32_t ds_trans = ((lane % 8 + (lane / 16) * 8) * kDsRow + ((lane / 8) % 2) * 8) * 2;

    float acc_dk[kNTilesD][4], acc_dv[kNTilesD][4];
#pragma unroll
    for (int nt = 0; nt < kNTilesD; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_dk[nt][e] = acc_dv[nt][e] = 0.f;
    typename Cfg::MaskCtx mask_ctx{doc.nq, doc.nk, p.heads, 0, 0};

    int it = 0, hi = 0;  // step x: query tile `it` of head heads[hi]
#pragma unroll 1
    for (int x = 0; x < n_steps; ++x) {
      const bool last_tile = it + 1 == n_tiles;
      const int it_next = last_tile ? 0 : it + 1;
      const int h_next = last_tile && hi + 1 < n_heads ? __ldg(heads + hi + 1) : h;
      const int q_next = __ldg(q_list + it_next);  // loads while this step waits at the barrier
      const int s = kStages == 1 ? 0 : x & 1;
      const uint32_t qs = qs0 + s * kStageBytes;
      const uint32_t dos = qs + kQElems * 2;
      const int* qtok = qtok0 + s * BM;
      const float* lse2 = lse2_0 + s * BM;
      const float* dsum = dsum0 + s * BM;
      // Stage s was last read two steps ago (one with one buffer, behind the barrier at
      // the end of that step), before a barrier every thread has passed since.
      if (tid < BM) {
        lse2_0[s * BM + tid] = next.lse2;
        dsum0[s * BM + tid] = next.dsum;
      }
      cp_async_wait_all();
      __syncthreads();
      if (kStages == 2 && x + 1 < n_steps) issue_step(q_next, h_next, s ^ 1);

      // ---- Sᵀ = K Qᵀ (rows: the warp's 16 keys; columns: the tile's queries)
      float acc_s[kNTilesQ][4];
      T::template rows_times_cols_t<BM>(acc_s, ks, qs, a_rows, b_rows);
      // ---- Pᵀ = exp(Sᵀ - LSE); masked pairs (partial tiles) and padding give 0
      const bool partial = it >= n_full;
      uint32_t bits[(kNTilesQ * 4 + 31) / 32];
      if (partial) {
#pragma unroll
        for (int wd = 0; wd < (kNTilesQ * 4 + 31) / 32; ++wd) {
          uint32_t word = 0;
#pragma unroll 1
          for (int y = wd * 32; y < wd * 32 + 32 && y < kNTilesQ * 4; ++y) {
            const int j = ktok[warp * 16 + lane / 4 + ((y >> 1) & 1) * 8];
            const int i = qtok[(y / 4) * 8 + (lane % 4) * 2 + (y & 1)];
            if (i >= 0 && j >= 0 && Cfg::allowed(t.part, h, i, j, mask_ctx)) word |= 1u << (y % 32);
          }
          bits[wd] = word;
        }
      }
      // Adaptive gates: log2 g of the step's block joins the logits (a removed block: P = 0).
      float gl2 = 0.f;
      int q_tile_x = 0;
      if constexpr (Cfg::kGates) {
        if (p.gates.gates) {
          q_tile_x = __ldg(q_list + it);
          gl2 = gate_log2(p.gates, b, p.heads, h, q_tile_x, k_tile);
        }
      }
      const bool removed = Cfg::kGates && gl2 == neg_inf();
      // P rounded to 16 bits right away: it is the A operand of dV as such, and dS reads
      // it back (dS is rounded to 16 bits for its products too); that frees 16 registers.
      uint32_t p16[kNTilesQ][2];
#pragma unroll
      for (int nt = 0; nt < kNTilesQ; ++nt) {
        float2 l2 = *reinterpret_cast<const float2*>(lse2 + nt * 8 + (lane % 4) * 2);  // columns c, c + 1
        if constexpr (Cfg::kGates) l2 = make_float2(l2.x - gl2, l2.y - gl2);
        float pv[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          pv[e] = exp2_approx(acc_s[nt][e] * p.scale_log2 - ((e & 1) ? l2.y : l2.x));
          if (partial && !((bits[(nt * 4 + e) / 32] >> ((nt * 4 + e) % 32)) & 1u)) pv[e] = 0.f;
          if (removed) pv[e] = 0.f;
        }
        p16[nt][0] = pack2<kBf16>(pv[0], pv[1]);
        p16[nt][1] = pack2<kBf16>(pv[2], pv[3]);
      }

      // ---- dV += Pᵀ dO
      T::template packed_times_tile<BM>(acc_dv, p16, dos, b_trans);

      // ---- dPᵀ = V dOᵀ, then dSᵀ = Pᵀ ∘ (dPᵀ - D), rounded to 16 bits
      uint32_t ds16[kNTilesQ][2];
      {
        float acc_dp[kNTilesQ][4];
        T::template rows_times_cols_t<BM>(acc_dp, vs, dos, a_rows, b_rows);
#pragma unroll
        for (int nt = 0; nt < kNTilesQ; ++nt) {
          const float2 d2 = *reinterpret_cast<const float2*>(dsum + nt * 8 + (lane % 4) * 2);
          float pv[4];
          unpack2<kBf16>(p16[nt][0], pv[0], pv[1]);
          unpack2<kBf16>(p16[nt][1], pv[2], pv[3]);
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_dp[nt][e] = pv[e] * (acc_dp[nt][e] - ((e & 1) ? d2.y : d2.x));
        }
        if constexpr (Cfg::kGates) {
          // The gate's gradient: this pair's sum of dS (the warps' sums added in order).
          if (p.gates.partials) {
            __shared__ float gate_sums[2][kWarps];
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < kNTilesQ; ++nt)
#pragma unroll
              for (int e = 0; e < 4; ++e) sum += acc_dp[nt][e];
            sum = warp_sum(sum);
            if (lane == 0) gate_sums[x & 1][warp] = sum;
            __syncthreads();  // a slot is rewritten two steps later, after thread 0 passed the next barrier
            if (tid == 0) {
              float total = 0.f;
              for (int w = 0; w < kWarps; ++w) total += gate_sums[x & 1][w];
              store_gate_partial(p.gates, b, p.heads, h, q_tile_x, k_tile, total);
            }
          }
        }
        T::pack_all(acc_dp, ds16);
      }

      // ---- dK += dSᵀ Q (scaled at the end); by default dSᵀ also goes to shared memory
      // for dQ (tile rows x 16 head-dim columns per chunk; chunks over the warps) +=
      // scale dS K with fp32 atomics
      if (kDeterministic) {
        T::template packed_times_tile<BM>(acc_dk, ds16, qs, b_trans);
      } else {
        T::template packed_times_tile<BM>(acc_dk, ds16, qs, b_trans, [&](int kk, const uint32_t (&a)[4]) {
          const int row = warp * 16 + lane / 4;
          const int col = kk * 16 + (lane % 4) * 2;
          *reinterpret_cast<uint32_t*>(ds_ptr + row * kDsRow + col) = a[0];
          *reinterpret_cast<uint32_t*>(ds_ptr + (row + 8) * kDsRow + col) = a[1];
          *reinterpret_cast<uint32_t*>(ds_ptr + row * kDsRow + col + 8) = a[2];
          *reinterpret_cast<uint32_t*>(ds_ptr + (row + 8) * kDsRow + col + 8) = a[3];
        });
      }

      if (!kDeterministic) {
        __syncthreads();
#pragma unroll 1
        for (int chunk = warp; chunk < D / 16; chunk += kWarps) {
          float acc_q[BM / 16][2][4];
#pragma unroll
          for (int mt = 0; mt < BM / 16; ++mt)
#pragma unroll
            for (int n = 0; n < 2; ++n) acc_q[mt][n][0] = acc_q[mt][n][1] = acc_q[mt][n][2] = acc_q[mt][n][3] = 0.f;
#pragma unroll
          for (int kk = 0; kk < BN / 16; ++kk) {
            uint32_t bf[4];
            ldmatrix_x4_trans(bf, ks + b_trans + (kk * 16 * kRow + chunk * 16) * 2);
#pragma unroll
            for (int mt = 0; mt < BM / 16; ++mt) {
              uint32_t a[4];
              ldmatrix_x4_trans(a, dss + ds_trans + (kk * 16 * kDsRow + mt * 16) * 2);
              mma_16816<kBf16>(acc_q[mt][0], a, bf[0], bf[1]);
              mma_16816<kBf16>(acc_q[mt][1], a, bf[2], bf[3]);
            }
          }
          float* dq_base =
              p.dq_acc + (((int64_t)b * p.nq + doc.q_row0) * p.heads + h) * D + chunk * 16 + (lane % 4) * 2;
          const int64_t dq_row = (int64_t)p.heads * D;
#pragma unroll
          for (int mt = 0; mt < BM / 16; ++mt) {
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
              const int i = qtok[mt * 16 + lane / 4 + hr * 8];
              if (i < 0) continue;
              float* out = dq_base + i * dq_row;
#pragma unroll
              for (int n = 0; n < 2; ++n)
                red_add2(out + n * 8, p.scale * acc_q[mt][n][hr * 2], p.scale * acc_q[mt][n][hr * 2 + 1]);
            }
          }
        }
      }
      if (kStages == 1) {
        __syncthreads();  // Q, dO, their tokens and dSᵀ are overwritten by the next step
        if (x + 1 < n_steps) issue_step(q_next, h_next, 0);
      }
      hi += last_tile;
      it = it_next;
      h = h_next;
      // With two buffers the barrier at the top of the next step orders this step's
      // reads of dSᵀ before the next step's writes.
    }
    // ---- dK (scaled), dV of their key rows: into the outputs when this item is the rows'
    // only writer, else into the fp32 accumulators
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int jl = ktok[warp * 16 + lane / 4 + hr * 8];
      if (jl < 0) continue;
      const int j = static_cast<int>(doc.k_row0) + jl;  // the row in the tensors
      const int col = (lane % 4) * 2;
      float* dk = p.dk_acc + (((int64_t)b * p.nk + j) * (p.heads / p.kv_group) + kvh) * D + col;
      float* dv = p.dv_acc + (((int64_t)b * p.nk + j) * (p.heads / p.kv_group) + kvh) * D + col;
      elem* dk_out = static_cast<elem*>(key_grad_row(p.dk_out, p.dk_stride_b, p.dk_stride_n, p.dk_stride_h, b, j, kvh, col));
      elem* dv_out = static_cast<elem*>(key_grad_row(p.dv_out, p.dv_stride_b, p.dv_stride_n, p.dv_stride_h, b, j, kvh, col));
#pragma unroll
      for (int nt = 0; nt < kNTilesD; ++nt) {
        write_key_grad2<!kDeterministic, kBf16>(dk_out ? dk_out + nt * 8 : nullptr, dk + nt * 8,
                                                p.scale * acc_dk[nt][hr * 2], p.scale * acc_dk[nt][hr * 2 + 1]);
        write_key_grad2<!kDeterministic, kBf16>(dv_out ? dv_out + nt * 8 : nullptr, dv + nt * 8, acc_dv[nt][hr * 2],
                                                acc_dv[nt][hr * 2 + 1]);
      }
    }
  }
};

// The dQ pass of deterministic mode: BM queries (16 per warp) of one head against the
// key tiles of its forward row, BN keys at a time.
template <class Cfg>
struct BackwardDq {
  static constexpr int D = Cfg::kHeadDim;
  static constexpr int BM = Cfg::kBlockM;   // queries per CTA
  static constexpr int BN = Cfg::kBlockN;   // keys per step
  static constexpr int kWarps = BM / 16;
  static constexpr int kThreads = kWarps * 32;
  static constexpr bool kBf16 = Cfg::kBf16;
  using T = Tiles<kBf16, D>;
  static constexpr int kRow = T::kRow;
  static constexpr int kSub = BN < 64 ? BN : 64;  // keys per product step
  static constexpr int kNTilesK = kSub / 8;         // n8 tiles of S per warp (key columns)
  static_assert(BN % kSub == 0, "key tiles are whole product steps");
  static constexpr int kNTilesD = D / 8;
  static constexpr int kSmemBytes = (2 * BM + 2 * BN) * kRow * 2 + BN * 4 + BM * 4 * 3;
  static_assert(kSmemBytes == Cfg::kDqSmemBytes, "host and template disagree on the dQ pass's shared memory");

  static __device__ void run(const SpattnBwdParams& p) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    // Q, dO | K, V | key tokens | query tokens, LSE·log2(e), row sums
    const uint32_t qs = smem_addr(smem_raw);
    const uint32_t dos = qs + BM * kRow * 2;
    const uint32_t ks = dos + BM * kRow * 2;
    const uint32_t vs = ks + BN * kRow * 2;
    int* ktok = reinterpret_cast<int*>(smem_raw + (2 * BM + 2 * BN) * kRow * 2);
    int* qtok = ktok + BN;
    float* lse2 = reinterpret_cast<float*>(qtok + BM);
    float* dsum = lse2 + BM;

    const int32_t* work = p.work + 4 * blockIdx.x;
    const SpattnBwdTable t = p.tables[work[0]];
    const int q_tile = work[1];
    // Documents: the query tile's document (as in the key-tile pass).
    int q_local = q_tile;
    DocRows doc = DocRows::whole(blockIdx.y, p.nq, p.nk);
    if constexpr (Cfg::kVarlen) {
      const int d = __ldg(p.vl_tiles + 2 * q_tile);
      if (d < 0) return;
      q_local = __ldg(p.vl_tiles + 2 * q_tile + 1);
      doc = DocRows::of(p.vl_docs, d);
    }
    const int b = doc.b;
    const int h = __ldg(p.arena + t.heads + work[2]);
    const int kvh = h / p.kv_group;
    const int tid = threadIdx.x;
    const int warp = tid / 32;
    const int lane = tid % 32;

    const int32_t* qslots = t.q_slots >= 0 ? p.arena + t.q_slots : nullptr;
    const int32_t* kslots = Cfg::kPermutedKeys && t.k_slots >= 0 ? p.arena + t.k_slots : nullptr;
    const int32_t* rows = p.arena + (int64_t)b * p.arena_stride_b;  // this batch's rows
    const int begin = __ldg(rows + t.row_ptr + q_tile);
    const int n_tiles = t.row_len >= 0 ? __ldg(rows + t.row_len + q_tile) : __ldg(rows + t.row_ptr + q_tile + 1) - begin;
    const int n_full = __ldg(rows + t.row_full + q_tile);
    const int32_t* k_list = rows + t.cols + begin;
    if (n_tiles <= 0) return;

    const elem* qbase = static_cast<const elem*>(p.q) + b * p.q_stride_b + doc.q_row0 * p.q_stride_n + h * p.q_stride_h;
    const elem* dobase =
        static_cast<const elem*>(p.d_o) + b * p.do_stride_b + doc.q_row0 * p.do_stride_n + h * p.do_stride_h;
    const elem* kbase = static_cast<const elem*>(p.k) + b * p.k_stride_b + doc.k_row0 * p.k_stride_n + kvh * p.k_stride_h;
    const elem* vbase = static_cast<const elem*>(p.v) + b * p.v_stride_b + doc.k_row0 * p.v_stride_n + kvh * p.v_stride_h;
    T::template load_rows<kThreads, BM>(qbase, p.q_stride_n, qs, q_local * BM, doc.nq, qslots, qtok);
    T::template load_rows<kThreads, BM>(dobase, p.do_stride_n, dos, q_local * BM, doc.nq, qslots, nullptr);
    cp_async_commit();
    if (tid < BM) {
      const int token = qslots ? __ldg(qslots + q_local * BM + tid) : q_local * BM + tid;
      const RowStats r = RowStats::of(p.lse + b * p.lse_stride_b + h * p.lse_stride_h + doc.q_row0,
                                      p.dsum + ((int64_t)b * p.heads + h) * p.nq + doc.q_row0, token, doc.nq);
      lse2[tid] = r.lse2;
      dsum[tid] = r.dsum;
    }

    const uint32_t a_rows = T::a_lane(warp, lane);
    const uint32_t b_rows = T::b_lane(lane);
    const uint32_t b_trans = T::b_trans_lane(lane);
    float acc_dq[kNTilesD][4];
#pragma unroll
    for (int nt = 0; nt < kNTilesD; ++nt) acc_dq[nt][0] = acc_dq[nt][1] = acc_dq[nt][2] = acc_dq[nt][3] = 0.f;
    typename Cfg::MaskCtx mask_ctx{doc.nq, doc.nk, p.heads, 0, 0};
    const int r0 = warp * 16 + lane / 4;  // this thread's rows r0 and r0 + 8

#pragma unroll 1
    for (int it = 0; it < n_tiles; ++it) {
      const int k_tile = __ldg(k_list + it);
      T::template load_rows<kThreads, BN>(kbase, p.k_stride_n, ks, k_tile * BN, doc.nk, kslots, ktok);
      T::template load_rows<kThreads, BN>(vbase, p.v_stride_n, vs, k_tile * BN, doc.nk, kslots, nullptr);
      cp_async_commit();
      // Adaptive gates: log2 g of the tile's block joins the logits (a removed block: P = 0).
      const float gl2 = Cfg::kGates && p.gates.gates ? gate_log2(p.gates, b, p.heads, h, q_tile, k_tile) : 0.f;
      const bool removed = gl2 == neg_inf();
      cp_async_wait_all();
      __syncthreads();

      // Per kSub keys of the tile (registers: S, dS and dQ of 16 rows):
#pragma unroll 1
      for (int c = 0; c < BN / kSub; ++c) {
        const uint32_t kc = ks + c * kSub * kRow * 2, vc = vs + c * kSub * kRow * 2;
        // ---- S = Q Kᵀ, P = exp(S - LSE) (masked pairs and padding give 0)
        float acc_s[kNTilesK][4];
        T::template rows_times_cols_t<kSub>(acc_s, qs, kc, a_rows, b_rows);
        const bool partial = it >= n_full;
#pragma unroll
        for (int nt = 0; nt < kNTilesK; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = r0 + (e >> 1) * 8;
            float pv = exp2_approx(acc_s[nt][e] * p.scale_log2 + gl2 - lse2[r]);
            if (removed) pv = 0.f;
            if (partial) {
              const int i = qtok[r];
              const int j = ktok[c * kSub + nt * 8 + (lane % 4) * 2 + (e & 1)];
              if (i < 0 || j < 0 || !Cfg::allowed(t.part, h, i, j, mask_ctx)) pv = 0.f;
            }
            acc_s[nt][e] = pv;
          }
        }
        // ---- dP = dO Vᵀ, dS = P ∘ (dP - D), dQ += dS K
        float acc_dp[kNTilesK][4];
        T::template rows_times_cols_t<kSub>(acc_dp, dos, vc, a_rows, b_rows);
#pragma unroll
        for (int nt = 0; nt < kNTilesK; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_dp[nt][e] = acc_s[nt][e] * (acc_dp[nt][e] - dsum[r0 + (e >> 1) * 8]);
        uint32_t ds16[kNTilesK][2];
        T::pack_all(acc_dp, ds16);
        T::template packed_times_tile<kSub>(acc_dq, ds16, kc, b_trans);
      }
      __syncthreads();  // K, V and their tokens are overwritten by the next key tile
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int i = qtok[r0 + hr * 8];
      if (i < 0) continue;
      float* out = p.dq_acc + (((int64_t)b * p.nq + doc.q_row0 + i) * p.heads + h) * D + (lane % 4) * 2;
#pragma unroll
      for (int nt = 0; nt < kNTilesD; ++nt)
        accumulate2<false>(out + nt * 8, p.scale * acc_dq[nt][hr * 2], p.scale * acc_dq[nt][hr * 2 + 1]);
    }
  }
};

}  // namespace bwd
}  // namespace spattn
