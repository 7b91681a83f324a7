#include "autotune/isolate.hpp"

#include "runtime/nvrtc.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "common/check.hpp"
#include "common/log.hpp"

namespace spattn::autotune {

using nlohmann::json;

const char* item_status_name(ItemStatus status) {
  switch (status) {
    case ItemStatus::kDone: return "done";
    case ItemStatus::kCrashed: return "crashed";
    case ItemStatus::kTimedOut: return "timed out";
    case ItemStatus::kNotRun: return "not run";
  }
  return "?";
}

bool children_can_use_cuda() {
  // NVRTC initialises the driver too (seen with NVRTC 13: a child forked after one
  // compile gets CUDA_ERROR_NOT_INITIALIZED from cuInit).
  if (runtime::nvrtc_has_run()) return false;
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (!lib) return true;
  dlclose(lib);
  return false;
}

namespace {

json run_one(const ItemFn& fn, size_t index) {
  try {
    json v = fn(index);
    return v.is_object() ? v : json{{"value", v}};
  } catch (const std::exception& e) {
    return json{{"error", e.what()}, {"restart", true}};
  } catch (...) {
    return json{{"error", "unknown exception"}, {"restart", true}};
  }
}

bool wants_restart(const json& v) { return v.is_object() && v.value("restart", false); }

void write_line(int fd, const json& message) {
  const std::string line = message.dump() + "\n";
  size_t off = 0;
  while (off < line.size()) {
    const ssize_t n = ::write(fd, line.data() + off, line.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) _exit(3);  // the parent is gone
    off += static_cast<size_t>(n);
  }
}

[[noreturn]] void child_main(int fd, size_t first, size_t count, const ItemFn& fn) {
  // Die with the parent (e.g. Ctrl-C on `spattn autotune`), not linger on the GPU.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  // A crashing candidate should not leave a multi-gigabyte core file behind.
  const rlimit no_core{0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  for (size_t i = first; i < count; ++i) {
    write_line(fd, json{{"begin", i}});
    const json v = run_one(fn, i);
    write_line(fd, json{{"end", i}, {"value", v}});
    if (wants_restart(v)) break;
  }
  ::close(fd);
  std::fflush(nullptr);
  _exit(0);
}

std::string describe_exit(int status) {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return fmt::format("the process was killed by signal {} ({})", sig, strsignal(sig));
  }
  if (WIFEXITED(status)) return fmt::format("the process exited with status {}", WEXITSTATUS(status));
  return "the process ended";
}

int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

}  // namespace

std::vector<ItemOutcome> run_items(size_t count, const ItemFn& fn, const IsolateOptions& options,
                                   const ItemDone& done) {
  std::vector<ItemOutcome> out(count);
  auto finish = [&](size_t i, ItemOutcome o) {
    out[i] = std::move(o);
    if (done) done(i, out[i]);
  };

  if (!options.isolate) {
    for (size_t i = 0; i < count; ++i) {
      ItemOutcome o;
      o.status = ItemStatus::kDone;
      o.value = run_one(fn, i);
      const bool stop = wants_restart(o.value);
      finish(i, std::move(o));
      if (stop) {
        for (size_t j = i + 1; j < count; ++j)
          finish(j, ItemOutcome{ItemStatus::kNotRun, {},
                                "not run: an earlier item failed in this process (run isolated to continue past it)"});
        break;
      }
    }
    return out;
  }

  const auto timeout = std::chrono::duration<double>(options.item_timeout_s);
  size_t next = 0;
  while (next < count) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0)
      SPATTN_FAIL(ErrorCode::kInternal, "pipe2 failed: {}", std::strerror(errno));
    std::fflush(nullptr);  // or buffered output would be written twice
    const pid_t pid = ::fork();
    if (pid < 0) {
      ::close(fds[0]);
      ::close(fds[1]);
      SPATTN_FAIL(ErrorCode::kInternal, "fork failed: {}", std::strerror(errno));
    }
    if (pid == 0) {
      ::close(fds[0]);
      child_main(fds[1], next, count, fn);
    }
    ::close(fds[1]);
    const int fd = fds[0];

    constexpr size_t kNone = static_cast<size_t>(-1);
    size_t current = kNone;  // begun, not ended
    bool progressed = false;         // this child finished at least one item
    std::string buffer;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    bool timed_out = false;
    for (bool open = true; open;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        timed_out = true;
        break;
      }
      pollfd p{fd, POLLIN, 0};
      const int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
      if (r < 0 && errno == EINTR) continue;
      if (r == 0) continue;
      char chunk[4096];
      const ssize_t n = ::read(fd, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // EOF: the child is done or dead
      buffer.append(chunk, static_cast<size_t>(n));
      for (size_t nl; (nl = buffer.find('\n')) != std::string::npos;) {
        const std::string line = buffer.substr(0, nl);
        buffer.erase(0, nl + 1);
        json msg;
        try {
          msg = json::parse(line);
        } catch (const json::exception&) {
          log::warn("autotune: unreadable message from a worker process: {}", line);
          continue;
        }
        if (msg.contains("begin")) {
          current = msg["begin"].get<size_t>();
          deadline = std::chrono::steady_clock::now() + timeout;
        } else if (msg.contains("end")) {
          const size_t i = msg["end"].get<size_t>();
          finish(i, ItemOutcome{ItemStatus::kDone, msg.value("value", json::object()), ""});
          current = kNone;
          progressed = true;
          next = i + 1;
          deadline = std::chrono::steady_clock::now() + timeout;
        }
      }
    }
    if (timed_out) ::kill(pid, SIGKILL);
    ::close(fd);
    const int status = wait_child(pid);
    if (current != kNone || (!progressed && next < count)) {
      // The item in progress (or, if the child died before starting one, the next item)
      // is charged with the failure so that every round makes progress.
      const size_t i = current != kNone ? current : next;
      ItemOutcome o;
      o.status = timed_out ? ItemStatus::kTimedOut : ItemStatus::kCrashed;
      o.detail = timed_out ? fmt::format("no result within {:.0f} s; the process was killed", options.item_timeout_s)
                           : describe_exit(status);
      finish(i, std::move(o));
      next = i + 1;
    }
  }
  return out;
}

}  // namespace spattn::autotune
