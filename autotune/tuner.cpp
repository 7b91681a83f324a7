#include "autotune/tuner.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <random>

#include "autotune/harness.hpp"
#include "autotune/isolate.hpp"
#include "autotune/pool.hpp"
#include "autotune/search_space.hpp"
#include "autotune/tuning_db.hpp"
#include "common/check.hpp"
#include "common/log.hpp"
#include "engine/jit.hpp"
#include "runtime/driver.hpp"
#include "runtime/nvrtc.hpp"

namespace spattn::autotune {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

engine::Problem to_problem(const TuneProblem& t) {
  engine::Problem p;
  p.batch = t.batch;
  p.nq = t.nq;
  p.nk = t.nk > 0 ? t.nk : t.nq;
  p.heads = t.heads;
  p.kv_heads = t.kv_heads > 0 ? t.kv_heads : t.heads;
  p.head_dim = t.head_dim;
  p.dtype = t.dtype;
  SPATTN_REQUIRE(p.batch >= 1, "batch must be >= 1 (got {})", p.batch);
  SPATTN_REQUIRE(p.nq >= 1, "the sequence length must be >= 1 (got {})", p.nq);
  SPATTN_REQUIRE(p.heads >= 1 && p.kv_heads >= 1 && p.heads % p.kv_heads == 0,
                 "query heads ({}) must be a positive multiple of key/value heads ({})", p.heads, p.kv_heads);
  check_problem_supported(p.head_dim, p.dtype);
  return p;
}

Selection baseline_of(TunePass pass, const HeuristicFn& heuristic, const Pattern& pattern,
                      const engine::Problem& problem, const runtime::DeviceInfo& device) {
  if (pass == TunePass::kForward) return heuristic(pattern, problem, device);
  const engine::KernelChoice c = engine::backward_heuristic(pattern, problem, device);
  return {c.config, c.source};
}

namespace {

json device_to_json(const runtime::DeviceInfo& d) {
  return json{{"ordinal", d.ordinal},         {"name", d.name},
              {"cc_major", d.cc_major},       {"cc_minor", d.cc_minor},
              {"sm_count", d.sm_count},       {"smem_per_block_optin", d.smem_per_block_optin},
              {"smem_per_sm", d.smem_per_sm}, {"regs_per_sm", d.regs_per_sm},
              {"l2_bytes", d.l2_bytes},       {"clock_khz", d.clock_khz},
              {"total_memory", d.total_memory}, {"driver_version", d.driver_version}};
}

runtime::DeviceInfo device_from_json(const json& j) {
  runtime::DeviceInfo d;
  d.ordinal = j.at("ordinal").get<int>();
  d.name = j.at("name").get<std::string>();
  d.cc_major = j.at("cc_major").get<int>();
  d.cc_minor = j.at("cc_minor").get<int>();
  d.sm_count = j.at("sm_count").get<int>();
  d.smem_per_block_optin = j.at("smem_per_block_optin").get<int>();
  d.smem_per_sm = j.at("smem_per_sm").get<int>();
  d.regs_per_sm = j.at("regs_per_sm").get<int>();
  d.l2_bytes = j.at("l2_bytes").get<int>();
  d.clock_khz = j.at("clock_khz").get<int>();
  d.total_memory = j.at("total_memory").get<size_t>();
  d.driver_version = j.at("driver_version").get<int>();
  return d;
}

// The search space, or only `only` (plus the baseline) when it is not empty.
std::vector<Candidate> select_candidates(const Pattern& pattern, const engine::Problem& problem,
                                         const TargetLimits& limits, const KernelConfig& baseline,
                                         const std::vector<KernelConfig>& only, TunePass pass) {
  std::vector<Candidate> all = enumerate_candidates(pattern, problem, limits, baseline, pass);
  if (only.empty()) return all;
  std::vector<Candidate> kept;
  for (const Candidate& c : all)
    if (c.heuristic || std::find(only.begin(), only.end(), c.config) != only.end()) kept.push_back(c);
  for (const KernelConfig& c : only) {
    if (std::any_of(kept.begin(), kept.end(), [&](const Candidate& k) { return k.config == c; })) continue;
    kept.push_back(enumerate_candidates(pattern, problem, limits, c, pass).front());  // outside the table: still pruned
    kept.back().heuristic = false;
  }
  return kept;
}

CandidateReport report_of(const Candidate& c, int head_dim, TunePass pass) {
  CandidateReport r;
  r.config = c.config;
  r.heuristic = c.heuristic;
  r.status = c.pruned.empty() ? "candidate" : "pruned";
  r.detail = c.pruned;
  r.smem_bytes = pass == TunePass::kBackward ? std::max(backward_smem_bytes(c.config, head_dim),
                                                        backward_dq_smem_bytes(c.config, head_dim))
                                             : c.config.smem_bytes(head_dim);
  return r;
}

// First line of an error message (NVRTC errors carry the whole log below it).
std::string first_line(const std::string& s) {
  const size_t nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl) + " (...)";
}

}  // namespace

runtime::DeviceInfo probe_device(int ordinal, bool isolate) {
  const auto probe = [ordinal](size_t) -> json {
    if (!runtime::has_gpu()) return json{{"gpu", false}, {"reason", runtime::no_gpu_reason()}};
    return json{{"gpu", true}, {"device", device_to_json(runtime::device_info(ordinal))}};
  };
  IsolateOptions io;
  io.isolate = isolate;
  io.item_timeout_s = 60;
  const ItemOutcome o = run_items(1, probe, io)[0];
  if (o.status != ItemStatus::kDone)
    SPATTN_FAIL(ErrorCode::kCuda, "querying GPU {} failed: {}", ordinal, o.detail);
  if (o.value.contains("error")) {
    const std::string what = o.value["error"].get<std::string>();
    SPATTN_FAIL(ErrorCode::kInvalidArgument, "GPU {}: {}", ordinal, what);
  }
  if (!o.value.value("gpu", false))
    SPATTN_FAIL(ErrorCode::kNoGpu, "autotuning needs a GPU: {}", o.value.value("reason", std::string("none found")));
  return device_from_json(o.value["device"]);
}

std::vector<CandidateReport> list_candidates(const Pattern& pattern, const engine::Problem& problem,
                                             const AutotuneOptions& options, const HeuristicFn& heuristic,
                                             const runtime::DeviceInfo* gpu) {
  pattern.validate(problem.shape());
  const std::string arch = gpu ? gpu->arch() : options.arch.empty() ? "sm_90a" : options.arch;
  const runtime::DeviceInfo device = gpu ? *gpu : typical_device(arch);
  const TargetLimits limits = gpu ? device_limits(*gpu) : arch_limits(arch);
  const Selection base = baseline_of(options.pass, heuristic, pattern, problem, device);
  std::vector<CandidateReport> out;
  for (const Candidate& c : select_candidates(pattern, problem, limits, base.config, options.configs, options.pass))
    out.push_back(report_of(c, static_cast<int>(problem.head_dim), options.pass));
  return out;
}

void compile_jobs(std::vector<CompileJob>& jobs, const std::string& arch, int threads, bool in_child,
                  double child_timeout_s, const std::function<bool()>& skip,
                  const std::function<void(size_t done, size_t total)>& progress) {
  std::vector<size_t> order(jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) order[j] = j;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return jobs[a].baseline > jobs[b].baseline; });
  auto compile_all = [&] {
    std::mutex mu;
    size_t finished = 0;
    if (progress) progress(0, jobs.size());
    parallel_for(order.size(), threads > 0 ? threads : nvrtc_threads(), [&](size_t n) {
      CompileJob& job = jobs[order[n]];
      if (!job.baseline && skip && skip()) {
        job.skipped = true;
      } else {
        try {
          job.found = engine::compile_cached(job.rendered, arch);
          job.done = true;
        } catch (const Error& e) {
          job.error = e.what();
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      ++finished;
      if (progress) progress(finished, jobs.size());
    });
  };
  if (!in_child) {
    compile_all();
    return;
  }
  // NVRTC initialises the CUDA driver in the process that calls it, and a process
  // forked after that cannot use CUDA. The worker processes that time candidates are
  // forked from this one, so the compiles run in a child of their own and hand back
  // what the pruning needs (the CUBINs stay in the kernel cache).
  IsolateOptions io;
  io.isolate = true;
  io.item_timeout_s = child_timeout_s;
  const ItemOutcome o = run_items(1, [&](size_t) -> json {
    compile_all();
    json out = json::array();
    for (const CompileJob& j : jobs)
      out.push_back({{"done", j.done}, {"skipped", j.skipped}, {"error", j.error}, {"key", j.found.key},
                     {"hit", j.found.hit}, {"registers", j.found.kernel.registers},
                     {"local_bytes", j.found.kernel.local_bytes}, {"compile_ms", j.found.kernel.compile_ms}});
    return json{{"jobs", out}};
  }, io)[0];
  if (o.status != ItemStatus::kDone || !o.value.contains("jobs"))
    SPATTN_FAIL(ErrorCode::kCompile, "the compile worker failed: {}", o.detail.empty() ? o.value.dump() : o.detail);
  const json& results = o.value["jobs"];
  SPATTN_ASSERT(results.size() == jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) {
    const json& r = results[j];
    jobs[j].done = r["done"].get<bool>();
    jobs[j].skipped = r["skipped"].get<bool>();
    jobs[j].error = r["error"].get<std::string>();
    jobs[j].found.key = r["key"].get<std::string>();
    jobs[j].found.hit = r["hit"].get<bool>();
    jobs[j].found.kernel.registers = r["registers"].get<int>();
    jobs[j].found.kernel.local_bytes = r["local_bytes"].get<int>();
    jobs[j].found.kernel.compile_ms = r["compile_ms"].get<double>();
  }
}

std::string prune_after_compile(int registers, int local_bytes, int threads, bool heuristic,
                                const runtime::DeviceInfo& device, int max_local_bytes) {
  if (device.regs_per_sm > 0 && registers > 0 && registers * threads > device.regs_per_sm)
    return fmt::format("needs {} registers per block ({} per thread x {} threads); an SM has {}", registers * threads,
                       registers, threads, device.regs_per_sm);
  if (!heuristic && local_bytes > max_local_bytes)
    return fmt::format("{} B of local memory per thread (register spills; the limit is {} B)", local_bytes,
                       max_local_bytes);
  return "";
}

json measure_guarded(const std::function<json()>& measure) {
  try {
    return measure();
  } catch (const Error& e) {
    switch (e.code()) {
      case ErrorCode::kCuda: return json{{"status", "fault"}, {"detail", e.what()}, {"restart", true}};
      case ErrorCode::kNoGpu: return json{{"status", "error"}, {"detail", e.what()}, {"restart", true}};
      case ErrorCode::kUnsupported: return json{{"status", "resources"}, {"detail", e.what()}};
      default: return json{{"status", "error"}, {"detail", e.what()}};
    }
  }
}

Measured read_outcome(const ItemOutcome& o) {
  Measured m;
  switch (o.status) {
    case ItemStatus::kCrashed: m.status = "fault", m.detail = o.detail; return m;
    case ItemStatus::kTimedOut: m.status = "timeout", m.detail = o.detail; return m;
    case ItemStatus::kNotRun: m.status = "skipped", m.detail = o.detail; return m;
    case ItemStatus::kDone: break;
  }
  m.value = o.value;
  m.status = o.value.value("status", std::string("error"));
  m.detail = o.value.value("detail", o.value.value("error", std::string()));
  if (o.value.contains("error") && !o.value.contains("status")) m.status = "error";
  return m;
}

Winner pick_winner(const std::vector<double>& medians_ms, int heuristic, double min_gain,
                   const std::function<std::string(size_t)>& name) {
  Winner w;
  for (size_t k = 0; k < medians_ms.size(); ++k) {
    if (medians_ms[k] <= 0) continue;
    if (w.best < 0 || medians_ms[k] < medians_ms[w.best]) w.best = static_cast<int>(k);
  }
  const double h_ms = heuristic >= 0 ? medians_ms[heuristic] : 0;
  if (w.best >= 0 && h_ms > 0 && w.best != heuristic && medians_ms[w.best] > (1 - min_gain) * h_ms) {
    w.note = fmt::format("the fastest, {}, is within {:.0f}% of the heuristic's choice: keeping the heuristic's",
                         name(static_cast<size_t>(w.best)), min_gain * 100);
    w.best = heuristic;
  }
  return w;
}

void check_timing_options(const AutotuneOptions& options) {
  SPATTN_REQUIRE(options.reps >= 20, "reps must be at least 20 (got {}): timings are medians of >= 20 runs",
                 options.reps);
  SPATTN_REQUIRE(options.warmup >= 0, "warmup must be >= 0 (got {})", options.warmup);
  SPATTN_REQUIRE(options.budget_seconds >= 0, "budget_seconds must be >= 0 (got {})", options.budget_seconds);
  SPATTN_REQUIRE(options.min_gain >= 0 && options.min_gain < 1, "min_gain must be in [0, 1) (got {})", options.min_gain);
}

namespace {

// Everything up to the timing: candidates, compiles, post-compile pruning.
struct Prepared {
  AutotuneReport report;
  std::vector<Candidate> cands;
  std::vector<size_t> runnable;  // candidate indices to check and time, the baseline first
  engine::Problem check;
  ProblemBucket bucket;
  Selection base;
};

void check_options(const AutotuneOptions& options) {
  check_timing_options(options);
  SPATTN_REQUIRE(options.check_tokens >= 1 && options.check_heads >= 1, "check_tokens and check_heads must be >= 1");
}

Prepared prepare(const Pattern& pattern, const engine::Problem& problem, const AutotuneOptions& options,
                 const HeuristicFn& heuristic, const runtime::DeviceInfo& device, bool from_device,
                 Clock::time_point t0, bool compile_in_child) {
  pattern.validate(problem.shape());
  Prepared prep;
  AutotuneReport& report = prep.report;
  const TunePass pass = options.pass;
  report.pass = pass;
  const std::string arch = device.arch();
  report.device = from_device ? Fingerprint::of(device).describe() : device.name;
  report.arch = arch;
  report.pattern = pattern.to_json();
  report.problem = problem.to_string();

  // What the work is worth, and which database bucket it fills.
  {
    const Layout layout = compile_layout(pattern, problem.shape(), LayoutOptions{});
    const LayoutStats stats = layout_stats(pattern, layout, problem.head_dim);
    report.density = stats.density;
    // The backward pass does five matrix products per pair where the forward does two.
    report.useful_flops = problem.useful_flops(stats) * (pass == TunePass::kBackward ? 2.5 : 1.0);
  }
  prep.bucket = bucket_of(pattern, problem, report.density, pass);
  report.bucket = prep.bucket.key();
  // The backward check compares with fp64 reference gradients on the host: at most 1024
  // query tokens keep that to a second or two.
  prep.check = check_problem_for(pattern, problem,
                                 pass == TunePass::kBackward ? std::min<int64_t>(options.check_tokens, 1024)
                                                             : options.check_tokens,
                                 options.check_heads);
  const engine::Problem& check = prep.check;
  report.check_problem = check.to_string();

  prep.base = baseline_of(pass, heuristic, pattern, problem, device);
  const TargetLimits limits = from_device ? device_limits(device) : arch_limits(arch);
  prep.cands = select_candidates(pattern, problem, limits, prep.base.config, options.configs, pass);
  const std::vector<Candidate>& cands = prep.cands;
  const int head_dim = static_cast<int>(problem.head_dim);
  for (const Candidate& c : cands) report.candidates.push_back(report_of(c, head_dim, pass));
  for (size_t k = 0; k < cands.size(); ++k)
    if (cands[k].heuristic) report.heuristic = static_cast<int>(k);

  const bool budgeted = options.budget_seconds > 0;
  const auto compile_cutoff =
      t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.budget_seconds * 2 / 3));
  std::mutex progress_mu;
  auto progress = [&](const char* phase, size_t done, size_t total) {
    if (!options.progress) return;
    std::lock_guard<std::mutex> lock(progress_mu);
    options.progress(phase, done, total);
  };

  // --- render: the timed and the check kernels of every viable candidate -----------------
  std::vector<CompileJob> jobs;
  std::map<std::string, size_t> job_of_key;
  std::vector<std::vector<size_t>> jobs_of(cands.size());
  auto add_job = [&](codegen::RenderedKernel r, size_t user, bool baseline) {
    const std::string key = engine::manifest_for(r, arch).key();
    auto [it, fresh] = job_of_key.emplace(key, jobs.size());
    if (fresh) jobs.push_back(CompileJob{std::move(r)});
    CompileJob& j = jobs[it->second];
    j.baseline = j.baseline || baseline;
    jobs_of[user].push_back(it->second);
  };
  {
    std::vector<std::vector<codegen::RenderedKernel>> rendered(cands.size());
    std::vector<std::string> errors(cands.size());
    const int threads = options.threads > 0 ? options.threads : nvrtc_threads();
    parallel_for(cands.size(), threads, [&](size_t k) {
      if (!cands[k].pruned.empty()) return;
      try {
        const KernelConfig& c = cands[k].config;
        for (const engine::Problem* p : {&problem, &check}) {
          const Layout layout = compile_layout(pattern, p->shape(), c.layout_options());
          if (pass == TunePass::kBackward) {
            // The check runs the forward pass first (the heuristic's kernel, compiled
            // when the harness needs it) for O and LSE.
            rendered[k].push_back(codegen::render_backward(engine::kernel_spec_for(layout, c, *p, arch)));
          } else {
            rendered[k].push_back(engine::render_kernel(layout, c, *p, arch));
          }
        }
      } catch (const Error& e) {
        errors[k] = e.what();
      }
    });
    for (size_t k = 0; k < cands.size(); ++k) {
      if (!errors[k].empty()) {
        report.candidates[k].status = "error";
        report.candidates[k].detail = errors[k];
        continue;
      }
      for (auto& r : rendered[k]) add_job(std::move(r), k, cands[k].heuristic);
    }
  }
  // The support kernels (merge, fill, reference) serve everyone.
  jobs.push_back(CompileJob{codegen::render_support_kernels(), true});

  // --- compile in parallel, baseline first ---------------------------------------------
  const auto skip = [&] { return budgeted && Clock::now() > compile_cutoff; };
  compile_jobs(jobs, arch, options.threads, compile_in_child, std::max(600.0, options.budget_seconds), skip,
               [&](size_t done, size_t total) { progress("compiling", done, total); });
  if (!jobs.back().done)
    SPATTN_FAIL(ErrorCode::kCompile, "the support kernels did not compile for {}: {}", arch, jobs.back().error);

  // --- post-compile pruning ---------------------------------------------------------------
  std::vector<size_t>& runnable = prep.runnable;
  for (size_t k = 0; k < cands.size(); ++k) {
    CandidateReport& r = report.candidates[k];
    if (r.status != "candidate") continue;
    bool skipped = false;
    std::string error;
    for (size_t j : jobs_of[k]) {
      skipped = skipped || jobs[j].skipped;
      if (!jobs[j].error.empty() && error.empty()) error = jobs[j].error;
    }
    if (!error.empty()) {
      r.status = "compile error";
      r.detail = first_line(error);
      continue;
    }
    if (skipped) {
      r.status = "skipped";
      r.detail = "the budget ran out before it was compiled";
      continue;
    }
    // The timed problem's kernel.
    if (take_compiled(r, jobs[jobs_of[k].front()].found, r.config.threads(), device, options.max_local_bytes))
      runnable.push_back(k);
  }
  // The baseline first: it is timed whatever the budget says.
  std::stable_sort(runnable.begin(), runnable.end(),
                   [&](size_t a, size_t b) { return cands[a].heuristic > cands[b].heuristic; });
  return prep;
}

}  // namespace

AutotuneReport compile_candidates(const Pattern& pattern, const engine::Problem& problem,
                                  const AutotuneOptions& options, const HeuristicFn& heuristic,
                                  const runtime::DeviceInfo* gpu) {
  const auto t0 = Clock::now();
  const std::string arch = gpu ? gpu->arch() : options.arch.empty() ? "sm_90a" : options.arch;
  runtime::check_arch(arch);
  Prepared prep =
      prepare(pattern, problem, options, heuristic, gpu ? *gpu : typical_device(arch), gpu != nullptr, t0, false);
  for (size_t k : prep.runnable) prep.report.candidates[k].status = "compiled";
  prep.report.isolated = false;
  prep.report.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return std::move(prep.report);
}

AutotuneReport tune(const Pattern& pattern, const engine::Problem& problem, const AutotuneOptions& options,
                    const HeuristicFn& heuristic, const TuneHooks& hooks) {
  const auto t0 = Clock::now();
  check_options(options);
  pattern.validate(problem.shape());
  const bool isolated = options.isolate && children_can_use_cuda();
  if (options.isolate && !isolated)
    log::warn("autotune: CUDA is already loaded in this process, so candidates run in-process (a kernel fault ends "
              "the run); run the autotuner in a process that has not used CUDA to isolate them");
  const runtime::DeviceInfo device = hooks.probe ? hooks.probe() : probe_device(options.device, isolated);
  const Fingerprint fingerprint = Fingerprint::of(device);
  Prepared prep = prepare(pattern, problem, options, heuristic, device, true, t0, isolated);
  AutotuneReport& report = prep.report;
  report.isolated = isolated;
  const std::vector<Candidate>& cands = prep.cands;
  const std::vector<size_t>& runnable = prep.runnable;
  const engine::Problem& check = prep.check;
  const Selection& base = prep.base;
  const ProblemBucket& bucket = prep.bucket;
  const bool budgeted = options.budget_seconds > 0;
  const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.budget_seconds));
  std::mutex progress_mu;
  auto progress = [&](const char* phase, size_t done, size_t total) {
    if (!options.progress) return;
    std::lock_guard<std::mutex> lock(progress_mu);
    options.progress(phase, done, total);
  };

  // --- check and time, in worker processes -------------------------------------------------
  BenchSetup setup;
  setup.pattern = pattern;
  setup.problem = problem;
  setup.check = check;
  setup.device = options.device;
  setup.warmup = options.warmup;
  setup.reps = options.reps;
  setup.pass = options.pass;
  setup.seed = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);  // fresh inputs every run
  auto bench = std::make_shared<std::unique_ptr<Bench>>();  // created lazily in each worker
  const ItemFn item = [&, bench](size_t n) -> json {
    const Candidate& c = cands[runnable[n]];
    if (budgeted && !c.heuristic && Clock::now() > deadline)
      return json{{"status", "skipped"}, {"detail", "the budget ran out before it was timed"}};
    return measure_guarded([&]() -> json {
      if (hooks.measure) return hooks.measure(c.config);
      if (!*bench) *bench = std::make_unique<Bench>(setup);
      json r = (*bench)->measure(c.config);
      r["timing"] = (*bench)->timing_method();
      return r;
    });
  };
  IsolateOptions io;
  io.isolate = report.isolated;
  io.item_timeout_s = options.candidate_timeout_s;
  size_t timed = 0;
  progress("timing", 0, runnable.size());
  const std::vector<ItemOutcome> outcomes = run_items(runnable.size(), item, io, [&](size_t, const ItemOutcome&) {
    progress("timing", ++timed, runnable.size());
  });

  for (size_t n = 0; n < runnable.size(); ++n) {
    CandidateReport& r = report.candidates[runnable[n]];
    const Measured m = read_outcome(outcomes[n]);
    r.status = m.status;
    r.detail = m.detail;
    const json& v = m.value;
    if (v.is_null()) continue;
    r.rel_l2_err = v.value("rel_l2_err", -1.0);
    r.max_abs_err = v.value("max_abs_err", -1.0);
    if (r.status != "ok") continue;
    r.median_ms = v.value("median_ms", 0.0);
    r.p20_ms = v.value("p20_ms", 0.0);
    r.p80_ms = v.value("p80_ms", 0.0);
    r.runs = v.value("runs", 0);
    r.tflops = r.median_ms > 0 ? report.useful_flops / (r.median_ms * 1e9) : 0;
    if (report.timing.empty()) report.timing = v.value("timing", std::string());
  }

  // --- the winner ----------------------------------------------------------------------
  std::vector<double> medians;
  for (const CandidateReport& r : report.candidates) medians.push_back(r.status == "ok" ? r.median_ms : 0.0);
  const Winner winner = pick_winner(medians, report.heuristic, options.min_gain,
                                    [&](size_t k) { return report.candidates[k].config.to_string(); });
  report.best = winner.best;
  report.note = winner.note;
  const double h_ms = report.heuristic >= 0 ? medians[report.heuristic] : 0;
  for (CandidateReport& r : report.candidates)
    if (r.status == "ok" && h_ms > 0) r.speedup = h_ms / r.median_ms;
  if (report.best >= 0) {
    CandidateReport& best = report.candidates[report.best];
    best.best = true;
    report.speedup = best.speedup;
    if (options.save) {
      TunedEntry e;
      e.config = best.config;
      e.median_ms = best.median_ms;
      e.p20_ms = best.p20_ms;
      e.p80_ms = best.p80_ms;
      e.tflops = best.tflops;
      e.heuristic_config = base.config.to_string();
      e.heuristic_ms = h_ms;
      e.candidates = static_cast<int>(
          std::count_if(report.candidates.begin(), report.candidates.end(), [](const auto& r) { return r.status == "ok"; }));
      e.problem = report.problem;
      e.pattern = report.pattern;
      e.tuned_at = utc_now();
      e.bucket = bucket.to_json();
      report.db_file = TuningDb::store(TuningDb::default_dir(), fingerprint, report.bucket, e).string();
      report.saved = true;
    }
  }
  report.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  log::debug("autotune {} | {} | best {} ({:.3f} ms, {:.2f}x the heuristic) in {:.1f} s", report.pattern,
             report.problem, report.best >= 0 ? report.candidates[report.best].config.to_string() : "none",
             report.best >= 0 ? report.candidates[report.best].median_ms : 0.0, report.speedup, report.seconds);
  return report;
}

}  // namespace spattn::autotune
