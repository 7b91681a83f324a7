// spattn ring plan: the schedule of sequence-parallel (ring) attention for a pattern —
// per rank its shard, the shards it receives, bytes moved and its work — computed on
// the host (dist/ring_plan.hpp).
// spattn ring bench: the whole schedule run on one GPU by virtual ranks of a loopback
// ring (one thread and stream each, include/spattn/ring.hpp): per rank the compute time
// and the time its compute stood waiting for a transfer, against the single-GPU forward
// of the same sequence — what a multi-GPU run is compared with.
#include <spattn/attention.hpp>
#include <spattn/ring.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <iostream>
#include <sstream>
#include <thread>

#include "api/tools.hpp"
#include "cli/cli.hpp"
#include "dist/ring_plan.hpp"

namespace spattn::cli {

namespace {

struct RingArgs {
  std::string pattern;
  int64_t seq = 0;
  int world = 2;
  bool zigzag = false;
  int64_t heads = 16;
  int64_t kv_heads = 0;
  int64_t head_dim = 128;
  std::string dtype = "bf16";
  int reps = 10;
  std::string config;
};

void add_problem_options(CLI::App* cmd, RingArgs& a) {
  cmd->add_option("-p,--pattern", a.pattern, "pattern: inline JSON, @file.json or a preset name")->required();
  cmd->add_option("--seq", a.seq, "tokens of the whole sequence")->required()->check(CLI::Range(int64_t{1}, int64_t{1} << 31));
  cmd->add_option("--world", a.world, "ranks")->capture_default_str()->check(CLI::Range(1, 65536));
  cmd->add_flag("--zigzag", a.zigzag, "zigzag shards (rank r holds chunks r and 2W-1-r: balances causal work)");
  cmd->add_option("--heads", a.heads, "query heads")->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  cmd->add_option("--kv-heads", a.kv_heads, "key/value heads (default: --heads)");
  cmd->add_option("--head-dim", a.head_dim, "head dimension")->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  cmd->add_option("--dtype", a.dtype, "bf16 or fp16")->capture_default_str();
}

dist::RingProblem ring_problem(const RingArgs& a) {
  dist::RingProblem p;
  p.seq = a.seq;
  p.world = a.world;
  p.sharding = a.zigzag ? dist::Sharding::kZigzag : dist::Sharding::kContiguous;
  p.heads = a.heads;
  p.kv_heads = a.kv_heads > 0 ? a.kv_heads : a.heads;
  p.head_dim = a.head_dim;
  p.dtype = dtype_from_string(a.dtype);
  return p;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

void run_bench(const RingArgs& a) {
  const dist::RingProblem p = ring_problem(a);
  const Pattern pattern = load_pattern_arg(a.pattern);
  const dist::RingPlan plan = dist::plan_ring(pattern, p);  // validates the problem first
  if (!tools::has_gpu()) throw Error(ErrorCode::kNoGpu, "spattn ring bench needs a GPU: " + tools::no_gpu_reason());
  const int64_t B = 1, n = p.seq / p.world, H = p.heads, Hkv = p.kv_heads, D = p.head_dim;
  RingOptions opts;
  opts.sharding = p.sharding;
  opts.timing = true;
  if (!a.config.empty()) opts.config = KernelConfig::parse(a.config);
  const int device = tools::current_device();

  LoopbackRing hub(p.world);
  struct Rank {
    std::unique_ptr<tools::DeviceTensor> q, k, v, o, lse;
    std::unique_ptr<RingAttention> ring;
  };
  std::vector<Rank> ranks(p.world);
  for (int r = 0; r < p.world; ++r) {
    Rank& x = ranks[r];
    x.q = std::make_unique<tools::DeviceTensor>(p.dtype, std::vector<int64_t>{B, n, H, D});
    x.k = std::make_unique<tools::DeviceTensor>(p.dtype, std::vector<int64_t>{B, n, Hkv, D});
    x.v = std::make_unique<tools::DeviceTensor>(p.dtype, std::vector<int64_t>{B, n, Hkv, D});
    x.o = std::make_unique<tools::DeviceTensor>(p.dtype, std::vector<int64_t>{B, n, H, D});
    x.lse = std::make_unique<tools::DeviceTensor>(DType::kFloat32, std::vector<int64_t>{B, H, n});
    x.q->fill_random(3 * r + 1);
    x.k->fill_random(3 * r + 2);
    x.v->fill_random(3 * r + 3);
    x.ring = std::make_unique<RingAttention>(pattern, hub.transport(r), opts);
  }
  tools::synchronize();
  // One forward of every rank, each from its own thread and stream; host wall time.
  std::vector<std::unique_ptr<tools::Stream>> streams(p.world);
  auto step_all = [&]() {
    std::vector<std::exception_ptr> errors(p.world);
    std::vector<std::thread> threads;
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < p.world; ++r)
      threads.emplace_back([&, r] {
        try {
          tools::make_current(device);
          if (!streams[r]) streams[r] = std::make_unique<tools::Stream>();
          const TensorView l = ranks[r].lse->view();
          ranks[r].ring->forward(ranks[r].q->view(), ranks[r].k->view(), ranks[r].v->view(), ranks[r].o->view(), &l,
                                 streams[r]->get());
          streams[r]->synchronize();
        } catch (...) {
          errors[r] = std::current_exception();
        }
      });
    for (auto& t : threads) t.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  step_all();  // plans, kernels
  std::vector<double> wall;
  std::vector<std::vector<RingTimings>> per(p.world);
  for (int rep = 0; rep < a.reps; ++rep) {
    wall.push_back(step_all());
    for (int r = 0; r < p.world; ++r) per[r].push_back(ranks[r].ring->timings());
  }

  // The single-GPU forward of the whole sequence.
  AttentionOptions aopts;
  if (opts.config) aopts.config = opts.config;
  Attention attn(pattern, aopts);
  const tools::DeviceTensor q(p.dtype, {B, p.seq, H, D}), k(p.dtype, {B, p.seq, Hkv, D}), v(p.dtype, {B, p.seq, Hkv, D}),
      o(p.dtype, {B, p.seq, H, D});
  std::vector<double> single;
  for (int rep = 0; rep < a.reps + 3; ++rep) {
    tools::Timer t;
    t.start();
    attn.forward(q.view(), k.view(), v.view(), o.view());
    const double ms = t.stop_ms();
    if (rep >= 3) single.push_back(ms);
  }

  std::ostringstream out;
  nlohmann::json rows = nlohmann::json::array();
  double compute_max = 0, compute_sum = 0;
  out << plan.to_table();
  out << fmt::format("loopback: {} virtual ranks on one GPU ({}), medians of {} runs\n", p.world,
                           tools::current_gpu().name, a.reps);
  out << fmt::format("  {:>5}  {:>10}  {:>11}  {:>9}  {:>8}  {:>9}\n", "rank", "total ms", "compute ms",
                           "wait ms", "pairs", "MiB in");
  for (int r = 0; r < p.world; ++r) {
    std::vector<double> total, compute, waitv;
    for (const RingTimings& t : per[r]) {
      total.push_back(t.total_ms);
      compute.push_back(t.compute_ms);
      waitv.push_back(t.wait_ms);
    }
    const RingTimings& last = per[r].back();
    const double c = median(compute);
    compute_max = std::max(compute_max, c);
    compute_sum += c;
    out << fmt::format("  {:>5}  {:>10.3f}  {:>11.3f}  {:>9.3f}  {:>8}  {:>9.1f}\n", r, median(total), c,
                             median(waitv), last.steps_computed, last.bytes_received / 1048576.0);
    rows.push_back({{"rank", r}, {"total_ms", median(total)}, {"compute_ms", c}, {"wait_ms", median(waitv)},
                    {"steps_computed", last.steps_computed}, {"bytes_received", last.bytes_received}});
  }
  const double single_ms = median(single), wall_ms = median(wall);
  out << fmt::format(
      "all ranks {:.3f} ms wall (host, threads started to streams done); compute summed over ranks {:.3f} ms, "
      "largest rank {:.3f} ms; single-GPU forward of the whole sequence {:.3f} ms\n"
      "  (virtual ranks share one GPU and run at once, so each rank's times include the others' kernels "
      "interleaved with its own; wait is the time its compute stream stood waiting for a transfer)\n",
      wall_ms, compute_sum, compute_max, single_ms);
  if (globals().json)
    print_json({{"plan", nlohmann::json::parse(plan.to_json())}, {"ranks", rows}, {"wall_ms", wall_ms},
                {"compute_sum_ms", compute_sum}, {"compute_max_ms", compute_max}, {"single_gpu_ms", single_ms}});
  else
    std::cout << out.str();
}

}  // namespace

void register_ring(CLI::App& app) {
  auto* ring = app.add_subcommand("ring", "sequence-parallel (ring) attention over several GPUs");
  ring->require_subcommand(1);
  auto plan_args = std::make_shared<RingArgs>();
  auto* cmd = ring->add_subcommand("plan", "which K/V shards each rank receives and computes (no GPU needed)");
  add_problem_options(cmd, *plan_args);
  cmd->callback([plan_args] {
    const dist::RingPlan plan = dist::plan_ring(load_pattern_arg(plan_args->pattern), ring_problem(*plan_args));
    if (globals().json) print_json(nlohmann::json::parse(plan.to_json()));
    else std::cout << plan.to_table();
  });
  auto bench_args = std::make_shared<RingArgs>();
  auto* bench = ring->add_subcommand("bench", "run the schedule on one GPU with virtual ranks (loopback) and time it");
  add_problem_options(bench, *bench_args);
  bench->add_option("--reps", bench_args->reps, "timed runs")->capture_default_str()->check(CLI::Range(1, 1000));
  bench->add_option("--config", bench_args->config, "force the kernel config of every shard pair");
  bench->callback([bench_args] { run_bench(*bench_args); });
}

}  // namespace spattn::cli
