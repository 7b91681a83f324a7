// Hopper (sm_90a) building blocks shared by the sm90 kernel family's templates
// (forward_sm90.cuh, backward_sm90.cuh): mbarriers, TMA, wgmma fences and shared-memory
// descriptors, register reallocation, named barriers, and the producer's tile loader.
// Device code only, compiled by NVRTC.
//
// Shared-memory tiles are stored as D/64 column chunks of [rows][128 bytes], with
// 16-byte chunk c of row r at position c ^ (r % 8): the layout TMA's 128-byte swizzle
// writes and the layout wgmma's descriptors describe (swizzle mode 1).
#pragma once

#include "spattn/params.cuh"
#include "spattn/ptx.cuh"

namespace spattn {
namespace sm90 {

// ---- mbarriers, TMA, wgmma, named barriers -------------------------------------------

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// An arrival on the barrier once every cp.async this thread issued before has completed
// (counted against the barrier's expected arrivals).
__device__ __forceinline__ void mbar_arrive_on_copies(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t ready;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(ready)
      : "r"(bar), "r"(parity)
      : "memory");
  return ready != 0;
}

__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %globaltimer;\n" : "=l"(t));
  return t;
}

// Waits until the phase of parity `parity` has completed. A freshly initialised barrier
// counts its (virtual) previous phase, of parity 1, as complete: producers wait on empty
// barriers with parity 1 first and so pass at once.
// A wait that lasts 10 s is a broken pipeline, not a slow one: it traps, so the launch
// fails with an error instead of hanging the process.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  if (mbar_try_wait(bar, parity)) return;
  const uint64_t start = global_ns();
  for (uint32_t n = 1; !mbar_try_wait(bar, parity); ++n)
    if (n % 1024 == 0 && global_ns() - start > 10000000000ull) __trap();
}

// One box of a 4-D tensor map ([B, N, H, D] as dims D, N, H, B) into shared memory,
// completing on `bar` with the box's bytes.
__device__ __forceinline__ void tma_load(uint32_t dst, const SpattnTensorMap& map, uint32_t bar, int c0, int c1,
                                         int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_but_one() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_one() { asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); }

// Keeps the compiler from moving accesses to wgmma accumulators across the asynchronous
// matrix instructions that read and write them.
template <int N>
__device__ __forceinline__ void fence_operands(float (&r)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) asm volatile("" : "+f"(r[k])::"memory");
}

// A descriptor the compiler must treat as unknown where this is called: used at the top
// of a loop body so that `desc + offset` is computed per use rather than hoisted out of
// the loop into registers, one pair per k-step (which crowds the accumulators out).
__device__ __forceinline__ uint64_t opaque(uint64_t desc) {
  asm volatile("" : "+l"(desc));
  return desc;
}

// Shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start address,
// leading and stride byte offsets (all >> 4), swizzle mode 1 = 128-byte swizzle. Adding
// (bytes >> 4) to a descriptor moves its start address.
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t leading, uint32_t stride) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>((leading & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>((stride & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

template <int kRegs>
__device__ __forceinline__ void regs_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void regs_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// Named barrier among `threads` threads (id 0 is __syncthreads()).
__device__ __forceinline__ void bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Arrival at a named barrier among `threads` threads, without waiting for it.
__device__ __forceinline__ void bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Stores four 8x8 matrices of 16-bit values transposed (stmatrix .trans): the register
// r[m] holds a thread's two values of matrix m in the mma accumulator layout (row
// lane / 4, columns 2 (lane % 4) and + 1); lane l gives the address of row l % 8 of
// matrix l / 8 as stored, i.e. of column l % 8 of the matrix as held.
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r[0]),
               "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a 128-byte-swizzled chunk.
__device__ __forceinline__ uint32_t swizzled(int row, int chunk) { return row * 128 + ((chunk ^ (row % 8)) * 16); }

// ---- the producer's tile loader ----------------------------------------------------------

// Loads tiles of head dim D for the producer warpgroup (128 threads, 4 warps; each
// tile's "full" mbarrier counts one arrival per producer warp).
template <int D>
struct TileLoader {
  static constexpr int kChunks = D / 64;    // 128-byte column chunks per row
  static constexpr int kRowChunks = D / 8;  // 16-byte chunks per row
  using elem = unsigned short;

  // Completes the gathered tile whose arrival is pending: its cp.async group done and
  // fenced for the async proxy that wgmma reads through, then one arrival per warp.
  static __device__ __forceinline__ void flush(uint32_t& pending) {
    if (!pending) return;
    cp_async_wait_all();
    fence_proxy_async();
    __syncwarp();
    if (threadIdx.x % 32 == 0) mbar_arrive(pending);
    pending = 0;
  }

  // A tile of `rows` rows in natural token order by TMA (one box per 64-column chunk),
  // or gathered through slots with cp.async into the same swizzled layout. Every
  // producer warp arrives once on `bar`; TMA adds the bytes. Gathered tiles arrive one
  // load late (`pending`): a warp's cp.async group is complete only when the next
  // gather has been issued, so two tiles are in flight. A TMA load completes the
  // pending gather first, and so does a wait that would block (wait_free): the
  // consumers never wait for a load the producer holds back.
  static __device__ __forceinline__ void load(uint32_t dst, uint32_t bar, bool tma, const SpattnTensorMap& map,
                                              int head, int b, const elem* base, int64_t stride, int rows,
                                              int slot0, int limit, const int32_t* slots, uint32_t& pending) {
    const int tid = threadIdx.x;
    const int lane = tid % 32;
    if (tma) {
      flush(pending);
      if (tid == 0) {
        mbar_arrive_expect_tx(bar, rows * D * 2);
#pragma unroll
        for (int c = 0; c < kChunks; ++c) tma_load(dst + c * rows * 128, map, bar, c * 64, slot0, head, b);
      } else if (lane == 0) {
        mbar_arrive(bar);
      }
      return;
    }
    const int chunk = tid % kRowChunks;
    const int step = 128 / kRowChunks;
    const uint32_t cdst = dst + (chunk / 8) * rows * 128;
#pragma unroll 1
    for (int r = tid / kRowChunks; r < rows; r += step) {
      const int token = slots ? __ldg(slots + slot0 + r) : slot0 + r;
      const bool valid = token >= 0 && token < limit;
      cp_async_16(cdst + r * 128 + (((chunk % 8) ^ (r % 8)) * 16), base + (int64_t)(valid ? token : 0) * stride + chunk * 8,
                  valid);
    }
    cp_async_commit();
    if (pending) {
      cp_async_wait_but_one();
      fence_proxy_async();
      __syncwarp();
      if (lane == 0) mbar_arrive(pending);
    }
    pending = bar;
  }

  // Waits for a stage to be free. Before blocking, the pending gather is completed: the
  // consumers may need it to free the stage (the forward kernel issues P V of tile n - 1
  // together with, and after, S of tile n).
  static __device__ __forceinline__ void wait_free(uint32_t bar, uint32_t parity, uint32_t& pending) {
    if (__all_sync(0xffffffffu, mbar_try_wait(bar, parity))) return;
    flush(pending);
    mbar_wait(bar, parity);
  }
};

}  // namespace sm90
}  // namespace spattn
