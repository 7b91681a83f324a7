// spattn ring plan: the schedule of sequence-parallel (ring) attention for a pattern —
// per rank its shard, the shards it receives, bytes moved and its work — computed on
// the host (dist/ring_plan.hpp).
#include <fmt/format.h>

#include <iostream>

#include "cli/cli.hpp"
#include "dist/ring_plan.hpp"

namespace spattn::cli {

void register_ring(CLI::App& app) {
  struct Args {
    std::string pattern;
    int64_t seq = 0;
    int world = 2;
    bool zigzag = false;
    int64_t heads = 16;
    int64_t kv_heads = 0;
    int64_t head_dim = 128;
    std::string dtype = "bf16";
  };
  auto args = std::make_shared<Args>();
  auto* ring = app.add_subcommand("ring", "sequence-parallel (ring) attention over several GPUs");
  ring->require_subcommand(1);
  auto* cmd = ring->add_subcommand("plan", "which K/V shards each rank receives and computes (no GPU needed)");
  cmd->add_option("-p,--pattern", args->pattern, "pattern: inline JSON, @file.json or a preset name")->required();
  cmd->add_option("--seq", args->seq, "tokens of the whole sequence")->required()->check(CLI::Range(int64_t{1}, int64_t{1} << 31));
  cmd->add_option("--world", args->world, "ranks")->capture_default_str()->check(CLI::Range(1, 65536));
  cmd->add_flag("--zigzag", args->zigzag, "zigzag shards (rank r holds chunks r and 2W-1-r: balances causal work)");
  cmd->add_option("--heads", args->heads, "query heads")->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  cmd->add_option("--kv-heads", args->kv_heads, "key/value heads (default: --heads)");
  cmd->add_option("--head-dim", args->head_dim, "head dimension (for bytes moved)")->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  cmd->add_option("--dtype", args->dtype, "bf16 or fp16")->capture_default_str();
  cmd->callback([args] {
    dist::RingProblem p;
    p.seq = args->seq;
    p.world = args->world;
    p.sharding = args->zigzag ? dist::Sharding::kZigzag : dist::Sharding::kContiguous;
    p.heads = args->heads;
    p.kv_heads = args->kv_heads > 0 ? args->kv_heads : args->heads;
    p.head_dim = args->head_dim;
    p.dtype = dtype_from_string(args->dtype);
    const dist::RingPlan plan = dist::plan_ring(load_pattern_arg(args->pattern), p);
    if (globals().json) print_json(nlohmann::json::parse(plan.to_json()));
    else std::cout << plan.to_table();
  });
}

}  // namespace spattn::cli
