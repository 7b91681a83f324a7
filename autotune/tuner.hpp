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
#include <spattn/cache.hpp>

#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

#include "autotune/isolate.hpp"
#include "codegen/kernel_spec.hpp"
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

// --- the pieces of a tuning run, shared with the linear-time kernels' tuner (linear/tune.cpp)

// One program to compile for a tuning run, and what became of it.
struct CompileJob {
  codegen::RenderedKernel rendered;
  bool baseline = false;  // the heuristic's (or support kernels): compiled first, whatever the budget
  bool done = false;
  bool skipped = false;   // `skip` said so
  std::string error;
  CacheLookup found;      // key, hit, registers, local memory, compile time
};
// Compiles the jobs through the kernel cache with the NVRTC pool (`threads`, 0: the
// default), baselines first; `skip` (may be empty) is asked before every other compile
// (the budget). With `in_child`, in a child process of its own: NVRTC initialises the CUDA
// driver, and the timing workers are forked from this process later. Throws kCompile when
// that child fails.
void compile_jobs(std::vector<CompileJob>& jobs, const std::string& arch, int threads, bool in_child,
                  double child_timeout_s, const std::function<bool()>& skip,
                  const std::function<void(size_t done, size_t total)>& progress);

// Why a compiled candidate cannot be timed, "" when it can: more registers per block than
// an SM has, or more than `max_local_bytes` of local memory per thread (spills; never the
// heuristic's, which is the baseline).
std::string prune_after_compile(int registers, int local_bytes, int threads, bool heuristic,
                                const runtime::DeviceInfo& device, int max_local_bytes);

// Records what compiling a candidate gave (registers, local memory, cache hit, NVRTC time)
// in its report (CandidateReport, LinearCandidateReport) and whether it can be timed:
// false, with status "pruned" and prune_after_compile()'s reason, when it cannot.
template <class Report, class Lookup>
bool take_compiled(Report& r, const Lookup& found, int threads, const runtime::DeviceInfo& device,
                   int max_local_bytes) {
  r.registers = found.kernel.registers;
  r.local_bytes = found.kernel.local_bytes;
  r.cache_hit = found.hit;
  r.compile_ms = found.kernel.compile_ms;
  std::string why = prune_after_compile(r.registers, r.local_bytes, threads, r.heuristic, device, max_local_bytes);
  if (why.empty()) return true;
  r.status = "pruned";
  r.detail = std::move(why);
  return false;
}

// Runs one candidate's check and timing (in its worker), turning the library's errors into
// its result: kCuda "fault" (and a fresh worker), kUnsupported "resources", else "error".
nlohmann::json measure_guarded(const std::function<nlohmann::json()>& measure);

// A candidate's result as its worker reported it: status ("ok", "wrong", "resources",
// "fault", "timeout", "skipped", "error"...), why, and the item's JSON (null when the worker
// returned none).
struct Measured {
  std::string status, detail;
  nlohmann::json value;
};
Measured read_outcome(const ItemOutcome& outcome);

// The winner of a run: the smallest of `medians_ms` (0: not timed successfully), unless
// it is less than `min_gain` faster than the heuristic's (index `heuristic`, -1: none), whose
// configuration is then kept and `note` says so (`name` names candidates). best -1: none.
struct Winner {
  int best = -1;
  std::string note;
};
Winner pick_winner(const std::vector<double>& medians_ms, int heuristic, double min_gain,
                   const std::function<std::string(size_t)>& name);

// Throws kInvalidArgument for reps, warmup, budget or min_gain out of range.
void check_timing_options(const AutotuneOptions& options);

// The GPU `ordinal`, queried in a worker process so that this process stays free of CUDA.
// Throws kNoGpu with the reason when there is none.
runtime::DeviceInfo probe_device(int ordinal, bool isolate = true);

}  // namespace spattn::autotune
