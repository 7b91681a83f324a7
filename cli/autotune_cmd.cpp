// spattn autotune: tune the kernel configuration of a pattern at a problem shape (or of
// every problem of a manifest) on this GPU and save the winners to its tuning database;
// --op scan|performer tunes a linear-time kernel's configuration instead.
// --dry-run lists the candidates and --compile-only fills the kernel cache with them (no
// GPU needed for either).
#include <spattn/autotune.hpp>
#include <spattn/linear.hpp>

#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <memory>
#include <optional>

#include "api/select.hpp"
#include "autotune/prewarm.hpp"
#include "autotune/tuner.hpp"
#include "cli/cli.hpp"
#include "api/tools.hpp"

namespace spattn::cli {

namespace {

autotune::Selection heuristic_selection(const Pattern& pattern, const engine::Problem& problem,
                                        const runtime::DeviceInfo& device) {
  const api::Choice c = api::heuristic(pattern, problem, device);
  return {c.config, c.source};
}

// Progress bars for the phases the tuner reports ("compiling", "timing").
class PhaseProgress {
 public:
  void operator()(const std::string& phase, size_t done, size_t total) {
    if (phase != phase_ || !bar_) {
      if (bar_) bar_->finish();
      bar_ = std::make_unique<Progress>(phase, total);
      phase_ = phase;
      shown_ = 0;
    }
    if (done > shown_) {
      bar_->advance(done - shown_);
      shown_ = done;
    }
  }
  void finish() {
    if (bar_) bar_->finish();
  }

 private:
  std::string phase_;
  std::unique_ptr<Progress> bar_;
  size_t shown_ = 0;
};

// The options every op shares, checked (usage errors name the flag).
template <class Args>
AutotuneOptions options_from(const Args& args) {
  if (args.min_gain < 0 || args.min_gain >= 1) throw UsageError("--min-gain must be in [0, 1)");
  if (args.budget < 0) throw UsageError("--budget-seconds must be >= 0");
  if (args.reps < 20) throw UsageError(fmt::format("--reps must be at least 20 (got {})", args.reps));
  AutotuneOptions options;
  options.device = args.device;
  options.arch = args.arch;
  options.budget_seconds = args.budget;
  options.reps = args.reps;
  options.warmup = args.warmup;
  options.save = !args.no_save;
  options.isolate = !args.in_process;
  options.candidate_timeout_s = args.timeout;
  options.check_tokens = args.check_tokens;
  options.min_gain = args.min_gain;
  return options;
}

// spattn autotune --op scan|performer: the linear-time kernels' configurations. The
// attention-only options are refused by name, the shape is checked before any work.
template <class Args>
void tune_linear_op(const CLI::App& cmd, const Args& args) {
  const bool scan = args.op == "scan";
  const std::vector<const char*> attention_only = {"--pattern", "--manifest", "--kv-seq", "--backward",
                                                   "--compile-only"};
  const std::vector<const char*> other_op = scan ? std::vector<const char*>{"--heads", "--kv-heads", "--head-dim",
                                                                            "--features"}
                                                 : std::vector<const char*>{"--channels", "--state"};
  for (const char* name : attention_only)
    if (cmd.count(name) > 0) throw UsageError(fmt::format("{} does not apply to --op {}", name, args.op));
  for (const char* name : other_op)
    if (cmd.count(name) > 0) throw UsageError(fmt::format("{} does not apply to --op {}", name, args.op));
  if (cmd.count("--length") > 0 && cmd.count("--seq") > 0 && args.length != args.seq)
    throw UsageError("--length and --seq both given, with different values; give one");
  const int64_t length = cmd.count("--length") > 0 ? args.length : args.seq;
  if (cmd.count("--length") == 0 && cmd.count("--seq") == 0)
    throw UsageError(fmt::format("--length is required with --op {} (tokens per sequence)", args.op));
  if (length <= 0) throw UsageError(fmt::format("--length must be >= 1 (got {})", length));
  if (args.batch <= 0) throw UsageError(fmt::format("--batch must be >= 1 (got {})", args.batch));
  if (args.check_tokens < 1) throw UsageError("--check-tokens must be >= 1");

  LinearProblem p;
  p.op = scan ? LinearOp::kScan : LinearOp::kPerformer;
  p.batch = args.batch;
  p.length = length;
  p.dtype = dtype_from_string(args.dtype);
  if (scan) {
    if (cmd.count("--channels") == 0) throw UsageError("--channels is required with --op scan");
    if (args.channels <= 0) throw UsageError(fmt::format("--channels must be >= 1 (got {})", args.channels));
    if (args.state <= 0) throw UsageError(fmt::format("--state must be >= 1 (got {})", args.state));
    p.channels = args.channels;
    p.state = args.state;
  } else {
    if (args.heads <= 0) throw UsageError(fmt::format("--heads must be >= 1 (got {})", args.heads));
    if (args.kv_heads < 0) throw UsageError(fmt::format("--kv-heads must be >= 1 (got {})", args.kv_heads));
    p.heads = args.heads;
    p.kv_heads = args.kv_heads;
    p.head_dim = cmd.count("--head-dim") > 0 ? args.head_dim : 64;
    p.features = args.features;
  }

  AutotuneOptions options = options_from(args);
  if (!args.arch.empty()) tools::check_arch(args.arch);
  for (size_t pos = 0; pos < args.configs.size();) {
    const size_t comma = std::min(args.configs.find(',', pos), args.configs.size());
    const std::string text = args.configs.substr(pos, comma - pos);
    try {
      if (scan) ScanConfig::parse(text);
      else PerformerConfig::parse(text);
    } catch (const Error& e) {
      throw UsageError(std::string("--configs: ") + e.what());
    }
    options.linear_configs.push_back(text);
    pos = comma + 1;
  }

  // The shape is checked (and the candidates listed) before anything needs a GPU.
  const Autotuner tuner(options);
  const std::vector<LinearCandidateReport> cands = tuner.linear_candidates(p);
  if (args.dry_run) {
    const std::string arch = args.arch.empty() ? "sm_90a" : args.arch;
    if (globals().json) {
      nlohmann::json list = nlohmann::json::array();
      for (const LinearCandidateReport& c : cands) {
        nlohmann::json j = {{"config", c.config}, {"heuristic", c.heuristic}, {"status", c.status},
                            {"smem_bytes", c.smem_bytes}};
        if (!c.detail.empty()) j["detail"] = c.detail;
        list.push_back(j);
      }
      print_json({{"op", args.op}, {"arch", arch}, {"problem", p.to_string()}, {"candidates", list}});
      return;
    }
    size_t viable = 0;
    std::cout << fmt::format("target   {} (a typical GPU of the arch: limits assumed)\nproblem  {}\n\n", arch,
                             p.to_string());
    std::cout << fmt::format("  {:<16} {:<10} {:>9}  {}\n", "candidate", "status", "smem B", "notes");
    for (const LinearCandidateReport& c : cands) {
      viable += c.status == "candidate";
      std::cout << fmt::format("  {:<16} {:<10} {:>9}  {}\n", c.config + (c.heuristic ? " (h)" : ""), c.status,
                               c.smem_bytes, c.detail);
    }
    std::cout << fmt::format("\n{} candidates, {} to compile and time, {} pruned; (h) = the heuristic's choice\n",
                             cands.size(), viable, cands.size() - viable);
    return;
  }

  PhaseProgress progress;
  AutotuneOptions o = options;
  o.progress = [&progress](const std::string& phase, size_t done, size_t total) { progress(phase, done, total); };
  const LinearTuneReport report = Autotuner(o).tune_linear(p);
  progress.finish();
  if (globals().json) print_json(nlohmann::json::parse(report.to_json()));
  else std::cout << report.to_table();
  if (report.best < 0)
    throw Error(ErrorCode::kInternal, "no candidate passed the correctness check (see the table); nothing was saved");
}

}  // namespace

void register_autotune(CLI::App& app) {
  struct Args {
    std::string manifest;
    std::string pattern;
    int64_t seq = 0;
    int64_t kv_seq = 0;
    int64_t heads = 16;
    int64_t kv_heads = 0;
    int64_t batch = 1;
    int head_dim = 128;
    std::string dtype = "bf16";
    bool dry_run = false;
    bool compile_only = false;
    std::string configs;
    std::string arch;
    double budget = 0;
    int reps = 20;
    int warmup = 5;
    int device = 0;
    bool no_save = false;
    bool in_process = false;
    double timeout = 120;
    double min_gain = 0.01;
    int64_t check_tokens = 4096;
    bool backward = false;
    std::string op = "attention";
    int64_t length = 0;
    int64_t channels = 0;
    int64_t state = 16;
    int64_t features = 256;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("autotune",
                                 "tune a pattern's kernel configuration on this GPU and save the winner to its tuning "
                                 "database (--dry-run: list the candidates, no GPU needed)");
  cmd->add_option("-p,--pattern", args->pattern, "pattern: inline JSON, @file.json or a preset name");
  cmd->add_option("--seq", args->seq, "query tokens (and key tokens unless --kv-seq)");
  cmd->add_option("--manifest", args->manifest,
                  "tune every problem of a prewarm manifest (entries x seq x dtypes x head_dims) instead");
  cmd->add_option("--kv-seq", args->kv_seq, "key tokens (default: --seq)");
  cmd->add_option("--heads", args->heads, "query heads")->capture_default_str();
  cmd->add_option("--kv-heads", args->kv_heads, "key/value heads (default: --heads)");
  cmd->add_option("--batch", args->batch, "batch size")->capture_default_str();
  cmd->add_option("--head-dim", args->head_dim, "head dimension")->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "bf16 or fp16")->capture_default_str();
  cmd->add_flag("--dry-run", args->dry_run, "list the candidates and what static pruning removes; compile and run nothing");
  cmd->add_flag("--compile-only", args->compile_only,
                "compile every candidate into the kernel cache and stop (no GPU needed; tuning later compiles nothing)");
  cmd->add_option("--configs", args->configs,
                  "only these candidates (comma-separated, e.g. 128x64w4s1,64x64w4s2:hilbert), plus the heuristic's");
  cmd->add_option("--arch", args->arch,
                  "with --dry-run or --compile-only: the target (default: this GPU's, else sm_90a)");
  cmd->add_option("--budget-seconds", args->budget, "wall-clock budget; 0 = none (the heuristic's config is always timed)")
      ->capture_default_str();
  cmd->add_option("--reps", args->reps, "timed runs per candidate (at least 20)")->capture_default_str();
  cmd->add_option("--warmup", args->warmup, "untimed runs per candidate")->capture_default_str();
  cmd->add_option("--device", args->device, "CUDA device")->capture_default_str();
  cmd->add_option("--timeout", args->timeout, "seconds per candidate before its worker is killed")->capture_default_str();
  cmd->add_option("--check-tokens", args->check_tokens, "query tokens of the correctness check")->capture_default_str();
  cmd->add_option("--min-gain", args->min_gain,
                  "a candidate must be this fraction faster than the heuristic's choice to replace it")
      ->capture_default_str();
  cmd->add_flag("--no-save", args->no_save, "do not write the tuning database");
  cmd->add_flag("--in-process", args->in_process, "time candidates in this process (no fault isolation)");
  cmd->add_flag("--backward", args->backward,
                "tune the backward kernel's configuration instead (its own database entries, read by "
                "Attention::backward; --configs then names backward configs, e.g. 64x128w8s2)");
  cmd->add_option("--op", args->op,
                  "attention (a pattern's kernel), scan (the Mamba selective scan: --length, --channels, --state) or "
                  "performer (the causal Performer's prefix scan: --length, --heads, --head-dim, --features)")
      ->capture_default_str();
  cmd->add_option("--length", args->length, "with --op scan|performer: tokens per sequence (or --seq)");
  cmd->add_option("--channels", args->channels, "with --op scan: channels (Mamba's d_inner)");
  cmd->add_option("--state", args->state, "with --op scan: state size per channel")->capture_default_str();
  cmd->add_option("--features", args->features, "with --op performer: random features m")->capture_default_str();

  cmd->callback([args, cmd] {
    if (args->op == "scan" || args->op == "performer") {
      tune_linear_op(*cmd, *args);
      return;
    }
    if (args->op != "attention")
      throw UsageError(fmt::format("--op: unknown op '{}'; supported: attention, scan, performer", args->op));
    for (const char* name : {"--length", "--channels", "--state", "--features"})
      if (cmd->count(name) > 0) throw UsageError(fmt::format("{} applies to --op scan or performer", name));
    AutotuneOptions options = options_from(*args);
    options.pass = args->backward ? TunePass::kBackward : TunePass::kForward;
    if (args->dry_run && args->compile_only) throw UsageError("--dry-run and --compile-only exclude each other");
    if (!args->arch.empty()) tools::check_arch(args->arch);

    // The problems: one from the flags, or every entry x seq x dtype x head dim of a manifest.
    struct Job {
      Pattern pattern;
      TuneProblem problem;
    };
    std::vector<Job> jobs;
    if (!args->manifest.empty()) {
      if (!args->pattern.empty() || args->seq != 0)
        throw UsageError("--manifest gives the problems; leave out --pattern and --seq");
      std::ifstream in(args->manifest);
      if (!in) throw UsageError("--manifest: cannot read file '" + args->manifest + "'");
      std::stringstream text;
      text << in.rdbuf();
      const autotune::Manifest m = autotune::Manifest::parse(text.str());
      if (args->arch.empty()) options.arch = m.archs.front();  // dry runs and compiles without a GPU
      for (const autotune::ManifestEntry& e : m.entries)
        for (size_t s = 0; s < e.seq.size(); ++s)
          for (DType dtype : m.dtypes)
            for (int head_dim : m.head_dims) {
              TuneProblem tp;
              tp.batch = e.batch;
              tp.nq = e.seq[s];
              tp.nk = e.kv_seq[s];
              tp.heads = e.heads;
              tp.kv_heads = e.kv_heads;
              tp.head_dim = head_dim;
              tp.dtype = dtype;
              jobs.push_back({e.pattern, tp});
            }
      // A record file: its problems of this pass, once each.
      std::set<std::string> seen;
      for (const autotune::RecordedProblem& r : m.recorded) {
        if (r.pass != options.pass) continue;
        TuneProblem tp;
        tp.batch = r.problem.batch;
        tp.nq = r.problem.nq;
        tp.nk = r.problem.nk;
        tp.heads = r.problem.heads;
        tp.kv_heads = r.problem.kv_heads;
        tp.head_dim = r.problem.head_dim;
        tp.dtype = r.problem.dtype;
        if (seen.insert(r.pattern.to_json() + "|" + r.problem.to_string()).second) jobs.push_back({r.pattern, tp});
      }
      if (jobs.empty())
        throw UsageError(fmt::format("--manifest: '{}' records no {} problem", args->manifest, to_string(options.pass)));
    } else {
      if (args->pattern.empty()) throw UsageError("--pattern is required (or --manifest)");
      if (args->seq <= 0) throw UsageError("--seq is required and must be >= 1 (or --manifest)");
      TuneProblem tp;
      tp.batch = args->batch;
      tp.nq = args->seq;
      tp.nk = args->kv_seq;
      tp.heads = args->heads;
      tp.kv_heads = args->kv_heads;
      tp.head_dim = args->head_dim;
      tp.dtype = dtype_from_string(args->dtype);
      jobs.push_back({load_pattern_arg(args->pattern), tp});
    }
    for (size_t pos = 0; pos < args->configs.size();) {
      const size_t comma = std::min(args->configs.find(',', pos), args->configs.size());
      try {
        options.configs.push_back(KernelConfig::parse(args->configs.substr(pos, comma - pos)));
        for (const Job& j : jobs) {
          if (args->backward)
            check_backward_config(options.configs.back(), j.problem.head_dim, j.problem.dtype,
                                  args->arch.empty() ? "sm_80" : args->arch, 0);
          else
            options.configs.back().validate(static_cast<int>(j.problem.head_dim));
        }
      } catch (const Error& e) {
        throw UsageError(std::string("--configs: ") + e.what());
      }
      pos = comma + 1;
    }
    for (const Job& j : jobs) autotune::to_problem(j.problem);  // every problem checked before any work

    // Dry runs and compiles use this GPU's limits when there is one (asked in a worker
    // process, so that this process stays free of CUDA) and no --arch.
    std::optional<runtime::DeviceInfo> gpu;
    if ((args->dry_run || args->compile_only) && args->arch.empty()) {
      try {
        gpu = autotune::probe_device(args->device);
      } catch (const Error&) {
      }
    }

    nlohmann::json all = nlohmann::json::array();
    bool failed = false;
    for (size_t k = 0; k < jobs.size(); ++k) {
      const Pattern& pattern = jobs[k].pattern;
      const TuneProblem& tp = jobs[k].problem;
      const engine::Problem problem = autotune::to_problem(tp);
      if (jobs.size() > 1 && !globals().json)
        std::cout << fmt::format("{}== [{}/{}] {} | {}\n", k ? "\n" : "", k + 1, jobs.size(), pattern.to_json(),
                                 problem.to_string());

      if (args->dry_run) {
        const auto cands =
            autotune::list_candidates(pattern, problem, options, heuristic_selection, gpu ? &*gpu : nullptr);
        const std::string arch = gpu ? gpu->arch() : options.arch.empty() ? "sm_90a" : options.arch;
        const std::string target = gpu ? fmt::format("{} ({})", gpu->name, arch)
                                       : fmt::format("{} (no GPU asked: limits assumed for the arch)", arch);
        if (globals().json) {
          nlohmann::json list = nlohmann::json::array();
          for (const CandidateReport& c : cands) {
            nlohmann::json j = {{"config", c.config.to_string()}, {"heuristic", c.heuristic}, {"status", c.status},
                                {"smem_bytes", c.smem_bytes}};
            if (!c.detail.empty()) j["detail"] = c.detail;
            list.push_back(j);
          }
          all.push_back({{"target", target}, {"arch", arch}, {"pass", to_string(options.pass)},
                         {"pattern", nlohmann::json::parse(pattern.to_json())},
                         {"problem", problem.to_string()}, {"candidates", list}});
          continue;
        }
        size_t viable = 0;
        std::cout << fmt::format("target   {}\npass     {}\nproblem  {}\npattern  {}\n\n", target,
                                 to_string(options.pass), problem.to_string(), pattern.to_json());
        std::cout << fmt::format("  {:<28} {:<10} {:>9}  {}\n", "candidate", "status", "smem B", "notes");
        for (const CandidateReport& c : cands) {
          viable += c.status == "candidate";
          std::cout << fmt::format("  {:<28} {:<10} {:>9}  {}\n", c.config.to_string() + (c.heuristic ? " (h)" : ""),
                                   c.status, c.smem_bytes, c.detail.substr(0, c.detail.find('\n')));
        }
        std::cout << fmt::format("\n{} candidates, {} to compile and time, {} pruned; (h) = the heuristic's choice\n",
                                 cands.size(), viable, cands.size() - viable);
        continue;
      }

      PhaseProgress progress;
      AutotuneOptions o = options;
      o.progress = [&progress](const std::string& phase, size_t done, size_t total) { progress(phase, done, total); };
      const AutotuneReport report =
          args->compile_only
              ? autotune::compile_candidates(pattern, problem, o, heuristic_selection, gpu ? &*gpu : nullptr)
              : Autotuner(o).tune(pattern, tp);
      progress.finish();
      if (globals().json) all.push_back(nlohmann::json::parse(report.to_json()));
      else std::cout << report.to_table();
      failed = failed || (!args->compile_only && report.best < 0);
    }
    if (globals().json) print_json(jobs.size() == 1 ? all[0] : nlohmann::json{{"runs", all}});
    if (failed)
      throw Error(ErrorCode::kInternal, "no candidate passed the correctness check (see the table); nothing was saved");
  });
}

}  // namespace spattn::cli
