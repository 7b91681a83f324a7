#include "patterns/budget.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include "common/check.hpp"
#include "common/text.hpp"
#include "patterns/limits.hpp"

namespace spattn::detail {

namespace {

uint64_t from_env(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  const auto parsed = parse_byte_size(v);
  SPATTN_REQUIRE(parsed.has_value() && *parsed > 0,
                 "{}='{}': must be a positive count (digits, optionally with a K/M/G/T suffix)", name, printable(v));
  return *parsed;
}

uint64_t default_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return limits::kDefaultLayoutBytesCap / 8;
  return std::min(static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) / 2, limits::kDefaultLayoutBytesCap);
}

}  // namespace

LayoutBudget::LayoutBudget(const LayoutOptions& o, const Shape& shape)
    : shape_(shape),
      tile_m_(o.tile_m),
      tile_n_(o.tile_n),
      max_work_(o.max_work != 0 ? o.max_work : from_env("SPATTN_LAYOUT_MAX_WORK", limits::kDefaultLayoutWork)),
      max_bytes_(o.max_bytes != 0 ? o.max_bytes : from_env("SPATTN_LAYOUT_MAX_BYTES", default_bytes())) {}

std::string LayoutBudget::problem() const {
  return fmt::format("{} at Nq = {}, Nk = {}, {} head(s) with {}x{} tiles", context_.empty() ? "this pattern" : context_,
                     shape_.nq, shape_.nk, shape_.heads, tile_m_, tile_n_);
}

void LayoutBudget::fail_work() const {
  SPATTN_FAIL(ErrorCode::kUnsupported,
              "layout: building the tables of {} takes more than {} row operations (the work limit); use larger "
              "blocks or tiles, fewer rates, levels or segments, or a shorter sequence, or raise the limit with "
              "SPATTN_LAYOUT_MAX_WORK (LayoutOptions::max_work)",
              problem(), max_work_);
}

void LayoutBudget::fail_bytes(const char* what) const {
  SPATTN_FAIL(ErrorCode::kUnsupported,
              "layout: the {} of {} need more than {} of host memory (the memory limit); use larger tiles, a "
              "sparser pattern or a shorter sequence, or raise the limit with SPATTN_LAYOUT_MAX_BYTES "
              "(LayoutOptions::max_bytes)",
              what, problem(), human_bytes(max_bytes_));
}

}  // namespace spattn::detail
