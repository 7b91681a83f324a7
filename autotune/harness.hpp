// The measuring side of the autotuner: runs inside the worker process, on the GPU.
// (Backward pass: the forward pass with the heuristic's kernel writes O and LSE for every
// input set once; candidates are checked against fp64 reference gradients
// (backward_tolerance_for) and their backward alone is timed, like the forward.)
//
// Correctness gate: each candidate runs the check problem (a smaller shape, the same
// pattern) on fresh random inputs with O and LSE poisoned (NaN), and is compared with the
// fp32 reference (engine/reference.hpp) at the engine tests' tolerances:
//   bf16: relative L2 <= 1e-2, max |err| <= 3e-2;  fp16: relative L2 <= 2e-3, max |err| <= 5e-3;
//   LSE within 2e-3 where finite, -inf exactly where the reference has no key, no NaN/Inf.
// Timing: the real problem over several rotating input sets (Q, K, V, O each) covering at
// least twice the L2 cache, so no run finds its inputs in L2; when that much memory is
// not available, fewer sets and a 2 x L2 memset between runs instead. Warm-up runs, then
// `reps` runs each between two device events on the stream; median, p20, p80.
#pragma once

#include <spattn/autotune.hpp>
#include <spattn/config.hpp>
#include <spattn/pattern.hpp>

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/forward.hpp"
#include "runtime/device.hpp"

namespace spattn::autotune {

struct BenchSetup {
  TunePass pass = TunePass::kForward;
  Pattern pattern;
  engine::Problem problem;  // timed
  engine::Problem check;    // correctness check
  int device = 0;
  int warmup = 5;
  int reps = 20;
  uint64_t seed = 1;
};

// Tolerances of the correctness gate, per dtype.
struct Tolerance {
  double rel_l2;
  double max_abs;
  double lse;
};
Tolerance tolerance_for(DType dtype);
// The backward pass's gate: relative L2 error of each of dQ, dK, dV against the fp64
// reference gradients of the same rounded inputs (P and dS are rounded to 16 bits for
// the matrix products, O to the output dtype): bf16 3e-2, fp16 6e-3. No NaN or Inf.
double backward_tolerance_for(DType dtype);
// How far a gradient is from its fp64 reference: relative L2 error (absolute L2 where the
// reference is all zero), largest absolute error, and non-finite elements.
struct GradientError {
  double rel_l2 = 0, max_abs = 0;
  int64_t nonfinite = 0;
};
GradientError gradient_error(const std::vector<float>& got, const std::vector<double>& want);

// The check problem for a problem: at most `tokens` query tokens (Nk scaled alike) and
// about `heads` heads with the GQA ratio kept, batch 1 — falling back to the full length
// or all heads when the pattern needs them (grids, head groups).
engine::Problem check_problem_for(const Pattern& pattern, const engine::Problem& problem, int64_t tokens,
                                  int64_t heads);

// The timing building blocks, shared by the attention bench below and the linear-time
// kernels' tuner (linear/tune.cpp).
//
// How many rotating input sets of `set_bytes` a timing needs so that no run finds its
// inputs in L2 (>= 3, covering >= 2 x L2 between two uses of a set, within 40% of the free
// GPU memory), and the L2 flush buffer to allocate when that many do not fit (0: none).
// Throws kUnsupported when not even one set fits.
struct Rotation {
  size_t sets = 0;
  size_t flush_bytes = 0;
};
Rotation plan_rotation(size_t set_bytes, const runtime::DeviceInfo& info);
// "CUDA events, <what>, W warm-up + R timed runs over S rotating input set(s) of X MiB...".
std::string describe_timing(const std::string& what, int warmup, int reps, size_t sets, size_t set_bytes,
                            size_t flush_bytes);
// Runs run(r) `warmup` times untimed, then `reps` times each between two device events on
// the default stream (r counts every run; `flush`, when allocated, is overwritten before
// each timed run); writes "status": "ok", "median_ms", "p20_ms", "p80_ms", "runs" to out.
void time_with_events(int warmup, int reps, const std::function<void(size_t)>& run, runtime::DeviceBuffer& flush,
                      nlohmann::json& out);

class Bench {
 public:
  // Allocates inputs, computes the reference for the check problem, allocates the
  // rotating timing sets.
  explicit Bench(BenchSetup setup);
  ~Bench();
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;

  // Checks then times `config` (a backward config for the backward pass). Returns
  // {"status": "ok", "median_ms", "p20_ms", "p80_ms", "runs", "rel_l2_err",
  // "max_abs_err"} (backward: the largest of the three gradients' errors) or
  // {"status": "wrong"|"resources", "detail"}.
  // CUDA errors propagate (the caller turns them into "fault" and a fresh process).
  nlohmann::json measure(const KernelConfig& config);

  // How timing is done, for the report.
  std::string timing_method() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace spattn::autotune
