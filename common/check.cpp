#include "common/check.hpp"

#include <cstring>

namespace spattn {

namespace detail {

[[noreturn]] void throw_error(ErrorCode code, const char* file, int line, std::string message) {
  // Internal errors carry the location (a bug report needs it); user-facing errors are
  // read by people fixing their input, so they stay a clean sentence.
  if (code == ErrorCode::kInternal || code == ErrorCode::kCuda) {
    const char* base = std::strrchr(file, '/');
    message += fmt::format(" [{}:{}]", base ? base + 1 : file, line);
  }
  throw Error(code, message);
}

}  // namespace detail
}  // namespace spattn
