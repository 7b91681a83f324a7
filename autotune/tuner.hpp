// The autotuner's driver: search space -> parallel compiles through the kernel cache ->
// post-compile pruning -> correctness gate and timing in worker processes -> the winner
// into the tuning database. The public face is spattn::Autotuner (spattn/autotune.hpp).
//
// Process structure: this process only renders and compiles (NVRTC needs no GPU); every
// CUDA call — the device query included — happens in forked worker processes
// (isolate.hpp), because a process forked after CUDA initialisation cannot use CUDA.
// When the calling process has already loaded the driver, everything runs in-process
// instead (logged; a kernel fault then ends the run, reported as such).
#pragma once

#include <spattn/autotune.hpp>

#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

#include "engine/forward.hpp"
#include "runtime/device.hpp"

namespace spattn::autotune {

// A configuration and why it was chosen (api::heuristic() supplies the baseline: the
// autotuner sits below the API and gets the heuristic passed in).
struct Selection {
  KernelConfig config;
  std::string source;
};
using HeuristicFn =
    std::function<Selection(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device)>;

// The configuration a pass would run without tuning: `heuristic` (the API's) for the
// forward pass, engine::backward_heuristic for the backward pass.
Selection baseline_of(TunePass pass, const HeuristicFn& heuristic, const Pattern& pattern,
                      const engine::Problem& problem, const runtime::DeviceInfo& device);

// TuneProblem with its defaults filled in, checked (dimensions >= 1, GQA, head dim, dtype).
engine::Problem to_problem(const TuneProblem& problem);

// The candidates with static pruning, for `device` if given, else for a typical GPU of
// options.arch (default sm_90a). Compiles and runs nothing.
std::vector<CandidateReport> list_candidates(const Pattern& pattern, const engine::Problem& problem,
                                             const AutotuneOptions& options, const HeuristicFn& heuristic,
                                             const runtime::DeviceInfo* device = nullptr);

// Everything before the timing, without a GPU: candidates for `gpu` (or a typical GPU of
// options.arch, default sm_90a) compiled into the kernel cache and pruned after
// compiling. Candidates that would be timed come back as "compiled". Useful to fill a
// build host's cache with every candidate, so that tuning on the GPU host compiles nothing.
AutotuneReport compile_candidates(const Pattern& pattern, const engine::Problem& problem,
                                  const AutotuneOptions& options, const HeuristicFn& heuristic,
                                  const runtime::DeviceInfo* gpu = nullptr);

// Seams for tests: where the device description comes from and how one candidate is
// checked and timed (in the worker process). Empty: probe_device() and Bench::measure().
struct TuneHooks {
  std::function<runtime::DeviceInfo()> probe;
  std::function<nlohmann::json(const KernelConfig& config)> measure;
};

// The whole tuning run (see the file comment and spattn/autotune.hpp).
AutotuneReport tune(const Pattern& pattern, const engine::Problem& problem, const AutotuneOptions& options,
                    const HeuristicFn& heuristic, const TuneHooks& hooks = {});

// The GPU `ordinal`, queried in a worker process so that this process stays free of CUDA.
// Throws kNoGpu with the reason when there is none.
runtime::DeviceInfo probe_device(int ordinal, bool isolate = true);

}  // namespace spattn::autotune
