// Kernel selection at run time: the tuning database of this GPU, else the heuristic
// (engine/select.hpp). Separate from launching; logged at debug level.
#pragma once

#include <spattn/config.hpp>
#include <spattn/pattern.hpp>

#include <string>

#include "engine/select.hpp"
#include "runtime/device.hpp"

namespace spattn::api {

using Choice = engine::KernelChoice;
using engine::heuristic;  // the documented heuristic (engine/select.hpp), no database

// The tuning database entry for this GPU and problem bucket if there is one (and
// use_db), else the heuristic. Cheap after the first call for a problem (the database
// and the problem's density are memoised; a database file changed on disk is re-read).
Choice choose(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device, bool use_db);
// The same for the backward kernel: its database entries (`spattn autotune --backward`),
// else engine::backward_heuristic.
Choice choose_backward(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device,
                       bool use_db);

}  // namespace spattn::api
