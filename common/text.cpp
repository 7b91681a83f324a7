#include "common/text.hpp"

#include <fmt/format.h>

#include <cctype>
#include <limits>

namespace spattn::detail {

namespace {

// Length of the well-formed UTF-8 sequence starting at s[at], or 0.
std::size_t utf8_length(std::string_view s, std::size_t at) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[at + k]); };
  const unsigned char c = b(0);
  std::size_t n = 0;
  unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;  // no UTF-16 surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (at + n > s.size()) return 0;
  if (b(1) < lo || b(1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k) {
    if (b(k) < 0x80 || b(k) > 0xBF) return 0;
  }
  return n;
}

std::string trim_lower(std::string_view text) {
  const auto first = text.find_first_not_of(" \t\n\r");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t\n\r");
  std::string s(text.substr(first, last - first + 1));
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

std::string printable(std::string_view s, std::size_t max_chars) {
  std::string out;
  for (std::size_t at = 0; at < s.size();) {
    if (out.size() >= max_chars) {
      out += "...";
      break;
    }
    const unsigned char c = static_cast<unsigned char>(s[at]);
    if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
      ++at;
    } else if (c == '\n') {
      out += "\\n";
      ++at;
    } else if (c == '\t') {
      out += "\\t";
      ++at;
    } else if (c == '\r') {
      out += "\\r";
      ++at;
    } else if (c >= 0x80) {
      const std::size_t n = utf8_length(s, at);
      // U+0080..U+009F are C1 control characters; keep them escaped too.
      if (n == 0 || (n == 2 && c == 0xC2 && static_cast<unsigned char>(s[at + 1]) < 0xA0)) {
        out += fmt::format("\\x{:02x}", c);
        ++at;
      } else {
        out.append(s.substr(at, n));
        at += n;
      }
    } else {
      out += fmt::format("\\x{:02x}", c);
      ++at;
    }
  }
  return out;
}

std::optional<std::uint64_t> parse_byte_size(std::string_view text) {
  const std::string s = trim_lower(text);
  std::size_t digits = 0;
  while (digits < s.size() && std::isdigit(static_cast<unsigned char>(s[digits]))) ++digits;
  if (digits == 0 || digits > 20) return std::nullopt;
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < digits; ++i) {
    const std::uint64_t d = static_cast<std::uint64_t>(s[i] - '0');
    if (value > (std::numeric_limits<std::uint64_t>::max() - d) / 10) return std::nullopt;
    value = value * 10 + d;
  }
  std::string unit = trim_lower(std::string_view(s).substr(digits));
  if (unit == "b") unit.clear();
  // "k", "kb" and "kib" all mean 1024: sizes of caches and tables are thought of in
  // binary units.
  int shift = 0;
  if (!unit.empty()) {
    static constexpr std::string_view kUnits = "kmgt";
    const auto pos = kUnits.find(unit[0]);
    if (pos == std::string_view::npos) return std::nullopt;
    const std::string_view rest = std::string_view(unit).substr(1);
    if (!(rest.empty() || rest == "b" || rest == "ib")) return std::nullopt;
    shift = 10 * static_cast<int>(pos + 1);
  }
  if (shift > 0 && value > (std::numeric_limits<std::uint64_t>::max() >> shift)) return std::nullopt;
  return value << shift;
}

std::string human_bytes(std::uint64_t bytes) {
  if (bytes < 1024) return fmt::format("{} B", bytes);
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes);
  int unit = -1;
  while (v >= 1024 && unit < 5) {
    v /= 1024;
    ++unit;
  }
  return fmt::format("{:.1f} {}", v, kUnits[unit]);
}

}  // namespace spattn::detail
