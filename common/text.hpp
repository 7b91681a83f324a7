// Text helpers for messages that echo user input (internal to libspattn).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace spattn::detail {

// `s` made safe to print inside a one-line message: control characters become \n, \t,
// \r or \xNN, bytes that are not UTF-8 become \xNN, a backslash stays a backslash. Longer
// than `max_chars` (counted in output bytes), the result is cut and ends in "...".
std::string printable(std::string_view s, std::size_t max_chars = 200);

// A byte size: "1048576", "512K", "64M", "2G", "1T", also "64MiB", "64MB" (binary
// multiples, case-insensitive, surrounding spaces allowed). nullopt if malformed or
// above 2^64 - 1.
std::optional<std::uint64_t> parse_byte_size(std::string_view text);

// "1.5 GiB", "512 B": a byte count for people.
std::string human_bytes(std::uint64_t bytes);

}  // namespace spattn::detail
