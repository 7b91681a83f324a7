// Mamba selective scan (S6), forward, as a chunked two-level scan with fp32 state.
//
//   Δ_t = softplus(Δraw_t + bias)      A = -exp(A_log)           (per channel, per state n)
//   h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t    (zero-order hold for A, Euler for B, as in Mamba)
//   y_t = (C_t · h_t + D x_t) * silu(z_t)
//
// A CTA owns kChannels consecutive channels of one batch row (one channel per lane, so
// every load of x, Δ, z and store of y is a coalesced row segment) and walks the sequence
// in chunks of kSegments * kSteps steps. Warp row s of the CTA owns steps
// [s * kSteps, (s + 1) * kSteps) of a chunk:
//   1. pass 1: from h = 0, each thread runs its steps sequentially and keeps the local
//      end state hl and ΣΔ over its steps; the decay of the whole segment is
//      exp(A ΣΔ) (a product of exp(Δ_t A) is the exp of the sum, one exp per state
//      instead of a running product, and ≤ 1 since A < 0, Δ ≥ 0: no overflow);
//   2. combine: segment s starts from the chunk's carry composed with segments 0..s-1,
//      h ← exp(A ΣΔ_s') h + hl_s' (serial over at most kSegments - 1 segments);
//   3. pass 2: the thread reruns its steps from that start state, forming y_t; the
//      last segment's end state is the next chunk's carry.
// Work per element is two state updates plus kSegments / kSteps for the combine; x and
// Δ stay in registers between the passes, B and C of the chunk in shared memory.
// kSegments == 1 is the plain sequential scan (one pass, no combine). Steps past the
// sequence end are skipped (identity).
//
// Long sequences with few channels split the time axis over CTAs (gridDim.y, see
// SpattnScanParams): a summarising launch walks each split from h = 0 with pass 1 and
// the combine only (each chunk's end state is the last segment's start state composed
// with its own segment), writing the split's end state and ΣΔ; the output launch starts
// split s from the composition of splits 0..s-1 (serial, one exp per state and split). Nothing here depends on the config's values for
// results beyond fp32 rounding order.
#pragma once

#include "spattn/linear_common.cuh"

namespace spattn::linear {

// Dynamic shared memory of the scan, in floats (the host computes the same formula in
// linear/scan.cpp: scan_smem_bytes).
template <class Cfg>
__host__ __device__ constexpr int scan_smem_floats() {
  constexpr int chunk = Cfg::kSegments * Cfg::kSteps;
  return 2 * chunk * Cfg::kState +
         (Cfg::kSegments > 1 ? Cfg::kSegments * Cfg::kChannels + (Cfg::kSegments + 2) * Cfg::kState * Cfg::kChannels
                             : 0);
}

template <class Cfg>
__device__ void selective_scan(const SpattnScanParams& p) {
  constexpr int N = Cfg::kState, C = Cfg::kChannels, S = Cfg::kSegments, T = Cfg::kSteps;
  constexpr int kChunk = S * T;
  constexpr int kThreads = C * S;
  constexpr float kLog2e = 1.4426950408889634f;

  extern __shared__ float smem[];
  float* s_b = smem;                  // [kChunk][N]
  float* s_c = s_b + kChunk * N;      // [kChunk][N]
  float* s_dsum = s_c + kChunk * N;   // [S][C]        ΣΔ of each segment
  float* s_hl = s_dsum + S * C;       // [S][N][C]     local end state of each segment
  float* s_carry = s_hl + S * N * C;  // [2][N][C]     chunk carry, double-buffered by chunk parity

  const int tid = threadIdx.x;
  const int lane_ch = tid % C, seg = tid / C;
  const int b = blockIdx.z, split = blockIdx.y;
  const int ch = blockIdx.x * C + lane_ch;
  const bool active = ch < p.channels;
  const bool summarise = p.summarise != 0;
  // This CTA's steps [l_begin, L): the split's (its end is a chunk boundary or the sequence's).
  const int l_begin = p.splits > 1 ? split * p.split_length : 0;
  const int L = p.splits > 1 ? min(p.length, l_begin + p.split_length) : p.length;
  const int64_t split_row = ((int64_t)b * p.splits + split) * p.channels + ch;  // into split_dsum (x N: split_h)

  // A * log2(e) per state, finite (so that Δ = 0 gives exp(0) = 1 even for absurd A_log).
  float a2[N];
  const float bias = active && p.delta_bias ? p.delta_bias[ch] : 0.f;
  const float dskip = active && p.d_skip ? p.d_skip[ch] : 0.f;
#pragma unroll
  for (int n = 0; n < N; ++n)
    a2[n] = active ? fmaxf(-expf(p.a_log[(int64_t)ch * N + n]) * kLog2e, -3.0e38f) : 0.f;

  const int64_t x_base = (int64_t)b * p.x_stride_b + ch;
  const int64_t dt_base = (int64_t)b * p.delta_stride_b + ch;
  const int64_t z_base = (int64_t)b * p.z_stride_b + ch;
  const int64_t y_base = (int64_t)b * p.y_stride_b + ch;
  const int64_t b_base = (int64_t)b * p.b_stride_b;
  const int64_t c_base = (int64_t)b * p.c_stride_b;

  float h[N];  // the running state (kSegments == 1) or the segment's start state
#pragma unroll
  for (int n = 0; n < N; ++n) h[n] = 0.f;
  if (!summarise && split > 0 && active && (S == 1 || seg == 0)) {
    // The state entering this split: splits 0..split-1 composed, each h <- exp(A ΣΔ) h + h_end.
    const int64_t row0 = (int64_t)b * p.splits * p.channels + ch;
    for (int s = 0; s < split; ++s) {
      const float ds = p.split_dsum[row0 + (int64_t)s * p.channels];
      const float* he = p.split_h + (row0 + (int64_t)s * p.channels) * N;
#pragma unroll
      for (int n = 0; n < N; ++n) h[n] = fast_exp2(ds * a2[n]) * h[n] + he[n];
    }
  }
  float total_dsum = 0.f;  // ΣΔ over this CTA's steps (summarising launch; last segment's threads)
  if constexpr (S > 1) {
    // Buffer 0: the carry into the first chunk (written by segment 0's threads).
    if (seg == 0)
#pragma unroll
      for (int n = 0; n < N; ++n) s_carry[n * C + lane_ch] = h[n];
  }

  int parity = 0;
  for (int l0 = l_begin; l0 < L; l0 += kChunk, parity ^= 1) {
    __syncthreads();  // the previous chunk is done with s_b/s_c and has written its carry
    for (int k = tid; k < kChunk * N; k += kThreads) {
      const int t = k / N, n = k % N, l = l0 + t;
      s_b[k] = l < L ? load_elem<Cfg::kDtype>(p.b, b_base + (int64_t)l * p.b_stride_l + n) : 0.f;
      s_c[k] = l < L ? load_elem<Cfg::kDtype>(p.c, c_base + (int64_t)l * p.c_stride_l + n) : 0.f;
    }
    const int t0 = seg * T;  // this thread's first step in the chunk
    float xs[T], dts[T];
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const int l = l0 + t0 + t;
      xs[t] = 0.f;
      dts[t] = 0.f;
      if (active && l < L) {
        xs[t] = load_elem<Cfg::kDtype>(p.x, x_base + (int64_t)l * p.x_stride_l);
        float d = load_elem<Cfg::kDtype>(p.delta, dt_base + (int64_t)l * p.delta_stride_l) + bias;
        if (p.delta_softplus) d = d <= 20.f ? log1pf(expf(d)) : d;  // torch's threshold
        dts[t] = d;
      }
    }
    __syncthreads();  // s_b/s_c of the chunk are in

    if constexpr (S > 1) {
      // Pass 1: local end state from 0 and ΣΔ of this segment.
      float hl[N];
#pragma unroll
      for (int n = 0; n < N; ++n) hl[n] = 0.f;
      float dsum = 0.f;
#pragma unroll
      for (int t = 0; t < T; ++t) {
        if (l0 + t0 + t >= L) break;  // uniform per warp row
        const float dt = dts[t], dx = dts[t] * xs[t];
        dsum += dt;
        const float* bt = s_b + (t0 + t) * N;
#pragma unroll
        for (int n = 0; n < N; ++n) hl[n] = fast_exp2(dt * a2[n]) * hl[n] + dx * bt[n];
      }
      s_dsum[seg * C + lane_ch] = dsum;
#pragma unroll
      for (int n = 0; n < N; ++n) s_hl[(seg * N + n) * C + lane_ch] = hl[n];
      __syncthreads();
      // Combine: carry into the chunk, then segments 0..seg-1.
      const float* carry = s_carry + parity * N * C;
#pragma unroll
      for (int n = 0; n < N; ++n) h[n] = carry[n * C + lane_ch];
      for (int s = 0; s < seg; ++s) {
        const float ds = s_dsum[s * C + lane_ch];
        total_dsum += ds;
#pragma unroll
        for (int n = 0; n < N; ++n) h[n] = fast_exp2(ds * a2[n]) * h[n] + s_hl[(s * N + n) * C + lane_ch];
      }
      if (summarise) {
        // No outputs: the last segment's end state is the chunk's, the next chunk's carry.
        if (seg == S - 1) {
          total_dsum += dsum;
          float* next = s_carry + (parity ^ 1) * N * C;
#pragma unroll
          for (int n = 0; n < N; ++n) {
            h[n] = fast_exp2(dsum * a2[n]) * h[n] + hl[n];
            next[n * C + lane_ch] = h[n];
          }
        }
        continue;
      }
    }

    // Pass 2 (the only pass when S == 1): the outputs.
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const int l = l0 + t0 + t;
      if (l >= L) break;
      const float dt = dts[t], dx = dts[t] * xs[t];
      const float* bt = s_b + (t0 + t) * N;
      const float* ct = s_c + (t0 + t) * N;
      float y = 0.f;
#pragma unroll
      for (int n = 0; n < N; ++n) {
        h[n] = fast_exp2(dt * a2[n]) * h[n] + dx * bt[n];
        y += ct[n] * h[n];
      }
      total_dsum += dt;  // (S == 1 here when summarising)
      if (active && !summarise) {
        y += dskip * xs[t];
        if (p.z) {
          const float z = load_elem<Cfg::kDtype>(p.z, z_base + (int64_t)l * p.z_stride_l);
          // silu(z). The approximate division (2 ulp) has no slow-path call, so no stack
          // frame; for z < -88, expf(-z) = inf and the quotient is 0, never NaN.
          y *= __fdividef(z, 1.f + expf(-z));
        }
        store_elem<Cfg::kDtype>(p.y, y_base + (int64_t)l * p.y_stride_l, y);
      }
    }
    if constexpr (S > 1) {
      // The last segment's end state is the carry into the next chunk (the other buffer:
      // this chunk's combine may still be reading this one).
      if (seg == S - 1) {
        float* next = s_carry + (parity ^ 1) * N * C;
#pragma unroll
        for (int n = 0; n < N; ++n) next[n * C + lane_ch] = h[n];
      }
    }
  }

  if (summarise) {
    if (active && seg == S - 1) {
      p.split_dsum[split_row] = total_dsum;
#pragma unroll
      for (int n = 0; n < N; ++n) p.split_h[split_row * N + n] = h[n];
    }
    return;
  }
  if (p.final_state && active && seg == S - 1 && split == p.splits - 1) {
    // With S > 1, h is the end state of the last segment of the last chunk: steps past
    // the end are identities, so it is the state after step L - 1. (L >= 1.)
    float* out = p.final_state + ((int64_t)b * p.channels + ch) * N;
#pragma unroll
    for (int n = 0; n < N; ++n) out[n] = h[n];
  }
}

}  // namespace spattn::linear
