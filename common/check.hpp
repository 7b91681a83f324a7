// The one error path of the library: every failure is thrown through fail(), which
// formats where it happened and the library's message. The SPATTN_* macros wrap the
// APIs that report errors by status code.
#pragma once

#include <fmt/format.h>

#include <spattn/error.hpp>

namespace spattn::detail {

[[noreturn]] void throw_error(ErrorCode code, const char* file, int line, std::string message);

}  // namespace spattn::detail

// Throws spattn::Error(code) with a fmt-formatted message and the source location.
#define SPATTN_FAIL(code, ...) \
  ::spattn::detail::throw_error((code), __FILE__, __LINE__, ::fmt::format(__VA_ARGS__))

// Throws kInvalidArgument unless the condition holds.
#define SPATTN_REQUIRE(cond, ...)                                          \
  do {                                                                     \
    if (!(cond)) SPATTN_FAIL(::spattn::ErrorCode::kInvalidArgument, __VA_ARGS__); \
  } while (0)

// Throws kInternal unless the invariant holds.
#define SPATTN_ASSERT(cond)                                                              \
  do {                                                                                   \
    if (!(cond)) SPATTN_FAIL(::spattn::ErrorCode::kInternal, "internal invariant failed: {}", #cond); \
  } while (0)
