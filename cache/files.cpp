#include "cache/files.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "common/check.hpp"

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

void fsync_dir(const fs::path& dir) {
  // Makes the rename durable. Some file systems refuse fsync on directories; the data
  // itself is already on disk, so that is not worth failing for.
  Fd fd(open_retry(dir.c_str(), O_RDONLY | O_DIRECTORY));
  if (fd.get() >= 0) ::fsync(fd.get());
}

}  // namespace

ReadResult read_file(const fs::path& path, std::uint64_t max_bytes) {
  ReadResult r;
  Fd fd(open_retry(path.c_str(), O_RDONLY));
  if (fd.get() < 0) {
    r.error = errno;
    return r;
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    r.error = errno;
    return r;
  }
  if (!S_ISREG(st.st_mode)) {
    r.error = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
    return r;
  }
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
  Fd fd(open_retry(path.c_str(), O_RDONLY));
  struct stat st {};
  if (fd.get() < 0 || ::fstat(fd.get(), &st) != 0) {
    r.error = errno;
    return r;
  }
  if (!S_ISREG(st.st_mode)) {
    r.error = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
    return r;
  }
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
  Fd fd(open_retry(path.c_str(), O_RDONLY));
  if (fd.get() < 0) {
    r.error = errno;
    return r;
  }
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
  Fd fd(open_retry(path.c_str(), O_WRONLY));
  struct stat st {};
  if (fd.get() < 0 || ::fstat(fd.get(), &st) != 0) return false;
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
  fd_ = open_retry(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0666);
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
  fd_ = open_retry(path.c_str(), O_RDONLY);
  struct stat st {};
  if (fd_ < 0 || ::fstat(fd_, &st) != 0) {
    SPATTN_FAIL(ErrorCode::kIo, "cannot open '{}': {}", path.string(), std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) SPATTN_FAIL(ErrorCode::kIo, "'{}' is not a regular file", path.string());
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

std::optional<FileLock> FileLock::acquire(const fs::path& path, int* error) {
  for (;;) {
    Fd fd(open_retry(path.c_str(), O_RDWR | O_CREAT, 0666));
    if (fd.get() < 0) {
      if (error) *error = errno;
      return std::nullopt;
    }
    int rc;
    do {
      rc = ::flock(fd.get(), LOCK_EX);
    } while (rc != 0 && errno == EINTR);
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
