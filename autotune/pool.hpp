// The bounded NVRTC pool: compiles (and other independent CPU work) spread over a fixed
// number of threads. NVRTC and the kernel cache are safe to call from many threads.
#pragma once

#include <cstddef>
#include <functional>

namespace spattn::autotune {

// Threads for parallel compiles: $SPATTN_NVRTC_THREADS if set (a positive integer; throws
// kInvalidArgument naming the variable otherwise), else the hardware concurrency.
int nvrtc_threads();

// Calls fn(i) for every i in [0, count) on at most `threads` threads (the caller's
// thread is one of them) and returns when all are done. fn must not throw: callers
// record per-item failures themselves.
void parallel_for(size_t count, int threads, const std::function<void(size_t)>& fn);

}  // namespace spattn::autotune
