// POSIX file plumbing for the cache: whole-file reads, atomic writes, in-place stamp
// updates, and the per-key lock.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace spattn::cache {

// Cache files are opened with O_NOFOLLOW and O_NONBLOCK and must be regular files: a
// symbolic link, FIFO, socket, device or directory at an entry's path is reported (and
// treated as a bad entry by the cache), never followed, read from or waited on.

// "a directory", "a FIFO", "a symbolic link", ...: what a non-regular file is.
std::string file_kind(unsigned mode);

// The outcome of reading a file: its bytes, or errno (ENOENT when it does not exist)
// and, for a file that is not a regular file, what it is.
struct ReadResult {
  std::string bytes;
  int error = 0;
  std::string problem;  // "not a regular file (a FIFO)"; empty for plain errno failures
  unsigned mode = 0, uid = 0;  // of the file read
  bool ok() const { return error == 0; }
  std::string reason() const;  // problem, else strerror(error)
};

// Reads a whole cache file; a file larger than `max_bytes` is not read (error EFBIG).
ReadResult read_file(const std::filesystem::path& path, std::uint64_t max_bytes = UINT64_MAX);

// Overwrites 8 bytes at `offset` with `value` (little-endian) in place, without changing
// the file's size. Returns false if the file cannot be written (e.g. a read-only cache);
// that is not an error for callers.
bool write_u64_at(const std::filesystem::path& path, std::uint64_t offset, std::uint64_t value);

// Reads at most `max_bytes` from the start of a cache file, plus its size.
struct PrefixResult {
  std::string bytes;
  std::uint64_t file_size = 0;
  int error = 0;
  std::string problem;
  std::string reason() const;
};
PrefixResult read_prefix(const std::filesystem::path& path, std::size_t max_bytes);
// Reads `size` bytes at `offset` (fewer at the end of the file).
ReadResult read_range(const std::filesystem::path& path, std::uint64_t offset, std::size_t size);

// Owner and permission checks of what the cache reads: empty when a directory or entry
// of this owner and mode belongs to this user or root and is not writable by group or
// others; otherwise what is wrong ("writable by other users (mode 0777)").
std::string ownership_problem(unsigned uid, unsigned mode);

// Creates `dir` (mode 0755, parents as needed) unless it exists. Returns errno, or 0.
int make_directory(const std::filesystem::path& dir);

// Removes whatever is at `path` (a file, a link, a FIFO, a directory tree) without
// following links. Returns errno, or 0 (also when nothing was there: `*removed` says).
int remove_path(const std::filesystem::path& path, bool* removed = nullptr);

// A file written atomically: the data goes to a temp file in the target's directory
// (".<name>.<pid>.<n>.tmp"); commit() fsyncs it, renames it over the target and fsyncs
// the directory. Destroyed without commit(), the temp file is removed. Throws kIo.
class AtomicFile {
 public:
  explicit AtomicFile(const std::filesystem::path& target);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void append(std::string_view bytes);
  void commit();

 private:
  std::filesystem::path target_, temp_;
  int fd_ = -1;
};

// A file opened for reading by offset (archives, which may be large). Links are
// followed; anything but a regular file is refused (kIo naming what it is). Throws kIo.
class InputFile {
 public:
  explicit InputFile(const std::filesystem::path& path);
  ~InputFile();
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  std::uint64_t size() const { return size_; }
  // Exactly `count` bytes at `offset`; throws kIo if the file ends or a read fails.
  void read(std::uint64_t offset, std::size_t count, std::string& out) const;

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

// Writes `bytes` to `target` through an AtomicFile.
void write_atomic(const std::filesystem::path& target, std::string_view bytes);

// Where a file that the user names as an output (an export archive) is written: links
// are followed to the file they name (so that the link stays a link), which must be a
// regular file or not exist yet. Throws kInvalidArgument for a directory, device, FIFO
// or socket (they cannot be replaced atomically), or a loop of links.
std::filesystem::path output_target(const std::filesystem::path& path);

// Whether a file name is one of write_atomic's temp files.
bool is_temp_name(const std::string& file_name);

// An exclusive flock() on a lock file, held for the object's lifetime. Waiters that
// opened a lock file which the holder has since unlinked notice (inode changed) and retry,
// so the holder may delete the file when it is done: lock files do not pile up.
class FileLock {
 public:
  // Waits until the lock is held: logs at info level after a second of waiting, gives up
  // after `timeout_s` seconds (nullopt, *error = ETIMEDOUT). Returns nullopt (with errno
  // in *error) if the lock file cannot be created, e.g. in a read-only cache.
  static std::optional<FileLock> acquire(const std::filesystem::path& path, int* error = nullptr,
                                         double timeout_s = 300);
  // Takes the lock only if nobody holds it (nullopt otherwise, or if there is no file).
  static std::optional<FileLock> try_acquire(const std::filesystem::path& path);

  FileLock(FileLock&& other) noexcept;
  FileLock& operator=(FileLock&&) = delete;
  FileLock(const FileLock&) = delete;
  ~FileLock();  // unlinks the lock file, then unlocks

 private:
  FileLock(int fd, std::filesystem::path path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  std::filesystem::path path_;
};

}  // namespace spattn::cache
