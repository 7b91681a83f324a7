// spattn bench: time a forward pass on this GPU (random inputs rotated over three buffer
// sets, CUDA events, median and p20/p80):
//   spattn bench -p P ...         sparse attention with a pattern, useful TFLOP/s
//   spattn bench scan ...         the Mamba selective scan, tokens/s and the fraction of the
//                                 memory-bandwidth bound it reaches
//   spattn bench performer ...    Performer (FAVOR+) attention, tokens/s and TFLOP/s
//   spattn bench adaptive ...     adaptive top-k: selection overhead over the attention
//   spattn bench documents ...    packed variable-length documents against one sequence
//                                 of the same work
// scan and performer default to 64k tokens and take --against P to time sparse attention
// of the same tokens and width in the same run.
#include <spattn/adaptive.hpp>
#include <spattn/attention.hpp>
#include <spattn/linear.hpp>
#include <spattn/varlen.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iostream>
#include <optional>
#include <random>
#include <set>

#include "api/tools.hpp"
#include "cli/cli.hpp"

namespace spattn::cli {
namespace {

constexpr int kSets = 3;  // inputs rotate over three sets, so repeated runs do not time the L2

struct Timing {
  std::vector<double> ms;  // sorted
  int reps = 0;
  double pct(double f) const { return ms[std::min(ms.size() - 1, static_cast<size_t>(f * ms.size()))]; }
  double median() const { return pct(0.5); }
  std::string line() const {
    return fmt::format("{:.3f} ms median (p20 {:.3f}, p80 {:.3f}) over {} runs", median(), pct(0.2), pct(0.8), reps);
  }
};

// Three warm-up runs, then `reps` timed ones of run(r) on the default stream.
Timing time_runs(const std::string& label, int reps, const std::function<void(int)>& run) {
  for (int w = 0; w < 3; ++w) run(w);
  tools::synchronize();
  Timing t;
  t.reps = reps;
  Progress progress(label, static_cast<size_t>(reps));
  tools::Timer timer;
  for (int r = 0; r < reps; ++r) {
    timer.start();
    run(r);
    t.ms.push_back(timer.stop_ms());
    progress.advance();
  }
  progress.finish();
  std::sort(t.ms.begin(), t.ms.end());
  return t;
}

DType bench_dtype(const std::string& name) {
  const DType dt = dtype_from_string(name);
  // The inputs are filled on the GPU by a 16-bit random kernel.
  if (dt == DType::kFloat32) throw UsageError("--dtype: " + name + " is not benchmarked; use bf16 or fp16");
  return dt;
}

// A placeholder device address for validating shapes before any GPU work (check_* read
// only shapes, strides, dtypes and alignment).
void* placeholder() { return reinterpret_cast<void*>(uintptr_t{1} << 40); }

// Sparse attention of `pattern` over Q/K/V [batch, seq, heads, head_dim], timed like the
// pattern bench: the yardstick of --against.
struct Against {
  std::string pattern, config;
  Timing timing;
};
std::optional<Against> time_against(const std::optional<Pattern>& pattern, int64_t batch, int64_t seq, int64_t heads,
                                    int64_t head_dim, DType dtype, int reps, const AttentionOptions& options = {},
                                    const std::string& label = "timing sparse attention") {
  if (!pattern) return std::nullopt;
  Attention attn(*pattern, options);
  attn.prepare(batch, seq, seq, heads, heads, head_dim, dtype);
  std::vector<tools::DeviceTensor> q, k, v;
  for (int s = 0; s < kSets; ++s) {
    for (auto* set : {&q, &k, &v}) {
      set->emplace_back(dtype, std::vector<int64_t>{batch, seq, heads, head_dim});
      set->back().fill_random(100 + 3 * s + static_cast<uint64_t>(set == &k) + 2 * static_cast<uint64_t>(set == &v));
    }
  }
  const tools::DeviceTensor o(dtype, {batch, seq, heads, head_dim});
  Against a;
  a.timing = time_runs(label, reps, [&](int r) {
    attn.forward(q[r % kSets].view(), k[r % kSets].view(), v[r % kSets].view(), o.view());
  });
  a.pattern = attn.explanation().pattern;
  a.config = attn.explanation().config.to_string();
  return a;
}

// The backward pass of `pattern` on the batched layout [batch, seq] (after one forward
// for O and LSE), timed as time_against times the forward.
Against time_backward_against(const Pattern& pattern, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                              DType dtype, int reps, const AttentionOptions& options, const std::string& label) {
  Attention attn(pattern, options);
  auto tensor = [&](uint64_t seed) {
    tools::DeviceTensor t(dtype, {batch, seq, heads, head_dim});
    t.fill_random(seed);
    return t;
  };
  const tools::DeviceTensor q = tensor(201), k = tensor(202), v = tensor(203), d_o = tensor(204), o = tensor(205);
  const tools::DeviceTensor lse(DType::kFloat32, {batch, heads, seq}), dq = tensor(206), dk = tensor(207),
      dv = tensor(208);
  const TensorView l = lse.view();
  attn.forward(q.view(), k.view(), v.view(), o.view(), &l);
  Against a;
  a.timing = time_runs(label, reps, [&](int) {
    attn.backward(q.view(), k.view(), v.view(), o.view(), l, d_o.view(), dq.view(), dk.view(), dv.view());
  });
  a.pattern = attn.explanation().pattern;
  a.config = options.backward_config ? options.backward_config->to_string() : "backward heuristic";
  return a;
}

void print_against(const std::optional<Against>& a, double ms, const std::string& what, nlohmann::json* j) {
  if (!a) return;
  const double ratio = a->timing.median() / ms;
  if (j) {
    (*j)["against"] = {{"pattern", a->pattern},         {"config", a->config},
                       {"median_ms", a->timing.median()}, {"speedup", ratio}};
    return;
  }
  std::cout << fmt::format("against   {} ({}): {}; {} is {:.2f}x {}\n", a->pattern, a->config, a->timing.line(), what,
                           ratio >= 1 ? ratio : 1 / ratio, ratio >= 1 ? "faster" : "slower");
}

void register_scan_bench(CLI::App& bench) {
  struct Args {
    int64_t seq = 65536, batch = 1, channels = 1536, state = 16;
    std::string dtype = "bf16", config, against;
    bool no_gate = false;
    int reps = 20, against_head_dim = 128, splits = 0;
    double peak_gbps = 0;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = bench.add_subcommand("scan", "time the Mamba selective scan (S6) on this GPU");
  cmd->add_option("--seq", args->seq, "tokens per sequence")->capture_default_str();
  cmd->add_option("--batch", args->batch, "sequences")->capture_default_str();
  cmd->add_option("--channels", args->channels, "channels (Mamba's d_inner)")->capture_default_str();
  cmd->add_option("--state", args->state, "state size per channel")->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "fp16 or bf16")->capture_default_str();
  cmd->add_flag("--no-gate", args->no_gate, "no z gate (y is not multiplied by silu(z))");
  cmd->add_option("--config", args->config, "force a scan config, e.g. 32x8x16 (default: heuristic)");
  cmd->add_option("--splits", args->splits, "CTAs per sequence along time (default 0: chosen)")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--reps", args->reps, "timed repetitions")->capture_default_str()->check(CLI::Range(3, 100000));
  auto* peak_opt = cmd->add_option(
      "--peak-gbps", args->peak_gbps,
      "peak memory bandwidth in GB/s for the bound (default: from the driver's memory clock and bus width)");
  cmd->add_option("--against", args->against,
                  "also time sparse attention with this pattern over the same tokens (heads of --against-head-dim "
                  "making up --channels)");
  cmd->add_option("--against-head-dim", args->against_head_dim, "head dim of --against")->capture_default_str();
  cmd->callback([args, peak_opt] {
    if (peak_opt->count() > 0 && !(args->peak_gbps > 0))
      throw UsageError(fmt::format("--peak-gbps: {} must be a positive bandwidth in GB/s", args->peak_gbps));
    const DType dtype = bench_dtype(args->dtype);
    const int64_t B = args->batch, L = args->seq, C = args->channels, N = args->state;
    SelectiveScanOptions opts;
    if (!args->config.empty()) opts.config = ScanConfig::parse(args->config);
    opts.splits = args->splits;
    // Validate the problem (the forward's own checks) before looking for a GPU.
    SelectiveScanArgs shape;
    shape.x = shape.delta = shape.y = TensorView::contiguous3(placeholder(), dtype, {B, L, C});
    shape.b = shape.c = TensorView::contiguous3(placeholder(), dtype, {B, L, N});
    if (!args->no_gate) shape.z = shape.x;
    shape.a_log = TensorView::contiguous(placeholder(), DType::kFloat32, {C, N, 1, 1});
    shape.a_log.rank = 2;
    shape.d = shape.delta_bias = TensorView::contiguous(placeholder(), DType::kFloat32, {C, 1, 1, 1});
    shape.d.rank = shape.delta_bias.rank = 1;
    const ScanShape problem = check_selective_scan(shape);
    std::optional<Pattern> against;
    if (!args->against.empty()) {
      if (args->against_head_dim <= 0 || C % args->against_head_dim != 0)
        throw UsageError(fmt::format("--against-head-dim {} must divide --channels {}", args->against_head_dim, C));
      against = load_pattern_arg(args->against);
    }
    SelectiveScan scan(opts);
    if (!tools::has_gpu()) throw Error(ErrorCode::kNoGpu, "spattn bench scan needs a GPU: " + tools::no_gpu_reason());
    scan.prepare(problem);

    std::vector<tools::DeviceTensor> x, delta, z, b, c;
    for (int s = 0; s < kSets; ++s) {
      const uint64_t seed = 10 * s;
      x.emplace_back(dtype, std::vector<int64_t>{B, L, C});
      delta.emplace_back(dtype, std::vector<int64_t>{B, L, C});
      b.emplace_back(dtype, std::vector<int64_t>{B, L, N});
      c.emplace_back(dtype, std::vector<int64_t>{B, L, N});
      x.back().fill_random(seed + 1);
      delta.back().fill_random(seed + 2);  // Δ = softplus(Δraw + bias) in about [0.3, 1.3]
      b.back().fill_random(seed + 3);
      c.back().fill_random(seed + 4);
      if (!args->no_gate) {
        z.emplace_back(dtype, std::vector<int64_t>{B, L, C});
        z.back().fill_random(seed + 5, 3.0f);
      }
    }
    tools::DeviceTensor a_log(DType::kFloat32, {C, N}), d(DType::kFloat32, {C}), bias(DType::kFloat32, {C});
    std::vector<float> host(static_cast<size_t>(C * N));
    for (int64_t ch = 0; ch < C; ++ch)
      for (int64_t n = 0; n < N; ++n) host[ch * N + n] = std::log(static_cast<float>(n + 1));  // A = -(1..N), Mamba's init
    a_log.upload(host);
    d.upload(std::vector<float>(static_cast<size_t>(C), 1.0f));
    bias.upload(std::vector<float>(static_cast<size_t>(C), 0.0f));
    const tools::DeviceTensor y(dtype, {B, L, C});
    const Timing t = time_runs("timing scan", args->reps, [&](int r) {
      SelectiveScanArgs a;
      a.x = x[r % kSets].view();
      a.delta = delta[r % kSets].view();
      a.b = b[r % kSets].view();
      a.c = c[r % kSets].view();
      if (!args->no_gate) a.z = z[r % kSets].view();
      a.a_log = a_log.view();
      a.d = d.view();
      a.delta_bias = bias.view();
      a.y = y.view();
      scan.forward(a);
    });
    const std::optional<Against> vs =
        time_against(against, B, L, C / args->against_head_dim, args->against_head_dim, dtype, args->reps);

    // The bound: every byte the scan must move once — x, Δ, B, C (and z) read, y written,
    // the fp32 parameters read — at the device's peak DRAM bandwidth.
    const double es = static_cast<double>(dtype_size(dtype));
    const double seq_bytes = static_cast<double>(B * L) * es * (C * (args->no_gate ? 3 : 4) + 2 * N);
    const double bytes = seq_bytes + 4.0 * (C * N + 2 * C);
    const tools::Gpu gpu = tools::current_gpu();
    const double peak = args->peak_gbps > 0 ? args->peak_gbps * 1e9 : gpu.peak_bandwidth;
    const std::string peak_source = args->peak_gbps > 0 ? "--peak-gbps" : "driver: memory clock x bus width";
    const double med = t.median();
    const double achieved = bytes / (med * 1e-3);
    const double tokens = static_cast<double>(B * L) / (med * 1e-3);
    if (globals().json) {
      nlohmann::json j = {{"op", "selective_scan"}, {"device", gpu.name},          {"explain", scan.explain()},
                          {"median_ms", med},       {"p20_ms", t.pct(0.2)},        {"p80_ms", t.pct(0.8)},
                          {"reps", t.reps},         {"tokens_per_s", tokens},      {"bytes", bytes},
                          {"achieved_gbps", achieved / 1e9}};
      if (peak > 0) {
        j["peak_gbps"] = peak / 1e9;
        j["peak_source"] = peak_source;
        j["bound_ms"] = bytes / peak * 1e3;
        j["fraction_of_bound"] = achieved / peak;
      }
      print_against(vs, med, "the scan", &j);
      print_json(j);
      return;
    }
    std::cout << scan.explain();
    std::cout << fmt::format("time      {}; {:.1f} M tokens/s\n", t.line(), tokens / 1e6);
    std::cout << fmt::format("memory    {:.1f} MB moved (x, delta, B, C{} read, y written), {:.0f} GB/s\n", bytes / 1e6,
                             args->no_gate ? "" : ", z", achieved / 1e9);
    if (peak > 0) {
      std::cout << fmt::format("bound     {:.3f} ms at {:.0f} GB/s peak ({}): {:.0f}% of the bandwidth bound\n",
                               bytes / peak * 1e3, peak / 1e9, peak_source, 100 * achieved / peak);
    } else {
      std::cout << "bound     the driver does not report the memory clock or bus width; give --peak-gbps\n";
    }
    print_against(vs, med, "the scan", nullptr);
  });
}

void register_performer_bench(CLI::App& bench) {
  struct Args {
    int64_t seq = 65536, kv_seq = 0, batch = 1, heads = 16, kv_heads = 0, head_dim = 64, features = 256;
    uint64_t seed = 0;
    bool causal = false, tf32 = false;
    std::string dtype = "bf16", config, against;
    int reps = 20;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = bench.add_subcommand("performer", "time Performer (FAVOR+) attention on this GPU");
  cmd->add_option("--seq", args->seq, "query tokens")->capture_default_str();
  cmd->add_option("--kv-seq", args->kv_seq, "key tokens (default: --seq)");
  cmd->add_option("--batch", args->batch, "batch")->capture_default_str();
  cmd->add_option("--heads", args->heads, "query heads")->capture_default_str();
  cmd->add_option("--kv-heads", args->kv_heads, "key/value heads (default: --heads)");
  cmd->add_option("--head-dim", args->head_dim, "head dimension (of q, k and v)")->capture_default_str();
  cmd->add_option("--features", args->features, "random features m")->capture_default_str();
  cmd->add_option("--seed", args->seed, "seed of the random features")->capture_default_str();
  cmd->add_flag("--causal", args->causal, "causal (prefix sums in chunks)");
  cmd->add_flag("--tf32", args->tf32, "the fp32 GEMMs with the features on TF32 tensor cores");
  cmd->add_option("--dtype", args->dtype, "fp16 or bf16")->capture_default_str();
  cmd->add_option("--config", args->config, "force the causal scan's config, e.g. 32x32 (chunk x slice)");
  cmd->add_option("--reps", args->reps, "timed repetitions")->capture_default_str()->check(CLI::Range(3, 100000));
  cmd->add_option("--against", args->against, "also time sparse attention with this pattern on the same shape");
  cmd->callback([args] {
    const DType dtype = bench_dtype(args->dtype);
    const int64_t B = args->batch, Nq = args->seq, Nk = args->kv_seq > 0 ? args->kv_seq : args->seq, H = args->heads,
                  Hkv = args->kv_heads > 0 ? args->kv_heads : args->heads, D = args->head_dim, M = args->features;
    PerformerOptions opts;
    opts.features = M;
    opts.seed = args->seed;
    opts.causal = args->causal;
    opts.tf32 = args->tf32;
    if (!args->config.empty()) opts.config = PerformerConfig::parse(args->config);
    // Validate the problem (the forward's own checks) before looking for a GPU.
    const PerformerShape shape = check_performer(TensorView::contiguous(placeholder(), dtype, {B, Nq, H, D}),
                                                 TensorView::contiguous(placeholder(), dtype, {B, Nk, Hkv, D}),
                                                 TensorView::contiguous(placeholder(), dtype, {B, Nk, Hkv, D}),
                                                 TensorView::contiguous(placeholder(), dtype, {B, Nq, H, D}),
                                                 args->causal, M);
    std::optional<Pattern> against;
    if (!args->against.empty()) {
      if (Nq != Nk || H != Hkv) throw UsageError("--against: needs --kv-seq and --kv-heads equal to --seq and --heads");
      against = load_pattern_arg(args->against);
    }
    Performer perf(D, opts);
    if (!tools::has_gpu())
      throw Error(ErrorCode::kNoGpu, "spattn bench performer needs a GPU: " + tools::no_gpu_reason());

    std::vector<tools::DeviceTensor> q, k, v;
    for (int s = 0; s < kSets; ++s) {
      q.emplace_back(dtype, std::vector<int64_t>{B, Nq, H, D});
      k.emplace_back(dtype, std::vector<int64_t>{B, Nk, Hkv, D});
      v.emplace_back(dtype, std::vector<int64_t>{B, Nk, Hkv, D});
      q.back().fill_random(3 * s + 1);
      k.back().fill_random(3 * s + 2);
      v.back().fill_random(3 * s + 3);
    }
    const tools::DeviceTensor o(dtype, {B, Nq, H, D});
    const Timing t = time_runs("timing performer", args->reps, [&](int r) {
      perf.forward(q[r % kSets].view(), k[r % kSets].view(), v[r % kSets].view(), o.view());
    });
    const std::optional<Against> vs = time_against(against, B, Nq, H, D, dtype, args->reps);

    // FAVOR+ work: the projections ω x̂ of queries and keys, then φ(K)ᵀ[V | 1] and
    // φ(Q) times it (the causal chunks do the same products in prefix form).
    const double flops = 2.0 * B * M *
                         (static_cast<double>(H * Nq + Hkv * Nk) * D +
                          static_cast<double>(Hkv * Nk + H * Nq) * (shape.v_dim + 1));
    const double med = t.median();
    const double tokens = static_cast<double>(B * Nq) / (med * 1e-3);
    if (globals().json) {
      nlohmann::json j = {{"op", "performer"},      {"device", tools::current_gpu().name}, {"explain", perf.explain()},
                          {"median_ms", med},       {"p20_ms", t.pct(0.2)},               {"p80_ms", t.pct(0.8)},
                          {"reps", t.reps},         {"tokens_per_s", tokens},             {"flops", flops},
                          {"tflops", flops / med / 1e9}};
      print_against(vs, med, "performer", &j);
      print_json(j);
      return;
    }
    std::cout << perf.explain();
    std::cout << fmt::format("time      {}; {:.1f} M tokens/s; {:.1f} TFLOP/s (FAVOR+ products, {:.3g} FLOP)\n",
                             t.line(), tokens / 1e6, flops / med / 1e9, flops);
    print_against(vs, med, "performer", nullptr);
  });
}

}  // namespace

// Adaptive patterns: the forward with scores computed on the GPU (block means, TF32
// GEMM, selection), with the caller's scores (selection only), and the attention alone:
// a static custom pattern of exactly the blocks batch 0, head 0 chose, for every head, on
// the same kernel configuration. The overheads are the differences to the attention alone.
void register_adaptive_bench(CLI::App& bench) {
  struct Args {
    int64_t seq = 32768, heads = 16, batch = 1, block = 128, top_k = 8;
    double keep_ratio = 0;
    bool causal = false, backward = false;
    int head_dim = 128;
    std::string dtype = "bf16";
    int reps = 20;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = bench.add_subcommand("adaptive", "time adaptive top-k selection against the attention over its blocks");
  cmd->add_flag("--backward", args->backward,
                "also time the backward pass (supplied scores), without and with gates and their gradient");
  cmd->add_option("--seq", args->seq, "tokens")->capture_default_str();
  cmd->add_option("--heads", args->heads, "heads")->capture_default_str();
  cmd->add_option("--batch", args->batch, "batch")->capture_default_str();
  cmd->add_option("--head-dim", args->head_dim, "head dimension")->capture_default_str();
  cmd->add_option("--block", args->block, "block size B")->capture_default_str();
  cmd->add_option("--top-k", args->top_k, "key blocks per query block")->capture_default_str();
  cmd->add_option("--keep-ratio", args->keep_ratio, "instead of --top-k: the fraction of allowed blocks kept");
  cmd->add_flag("--causal", args->causal, "causal");
  cmd->add_option("--dtype", args->dtype, "fp16 or bf16")->capture_default_str();
  cmd->add_option("--reps", args->reps, "timed repetitions")->capture_default_str()->check(CLI::Range(3, 100000));
  cmd->callback([args] {
    nlohmann::json spec = {{"type", "adaptive"}, {"block", args->block}, {"causal", args->causal}};
    if (args->keep_ratio > 0) spec["keep_ratio"] = args->keep_ratio;
    else spec["top_k"] = args->top_k;
    const Pattern pattern = Pattern::parse(spec.dump());
    const DType dtype = bench_dtype(args->dtype);
    if (!tools::has_gpu()) throw Error(ErrorCode::kNoGpu, "spattn bench adaptive needs a GPU: " + tools::no_gpu_reason());
    const int64_t B = args->batch, N = args->seq, H = args->heads, D = args->head_dim;
    Attention attn(pattern);
    attn.prepare(B, N, N, H, H, D, dtype);
    const AdaptiveGeometry g = adaptive_geometry(pattern, N, N);
    std::vector<tools::DeviceTensor> q, k, v;
    for (int s = 0; s < kSets; ++s) {
      for (auto* set : {&q, &k, &v}) {
        set->emplace_back(dtype, std::vector<int64_t>{B, N, H, D});
        set->back().fill_random(7 * s + static_cast<uint64_t>(set == &k) + 2 * static_cast<uint64_t>(set == &v));
      }
    }
    const tools::DeviceTensor o(dtype, {B, N, H, D});
    const tools::DeviceTensor blocks(DType::kInt32, {B, H, g.nq_blocks, g.max_k});
    tools::DeviceTensor scores(DType::kFloat32, {B, H, g.nq_blocks, g.nk_blocks});
    {
      std::vector<float> host(static_cast<size_t>(B * H * g.nq_blocks * g.nk_blocks));
      uint32_t x = 12345;
      for (float& f : host) f = static_cast<float>((x = x * 1664525u + 1013904223u) >> 8) / 16777216.f;
      scores.upload(host);
    }
    tools::DeviceTensor gates(DType::kFloat32, {B, H, g.nq_blocks, g.nk_blocks}),
        gates_grad(DType::kFloat32, {B, H, g.nq_blocks, g.nk_blocks});
    {
      std::vector<float> host(static_cast<size_t>(B * H * g.nq_blocks * g.nk_blocks));
      uint32_t x = 777;
      for (float& f : host) f = 0.25f + static_cast<float>((x = x * 1664525u + 1013904223u) >> 8) / 16777216.f;
      gates.upload(host);
    }
    const TensorView tb = blocks.view(), ts = scores.view(), tg = gates.view(), tdg = gates_grad.view();
    const Timing computed = time_runs("timing adaptive (computed scores)", args->reps, [&](int r) {
      attn.forward(q[r % kSets].view(), k[r % kSets].view(), v[r % kSets].view(), o.view());
    });
    const Explanation ex = attn.explanation();
    AdaptiveInputs supplied_in;
    supplied_in.scores = &ts;
    const Timing supplied = time_runs("timing adaptive (supplied scores)", args->reps, [&](int r) {
      attn.forward(q[r % kSets].view(), k[r % kSets].view(), v[r % kSets].view(), o.view(), nullptr, nullptr,
                   &supplied_in);
    });
    AdaptiveInputs gated_in = supplied_in;
    gated_in.gates = &tg;
    const Timing gated = time_runs("timing adaptive (supplied scores, gates)", args->reps, [&](int r) {
      attn.forward(q[r % kSets].view(), k[r % kSets].view(), v[r % kSets].view(), o.view(), nullptr, nullptr,
                   &gated_in);
    });
    // The backward pass over the supplied scores' blocks, then with gates and dL/dg.
    std::optional<Timing> backward, backward_gated;
    if (args->backward) {
      const tools::DeviceTensor lse(DType::kFloat32, {B, H, N}), dq(dtype, {B, N, H, D}), dk(dtype, {B, N, H, D}),
          dv(dtype, {B, N, H, D});
      tools::DeviceTensor d_o(dtype, {B, N, H, D});
      d_o.fill_random(99);
      const TensorView tl = lse.view();
      auto run_backward = [&](const AdaptiveInputs& in) {
        AdaptiveInputs forward_in = in;
        forward_in.gates_grad = nullptr;  // an output of the backward only
        attn.forward(q[0].view(), k[0].view(), v[0].view(), o.view(), &tl, nullptr, &forward_in);
        return [&, in](int) {
          attn.backward(q[0].view(), k[0].view(), v[0].view(), o.view(), tl, d_o.view(), dq.view(), dk.view(),
                        dv.view(), nullptr, &in);
        };
      };
      backward = time_runs("timing the backward (supplied scores)", args->reps, run_backward(supplied_in));
      AdaptiveInputs train_in = gated_in;
      train_in.gates_grad = &tdg;
      backward_gated = time_runs("timing the backward (gates, dL/dg)", args->reps, run_backward(train_in));
    }
    // The blocks chosen for batch 0, head 0 as a static pattern of every head.
    AdaptiveInputs out_in;
    out_in.blocks = &tb;
    attn.forward(q[0].view(), k[0].view(), v[0].view(), o.view(), nullptr, nullptr, &out_in);
    const std::vector<int32_t> chosen = blocks.download_int32();
    nlohmann::json pairs = nlohmann::json::array();
    for (int64_t I = 0; I < g.nq_blocks; ++I)
      for (int64_t x = 0; x < g.max_k; ++x)
        if (const int32_t J = chosen[I * g.max_k + x]; J >= 0) pairs.push_back({I, J});
    const nlohmann::json custom = {{"type", "custom"}, {"block", args->block}, {"pairs", pairs}, {"causal", args->causal}};
    AttentionOptions fixed;
    fixed.config = ex.config;
    Attention stat(Pattern::parse(custom.dump()), fixed);
    stat.prepare(B, N, N, H, H, D, dtype);
    const Timing alone = time_runs("timing the same blocks as a static pattern", args->reps, [&](int r) {
      stat.forward(q[r % kSets].view(), k[r % kSets].view(), v[r % kSets].view(), o.view());
    });
    const double base = alone.median();
    const double flops = 4.0 * D * static_cast<double>(stat.explanation().stats.allowed_pairs_total) * B;
    if (globals().json) {
      nlohmann::json j = {{"pattern", ex.pattern}, {"problem", ex.problem}, {"device", ex.device},
                          {"config", ex.config.to_string()}, {"computed_ms", computed.median()},
                          {"supplied_ms", supplied.median()}, {"attention_ms", base},
                          {"computed_overhead", computed.median() / base - 1},
                          {"supplied_overhead", supplied.median() / base - 1},
                          {"attention_tflops", flops / base / 1e9}, {"gated_ms", gated.median()}, {"reps", args->reps}};
      if (backward) {
        j["backward_ms"] = backward->median();
        j["backward_gated_ms"] = backward_gated->median();
      }
      print_json(j);
      return;
    }
    std::cout << attn.explain();
    std::cout << fmt::format("computed  {} (+{:.1f}% over the attention alone)\n", computed.line(),
                             100 * (computed.median() / base - 1));
    std::cout << fmt::format("supplied  {} (+{:.1f}%)\n", supplied.line(), 100 * (supplied.median() / base - 1));
    std::cout << fmt::format("attention {}; {:.1f} useful TFLOP/s (custom pattern of the blocks batch 0, head 0 chose)\n",
                             alone.line(), flops / base / 1e9);
    std::cout << fmt::format("gated     {} (supplied scores and gates; +{:.1f}% over supplied)\n", gated.line(),
                             100 * (gated.median() / supplied.median() - 1));
    if (backward) {
      std::cout << fmt::format("backward  {} (supplied scores)\n", backward->line());
      std::cout << fmt::format("backward  {} (gates and dL/dg; +{:.1f}%)\n", backward_gated->line(),
                               100 * (backward_gated->median() / backward->median() - 1));
    }
  });
}

// Packed documents: forward_varlen over documents of the given lengths (total tokens
// rotated over three input sets), with the lengths check off (timed) and on, against
// the same pattern on one sequence whose useful FLOPs equal the documents' sum (found
// by bisection on its length), and, when every document has the same length, against
// the batched layout [documents, length] (exactly the same work).
void register_documents_bench(CLI::App& bench) {
  struct Args {
    std::string pattern = R"({"type":"dense","causal":true})", lengths = "4096x16", config, dtype = "bf16";
    int64_t heads = 16;
    int head_dim = 128, reps = 20;
    uint64_t seed = 1;
    bool backward = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = bench.add_subcommand("documents", "time packed variable-length documents against one sequence of the same work");
  cmd->add_flag("--backward", args->backward,
                "time the backward pass (Attention::backward_varlen after one forward) against the backward pass of "
                "the same yardsticks");
  cmd->add_option("-p,--pattern", args->pattern, "pattern of every document")->capture_default_str();
  cmd->add_option("--lengths", args->lengths,
                  "document lengths: L x COUNT (4096x16), a list (100,2000,37), or random:TOTAL:MIN-MAX")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "seed of random lengths")->capture_default_str();
  cmd->add_option("--heads", args->heads, "heads")->capture_default_str();
  cmd->add_option("--head-dim", args->head_dim, "head dimension")->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "fp16 or bf16")->capture_default_str();
  cmd->add_option("--config", args->config, "force a kernel config (default: database or heuristic)");
  cmd->add_option("--reps", args->reps, "timed repetitions")->capture_default_str()->check(CLI::Range(3, 100000));
  cmd->callback([args] {
    const Pattern pattern = load_pattern_arg(args->pattern);
    const DType dtype = bench_dtype(args->dtype);
    // The lengths.
    std::vector<int64_t> len;
    const std::string& spec = args->lengths;
    try {
      if (spec.rfind("random:", 0) == 0) {
        const size_t c = spec.find(':', 7), dash = spec.find('-', c == std::string::npos ? 0 : c);
        if (c == std::string::npos || dash == std::string::npos) throw std::invalid_argument(spec);
        const int64_t total = std::stoll(spec.substr(7, c - 7)), lo = std::stoll(spec.substr(c + 1, dash - c - 1)),
                      hi = std::stoll(spec.substr(dash + 1));
        if (total < 1 || lo < 0 || hi < lo) throw std::invalid_argument(spec);
        std::mt19937_64 rng(args->seed);
        int64_t sum = 0;
        while (sum < total) {
          const int64_t l = std::min<int64_t>(total - sum, lo + static_cast<int64_t>(rng() % (hi - lo + 1)));
          len.push_back(l);
          sum += l;
        }
      } else if (const size_t x = spec.find('x'); x != std::string::npos) {
        const int64_t l = std::stoll(spec.substr(0, x)), count = std::stoll(spec.substr(x + 1));
        if (l < 0 || count < 1) throw std::invalid_argument(spec);
        len.assign(static_cast<size_t>(count), l);
      } else {
        for (size_t at = 0; at <= spec.size();) {
          const size_t comma = std::min(spec.find(',', at), spec.size());
          len.push_back(std::stoll(spec.substr(at, comma - at)));
          if (len.back() < 0) throw std::invalid_argument(spec);
          at = comma + 1;
        }
      }
    } catch (const std::exception&) {
      throw UsageError("--lengths: '" + spec + "' is not L x COUNT, a comma list of lengths or random:TOTAL:MIN-MAX");
    }
    const int64_t H = args->heads, D = args->head_dim;
    int64_t total = 0, longest = 0;
    for (int64_t l : len) total += l, longest = std::max(longest, l);
    if (total < 1) throw UsageError("--lengths: the documents hold no tokens");
    // Useful FLOPs: each distinct length's exact pair count.
    auto pairs_at = [&](int64_t n) {
      if (n == 0) return 0.0;
      LayoutOptions lo;
      lo.permute = false;
      return static_cast<double>(layout_stats(pattern, compile_layout(pattern, Shape{n, n, H}, lo), D).allowed_pairs_total);
    };
    double doc_pairs = 0;
    for (int64_t l : std::set<int64_t>(len.begin(), len.end()))
      doc_pairs += pairs_at(l) * static_cast<double>(std::count(len.begin(), len.end(), l));
    const double flops = 4.0 * D * doc_pairs;
    // One sequence of the same work: the shortest length with at least as many pairs.
    int64_t lo = 1, hi = std::max<int64_t>(total, 1);
    while (pairs_at(hi) < doc_pairs) hi *= 2;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (pairs_at(mid) < doc_pairs) lo = mid + 1; else hi = mid;
    }
    const int64_t one = lo;
    if (!tools::has_gpu()) throw Error(ErrorCode::kNoGpu, "spattn bench documents needs a GPU: " + tools::no_gpu_reason());
    AttentionOptions opts;
    if (!args->config.empty()) opts.config = KernelConfig::parse(args->config);
    opts.check_lengths = false;
    Attention attn(pattern, opts);
    AttentionOptions checked_opts = opts;
    checked_opts.check_lengths = true;
    Attention checked(pattern, checked_opts);
    std::vector<int32_t> cu{0};
    for (int64_t l : len) cu.push_back(static_cast<int32_t>(cu.back() + l));
    tools::DeviceTensor cu_t(DType::kInt32, {static_cast<int64_t>(cu.size())});
    cu_t.upload_int32(cu);
    Documents docs{cu_t.view(), cu_t.view(), longest, longest};
    std::vector<tools::DeviceTensor> q, k, v;
    for (int s = 0; s < kSets; ++s)
      for (auto* set : {&q, &k, &v}) {
        set->emplace_back(dtype, std::vector<int64_t>{total, H, D});
        set->back().fill_random(11 * s + static_cast<uint64_t>(set == &k) + 2 * static_cast<uint64_t>(set == &v));
      }
    const tools::DeviceTensor o(dtype, {total, H, D});
    if (args->backward) {
      // The backward pass over the documents against that of the same yardsticks.
      const tools::DeviceTensor lse(DType::kFloat32, {H, total}), dq(dtype, {total, H, D}), dk(dtype, {total, H, D}),
          dv(dtype, {total, H, D});
      tools::DeviceTensor d_o(dtype, {total, H, D});
      d_o.fill_random(77);
      TensorView l = lse.view();
      l.rank = 2;
      l.shape = {H, total, 0, 0};
      l.strides = {total, 1, 0, 0};
      attn.forward_varlen(q[0].view(), k[0].view(), v[0].view(), o.view(), &l, docs);
      const Timing bwd = time_runs("timing the documents' backward pass", args->reps, [&](int) {
        attn.backward_varlen(q[0].view(), k[0].view(), v[0].view(), o.view(), l, d_o.view(), dq.view(), dk.view(),
                             dv.view(), docs);
      });
      const Against one_seq = time_backward_against(pattern, 1, one, H, D, dtype, args->reps, opts,
                                                    "timing the backward pass of one sequence of the same work");
      const bool equal = std::count(len.begin(), len.end(), len.front()) == static_cast<long>(len.size());
      std::optional<Against> batched;
      if (equal && len.front() > 0)
        batched = time_backward_against(pattern, static_cast<int64_t>(len.size()), len.front(), H, D, dtype,
                                        args->reps, opts, "timing the backward pass of the batched layout");
      // 2.5x the forward's FLOPs: the five products of the backward against the forward's two.
      const double tf = 2.5 * flops / bwd.median() / 1e9, tf_one = 2.5 * 4.0 * D * pairs_at(one) / one_seq.timing.median() / 1e9;
      if (globals().json) {
        nlohmann::json j = {{"pattern", pattern.to_json()}, {"documents", len.size()}, {"total", total},
                            {"longest", longest}, {"backward_ms", bwd.median()}, {"backward_tflops", tf},
                            {"single_seq", one}, {"single_backward_ms", one_seq.timing.median()},
                            {"single_backward_tflops", tf_one}, {"throughput_vs_single", tf / tf_one},
                            {"reps", args->reps}};
        if (batched) j["batched_backward_ms"] = batched->timing.median();
        print_json(j);
        return;
      }
      std::cout << fmt::format("documents {} of lengths {} .. {} ({} tokens), backward {:.4g} useful FLOP\n", len.size(),
                               *std::min_element(len.begin(), len.end()), longest, total, 2.5 * flops);
      std::cout << fmt::format("backward  {}; {:.1f} useful TFLOP/s (lengths not checked)\n", bwd.line(), tf);
      std::cout << fmt::format("one seq   {} tokens: {}; {:.1f} useful TFLOP/s; documents reach {:.1f}% of its rate\n",
                               one, one_seq.timing.line(), tf_one, 100 * tf / tf_one);
      if (batched)
        std::cout << fmt::format("batched   [{}, {}]: {}; documents take {:.2f}x its time\n", len.size(), len.front(),
                                 batched->timing.line(), bwd.median() / batched->timing.median());
      return;
    }
    const Timing varlen = time_runs("timing documents", args->reps, [&](int r) {
      attn.forward_varlen(q[r % kSets].view(), k[r % kSets].view(), v[r % kSets].view(), o.view(), nullptr, docs);
    });
    const Explanation ex = attn.explanation();
    const Timing with_check = time_runs("timing documents, lengths checked", args->reps, [&](int r) {
      checked.forward_varlen(q[r % kSets].view(), k[r % kSets].view(), v[r % kSets].view(), o.view(), nullptr, docs);
    });
    // The yardsticks: the same pattern on the batched layout, timed as --against is.
    auto time_batched = [&](int64_t batch, int64_t n, const char* label) {
      return *time_against(pattern, batch, n, H, D, dtype, args->reps, opts, label);
    };
    const Against one_seq = time_batched(1, one, "timing one sequence of the same work");
    const Timing& single = one_seq.timing;
    const std::string& single_config = one_seq.config;
    const double single_flops = 4.0 * D * pairs_at(one);
    const bool equal = std::count(len.begin(), len.end(), len.front()) == static_cast<long>(len.size()) && len.front() > 0;
    std::optional<Against> batched;
    if (equal) batched = time_batched(static_cast<int64_t>(len.size()), len.front(), "timing the batched layout");
    const double tf = flops / varlen.median() / 1e9, tf_single = single_flops / single.median() / 1e9;
    if (globals().json) {
      nlohmann::json j = {{"pattern", ex.pattern}, {"documents", len.size()}, {"total", total}, {"longest", longest},
                          {"device", ex.device}, {"config", ex.config.to_string()}, {"varlen_ms", varlen.median()},
                          {"varlen_checked_ms", with_check.median()}, {"varlen_tflops", tf},
                          {"single_seq", one}, {"single_ms", single.median()}, {"single_tflops", tf_single},
                          {"single_config", single_config}, {"throughput_vs_single", tf / tf_single}, {"reps", args->reps}};
      if (batched) j["batched_ms"] = batched->timing.median();
      print_json(j);
      return;
    }
    std::cout << attn.explain();
    std::cout << fmt::format("documents {} of lengths {} .. {} ({} tokens), {:.4g} useful FLOP\n", len.size(),
                             *std::min_element(len.begin(), len.end()), longest, total, flops);
    std::cout << fmt::format("varlen    {}; {:.1f} useful TFLOP/s (lengths not checked)\n", varlen.line(), tf);
    std::cout << fmt::format("checked   {} (+{:.1f}%: the host waits for the lengths check)\n", with_check.line(),
                             100 * (with_check.median() / varlen.median() - 1));
    std::cout << fmt::format("one seq   {} tokens ({}): {}; {:.1f} useful TFLOP/s; documents reach {:.1f}% of its rate\n",
                             one, single_config, single.line(), tf_single, 100 * tf / tf_single);
    if (batched)
      std::cout << fmt::format("batched   [{}, {}] ({}): {}; documents take {:.2f}x its time\n", len.size(),
                               len.front(), batched->config, batched->timing.line(),
                               varlen.median() / batched->timing.median());
  });
}

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
  auto* cmd = app.add_subcommand(
      "bench", "time the forward pass of a pattern (or with 'scan'/'performer' a linear-time mixer) on this GPU");
  cmd->add_option("-p,--pattern", args->pattern, "pattern: inline JSON, @file.json or a preset name");
  cmd->add_option("--seq", args->seq, "query tokens")->capture_default_str();
  cmd->add_option("--kv-seq", args->kv_seq, "key tokens (default: --seq)");
  cmd->add_option("--heads", args->heads, "query heads")->capture_default_str();
  cmd->add_option("--kv-heads", args->kv_heads, "key/value heads (default: --heads)");
  cmd->add_option("--batch", args->batch, "batch")->capture_default_str();
  cmd->add_option("--head-dim", args->head_dim, "head dimension")->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "fp16 or bf16")->capture_default_str();
  cmd->add_option("--config", args->config, "force a kernel config, e.g. 128x64w4s1 (default: database or heuristic)");
  cmd->add_option("--reps", args->reps, "timed repetitions")->capture_default_str()->check(CLI::Range(3, 100000));
  register_scan_bench(*cmd);
  register_performer_bench(*cmd);
  register_adaptive_bench(*cmd);
  register_documents_bench(*cmd);
  cmd->callback([args, cmd] {
    if (!cmd->get_subcommands().empty()) return;  // `bench scan`, `bench performer` ran
    if (args->pattern.empty())
      throw UsageError("spattn bench: --pattern is required (or a subcommand: scan, performer, adaptive, documents)");
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
    const Timing t = time_runs("timing", args->reps, [&](int r) {
      attn.forward(q[r % kSets].view(), k[r % kSets].view(), v[r % kSets].view(), o.view());
    });
    const Explanation& ex = attn.explanation();
    const double flops = 4.0 * args->head_dim * static_cast<double>(ex.stats.allowed_pairs_total) * args->batch;
    const double med = t.median();
    if (globals().json) {
      print_json({{"pattern", ex.pattern}, {"problem", ex.problem}, {"device", ex.device}, {"config", ex.config.to_string()},
                  {"config_source", ex.config_source}, {"median_ms", med}, {"p20_ms", t.pct(0.2)}, {"p80_ms", t.pct(0.8)},
                  {"useful_tflops", flops / med / 1e9}, {"density", ex.stats.density}, {"reps", args->reps}});
      return;
    }
    std::cout << attn.explain();
    std::cout << fmt::format("time      {}; {:.1f} useful TFLOP/s\n", t.line(), flops / med / 1e9);
  });
}

}  // namespace spattn::cli
