#include "api/select.hpp"

#include <fmt/format.h>

#include "autotune/tuning_db.hpp"

namespace spattn::api {

// The tuning database of this GPU (autotune/tuning_db.hpp: <cache dir>/tuning/<device
// fingerprint>.json, written by `spattn autotune`) decides when it has an entry for the
// problem's bucket; otherwise the heuristic does, and the source says why the database
// did not apply.
namespace {

Choice choose_for(TunePass pass, const Pattern& pattern, const engine::Problem& problem,
                  const runtime::DeviceInfo& device, bool use_db) {
  auto fallback = [&] { return engine::heuristic_for_pass(pass, pattern, problem, device); };
  if (!use_db) {
    Choice c = fallback();
    c.source.insert(c.source.size() - 1, "; tuning database not consulted (AttentionOptions::use_tuning_db is off)");
    return c;
  }
  const autotune::DbLookup db = autotune::lookup(pattern, problem, device, pass);
  if (db.config) return {*db.config, db.source};
  Choice c = fallback();
  c.source.insert(c.source.size() - 1, "; " + db.source);
  return c;
}

}  // namespace

Choice choose(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device, bool use_db) {
  return choose_for(TunePass::kForward, pattern, problem, device, use_db);
}

Choice choose_backward(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device,
                       bool use_db) {
  return choose_for(TunePass::kBackward, pattern, problem, device, use_db);
}

}  // namespace spattn::api
