// spattn pattern presets|show|stats: inspect patterns without a GPU (DESIGN.md §3, §8).
#include <spattn/layout.hpp>

#include "cli/cli.hpp"

#include <fmt/format.h>

#include <chrono>
#include <iostream>
#include <memory>

namespace spattn::cli {

namespace {

// The problem options shared by show and stats.
struct ProblemArgs {
  std::string pattern;
  int64_t seq = 0;
  int64_t kv_seq = 0;  // 0: same as seq
  int64_t heads = 1;
  int64_t tile = 128;

  void add(CLI::App* cmd) {
    cmd->add_option("-p,--pattern", pattern, "pattern: inline JSON, @file.json, or a preset name")->required();
    cmd->add_option("-n,--seq", seq, "query tokens (Nq)")->required();
    cmd->add_option("--kv-seq", kv_seq, "key tokens (Nk; default: --seq)");
    cmd->add_option("--heads", heads, "query heads")->capture_default_str();
    cmd->add_option("--tile", tile, "tile size in tokens (query tile for stats, block for show)")
        ->capture_default_str();
  }

  Shape shape() const {
    if (seq < 1) throw UsageError(fmt::format("--seq: must be >= 1 (got {})", seq));
    if (kv_seq < 0) throw UsageError(fmt::format("--kv-seq: must be >= 1 (got {})", kv_seq));
    if (heads < 1) throw UsageError(fmt::format("--heads: must be >= 1 (got {})", heads));
    if (tile < 1) throw UsageError(fmt::format("--tile: must be >= 1 (got {})", tile));
    return Shape{seq, kv_seq > 0 ? kv_seq : seq, heads};
  }
};

std::string percent(double x) { return fmt::format("{:.3g}%", 100.0 * x); }

void run_presets() {
  if (globals().json) {
    nlohmann::json j = nlohmann::json::array();
    for (const Preset& p : presets()) {
      j.push_back({{"name", p.name},
                   {"description", p.description},
                   {"pattern", nlohmann::json::parse(p.pattern.to_json())}});
    }
    print_json(j);
    return;
  }
  size_t width = 0;
  for (const Preset& p : presets()) width = std::max(width, p.name.size());
  for (const Preset& p : presets()) {
    std::cout << fmt::format("{:<{}}  {}\n{:<{}}  {}\n", p.name, width, p.description, "", width,
                             p.pattern.to_json());
  }
}

void run_show(const ProblemArgs& a, int64_t head, int cells) {
  const Pattern pattern = load_pattern_arg(a.pattern);
  const Shape shape = a.shape();
  if (head < 0 || head >= shape.heads) {
    throw UsageError(fmt::format("--head: must be in [0, {}) (got {})", shape.heads, head));
  }
  if (cells < 1) throw UsageError(fmt::format("--cells: must be >= 1 (got {})", cells));
  const std::string picture = render_pattern(pattern, shape, a.tile, head, cells);
  LayoutOptions o;
  o.tile_m = o.tile_n = std::min<int64_t>(a.tile, 4096);
  const LayoutStats s = layout_stats(pattern, compile_layout(pattern, shape, o));
  if (globals().json) {
    print_json({{"pattern", nlohmann::json::parse(pattern.to_json())},
                {"picture", picture},
                {"density", s.density},
                {"sparsity", 1.0 - s.density},
                {"natural_block_density", s.natural_block_density},
                {"block", o.tile_m}});
    return;
  }
  std::cout << pattern.to_json() << "\n" << picture;
  std::cout << fmt::format("density {} of pairs (sparsity {}); {} of the {}x{} blocks active in natural order\n",
                           percent(s.density), percent(1.0 - s.density), percent(s.natural_block_density), o.tile_m,
                           o.tile_n);
}

struct StatsArgs {
  int64_t tile_n = 0;  // 0: same as --tile
  int64_t head_dim = 128;
  bool no_permute = false;
  std::string schedule = "row_major";
};

void run_stats(const ProblemArgs& a, const StatsArgs& sa) {
  const Pattern pattern = load_pattern_arg(a.pattern);
  const Shape shape = a.shape();
  if (sa.tile_n < 0) throw UsageError(fmt::format("--tile-n: must be >= 1 (got {})", sa.tile_n));
  if (sa.head_dim < 1) throw UsageError(fmt::format("--head-dim: must be >= 1 (got {})", sa.head_dim));
  LayoutOptions o;
  o.tile_m = a.tile;
  o.tile_n = sa.tile_n > 0 ? sa.tile_n : a.tile;
  o.permute = !sa.no_permute;
  o.schedule = schedule_order_from_string(sa.schedule);
  const auto t0 = std::chrono::steady_clock::now();
  const Layout layout = compile_layout(pattern, shape, o);
  const double compile_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const LayoutStats s = layout_stats(pattern, layout, sa.head_dim);
  const double block_density = s.total_tiles ? double(s.active_tiles) / double(s.total_tiles) : 0.0;

  nlohmann::json levels = nlohmann::json::array();
  if (const auto* h = std::get_if<Hierarchical>(&pattern.node())) {
    for (size_t l = 0; l < h->levels.size(); ++l) {
      levels.push_back({{"level", l},
                        {"stride", h->levels[l].stride},
                        {"window", h->levels[l].window},
                        {"block", h->levels[l].block},
                        {"coverage", s.level_coverage[l]},
                        {"active_positions", s.level_queries[l]}});
    }
  }
  if (globals().json) {
    print_json({{"pattern", nlohmann::json::parse(pattern.to_json())},
                {"seq", shape.nq},
                {"kv_seq", shape.nk},
                {"heads", shape.heads},
                {"tile_m", o.tile_m},
                {"tile_n", o.tile_n},
                {"head_dim", sa.head_dim},
                {"permute", o.permute},
                {"density", s.density},
                {"sparsity", 1.0 - s.density},
                {"allowed_pairs", s.allowed_pairs},
                {"allowed_pairs_total", s.allowed_pairs_total},
                {"total_tiles", s.total_tiles},
                {"active_tiles", s.active_tiles},
                {"full_tiles", s.full_tiles},
                {"partial_tiles", s.partial_tiles},
                {"block_density", block_density},
                {"tile_density", s.tile_density},
                {"natural_block_density", s.natural_block_density},
                {"useful_flops", s.useful_flops},
                {"parts", s.parts},
                {"tables", layout.tables.size()},
                {"work_items", layout.schedule.size()},
                {"covers_all_rows", layout.covers_all_rows},
                {"table_bytes", s.table_bytes},
                {"compile_ms", compile_ms},
                {"levels", levels}});
    return;
  }
  std::cout << "pattern   " << pattern.to_json() << "\n";
  std::cout << fmt::format("problem   Nq {} x Nk {}, {} head(s), tiles {}x{}, {} order\n", shape.nq, shape.nk,
                           shape.heads, o.tile_m, o.tile_n, o.permute ? "permuted" : "natural");
  std::cout << fmt::format("density   {} of pairs (sparsity {}), {:.0f} pairs per head\n", percent(s.density),
                           percent(1.0 - s.density), s.allowed_pairs);
  std::cout << fmt::format("tiles     {} active of {} ({}): {} full, {} partial\n", s.active_tiles, s.total_tiles,
                           percent(block_density), s.full_tiles, s.partial_tiles);
  std::cout << fmt::format("work      listed tiles cover {} of the dense work; {} of tiles in natural order "
                           "(what a block mask visits)\n",
                           percent(s.tile_density), percent(s.natural_block_density));
  std::cout << fmt::format("flops     {:.4g} useful (4 x {} x pairs x heads)\n", s.useful_flops, sa.head_dim);
  std::cout << fmt::format("layout    {} part(s), {} table(s), {} work items, {:.2f} MiB, compiled in {:.1f} ms{}\n",
                           s.parts, layout.tables.size(), layout.schedule.size(), double(s.table_bytes) / 1048576.0,
                           compile_ms, layout.covers_all_rows ? "" : "; some rows take part in no table");
  for (const auto& l : levels) {
    std::cout << fmt::format("level {}   stride {}, window {}, block {}: {} of pairs, {} queries\n",
                             l["level"].get<int>(), l["stride"].get<int64_t>(), l["window"].get<int64_t>(),
                             l["block"].get<int64_t>(), percent(l["coverage"].get<double>()),
                             l["active_positions"].get<int64_t>());
  }
}

}  // namespace

void register_pattern(CLI::App& app) {
  auto* cmd = app.add_subcommand("pattern", "inspect attention patterns: presets, block picture, statistics");
  cmd->require_subcommand(1);

  auto* list = cmd->add_subcommand("presets", "list the named presets and what they expand to");
  list->callback(run_presets);

  auto show_args = std::make_shared<ProblemArgs>();
  auto head = std::make_shared<int64_t>(0);
  auto cells = std::make_shared<int>(64);
  auto* show = cmd->add_subcommand("show", "draw the block picture of a pattern (natural token order)");
  show_args->add(show);
  show->add_option("--head", *head, "head to draw")->capture_default_str();
  show->add_option("--cells", *cells, "at most this many cells per side")->capture_default_str();
  show->callback([show_args, head, cells] { run_show(*show_args, *head, *cells); });

  auto stats_args = std::make_shared<ProblemArgs>();
  auto extra = std::make_shared<StatsArgs>();
  auto* stats = cmd->add_subcommand("stats", "sparsity, tiles, FLOPs and layout of a compiled pattern");
  stats_args->add(stats);
  stats->add_option("--tile-n", extra->tile_n, "key tile (default: --tile)");
  stats->add_option("--head-dim", extra->head_dim, "head dimension for the FLOP count")->capture_default_str();
  stats->add_flag("--no-permute", extra->no_permute, "natural token order everywhere (no layout permutation)");
  stats->add_option("--schedule", extra->schedule, "work order: row_major, hilbert, longest_first")
      ->capture_default_str();
  stats->callback([stats_args, extra] { run_stats(*stats_args, *extra); });
}

}  // namespace spattn::cli
