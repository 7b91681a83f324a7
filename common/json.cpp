#include "common/json.hpp"

#include <set>
#include <string>
#include <vector>

#include "common/check.hpp"
#include "common/text.hpp"

namespace spattn::detail {

namespace {

using nlohmann::json;

// Where the parser is: one frame per open array or object.
struct Frame {
  bool array = false;
  std::size_t index = 0;    // array: the element being read
  std::string key;          // object: the last key read
  std::set<std::string> keys;
};

std::string where(std::string_view path, const std::vector<Frame>& stack) {
  std::string out(path);
  for (const Frame& f : stack) {
    if (f.array) {
      out += fmt::format("[{}]", f.index);
    } else if (!f.key.empty() || !f.keys.empty()) {
      out += "." + printable(f.key, 60);
    }
  }
  return out;
}

// nlohmann's message without its "[json.exception.parse_error.101] " prefix.
std::string library_message(const json::exception& e) {
  std::string_view m = e.what();
  if (m.starts_with("[json.exception.")) {
    const auto close = m.find("] ");
    if (close != std::string_view::npos) m.remove_prefix(close + 2);
  }
  return printable(m, 240);
}

}  // namespace

json parse_json_strict(std::string_view text, std::string_view path, const JsonLimits& limits) {
  SPATTN_REQUIRE(text.size() <= limits.max_bytes, "{}: {} bytes of JSON; at most {} are read", path, text.size(),
                 limits.max_bytes);
  std::vector<Frame> stack;
  // An element of the enclosing array ended: the next one gets the next index.
  auto element_done = [&] {
    if (!stack.empty() && stack.back().array) ++stack.back().index;
  };
  const json::parser_callback_t callback = [&](int, json::parse_event_t event, json& parsed) -> bool {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (static_cast<int>(stack.size()) >= limits.max_depth) {
          SPATTN_FAIL(ErrorCode::kInvalidArgument, "{}: nested deeper than {} levels of arrays and objects",
                      where(path, stack), limits.max_depth);
        }
        stack.push_back(Frame{event == json::parse_event_t::array_start, 0, {}, {}});
        break;
      case json::parse_event_t::key: {
        Frame& f = stack.back();
        f.key = parsed.get<std::string>();
        if (!f.keys.insert(f.key).second) {
          SPATTN_FAIL(ErrorCode::kInvalidArgument, "{}: duplicate key; each key may appear once in an object",
                      where(path, stack));
        }
        break;
      }
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        stack.pop_back();
        element_done();
        break;
      case json::parse_event_t::value:
        element_done();
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), callback);
  } catch (const json::out_of_range& e) {
    // 406: a number the lexer read but that no double holds (1e400).
    SPATTN_FAIL(ErrorCode::kInvalidArgument, "{}: number out of range ({})", where(path, stack), library_message(e));
  } catch (const json::exception& e) {
    SPATTN_FAIL(ErrorCode::kInvalidArgument, "{}: invalid JSON: {}", path, library_message(e));
  }
}

std::string describe_json(const json& value, std::size_t max_chars) {
  std::string s;
  try {
    // Arrays and objects are described by their start: dumping a million pairs to print
    // forty characters is wasted work.
    if (value.is_array() && value.size() > 8) {
      s = "[" + describe_json(value.front(), max_chars) + ", ... " + std::to_string(value.size()) + " items]";
    } else if (value.is_object() && value.size() > 8) {
      s = "{" + std::to_string(value.size()) + " keys}";
    } else {
      s = value.dump(-1, ' ', false, json::error_handler_t::replace);
    }
  } catch (const std::exception&) {
    s = "(unprintable value)";
  }
  s = printable(s, max_chars > 3 ? max_chars - 3 : max_chars);
  return s;
}

}  // namespace spattn::detail
