#include "api/select.hpp"

#include <fmt/format.h>

#include "autotune/tuning_db.hpp"

namespace spattn::api {

// The tuning database of this GPU (autotune/tuning_db.hpp: <cache dir>/tuning/<device
// fingerprint>.json, written by `spattn autotune`) decides when it has an entry for the
// problem's bucket; otherwise the heuristic does, and the source says why the database
// did not apply.
Choice choose(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device, bool use_db) {
  if (!use_db) {
    Choice c = heuristic(pattern, problem, device);
    c.source.insert(c.source.size() - 1, "; tuning database not consulted (AttentionOptions::use_tuning_db is off)");
    return c;
  }
  const autotune::DbLookup db = autotune::lookup(pattern, problem, device);
  if (db.config) return {*db.config, db.source};
  Choice c = heuristic(pattern, problem, device);
  c.source.insert(c.source.size() - 1, "; " + db.source);
  return c;
}

}  // namespace spattn::api
