// spattn::Autotuner and spattn::prewarm — choosing kernel configurations per GPU and
// filling the kernel cache ahead of time (DESIGN.md §6, §8).
//
//   spattn::Autotuner tuner;                       // what `spattn autotune` runs
//   spattn::AutotuneReport r = tuner.tune(spattn::Pattern::parse("local_window"),
//                                         {.nq = 16384, .heads = 16});
//   std::cout << r.to_table();                     // the winner is saved to the tuning database
//
// Tuning: every candidate of the search space (tile shape, warps, stages, schedule
// order, token permutation on/off) that the GPU can hold is compiled (in parallel, through
// the kernel cache), checked against the fp32 reference on fresh random inputs (for the
// backward pass, its gradients against the fp64 reference gradients), then
// timed with device events after warm-up over rotating input buffers (or an L2 flush),
// median of >= 20 runs with p20/p80. Candidates run in child processes, so a kernel fault
// or hang costs only its own result. The fastest correct candidate is written to the
// tuning database of this GPU (<cache dir>/tuning/<fingerprint>.json), which
// spattn::Attention then reads; Attention::explain() says whether its configuration came
// from there or from the heuristic.
//
// Prewarm: compiles every kernel a manifest of patterns x shapes x dtypes x archs needs
// into the kernel cache, with no GPU needed, so that a deployment runs with zero NVRTC
// compiles (ship the cache with `spattn cache export` / `import`).
#pragma once

#include <spattn/config.hpp>
#include <spattn/pattern.hpp>
#include <spattn/tensor.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace spattn {

// A problem shape to tune for.
struct TuneProblem {
  int64_t batch = 1;
  int64_t nq = 0;
  int64_t nk = 0;        // 0: same as nq
  int64_t heads = 16;    // query heads
  int64_t kv_heads = 0;  // 0: same as heads
  int64_t head_dim = 128;
  DType dtype = DType::kBFloat16;
};

// TunePass (spattn/config.hpp): which kernel a tuning run chooses, the forward kernel's
// configuration or the backward kernel's (its own tuning-database entries, read by
// Attention::backward).
const char* to_string(TunePass pass);

struct AutotuneOptions {
  TunePass pass = TunePass::kForward;
  int device = 0;
  // Target of candidates() when no GPU is asked: "" means sm_90a. tune() always uses the
  // GPU's own arch.
  std::string arch;
  // Wall-clock budget for tune(), 0 = none. New compiles start only in the first two
  // thirds of it and timing stops at it; the heuristic's configuration is always timed
  // (it is the baseline). Candidates left out are reported as "skipped".
  double budget_seconds = 0;
  int warmup = 5;                    // untimed runs per candidate
  int reps = 20;                     // timed runs per candidate (at least 20)
  int64_t check_tokens = 4096;       // correctness check: at most this many query tokens...
  int64_t check_heads = 2;           // ...and about this many heads (GQA ratio kept)
  double candidate_timeout_s = 120;  // per candidate (check + timing) in its child process
  int max_local_bytes = 128;         // more local memory per thread (spills) prunes a candidate
  // A candidate replaces the heuristic's choice only when its median is at least this
  // fraction faster (gains below it are timing noise, not worth a different kernel).
  double min_gain = 0.01;
  bool save = true;                  // write the winner to the tuning database
  bool isolate = true;               // time in child processes (needs CUDA untouched in this process)
  int threads = 0;                   // compile threads; 0: $SPATTN_NVRTC_THREADS or the core count
  std::vector<KernelConfig> configs;  // non-empty: only these candidates (plus the heuristic's)
  // tune_linear(): non-empty, only these configurations (ScanConfig / PerformerConfig text,
  // e.g. "32x8x16" / "32x32"), plus the heuristic's.
  std::vector<std::string> linear_configs;
  // Progress: phase ("compiling", "timing"), done, total.
  std::function<void(const std::string& phase, size_t done, size_t total)> progress;
};

// One candidate and what became of it.
struct CandidateReport {
  KernelConfig config;
  bool heuristic = false;  // the heuristic's choice (the baseline)
  bool best = false;       // the winner
  // "candidate" (dry run), "compiled" (compile only), "ok", "pruned", "compile error", "resources", "wrong",
  // "fault", "timeout", "error", "skipped"
  std::string status;
  std::string detail;      // why, for anything but ok
  int registers = -1;      // per thread, from ptxas
  int local_bytes = -1;    // stack frame / spills per thread
  int smem_bytes = 0;      // dynamic shared memory per block
  bool cache_hit = false;  // compiled earlier
  double compile_ms = 0;   // NVRTC time when it was compiled
  double rel_l2_err = -1;  // correctness check against the fp32 reference (-1: not checked)
  double max_abs_err = -1;
  double median_ms = 0, p20_ms = 0, p80_ms = 0;
  int runs = 0;
  double tflops = 0;       // useful TFLOP/s at the median
  double speedup = 0;      // heuristic median / this median (0 if either is missing)
};

struct AutotuneReport {
  TunePass pass = TunePass::kForward;
  std::string device;      // GPU and fingerprint, one line
  std::string arch;
  std::string pattern;     // canonical JSON
  std::string problem;     // "B=1 Nq=16384 Nk=16384 Hq=16 Hkv=16 D=128 bf16"
  std::string check_problem;
  std::string bucket;      // tuning database key
  std::string timing;      // how candidates were timed
  std::string db_file;     // the database written ("" when not saved)
  bool saved = false;
  bool isolated = true;    // candidates ran in child processes
  double useful_flops = 0;
  double density = 0;
  std::vector<CandidateReport> candidates;
  int best = -1;           // index into candidates, -1 if none passed
  int heuristic = -1;      // index of the heuristic's candidate
  double speedup = 0;      // heuristic median / best median
  std::string note;        // how the winner was decided, when not simply the fastest
  double seconds = 0;      // wall time of the whole run

  std::string to_json() const;   // one JSON object (pretty-printed)
  std::string to_table() const;  // the human-readable table `spattn autotune` prints
};

// --- the linear-time kernels (spattn/linear.hpp) ------------------------------------------
// `spattn autotune --op scan|performer`: the tile configuration of the Mamba selective scan
// (ScanConfig) or of the causal Performer's prefix scan (PerformerConfig, the one kernel of
// FAVOR+ with a configuration) for one problem on this GPU. Candidates: scan_configs() /
// performer_configs() that the GPU's shared memory holds, each compiled through the kernel
// cache, checked on a smaller problem against the fp64 reference (reference_selective_scan,
// reference_performer) with fresh random inputs and a NaN-poisoned output, then timed with
// device events over rotating input sets (the scan kernel; for Performer the causal prefix
// scan alone, the GEMMs and feature maps around it being the same for every candidate). The
// winner goes to the tuning database under "scan|..." / "performer|..." keys, which
// SelectiveScan and Performer (causal) then read.
enum class LinearOp { kScan, kPerformer };
const char* to_string(LinearOp op);

struct LinearProblem {
  LinearOp op = LinearOp::kScan;
  int64_t batch = 1;
  int64_t length = 0;        // tokens (Performer: queries = keys, causal)
  int64_t channels = 0;      // scan: channels (Mamba's d_inner)
  int64_t state = 16;        // scan: state size per channel
  int64_t heads = 16;        // performer: query heads
  int64_t kv_heads = 0;      // performer: key/value heads (0: heads)
  int64_t head_dim = 64;     // performer: head dim of q, k and v
  int64_t features = 256;    // performer: random features m
  DType dtype = DType::kBFloat16;
  std::string to_string() const;  // "scan B=1 L=4096 channels=1536 state=16 bf16"
};

struct LinearCandidateReport {
  std::string config;       // ScanConfig / PerformerConfig to_string()
  bool heuristic = false;   // the heuristic's choice (the baseline)
  bool best = false;
  std::string status;       // as CandidateReport::status
  std::string detail;
  int registers = -1, local_bytes = -1, smem_bytes = 0;
  bool cache_hit = false;
  double compile_ms = 0;
  double check_worst = -1;  // largest error of the check over what the tolerance allows (-1: not checked)
  double median_ms = 0, p20_ms = 0, p80_ms = 0;
  int runs = 0;
  double speedup = 0;       // heuristic median / this median
};

struct LinearTuneReport {
  LinearOp op = LinearOp::kScan;
  std::string device, arch, problem, check_problem, bucket, timing, db_file;
  std::string heuristic_source;  // why the heuristic chose its configuration
  bool saved = false;
  bool isolated = true;
  std::vector<LinearCandidateReport> candidates;
  int best = -1, heuristic = -1;
  double speedup = 0;            // heuristic median / best median
  std::string note;
  double seconds = 0;

  std::string to_json() const;
  std::string to_table() const;
};

class Autotuner {
 public:
  explicit Autotuner(AutotuneOptions options = {});
  const AutotuneOptions& options() const { return options_; }

  // The candidates of the search space for a problem, with static pruning (registers,
  // shared memory of options.arch); compiles and runs nothing, needs no GPU.
  std::vector<CandidateReport> candidates(const Pattern& pattern, const TuneProblem& problem) const;

  // Compiles, checks and times every candidate on options.device and (if options.save)
  // stores the winner in the tuning database. Throws spattn::Error: kNoGpu without a GPU,
  // kInvalidArgument/kUnsupported for a problem the pattern or the kernels cannot take.
  // Candidates run in forked worker processes; that needs a calling process that has not
  // used CUDA yet (a process forked after CUDA initialisation cannot use CUDA). Otherwise
  // they run in this process, unisolated (report.isolated says which).
  AutotuneReport tune(const Pattern& pattern, const TuneProblem& problem) const;

  // Everything tune() does before timing, for options.arch, with no GPU: every candidate
  // compiled into the kernel cache (then tuning on the GPU host compiles nothing) and
  // pruned after compiling; the candidates tune() would time come back "compiled".
  AutotuneReport compile(const Pattern& pattern, const TuneProblem& problem) const;

  // The linear kernel's candidates for a problem with static pruning (shared memory of
  // options.arch's typical GPU), the heuristic's first; needs no GPU. Throws
  // kInvalidArgument / kUnsupported for a problem the kernels do not take.
  std::vector<LinearCandidateReport> linear_candidates(const LinearProblem& problem) const;
  // Compiles, checks and times them on options.device and (if options.save) stores the
  // winner in the tuning database; errors as tune().
  LinearTuneReport tune_linear(const LinearProblem& problem) const;

 private:
  AutotuneOptions options_;
};

struct PrewarmOptions {
  std::vector<std::string> archs;  // only these archs of the manifest (empty: all)
  bool load_all = false;           // also load every module for this GPU's arch (needs a GPU)
  int device = 0;                  // for load_all and for the selection on this host's GPU
  int threads = 0;                 // compile threads; 0: $SPATTN_NVRTC_THREADS or the core count
  std::function<void(size_t done, size_t total)> progress;
};

struct PrewarmKernel {
  std::string arch;
  std::string program;     // generated program name
  std::string config;      // KernelConfig::to_string(), "" for the support kernels
  std::string source;      // why this config: "heuristic (...)", "tuning database (...)"
  std::string key;         // cache key
  std::string status;      // "compiled", "cached", "failed"
  std::string error;
  std::vector<std::string> uses;  // the manifest problems that need it
  double ms = 0;           // time to get it into the cache (NVRTC on a miss)
  bool loaded = false;     // loaded on the GPU (load_all)
};

struct PrewarmReport {
  std::vector<PrewarmKernel> kernels;
  size_t compiled = 0, cached = 0, failed = 0, loaded = 0;
  int threads = 0;
  double seconds = 0;
  std::string to_json() const;
};

// Compiles every kernel `manifest_json` (DESIGN.md §8) needs into the process's kernel
// cache (KernelCache::instance()). For each entry x sequence length x dtype x head dim x
// arch it compiles the configuration spattn::Attention would choose there: on this
// host's GPU arch, exactly what Attention selects (tuning database, else heuristic); for
// other archs (or without a GPU), the heuristic for a typical GPU of that arch (see
// prewarm.hpp) plus every tuning database entry in the cache directory for that arch and
// problem bucket. Support kernels are added per arch. Throws kInvalidArgument naming the
// manifest field on a bad manifest; compile failures are reported per kernel.
PrewarmReport prewarm(const std::string& manifest_json, const PrewarmOptions& options = {});

}  // namespace spattn
