// Strict JSON reading for everything spattn reads from users and from disk (patterns,
// manifests, cache file metadata): nlohmann's parser, which is iterative, with the
// checks it lacks (internal to libspattn).
#pragma once

#include <cstddef>
#include <string_view>

#include <nlohmann/json.hpp>

namespace spattn::detail {

struct JsonLimits {
  int max_depth = 64;                         // nested arrays and objects
  std::size_t max_bytes = std::size_t{64} << 20;  // length of the text
};

// Parses `text`. Throws spattn::Error(kInvalidArgument) with a one-line message that
// starts with `path` (e.g. "pattern") and names the offending place as a JSON path
// ("pattern.union[0].window") for: a text longer than max_bytes, nesting deeper than
// max_depth, a key that appears twice in one object, a number that does not fit a
// double (1e400), and syntax errors (with line and column; control characters and
// long tokens are escaped and cut, so the message stays one short line).
nlohmann::json parse_json_strict(std::string_view text, std::string_view path, const JsonLimits& limits = {});

// A JSON value in a message: compact, at most `max_chars` characters, never throws and
// never recurses deeper than the value's own depth allows (values read through
// parse_json_strict are depth-limited).
std::string describe_json(const nlohmann::json& value, std::size_t max_chars = 40);

}  // namespace spattn::detail
