// Which configuration the linear-time kernels run: this GPU's tuning database (`spattn
// autotune --op scan|performer`, autotune/tuning_db.hpp) for the problem's bucket, else the
// heuristic; the source string says which decided and, for the heuristic, why the database
// did not.
#include <fmt/format.h>

#include <functional>

#include "autotune/tuning_db.hpp"
#include "common/check.hpp"
#include "common/log.hpp"
#include "linear/kernels.hpp"

namespace spattn::linear {

namespace {

// The database's entry for `bucket` when it parses (Config::parse), passes `check` (the
// device's limits) and `use_db`; else `heuristic`, its source extended with why not.
template <class Config>
Config choose(const std::string& bucket, const runtime::DeviceInfo& device, bool use_db, const Config& heuristic,
              std::string heuristic_source, const std::function<void(const Config&)>& check, std::string* source) {
  std::string why_not;
  if (!use_db) {
    why_not = "tuning database not consulted (use_tuning_db is off)";
  } else {
    const autotune::LinearLookup found = autotune::lookup_linear(bucket, device);
    if (!found.entry) {
      why_not = found.source;
    } else {
      try {
        const Config c = Config::parse(found.entry->config);
        check(c);
        if (source) *source = found.source;
        return c;
      } catch (const Error& e) {
        why_not = fmt::format("tuning database entry {} ({}) not usable here: {}", bucket, found.entry->config, e.what());
        log::warn("{}; using the heuristic", why_not);
      }
    }
  }
  // "heuristic (why)" -> "heuristic (why; why not the database)"
  if (!heuristic_source.empty() && heuristic_source.back() == ')')
    heuristic_source.insert(heuristic_source.size() - 1, "; " + why_not);
  else
    heuristic_source += " (" + why_not + ")";
  if (source) *source = heuristic_source;
  return heuristic;
}

}  // namespace

std::string scan_bucket(const ScanShape& s) {
  return fmt::format("{}bc{}|l{}|n{}|{}", autotune::kScanKeyPrefix,
                     autotune::power_of_two_at_least(s.batch * s.channels), autotune::power_of_two_at_least(s.length),
                     s.state, to_string(s.dtype));
}

std::string performer_bucket(const PerformerShape& s, int64_t features) {
  return fmt::format("{}causal|bh{}|n{}|m{}|dv{}|{}", autotune::kPerformerKeyPrefix,
                     autotune::power_of_two_at_least(s.batch * s.heads), autotune::power_of_two_at_least(s.nq),
                     features, s.v_dim, to_string(s.dtype));
}

ScanConfig choose_scan(const ScanShape& shape, const runtime::DeviceInfo& device, bool use_db, std::string* source) {
  std::string why;
  const ScanConfig h = scan_heuristic(shape, device, &why);
  return choose<ScanConfig>(scan_bucket(shape), device, use_db, h, why, [&](const ScanConfig& c) {
    const int smem = c.smem_bytes(static_cast<int>(shape.state));
    SPATTN_REQUIRE(smem <= device.smem_per_block_optin, "it needs {} B of shared memory at state {}; {} offers {} B",
                   smem, shape.state, device.name, device.smem_per_block_optin);
  }, source);
}

PerformerConfig choose_performer(const PerformerShape& shape, int64_t features, const runtime::DeviceInfo& device,
                                 bool use_db, std::string* source) {
  std::string why;
  const PerformerConfig h = performer_heuristic(features, device, &why);
  return choose<PerformerConfig>(performer_bucket(shape, features), device, use_db, h, why,
                                 [&](const PerformerConfig& c) {
    const int smem = c.smem_bytes(static_cast<int>(features));
    SPATTN_REQUIRE(smem <= device.smem_per_block_optin, "it needs {} B of shared memory for {} features; {} offers {} B",
                   smem, features, device.name, device.smem_per_block_optin);
  }, source);
}

}  // namespace spattn::linear
