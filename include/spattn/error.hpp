// spattn error type. Library code reports every failure by throwing spattn::Error;
// it never exits. The code says what kind of failure it is (the CLI maps it to its
// exit status), the message says what failed and how to fix it.
#pragma once

#include <stdexcept>
#include <string>

namespace spattn {

enum class ErrorCode : int {
  kInvalidArgument = 1,  // bad pattern, shape, option, manifest...: the caller can fix the input
  kUnsupported = 2,      // a valid request this build or GPU cannot serve (dtype, head dim, arch)
  kNoGpu = 3,            // the operation needs an NVIDIA GPU and driver and none is present
  kCompile = 4,          // NVRTC rejected generated source (the message carries the log)
  kCuda = 5,             // a CUDA driver call failed
  kIo = 6,               // a file could not be read or written
  kCorrupt = 7,          // a file exists but its contents are not valid (cache entry, archive...)
  kInternal = 8,         // a broken invariant inside spattn
};

inline const char* error_code_name(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kNoGpu: return "no GPU";
    case ErrorCode::kCompile: return "compile error";
    case ErrorCode::kCuda: return "CUDA error";
    case ErrorCode::kIo: return "I/O error";
    case ErrorCode::kCorrupt: return "corrupt data";
    case ErrorCode::kInternal: return "internal error";
  }
  return "unknown error";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace spattn
