// PTX wrappers shared by the kernel templates of both families (sm80: mma.sync; sm90: wgmma).
// Device code only, compiled by NVRTC.
#pragma once

#include "spattn/params.cuh"
#include "spattn/warp.cuh"

namespace spattn {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  uint32_t r;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }\n" : "=r"(r) : "l"(p));
  return r;
}

// 16-byte async copy global -> shared; copies zeros when !valid (src is not read then).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
// 4-byte async copy global -> shared (cached in L1 too).
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// D = A * B + D, A 16x16 row-major, B 16x8 column-major, fp32 accumulators.
template <bool kBf16>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Packs two floats into one register of two 16-bit values (lo in the low half).
template <bool kBf16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (kBf16) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  }
  return r;
}

// *p += a, *(p + 1) += b as a reduction in global memory (p 8-byte aligned): one
// vector reduction on sm_90 and newer, two scalar ones before.
__device__ __forceinline__ void red_add2(float* p, float a, float b) {
#if __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(a), "f"(b) : "memory");
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

// Adds (a, b) to two adjacent fp32 accumulators (8-byte aligned): as a reduction, or
// (deterministic mode, one writer per launch) as a plain read-modify-write.
template <bool kAtomic>
__device__ __forceinline__ void accumulate2(float* p, float a, float b) {
  if (kAtomic) {
    red_add2(p, a, b);
  } else {
    float2 v = *reinterpret_cast<float2*>(p);
    v.x += a;
    v.y += b;
    *reinterpret_cast<float2*>(p) = v;
  }
}

// Two adjacent dK or dV values of a key row: stored as 16 bits at out when the work
// item is the row's only writer (out non-null, 4-byte aligned), else added into the
// fp32 accumulator at acc (atomically unless deterministic).
template <bool kAtomic, bool kBf16>
__device__ __forceinline__ void write_key_grad2(void* out, float* acc, float a, float b) {
  if (out)
    *reinterpret_cast<uint32_t*>(out) = pack2<kBf16>(a, b);
  else
    accumulate2<kAtomic>(acc, a, b);
}

// The rows a work item sees: of its document (KernelSpec::varlen; SpattnFwdParams::
// vl_docs): batch index, first query and key rows, lengths; of a whole problem: batch b,
// rows from 0, the tensors' lengths.
struct DocRows {
  int b, nq, nk;
  int64_t q_row0, k_row0;
  static __device__ __forceinline__ DocRows whole(int b, int nq, int nk) { return DocRows{b, nq, nk, 0, 0}; }
  static __device__ __forceinline__ DocRows of(const int32_t* vl_docs, int doc) {
    const int32_t* d = vl_docs + kSpattnDocInts * doc;
    return DocRows{__ldg(d), __ldg(d + 2), __ldg(d + 4), __ldg(d + 1), __ldg(d + 3)};
  }
};

// Element `col` of the 16-bit gradient row (batch b, key token j, KV head kvh) of an
// output with the given strides; null when out is (the accumulators are used).
__device__ __forceinline__ void* key_grad_row(void* out, int64_t stride_b, int64_t stride_n, int64_t stride_h, int b,
                                              int j, int kvh, int col) {
  return out ? static_cast<unsigned short*>(out) + b * stride_b + j * stride_n + kvh * stride_h + col : nullptr;
}

// The two 16-bit values of a register as floats (lo: the low half), pack2's inverse.
template <bool kBf16>
__device__ __forceinline__ void unpack2(uint32_t v, float& lo, float& hi) {
  if constexpr (kBf16) {
    lo = __uint_as_float(v << 16);
    hi = __uint_as_float(v & 0xffff0000u);
  } else {
    asm("{\n.reg .f16 l, h;\nmov.b32 {l, h}, %2;\ncvt.f32.f16 %0, l;\ncvt.f32.f16 %1, h;\n}\n"
        : "=f"(lo), "=f"(hi)
        : "r"(v));
  }
}

__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// Adaptive patterns' gates (SpattnGates): log2 of the gate of the block that holds query
// tile qt and key tile kt of (batch b, query head h); -inf where the gate removes it.
__device__ __forceinline__ float gate_log2(const SpattnGates& g, int b, int heads, int h, int qt, int kt) {
  const int64_t at = (((int64_t)b * heads + h) * g.rows + qt / g.q_tiles) * g.cols + kt / g.k_tiles;
  const float v = __ldg(g.gates + at);
  return v > 0.f ? log2f(v) : neg_inf();
}

// Stores the dS sum of the tile pair (qt, kt) of (b, h) at its chosen block's slot
// (SpattnGates::partials): J's position in the ascending chosen row, found by bisection.
__device__ __forceinline__ void store_gate_partial(const SpattnGates& g, int b, int heads, int h, int qt, int kt,
                                                   float sum) {
  const int J = kt / g.k_tiles;
  const int64_t row = ((int64_t)b * heads + h) * g.rows + qt / g.q_tiles;
  const int32_t* c = g.chosen + row * g.max_k;
  int lo = 0, hi = g.max_k;  // the first slot holding a block >= J (-1, past k_I, is past every block)
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    const int v = __ldg(c + mid);
    if (v >= 0 && v < J)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < g.max_k && __ldg(c + lo) == J)
    g.partials[((row * g.max_k + lo) * g.q_tiles + qt % g.q_tiles) * g.k_tiles + kt % g.k_tiles] = sum;
}

}  // namespace spattn
