// Runs work items (autotuning candidates) in child processes, so that a kernel that
// faults, hangs or corrupts its CUDA context costs only its own result.
//
// Items run in order in a forked child, which reports each result as one JSON line over
// a pipe. A child that dies (signal, exit) or passes the per-item time limit is killed
// and its current item is recorded as crashed or timed out; a fresh child continues with
// the next item. An item may also ask for a fresh process for the items after it
// ("restart": true in its result), e.g. after a CUDA error: a context that saw a fault is
// unusable.
//
// CUDA cannot be used in a child forked after the parent initialised the driver, so the
// parent must not have touched CUDA (the autotuner's parent only renders and compiles).
// children_can_use_cuda() tells; when it is false, callers run items in-process instead
// (IsolateOptions::isolate = false) and a fault then ends the run.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace spattn::autotune {

struct IsolateOptions {
  bool isolate = true;          // false: run items in this process
  double item_timeout_s = 120;  // per item (and for a child to start its first item)
};

enum class ItemStatus {
  kDone,      // the item returned a result
  kCrashed,   // its process died while running it
  kTimedOut,  // it ran past item_timeout_s and was killed
  kNotRun,    // never started (in-process run ended early)
};
const char* item_status_name(ItemStatus status);

struct ItemOutcome {
  ItemStatus status = ItemStatus::kNotRun;
  nlohmann::json value;  // the item's result (kDone)
  std::string detail;    // how the process ended, or why the item did not run
};

// Runs one item and returns its result (a JSON object). Exceptions become
// {"error": what, "restart": true}.
using ItemFn = std::function<nlohmann::json(size_t index)>;
// Called in the parent as each item finishes, in order.
using ItemDone = std::function<void(size_t index, const ItemOutcome& outcome)>;

std::vector<ItemOutcome> run_items(size_t count, const ItemFn& fn, const IsolateOptions& options,
                                   const ItemDone& done = {});

// False once this process has loaded the CUDA driver library (children forked from it
// could not use CUDA).
bool children_can_use_cuda();

}  // namespace spattn::autotune
