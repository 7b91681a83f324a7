#include "cache/files.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include <chrono>
#include <thread>

#include "common/check.hpp"
#include "common/log.hpp"
#include "common/text.hpp"

namespace spattn::cache {

namespace fs = std::filesystem;

namespace {

// Closes a descriptor on scope exit.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

int open_retry(const char* path, int flags, mode_t mode = 0) {
  int fd;
  do {
    fd = ::open(path, flags | O_CLOEXEC, mode);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

// Reads up to `size` bytes at `offset`; returns the count read or -1 with errno set.
ssize_t pread_full(int fd, char* out, std::size_t size, std::uint64_t offset) {
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, out + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return static_cast<ssize_t>(done);
}

bool write_full(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

// Opens a cache file for reading: never follows a link, never waits on a FIFO, and
// checks that it is a regular file. Returns the descriptor (or -1 with *error and
// *problem set) and its stat.
int open_cache_file(const fs::path& path, int flags, struct stat& st, int* error, std::string* problem) {
  const int fd = open_retry(path.c_str(), flags | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) {
    *error = errno;
    if (errno == ELOOP) *problem = "not a regular file (a symbolic link)";
    return -1;
  }
  if (::fstat(fd, &st) != 0) {
    *error = errno;
    ::close(fd);
    return -1;
  }
  if (!S_ISREG(st.st_mode)) {
    *error = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
    *problem = "not a regular file (" + file_kind(st.st_mode) + ")";
    ::close(fd);
    return -1;
  }
  // Regular files never block; reads from here on are ordinary.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

void fsync_dir(const fs::path& dir) {
  // Makes the rename durable. Some file systems refuse fsync on directories; the data
  // itself is already on disk, so that is not worth failing for.
  Fd fd(open_retry(dir.c_str(), O_RDONLY | O_DIRECTORY));
  if (fd.get() >= 0) ::fsync(fd.get());
}

}  // namespace

std::string file_kind(unsigned mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISREG(mode)) return "a regular file";
  return "not a file";
}

std::string ReadResult::reason() const { return !problem.empty() ? problem : std::string(std::strerror(error)); }
std::string PrefixResult::reason() const { return !problem.empty() ? problem : std::string(std::strerror(error)); }

std::string ownership_problem(unsigned uid, unsigned mode) {
  const uid_t me = ::geteuid();
  if (uid != me && uid != 0) return fmt::format("owned by another user (uid {}; this process runs as uid {})", uid, me);
  if ((mode & (S_IWGRP | S_IWOTH)) != 0) return fmt::format("writable by other users (mode {:04o})", mode & 07777);
  return {};
}

int make_directory(const fs::path& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
  if (dir.has_parent_path() && dir.parent_path() != dir) {
    if (const int err = make_directory(dir.parent_path()); err != 0) return err;
  }
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return errno;
  return 0;
}

int remove_path(const fs::path& path, bool* removed) {
  if (removed) *removed = false;
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(path, ec);
  if (ec || !fs::exists(st)) return ec && ec.value() != ENOENT ? ec.value() : 0;
  // remove_all does not follow links: a link to a directory is removed, not its target.
  const std::uintmax_t n = st.type() == fs::file_type::directory ? fs::remove_all(path, ec) : fs::remove(path, ec);
  if (ec) return ec.value();
  if (removed) *removed = n > 0;
  return 0;
}

ReadResult read_file(const fs::path& path, std::uint64_t max_bytes) {
  ReadResult r;
  struct stat st {};
  Fd fd(open_cache_file(path, O_RDONLY, st, &r.error, &r.problem));
  if (fd.get() < 0) return r;
  r.mode = st.st_mode;
  r.uid = st.st_uid;
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes) {
    r.error = EFBIG;
    return r;
  }
  // Size from fstat; a file that shrinks or grows meanwhile just fails its checks.
  r.bytes.resize(static_cast<std::size_t>(st.st_size));
  const ssize_t n = pread_full(fd.get(), r.bytes.data(), r.bytes.size(), 0);
  if (n < 0) {
    r.error = errno;
    r.bytes.clear();
    return r;
  }
  r.bytes.resize(static_cast<std::size_t>(n));
  return r;
}

PrefixResult read_prefix(const fs::path& path, std::size_t max_bytes) {
  PrefixResult r;
  struct stat st {};
  Fd fd(open_cache_file(path, O_RDONLY, st, &r.error, &r.problem));
  if (fd.get() < 0) return r;
  r.file_size = static_cast<std::uint64_t>(st.st_size);
  r.bytes.resize(static_cast<std::size_t>(std::min<std::uint64_t>(max_bytes, r.file_size)));
  const ssize_t n = pread_full(fd.get(), r.bytes.data(), r.bytes.size(), 0);
  if (n < 0) {
    r.error = errno;
    r.bytes.clear();
    return r;
  }
  r.bytes.resize(static_cast<std::size_t>(n));
  return r;
}

ReadResult read_range(const fs::path& path, std::uint64_t offset, std::size_t size) {
  ReadResult r;
  struct stat st {};
  Fd fd(open_cache_file(path, O_RDONLY, st, &r.error, &r.problem));
  if (fd.get() < 0) return r;
  r.bytes.resize(size);
  const ssize_t n = pread_full(fd.get(), r.bytes.data(), size, offset);
  if (n < 0) {
    r.error = errno;
    r.bytes.clear();
    return r;
  }
  r.bytes.resize(static_cast<std::size_t>(n));
  return r;
}

bool write_u64_at(const fs::path& path, std::uint64_t offset, std::uint64_t value) {
  struct stat st {};
  int error = 0;
  std::string problem;
  Fd fd(open_cache_file(path, O_WRONLY, st, &error, &problem));
  if (fd.get() < 0) return false;
  if (static_cast<std::uint64_t>(st.st_size) < offset + 8) return false;  // never extend a file
  char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  ssize_t n;
  do {
    n = ::pwrite(fd.get(), bytes, sizeof bytes, static_cast<off_t>(offset));
  } while (n < 0 && errno == EINTR);
  return n == static_cast<ssize_t>(sizeof bytes);
}

bool is_temp_name(const std::string& name) {
  return name.size() > 5 && name.front() == '.' && name.ends_with(".tmp");
}

AtomicFile::AtomicFile(const fs::path& target) : target_(target) {
  static std::atomic<unsigned> counter{0};
  temp_ = target.parent_path() / ("." + target.filename().string() + "." + std::to_string(::getpid()) +
                                  "." + std::to_string(counter++) + ".tmp");
  // Not group- or world-writable whatever the umask: the cache refuses files others can
  // change (ownership_problem).
  fd_ = open_retry(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0644);
  if (fd_ < 0) {
    SPATTN_FAIL(ErrorCode::kIo, "cannot create '{}': {}", temp_.string(), std::strerror(errno));
  }
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(temp_.c_str());
  }
}

void AtomicFile::append(std::string_view bytes) {
  SPATTN_ASSERT(fd_ >= 0);
  if (!write_full(fd_, bytes.data(), bytes.size())) {
    SPATTN_FAIL(ErrorCode::kIo, "cannot write '{}': {}", temp_.string(), std::strerror(errno));
  }
}

void AtomicFile::commit() {
  SPATTN_ASSERT(fd_ >= 0);
  if (::fsync(fd_) != 0) {
    SPATTN_FAIL(ErrorCode::kIo, "cannot write '{}': {}", temp_.string(), std::strerror(errno));
  }
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0 || ::rename(temp_.c_str(), target_.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp_.c_str());
    SPATTN_FAIL(ErrorCode::kIo, "cannot write '{}': {}", target_.string(), std::strerror(err));
  }
  fsync_dir(target_.parent_path());
}

InputFile::InputFile(const fs::path& path) : path_(path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
  fd_ = open_retry(path.c_str(), O_RDONLY | O_NONBLOCK);
  struct stat st {};
  if (fd_ < 0 || ::fstat(fd_, &st) != 0) {
    SPATTN_FAIL(ErrorCode::kIo, "cannot open '{}': {}", detail::printable(path.string()), std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    SPATTN_FAIL(ErrorCode::kIo, "'{}' is {}, not a regular file", detail::printable(path.string()),
                file_kind(st.st_mode));
  }
  ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_NONBLOCK);
  size_ = static_cast<std::uint64_t>(st.st_size);
}

InputFile::~InputFile() {
  if (fd_ >= 0) ::close(fd_);
}

void InputFile::read(std::uint64_t offset, std::size_t count, std::string& out) const {
  out.resize(count);
  const ssize_t n = pread_full(fd_, out.data(), count, offset);
  if (n < 0) SPATTN_FAIL(ErrorCode::kIo, "cannot read '{}': {}", path_.string(), std::strerror(errno));
  if (static_cast<std::size_t>(n) != count) {
    SPATTN_FAIL(ErrorCode::kIo, "'{}' changed while it was read", path_.string());
  }
}

void write_atomic(const fs::path& target, std::string_view bytes) {
  AtomicFile file(target);
  file.append(bytes);
  file.commit();
}

fs::path output_target(const fs::path& path) {
  fs::path p = path;
  for (int links = 0;; ++links) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) {
      if (errno != ENOENT) {
        SPATTN_FAIL(ErrorCode::kIo, "cannot write '{}': {}", detail::printable(p.string()), std::strerror(errno));
      }
      // A link into /proc/self/fd whose text is no path ("pipe:[123]"): what the kernel
      // reaches through it is a pipe or socket, which is not replaced either.
      if (links > 0 && ::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
        SPATTN_FAIL(ErrorCode::kInvalidArgument,
                    "'{}' is {}; an archive is written as a new regular file that replaces the old one (use - for "
                    "standard output)",
                    detail::printable(path.string()), file_kind(st.st_mode));
      }
      return p;  // a new file (its directory is checked when it is created)
    }
    if (S_ISREG(st.st_mode)) return p;
    if (!S_ISLNK(st.st_mode)) {
      SPATTN_FAIL(ErrorCode::kInvalidArgument,
                  "'{}' is {}; an archive is written as a new regular file that replaces the old one (use - for "
                  "standard output)",
                  detail::printable(p.string()), file_kind(st.st_mode));
    }
    SPATTN_REQUIRE(links < 40, "'{}': too many levels of symbolic links", detail::printable(path.string()));
    std::error_code ec;
    const fs::path to = fs::read_symlink(p, ec);
    if (ec) SPATTN_FAIL(ErrorCode::kIo, "cannot read link '{}': {}", detail::printable(p.string()), ec.message());
    p = to.is_absolute() ? to : p.parent_path() / to;
  }
}

std::optional<FileLock> FileLock::try_acquire(const fs::path& path) {
  Fd fd(open_retry(path.c_str(), O_RDWR | O_NOFOLLOW | O_NONBLOCK));
  if (fd.get() < 0) return std::nullopt;
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) return std::nullopt;
  struct stat held {}, current {};
  if (::fstat(fd.get(), &held) == 0 && ::lstat(path.c_str(), &current) == 0 && held.st_dev == current.st_dev &&
      held.st_ino == current.st_ino) {
    return FileLock(fd.release(), path);
  }
  return std::nullopt;
}

std::optional<FileLock> FileLock::acquire(const fs::path& path, int* error, double timeout_s) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  bool told = false;
  for (;;) {
    Fd fd(open_retry(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK, 0644));
    if (fd.get() < 0) {
      if (error) *error = errno;
      return std::nullopt;
    }
    // Poll rather than block: a waiter says what it waits for, and gives up eventually
    // (a holder that hangs must not hang every later process).
    auto pause = std::chrono::milliseconds(1);
    int rc;
    for (;;) {
      rc = ::flock(fd.get(), LOCK_EX | LOCK_NB);
      if (rc == 0 || (errno != EWOULDBLOCK && errno != EINTR)) break;
      const double waited = std::chrono::duration<double>(clock::now() - start).count();
      if (waited >= timeout_s) {
        log::warn("gave up waiting for the kernel cache lock '{}' after {:.0f} s", path.string(), waited);
        if (error) *error = ETIMEDOUT;
        return std::nullopt;
      }
      if (!told && waited >= 1.0) {
        log::info("waiting for another process to finish compiling (lock '{}')", path.string());
        told = true;
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::milliseconds(50));
    }
    if (rc != 0) {
      if (error) *error = errno;
      return std::nullopt;
    }
    // The previous holder may have unlinked the file while we waited: then we hold a lock
    // nobody else will ever look at. Only a lock on the file at `path` counts.
    struct stat held {}, current {};
    if (::fstat(fd.get(), &held) == 0 && ::stat(path.c_str(), &current) == 0 &&
        held.st_dev == current.st_dev && held.st_ino == current.st_ino) {
      return FileLock(fd.release(), path);
    }
  }
}

FileLock::FileLock(FileLock&& other) noexcept : fd_(other.fd_), path_(std::move(other.path_)) {
  other.fd_ = -1;
}

FileLock::~FileLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // while still locked: see acquire()
  ::close(fd_);
}

}  // namespace spattn::cache
