#include "autotune/pool.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "common/check.hpp"

namespace spattn::autotune {

int nvrtc_threads() {
  if (const char* env = std::getenv("SPATTN_NVRTC_THREADS"); env && *env) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    SPATTN_REQUIRE(end && *end == '\0' && n >= 1 && n <= 1024,
                   "SPATTN_NVRTC_THREADS='{}' is not a thread count: use an integer from 1 to 1024", env);
    return static_cast<int>(n);
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

void parallel_for(size_t count, int threads, const std::function<void(size_t)>& fn) {
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1)) < count;) fn(i);
  };
  const size_t extra = std::min<size_t>(count, static_cast<size_t>(std::max(1, threads))) - (count > 0 ? 1 : 0);
  std::vector<std::thread> pool;
  pool.reserve(extra);
  for (size_t t = 0; t < extra; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
}

}  // namespace spattn::autotune
