// Processes racing on one key: exactly one compiles, every one gets a good kernel.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "tests/cache/cache_test_util.hpp"

namespace spattn {
namespace {

namespace fs = std::filesystem;
using test::config_in;
using test::fake_kernel;
using test::fake_manifest;
using test::TempDir;

constexpr int kProcesses = 8;

enum ChildExit { kChildHit = 10, kChildMiss = 11, kChildWrongKernel = 12, kChildError = 13 };

// Runs in a forked child: waits for the start signal, asks the cache, reports by exit code.
[[noreturn]] void child(const fs::path& cache_dir, const fs::path& compile_log, int start_fd) {
  char c;
  while (::read(start_fd, &c, 1) < 0 && errno == EINTR) {
  }
  int code = kChildError;
  try {
    KernelCache cache(config_in(cache_dir));
    const CompiledKernel expected = fake_kernel(150 * 1024, 77);
    const CacheLookup r = cache.get_or_compile(fake_manifest("raced"), [&] {
      // One byte per compile, appended atomically; then take long enough for every
      // other process to arrive and wait.
      const int fd = ::open(compile_log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        (void)!::write(fd, "c", 1);
        ::close(fd);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      return expected;
    });
    if (r.kernel.cubin != expected.cubin || r.kernel.lowered_names != expected.lowered_names) {
      code = kChildWrongKernel;
    } else {
      code = r.hit ? kChildHit : kChildMiss;
    }
  } catch (...) {
    code = kChildError;
  }
  ::_exit(code);  // no atexit handlers, no gtest teardown in the child
}

struct RaceResult {
  int hits = 0, misses = 0, failures = 0;
  std::size_t compiles = 0;
};

RaceResult race(const fs::path& cache_dir, const fs::path& compile_log) {
  int pipe_fds[2];
  EXPECT_EQ(::pipe(pipe_fds), 0);
  std::vector<pid_t> children;
  for (int i = 0; i < kProcesses; ++i) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(pipe_fds[1]);
      child(cache_dir, compile_log, pipe_fds[0]);
    }
    EXPECT_GT(pid, 0);
    children.push_back(pid);
  }
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);  // every child's read() returns now: go
  RaceResult r;
  for (pid_t pid : children) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (code == kChildHit) ++r.hits;
    else if (code == kChildMiss) ++r.misses;
    else ++r.failures;
  }
  r.compiles = fs::exists(compile_log) ? fs::file_size(compile_log) : 0;
  return r;
}

TEST(CacheRace, EightProcessesOneCompile) {
  TempDir dir("race");
  const RaceResult r = race(dir.path() / "cache", dir.path() / "compiles");
  EXPECT_EQ(r.compiles, 1u);
  EXPECT_EQ(r.failures, 0);
  EXPECT_EQ(r.misses, 1);
  EXPECT_EQ(r.hits, kProcesses - 1);
  KernelCache cache(config_in(dir.path() / "cache"));
  EXPECT_EQ(cache.list().size(), 1u);
  EXPECT_TRUE(cache.verify().bad.empty());
  EXPECT_TRUE(fs::is_empty(dir.path() / "cache" / "locks"));
}

TEST(CacheRace, EightProcessesOnACorruptEntryRecompileOnce) {
  TempDir dir("race");
  const fs::path cache_dir = dir.path() / "cache";
  {
    KernelCache cache(config_in(cache_dir));
    const std::string key = fake_manifest("raced").key();
    cache.get_or_compile(fake_manifest("raced"), [] { return fake_kernel(150 * 1024, 77); });
    std::string bytes = test::slurp(cache.path_for(key));
    bytes[bytes.size() / 2] ^= 1;
    test::spit(cache.path_for(key), bytes);
  }
  const RaceResult r = race(cache_dir, dir.path() / "compiles");
  EXPECT_EQ(r.compiles, 1u);
  EXPECT_EQ(r.failures, 0);
  EXPECT_EQ(r.hits + r.misses, kProcesses);
  KernelCache cache(config_in(cache_dir));
  EXPECT_TRUE(cache.verify().bad.empty());
}

}  // namespace
}  // namespace spattn
