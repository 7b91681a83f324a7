// spattn forward attention over block tables: FlashAttention-2 style online softmax
// with mma.sync (m16n8k16, fp32 accumulate) and cp.async pipelining, for sm_80 and newer.
//
// The generated translation unit defines `struct Cfg` (tile shape, warps, stages,
// head dim, dtype, and the partial-tile predicate Cfg::allowed) and then includes this
// file. One CTA processes one work item: a query tile of one block table for one head.
// It walks the table's key tiles from the CSR list, full tiles first (no mask), then
// partial tiles (Cfg::allowed evaluated per element on original token indices).
// Tokens are gathered through the table's slot permutation (or taken in natural order
// when the table has none) and outputs are scattered back to their original rows.
#pragma once

#include "spattn/params.cuh"
#include "spattn/ptx.cuh"

namespace spattn {

// ---- the kernel body -------------------------------------------------------------------

template <class Cfg>
struct Forward {
  static constexpr int D = Cfg::kHeadDim;
  static constexpr int BM = Cfg::kBlockM;
  static constexpr int BN = Cfg::kBlockN;
  static constexpr int kWarps = Cfg::kWarps;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kStages = Cfg::kStages;
  static constexpr bool kBf16 = Cfg::kBf16;
  static constexpr int kWarpM = BM / kWarps;      // query rows owned by one warp
  static constexpr int kMTiles = kWarpM / 16;     // m16 tiles per warp
  static constexpr int kNTilesS = BN / 8;         // n8 tiles of S per warp
  static constexpr int kNTilesO = D / 8;          // n8 tiles of O per warp
  static constexpr int kKStepsQK = D / 16;
  static constexpr int kKStepsPV = BN / 16;
  // Rows are padded by 16 bytes: consecutive rows then start in different bank groups,
  // so the 8 row addresses of every ldmatrix phase hit distinct banks, for any D.
  static constexpr int kRow = D + 8;              // elements per smem row
  static constexpr int kChunksPerRow = D / 8;     // 16-byte chunks per row
  static constexpr int kQElems = BM * kRow;
  static constexpr int kKVElems = BN * kRow;

  static_assert(BM % (16 * kWarps) == 0, "tile_m must be a multiple of 16 * warps");
  static_assert(BN % 16 == 0, "tile_n must be a multiple of 16");
  static_assert(D % 16 == 0, "head dim must be a multiple of 16");
  static_assert(kStages == 1 || kStages == 2, "stages must be 1 or 2");

  static constexpr int kWorkInts = 6;             // table, q_tile, head, first/end key tile, split slot
  static constexpr int kMaskWords = BN / 32;      // mask bits per query row of a partial tile
  static constexpr int kPreRows = (BN + kThreads - 1) / kThreads;  // next tile's slots per thread
  // Shared memory: Q, the K and V stages, the key token index of every column (per
  // stage), the query token index of every row, the partial-tile mask bits, and the
  // next key tile's slots (prefetched for permuted layouts).
  static constexpr int kSmemBytes =
      (kQElems + 2 * kStages * kKVElems) * 2 + kStages * BN * 4 + BM * 4 + BM * kMaskWords * 4 + BN * 4;
  static_assert(kSmemBytes == Cfg::kSmemBytes, "host and template disagree on the shared memory size");

  using elem = unsigned short;

  // Copies `rows` rows of one tile (Q, K or V) from global to shared memory with 16-byte
  // cp.async, zero-filling rows whose token is invalid. Row r holds token slot0 + r
  // (natural order), or gslots[slot0 + r] (global slot table) or sslots[r] (token
  // indices already in shared memory), -1 meaning padding. If `kslot` is given, the
  // token of every row (-1 when invalid) is recorded there for masks and later loads.
  // The loop is not unrolled on purpose: unrolled, the compiler hoists every row's
  // 64-bit offset out of the key-tile loop into registers the accumulators need.
  static __device__ __forceinline__ void load_tile(const elem* base, int64_t stride, uint32_t dst, int rows,
                                                   int slot0, int limit, const int32_t* gslots, const int* sslots,
                                                   int* kslot) {
    if constexpr (kThreads % kChunksPerRow == 0) {
      constexpr int kStep = kThreads / kChunksPerRow;  // rows per pass of the block
      const int chunk = threadIdx.x % kChunksPerRow;
      int r = threadIdx.x / kChunksPerRow;
      uint32_t d = dst + (r * kRow + chunk * 8) * 2;
      if (!gslots && !sslots) {
        // Natural order: walk one pointer down the rows.
        const elem* src = base + (int64_t)(slot0 + r) * stride + chunk * 8;
        const int64_t step = kStep * stride;
#pragma unroll 1
        for (; r < rows; r += kStep, src += step, d += kStep * kRow * 2) {
          const bool valid = slot0 + r < limit;
          cp_async_16(d, valid ? src : base, valid);
          if (kslot && chunk == 0) kslot[r] = valid ? slot0 + r : -1;
        }
      } else {
#pragma unroll 1
        for (; r < rows; r += kStep, d += kStep * kRow * 2) {
          const int token = sslots ? sslots[r] : __ldg(gslots + slot0 + r);
          const bool valid = token >= 0 && token < limit;
          cp_async_16(d, base + (int64_t)(valid ? token : 0) * stride + chunk * 8, valid);
          if (kslot && chunk == 0) kslot[r] = valid ? token : -1;
        }
      }
    } else {
      // Head dims whose rows do not divide the block evenly (96): one chunk at a time.
#pragma unroll 1
      for (int c = threadIdx.x; c < rows * kChunksPerRow; c += kThreads) {
        const int r = c / kChunksPerRow;
        const int chunk = c % kChunksPerRow;
        const int token = sslots ? sslots[r] : gslots ? __ldg(gslots + slot0 + r) : slot0 + r;
        const bool valid = token >= 0 && token < limit;
        cp_async_16(dst + (r * kRow + chunk * 8) * 2, base + (int64_t)(valid ? token : 0) * stride + chunk * 8,
                    valid);
        if (kslot && chunk == 0) kslot[r] = valid ? token : -1;
      }
    }
  }

  // Evaluates the general predicate of a partial tile into mask bits (one bit per
  // query row and key column). Kept out of line: its registers then do not add to the
  // main loop's, which holds the output accumulators; partial tiles of patterns that
  // need it (no per-row range form) are rare in their permuted layouts.
  static __device__ __noinline__ void mask_tile(int part, int h, const int* qtok, const int* kslot,
                                                uint32_t* mask_bits, typename Cfg::MaskCtx mask_ctx) {
#pragma unroll 1
    for (int w = threadIdx.x; w < BM * kMaskWords; w += kThreads) {
      const int r = w / kMaskWords;
      const int c0 = (w % kMaskWords) * 32;
      const int i = qtok[r];
      uint32_t bits = 0;
      if (i >= 0) {
#pragma unroll 1
        for (int bit = 0; bit < 32; ++bit) {
          const int j = kslot[c0 + bit];
          if (j >= 0 && Cfg::allowed(part, h, i, j, mask_ctx)) bits |= 1u << bit;
        }
      }
      mask_bits[w] = bits;
    }
  }

  static __device__ void run(const SpattnFwdParams& p) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    // Shared addresses as 32-bit integers computed from one base: ptxas then folds the
    // per-fragment constant offsets into the ldmatrix/cp.async immediates instead of
    // keeping one register per fragment address.
    const uint32_t qs = smem_addr(smem_raw);
    const uint32_t ks0 = qs + kQElems * 2;
    const uint32_t vs0 = ks0 + kStages * kKVElems * 2;
    int* kslot0 = reinterpret_cast<int*>(smem_raw + (kQElems + 2 * kStages * kKVElems) * 2);
    int* qtok = kslot0 + kStages * BN;
    uint32_t* mask_bits = reinterpret_cast<uint32_t*>(qtok + BM);
    int* kslot_pre = reinterpret_cast<int*>(mask_bits + BM * kMaskWords);

    const int item = blockIdx.x;
    const int b = blockIdx.y;
    const int32_t* work = p.work + kWorkInts * item;
    const int table_id = work[0];
    const int q_tile = work[1];
    const int h = work[2];
    const int split_slot = work[5];
    const SpattnTable t = p.tables[table_id];
    const int kvh = h / p.kv_group;
    // Documents (Cfg::kVarlen): the tile's document gives the batch index, its first
    // rows and its lengths; token indices below are relative to the document.
    int ob = b, q_local = q_tile, nq = p.nq, nk = p.nk;
    int64_t q_row0 = 0, k_row0 = 0;
    if constexpr (Cfg::kVarlen) {
      const int doc = __ldg(p.vl_tiles + 2 * q_tile);
      if (doc < 0) return;  // capacity no document uses (uniform over the block)
      q_local = __ldg(p.vl_tiles + 2 * q_tile + 1);
      const int32_t* d = p.vl_docs + kSpattnDocInts * doc;
      ob = __ldg(d);
      q_row0 = __ldg(d + 1);
      nq = __ldg(d + 2);
      k_row0 = __ldg(d + 3);
      nk = __ldg(d + 4);
    }

    const int tid = threadIdx.x;
    const int warp = tid / 32;
    const int lane = tid % 32;
    // ldmatrix row addresses of this lane (byte offsets): A from Q (rows of the warp's
    // m16 tile, two 8-column halves), B from K (two n8 tiles x two k8 halves), B from V
    // transposed (two k8 halves x two n8 tiles).
    const uint32_t q_frag = qs + ((warp * kWarpM + lane % 16) * kRow + (lane / 16) * 8) * 2;
    const uint32_t k_frag = ((lane % 8 + (lane / 16) * 8) * kRow + ((lane / 8) % 2) * 8) * 2;
    const uint32_t v_frag = ((lane % 8 + ((lane / 8) % 2) * 8) * kRow + (lane / 16) * 8) * 2;

    const elem* qbase = static_cast<const elem*>(p.q) + ob * p.q_stride_b + q_row0 * p.q_stride_n + h * p.q_stride_h;
    const elem* kbase = static_cast<const elem*>(p.k) + ob * p.k_stride_b + k_row0 * p.k_stride_n + kvh * p.k_stride_h;
    const elem* vbase = static_cast<const elem*>(p.v) + ob * p.v_stride_b + k_row0 * p.v_stride_n + kvh * p.v_stride_h;
    const int32_t* qslots = t.q_slots >= 0 ? p.arena + t.q_slots : nullptr;
    // Kernels for layouts without key permutations compile the gather paths out.
    const int32_t* kslots = Cfg::kPermutedKeys && t.k_slots >= 0 ? p.arena + t.k_slots : nullptr;
    const int qslot0 = q_local * BM;

    // This work item covers key tiles [work[3], work[4]) of the query tile's CSR row (a
    // long row may be split over several work items, merged afterwards by LSE).
    const int32_t* rows = p.arena + (int64_t)b * p.arena_stride_b;  // this batch's CSR
    const int row_begin = __ldg(rows + t.row_ptr + q_tile) + work[3];
    const int n_tiles = work[4] - work[3];
    const int n_full = __ldg(rows + t.full_count + q_tile) - work[3];
    const int32_t* cols = rows + t.cols + row_begin;

    // ---- Q tile and the first key tile
    load_tile(qbase, p.q_stride_n, qs, BM, qslot0, nq, qslots, nullptr, qtok);
    int col = n_tiles > 0 ? __ldg(cols) : 0;
    int col_next = n_tiles > 1 ? __ldg(cols + 1) : 0;
    if (n_tiles > 0) {
      load_tile(kbase, p.k_stride_n, ks0, BN, col * BN, nk, kslots, nullptr, kslot0);
      if constexpr (kStages == 2) load_tile(vbase, p.v_stride_n, vs0, BN, col * BN, nk, kslots, nullptr, nullptr);
    }
    cp_async_commit();
    __syncthreads();  // qtok is read by other threads, also when the tile has no key tiles

    float acc_o[kMTiles][kNTilesO][4];
    float row_max[kMTiles][2];
    float row_sum[kMTiles][2];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kNTilesO; ++nt) acc_o[mt][nt][0] = acc_o[mt][nt][1] = acc_o[mt][nt][2] = acc_o[mt][nt][3] = 0.f;
      row_max[mt][0] = row_max[mt][1] = neg_inf();
      row_sum[mt][0] = row_sum[mt][1] = 0.f;
    }

    const typename Cfg::MaskCtx mask_ctx = Cfg::kVarlen ? typename Cfg::MaskCtx{nq, nk, p.heads, 0, 0}
                                                        : typename Cfg::MaskCtx{p.mask_nq, p.mask_nk, p.heads,
                                                                                p.q_offset, p.k_offset};

    for (int n = 0; n < n_tiles; ++n) {
      const int stage = kStages == 2 ? (n & 1) : 0;
      const uint32_t ks = ks0 + stage * kKVElems * 2;
      const uint32_t vs = vs0 + stage * kKVElems * 2;
      const int* kslot = kslot0 + stage * BN;
      // The column two tiles ahead: its load latency hides behind this tile's work.
      const int col_after = n + 2 < n_tiles ? __ldg(cols + n + 2) : 0;

      cp_async_wait_all();
      __syncthreads();
      if constexpr (kStages == 2) {
        if (n + 1 < n_tiles) {
          const int nxt = (n + 1) & 1;
          load_tile(kbase, p.k_stride_n, ks0 + nxt * kKVElems * 2, BN, col_next * BN, nk, kslots, nullptr,
                    kslot0 + nxt * BN);
          load_tile(vbase, p.v_stride_n, vs0 + nxt * kKVElems * 2, BN, col_next * BN, nk, kslots, nullptr, nullptr);
        }
      } else {
        // V rows of this tile: their tokens are already in shared memory (from K's load).
        load_tile(vbase, p.v_stride_n, vs, BN, col * BN, nk, nullptr, kslots ? kslot : nullptr, nullptr);
      }
      cp_async_commit();
      // Permuted layouts, one stage: read the next K tile's slots now, so the gathered
      // K load in the middle of this iteration does not wait on them.
      int pre[kPreRows];
      if constexpr (kStages == 1 && Cfg::kPermutedKeys) {
        if (kslots && n + 1 < n_tiles) {
#pragma unroll
          for (int k = 0; k < kPreRows; ++k) {
            const int r = tid + k * kThreads;
            pre[k] = r < BN ? __ldg(kslots + col_next * BN + r) : -1;
          }
        }
      }

      // ---- partial tile with a general predicate: evaluate it into mask bits before
      // the score accumulators exist, so its registers do not compete with them
      const bool partial = n >= n_full;
      if constexpr (!Cfg::kIntervalMask) {
        if (partial) {
          mask_tile(t.part, h, qtok, kslot, mask_bits, mask_ctx);
          __syncthreads();
        }
      }

      // ---- S = Q K^T
      float acc_s[kMTiles][kNTilesS][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNTilesS; ++nt) acc_s[mt][nt][0] = acc_s[mt][nt][1] = acc_s[mt][nt][2] = acc_s[mt][nt][3] = 0.f;

      // Fragments are loaded one step ahead of the MMAs that use them (two register
      // buffers), so ldmatrix latency overlaps tensor-core work.
      {
        uint32_t a[2][kMTiles][4];
        uint32_t bfrag[2][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) ldmatrix_x4(a[0][mt], q_frag + (mt * 16 * kRow) * 2);
        ldmatrix_x4(bfrag[0], ks + k_frag);
#pragma unroll
        for (int kk = 0; kk < kKStepsQK; ++kk) {
#pragma unroll
          for (int np = 0; np < kNTilesS / 2; ++np) {
            const int step = kk * (kNTilesS / 2) + np;
            // prefetch the next (kk, np) B fragment, and the next kk's A fragments
            if (np + 1 < kNTilesS / 2) {
              ldmatrix_x4(bfrag[(step + 1) % 2], ks + k_frag + ((np + 1) * 16 * kRow + kk * 16) * 2);
            } else if (kk + 1 < kKStepsQK) {
              ldmatrix_x4(bfrag[(step + 1) % 2], ks + k_frag + ((kk + 1) * 16) * 2);
#pragma unroll
              for (int mt = 0; mt < kMTiles; ++mt)
                ldmatrix_x4(a[(kk + 1) % 2][mt], q_frag + (mt * 16 * kRow + (kk + 1) * 16) * 2);
            }
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt) {
              mma_16816<kBf16>(acc_s[mt][2 * np], a[kk % 2][mt], bfrag[step % 2][0], bfrag[step % 2][1]);
              mma_16816<kBf16>(acc_s[mt][2 * np + 1], a[kk % 2][mt], bfrag[step % 2][2], bfrag[step % 2][3]);
            }
          }
        }
      }

      // ---- mask (partial tiles only)
      if (partial) {
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
          for (int hr = 0; hr < 2; ++hr) {
            const int r = warp * kWarpM + mt * 16 + lane / 4 + hr * 8;
            if constexpr (Cfg::kIntervalMask) {
              // Per-row key ranges compared in registers.
              const int i = qtok[r];
              int lo0 = 1, hi0 = 0, lo1 = 1, hi1 = 0;
              if (i >= 0) Cfg::row_bounds(t.part, h, i, mask_ctx, lo0, hi0, lo1, hi1);
#pragma unroll
              for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                  const int j = kslot[nt * 8 + (lane % 4) * 2 + e];
                  const bool ok = j >= 0 && ((lo0 <= j && j <= hi0) || (lo1 <= j && j <= hi1));
                  if (!ok) acc_s[mt][nt][hr * 2 + e] = neg_inf();
                }
              }
            } else {
              const uint32_t* row_bits = mask_bits + r * kMaskWords;
#pragma unroll
              for (int nt = 0; nt < kNTilesS; ++nt) {
                const uint32_t word = row_bits[nt / 4] >> ((nt % 4) * 8 + (lane % 4) * 2);
                if (!(word & 1u)) acc_s[mt][nt][hr * 2] = neg_inf();
                if (!(word & 2u)) acc_s[mt][nt][hr * 2 + 1] = neg_inf();
              }
            }
          }
        }
      }

      // ---- adaptive gates: log g of the tile's block added to its scores (score units)
      if constexpr (Cfg::kGates) {
        if (p.gates.gates) {
          const float bias = gate_log2(p.gates, b, p.heads, h, q_tile, col) * p.gates.inv_scale_log2;
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
            for (int nt = 0; nt < kNTilesS; ++nt)
#pragma unroll
              for (int e = 0; e < 4; ++e) acc_s[mt][nt][e] += bias;
        }
      }

      // ---- online softmax
      float scale_o[kMTiles][2];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          float mx = row_max[mt][hr];
#pragma unroll
          for (int nt = 0; nt < kNTilesS; ++nt) mx = fmaxf(mx, fmaxf(acc_s[mt][nt][hr * 2], acc_s[mt][nt][hr * 2 + 1]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          // A row that has seen only masked keys keeps max -inf; exponentiate against 0
          // then so that exp2(-inf) = 0 instead of NaN.
          const float m_scaled = mx == neg_inf() ? 0.f : mx * p.scale_log2;
          scale_o[mt][hr] = exp2_approx(row_max[mt][hr] * p.scale_log2 - m_scaled);
          row_max[mt][hr] = mx;
          float sum = 0.f;
#pragma unroll
          for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float pv = exp2_approx(acc_s[mt][nt][hr * 2 + e] * p.scale_log2 - m_scaled);
              acc_s[mt][nt][hr * 2 + e] = pv;
              sum += pv;
            }
          }
          row_sum[mt][hr] = row_sum[mt][hr] * scale_o[mt][hr] + sum;
        }
        // Once the running maxima settle, most tiles leave them unchanged: skip the
        // rescale when no row of the warp moved (a warp-uniform branch).
        if (__any_sync(0xffffffffu, scale_o[mt][0] != 1.f || scale_o[mt][1] != 1.f)) {
#pragma unroll
          for (int nt = 0; nt < kNTilesO; ++nt) {
            acc_o[mt][nt][0] *= scale_o[mt][0];
            acc_o[mt][nt][1] *= scale_o[mt][0];
            acc_o[mt][nt][2] *= scale_o[mt][1];
            acc_o[mt][nt][3] *= scale_o[mt][1];
          }
        }
      }

      if constexpr (kStages == 1 && Cfg::kPermutedKeys) {
        if (kslots && n + 1 < n_tiles) {
#pragma unroll
          for (int k = 0; k < kPreRows; ++k)
            if (tid + k * kThreads < BN) kslot_pre[tid + k * kThreads] = pre[k];
        }
      }

      // ---- wait for V; with one stage, start the next K as soon as every warp is done with this one
      cp_async_wait_all();
      __syncthreads();
      if constexpr (kStages == 1) {
        if (n + 1 < n_tiles)
          load_tile(kbase, p.k_stride_n, ks0, BN, col_next * BN, nk, nullptr, kslots ? kslot_pre : nullptr, kslot0);
        cp_async_commit();
      }

      // ---- O += P V
#pragma unroll
      for (int kk = 0; kk < kKStepsPV; ++kk) {
        uint32_t a[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          a[mt][0] = pack2<kBf16>(acc_s[mt][2 * kk][0], acc_s[mt][2 * kk][1]);
          a[mt][1] = pack2<kBf16>(acc_s[mt][2 * kk][2], acc_s[mt][2 * kk][3]);
          a[mt][2] = pack2<kBf16>(acc_s[mt][2 * kk + 1][0], acc_s[mt][2 * kk + 1][1]);
          a[mt][3] = pack2<kBf16>(acc_s[mt][2 * kk + 1][2], acc_s[mt][2 * kk + 1][3]);
        }
        uint32_t bfrag[2][4];
        ldmatrix_x4_trans(bfrag[0], vs + v_frag + (kk * 16 * kRow) * 2);
#pragma unroll
        for (int dp = 0; dp < kNTilesO / 2; ++dp) {
          if (dp + 1 < kNTilesO / 2)
            ldmatrix_x4_trans(bfrag[(dp + 1) % 2], vs + v_frag + (kk * 16 * kRow + (dp + 1) * 16) * 2);
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            mma_16816<kBf16>(acc_o[mt][2 * dp], a[mt], bfrag[dp % 2][0], bfrag[dp % 2][1]);
            mma_16816<kBf16>(acc_o[mt][2 * dp + 1], a[mt], bfrag[dp % 2][2], bfrag[dp % 2][3]);
          }
        }
      }
      col = col_next;
      col_next = col_after;
    }

    // ---- epilogue: normalise, write O and LSE (or this part's fp32 output)
    const float ln2 = 0.6931471805599453f;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        float sum = row_sum[mt][hr];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int i = qtok[warp * kWarpM + mt * 16 + lane / 4 + hr * 8];
        if (i < 0) continue;
        const bool empty = !(sum > 0.f);
        const float inv = empty ? 0.f : 1.f / sum;
        const float lse = empty ? neg_inf() : (row_max[mt][hr] * p.scale_log2 + __log2f(sum)) * ln2;
        if (split_slot >= 0) {
          // One piece of a split row: normalised fp32 output and LSE of this piece.
          const int r = warp * kWarpM + mt * 16 + lane / 4 + hr * 8;
          const int64_t row = ((int64_t)b * p.num_split_slots + split_slot) * BM + r;
          float* out = p.split_o + row * D;
#pragma unroll
          for (int nt = 0; nt < kNTilesO; ++nt) {
            const int col = nt * 8 + (lane % 4) * 2;
            *reinterpret_cast<float2*>(out + col) =
                make_float2(acc_o[mt][nt][hr * 2] * inv, acc_o[mt][nt][hr * 2 + 1] * inv);
          }
          if (lane % 4 == 0) p.split_lse[row] = lse;
        } else if (p.write_parts) {
          float* out = p.part_o + ((((int64_t)t.part * p.batch + ob) * p.nq + q_row0 + i) * p.heads + h) * D;
#pragma unroll
          for (int nt = 0; nt < kNTilesO; ++nt) {
            const int col = nt * 8 + (lane % 4) * 2;
            *reinterpret_cast<float2*>(out + col) =
                make_float2(acc_o[mt][nt][hr * 2] * inv, acc_o[mt][nt][hr * 2 + 1] * inv);
          }
          if (lane % 4 == 0) p.part_lse[(((int64_t)t.part * p.batch + ob) * p.heads + h) * p.nq + q_row0 + i] = lse;
        } else {
          elem* out = static_cast<elem*>(p.o) + ob * p.o_stride_b + (q_row0 + i) * p.o_stride_n + h * p.o_stride_h;
#pragma unroll
          for (int nt = 0; nt < kNTilesO; ++nt) {
            const int col = nt * 8 + (lane % 4) * 2;
            *reinterpret_cast<uint32_t*>(out + col) =
                pack2<kBf16>(acc_o[mt][nt][hr * 2] * inv, acc_o[mt][nt][hr * 2 + 1] * inv);
          }
          if (p.lse && lane % 4 == 0) p.lse[ob * p.lse_stride_b + h * p.lse_stride_h + q_row0 + i] = lse;
        }
      }
    }
  }
};

}  // namespace spattn
