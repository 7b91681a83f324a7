// Prewarm: compile every kernel a deployment will need into the kernel cache ahead of
// time — on a build host without a GPU too — so that the deployment runs with zero NVRTC
// compiles. Ship the cache with `spattn cache export` / `spattn cache import`.
//
// Manifest (DESIGN.md §8):
//   {"archs": ["sm_90a", "sm_80"], "dtypes": ["bf16", "fp16"], "head_dims": [128],
//    "entries": [{"pattern": {"type": "local_window", "window": 1024},
//                 "seq": [16384, 65536], "heads": 16, "kv_heads": 16}]}
// Entries may also give "kv_seq" (key lengths, one per "seq" value; default: equal) and
// "batch" (default 1; it matters only where the heuristic counts CTAs). "heads" defaults
// to 16 and "kv_heads" to "heads". "passes": ["forward", "backward"] (top level, default
// ["forward"]) adds the backward kernels (training). Unknown fields are errors (typos
// would otherwise prewarm the wrong thing).
//
// A record file (autotune/record.hpp, SPATTN_RECORD) is accepted in place of a manifest:
// each recorded problem gets exactly the configuration it ran with, for its arch.
//
// Which configurations: for every entry x seq x dtype x head dim x arch,
//  - on this host's GPU arch: exactly what spattn::Attention selects here (its tuning
//    database entry for the problem's bucket, else the heuristic for this GPU);
//  - for any other arch: the heuristic for a typical GPU of that arch
//    (search_space.hpp typical_device(): the SM count is what the heuristic reads, so a
//    GPU of that arch with far fewer SMs may select 64-row tiles where the typical one
//    does not — list such shapes under a real GPU of the arch, or run prewarm there),
//    plus the configuration of every tuning database in the cache directory written on
//    a GPU of that arch that has an entry for the problem's bucket (copy the
//    databases from the target GPUs to the build host to prewarm tuned kernels).
// The support kernels (merge, fill, reference) are added once per arch.
#pragma once

#include <spattn/autotune.hpp>
#include <spattn/pattern.hpp>
#include <spattn/tensor.hpp>

#include <string>
#include <string_view>
#include <vector>

#include "autotune/record.hpp"
#include "autotune/tuner.hpp"

namespace spattn::autotune {

struct ManifestEntry {
  Pattern pattern;
  std::vector<int64_t> seq;
  std::vector<int64_t> kv_seq;  // same length as seq
  int64_t heads = 16;
  int64_t kv_heads = 16;
  int64_t batch = 1;
  // "documents": true — the program of Attention::forward_varlen / forward_padded (forward
  // only); seq is then the longest document and batch the documents per call.
  bool documents = false;
};

struct Manifest {
  std::vector<std::string> archs;
  std::vector<DType> dtypes;
  std::vector<int> head_dims;
  std::vector<TunePass> passes = {TunePass::kForward};
  std::vector<ManifestEntry> entries;
  std::vector<RecordedProblem> recorded;  // the record form: archs, dtypes, head dims are theirs

  // Parses and validates a manifest or a record file. Throws kInvalidArgument (or
  // kUnsupported for an arch NVRTC cannot target) whose message starts with the JSON path
  // of the bad field, e.g. "manifest.entries[1].seq[0]: must be a positive integer (got
  // -5)", or for a record with "record:<line>".
  static Manifest parse(std::string_view json_text);
};

// One kernel prewarm needs, before it is compiled.
struct PlannedKernel {
  std::string arch;
  std::string config;  // "" for the support kernels
  std::string source;  // why this configuration
  codegen::RenderedKernel rendered;
  std::string key;
  std::vector<std::string> uses;
};

// Every distinct kernel the manifest needs (by cache key), support kernels included.
// Errors in rendering one problem name the problem.
std::vector<PlannedKernel> plan_prewarm(const Manifest& manifest, const PrewarmOptions& options,
                                        const HeuristicFn& heuristic);

// Plans, compiles into KernelCache::instance() with the bounded NVRTC pool, and with
// options.load_all loads the kernels of this GPU's arch.
PrewarmReport prewarm(const Manifest& manifest, const PrewarmOptions& options, const HeuristicFn& heuristic);

}  // namespace spattn::autotune
