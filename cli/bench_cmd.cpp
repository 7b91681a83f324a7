// spattn bench: time the forward pass of a pattern on this GPU (random inputs rotated
// over three buffer sets, CUDA events, median and p20/p80), with useful TFLOP/s.
#include <spattn/attention.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <iostream>

#include "api/tools.hpp"
#include "cli/cli.hpp"

namespace spattn::cli {

void register_bench(CLI::App& app) {
  struct Args {
    std::string pattern;
    int64_t seq = 16384, kv_seq = 0, heads = 16, kv_heads = 0, batch = 1;
    int head_dim = 128;
    std::string dtype = "bf16";
    std::string config;
    int reps = 20;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("bench", "time the forward pass of a pattern on this GPU");
  cmd->add_option("-p,--pattern", args->pattern, "pattern: inline JSON, @file.json or a preset name")->required();
  cmd->add_option("--seq", args->seq, "query tokens")->capture_default_str();
  cmd->add_option("--kv-seq", args->kv_seq, "key tokens (default: --seq)");
  cmd->add_option("--heads", args->heads, "query heads")->capture_default_str();
  cmd->add_option("--kv-heads", args->kv_heads, "key/value heads (default: --heads)");
  cmd->add_option("--batch", args->batch, "batch")->capture_default_str();
  cmd->add_option("--head-dim", args->head_dim, "head dimension")->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "fp16 or bf16")->capture_default_str();
  cmd->add_option("--config", args->config, "force a kernel config, e.g. 128x64w4s1 (default: database or heuristic)");
  cmd->add_option("--reps", args->reps, "timed repetitions")->capture_default_str()->check(CLI::Range(3, 100000));
  cmd->callback([args] {
    const Pattern pattern = load_pattern_arg(args->pattern);
    const int64_t nk = args->kv_seq > 0 ? args->kv_seq : args->seq;
    const int64_t hkv = args->kv_heads > 0 ? args->kv_heads : args->heads;
    const DType dtype = dtype_from_string(args->dtype);
    AttentionOptions opts;
    if (!args->config.empty()) opts.config = KernelConfig::parse(args->config);
    Attention attn(pattern, opts);
    if (!tools::has_gpu()) throw Error(ErrorCode::kNoGpu, "spattn bench needs a GPU: " + tools::no_gpu_reason());
    // Plan first: invalid shapes and unsupported head dims fail before any allocation.
    attn.prepare(args->batch, args->seq, nk, args->heads, hkv, args->head_dim, dtype);

    constexpr int kSets = 3;  // inputs rotate over three sets, so repeated runs do not time the L2
    std::vector<tools::DeviceTensor> q, k, v;
    for (int s = 0; s < kSets; ++s) {
      q.emplace_back(dtype, std::vector<int64_t>{args->batch, args->seq, args->heads, args->head_dim});
      k.emplace_back(dtype, std::vector<int64_t>{args->batch, nk, hkv, args->head_dim});
      v.emplace_back(dtype, std::vector<int64_t>{args->batch, nk, hkv, args->head_dim});
      q.back().fill_random(3 * s + 1);
      k.back().fill_random(3 * s + 2);
      v.back().fill_random(3 * s + 3);
    }
    const tools::DeviceTensor o(dtype, {args->batch, args->seq, args->heads, args->head_dim});
    for (int w = 0; w < 3; ++w) attn.forward(q[w % kSets].view(), k[w % kSets].view(), v[w % kSets].view(), o.view());
    tools::synchronize();
    std::vector<double> times;
    Progress progress("timing", static_cast<size_t>(args->reps));
    tools::Timer timer;
    for (int r = 0; r < args->reps; ++r) {
      timer.start();
      attn.forward(q[r % kSets].view(), k[r % kSets].view(), v[r % kSets].view(), o.view());
      times.push_back(timer.stop_ms());
      progress.advance();
    }
    progress.finish();
    std::sort(times.begin(), times.end());
    auto pct = [&](double f) { return times[std::min(times.size() - 1, static_cast<size_t>(f * times.size()))]; };
    const Explanation& ex = attn.explanation();
    const double flops = 4.0 * args->head_dim * static_cast<double>(ex.stats.allowed_pairs_total) * args->batch;
    const double med = pct(0.5);
    if (globals().json) {
      print_json({{"pattern", ex.pattern}, {"problem", ex.problem}, {"device", ex.device}, {"config", ex.config.to_string()},
                  {"config_source", ex.config_source}, {"median_ms", med}, {"p20_ms", pct(0.2)}, {"p80_ms", pct(0.8)},
                  {"useful_tflops", flops / med / 1e9}, {"density", ex.stats.density}, {"reps", args->reps}});
      return;
    }
    std::cout << attn.explain();
    std::cout << fmt::format("time      {:.3f} ms median (p20 {:.3f}, p80 {:.3f}) over {} runs; {:.1f} useful TFLOP/s\n",
                             med, pct(0.2), pct(0.8), args->reps, flops / med / 1e9);
  });
}

}  // namespace spattn::cli
