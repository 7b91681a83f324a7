// Runs a work function on several threads (internal to the host references).
#pragma once

#include <cstdint>
#include <functional>

namespace spattn::detail {

// Calls `work` on min(threads, max_useful) threads at once (threads <= 0: one per
// hardware thread) and waits; `work` takes its items from a shared counter.
void run_workers(int threads, int64_t max_useful, const std::function<void()>& work);

}  // namespace spattn::detail
