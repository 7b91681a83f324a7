// Kernel selection: a pure function from the problem (and the GPU) to a configuration,
// with the reason. Separate from launching; logged at debug level.
#pragma once

#include <spattn/config.hpp>
#include <spattn/pattern.hpp>

#include <string>

#include "engine/forward.hpp"
#include "runtime/device.hpp"

namespace spattn::api {

struct Choice {
  KernelConfig config;
  std::string source;  // "tuning database (...)" or "heuristic (...)"
};

// The documented heuristic (see select.cpp), no database.
Choice heuristic(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device);

// The tuning database entry for this GPU and problem bucket if there is one (and
// use_db), else the heuristic. Cheap after the first call for a problem (the database
// and the problem's density are memoised; a database file changed on disk is re-read).
Choice choose(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device, bool use_db);

}  // namespace spattn::api
