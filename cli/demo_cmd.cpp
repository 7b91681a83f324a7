// spattn demo: README's main job. Builds a LongNet and a sliding-window pattern at 16k
// tokens, compiles their kernels (cold compile vs cache hit), and where a GPU is present
// runs them, checks them against the fp32 GPU reference and prints time and useful
// TFLOP/s. Without a GPU it compiles and says plainly that it could not run.
#include <spattn/attention.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <iostream>

#include "api/tools.hpp"
#include "cli/cli.hpp"

namespace spattn::cli {

namespace {

struct DemoCase {
  const char* name;
  const char* json;
};

}  // namespace

void register_demo(CLI::App& app) {
  struct Args {
    int64_t seq = 16384;
    int64_t heads = 16;
    int64_t check_heads = 2;
    int reps = 20;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("demo", "compile and (with a GPU) run LongNet and sliding-window attention at 16k tokens");
  cmd->add_option("--seq", args->seq, "tokens")->capture_default_str();
  cmd->add_option("--heads", args->heads, "heads for the timed run")->capture_default_str();
  cmd->add_option("--check-heads", args->check_heads, "heads for the reference check")->capture_default_str();
  cmd->add_option("--reps", args->reps, "timed repetitions (median reported)")->capture_default_str();
  cmd->callback([args] {
    const DemoCase cases[] = {
        {"longnet [2048,4096,8192]x[1,2,4]", R"({"type":"longnet","segments":[2048,4096,8192],"rates":[1,2,4]})"},
        {"sliding window 1024", R"({"type":"local_window","window":1024})"},
    };
    const bool gpu = tools::has_gpu();
    // With --json the readable lines go to stderr and one JSON object to stdout.
    std::ostream& text = globals().json ? std::cerr : std::cout;
    std::string arch = "sm_90a";
    if (gpu) {
      const tools::Gpu info = tools::current_gpu();
      arch = info.arch;
      text << fmt::format("GPU: {} ({}, {} SMs)\n", info.name, arch, info.sms);
    } else {
      text << "GPU: none (" << tools::no_gpu_reason() << ")\n"
                << "     kernels are compiled for " << arch << " into the cache; nothing can run here.\n";
    }
    const int64_t n = args->seq, H = args->heads, D = 128;
    nlohmann::json report = nlohmann::json::array();
    for (const DemoCase& c : cases) {
      const Pattern pattern = Pattern::parse(c.json);
      text << "\n== " << c.name << ", " << n << " tokens, " << H << " heads, head dim 128, bf16\n";

      // The configuration the library would choose, its layout and kernels: compiled
      // through the cache, then again (now a hit).
      const tools::PatternBuild build = tools::compile_pattern(pattern, arch, n, H, D, DType::kBFloat16, std::nullopt);
      const tools::PatternBuild again = tools::compile_pattern(pattern, arch, n, H, D, DType::kBFloat16, std::nullopt);
      const KernelConfig& config = build.config;
      const LayoutStats& stats = build.stats;
      const tools::KernelBuild& first = build.kernels.front();
      const double first_ms = first.ms, second_ms = again.kernels.front().ms;
      text << fmt::format("layout:  {:.1f} ms; density {:.4f} ({} active tiles of {}, {} full)\n", build.layout_ms,
                          stats.density, stats.active_tiles, stats.total_tiles, stats.full_tiles);
      if (first.cache_hit)
        text << fmt::format("compile: cache hit in {:.2f} ms (NVRTC took {:.0f} ms when it was compiled)\n", first_ms,
                            first.nvrtc_ms);
      else
        text << fmt::format("compile: cold NVRTC compile {:.0f} ms, then cache hit {:.2f} ms\n", first_ms, second_ms);
      text << fmt::format("kernel:  {} ({} registers, {} bytes spilled)\n", first.program, first.registers,
                          first.local_bytes);
      nlohmann::json entry = {{"case", c.name}, {"config", config.to_string()}, {"cold_compile", !first.cache_hit}, {"first_ms", first_ms},
                              {"hit_ms", second_ms}, {"density", stats.density}};
      if (!gpu) {
        text << "run:     skipped: no GPU on this machine\n";
        report.push_back(entry);
        continue;
      }

      // Correctness on a few heads against the fp32 reference.
      {
        const std::vector<int64_t> shape{1, n, args->check_heads, D};
        tools::DeviceTensor q(DType::kBFloat16, shape), k(DType::kBFloat16, shape), v(DType::kBFloat16, shape),
            o(DType::kBFloat16, shape), lse(DType::kFloat32, {1, args->check_heads, n});
        q.fill_random(11);
        k.fill_random(12);
        v.fill_random(13);
        o.fill_bytes(0xff);  // poison: NaN in bf16
        const TensorView tl = lse.view();
        Attention attn(pattern);
        attn.forward(q.view(), k.view(), v.view(), o.view(), &tl);
        tools::synchronize();
        const tools::Check check = tools::check_against_reference(pattern, q.view(), k.view(), v.view(), o.view(), &tl);
        text << fmt::format("check:   {} vs fp32 reference ({} heads): {}\n", check.ok ? "PASS" : "FAIL",
                            args->check_heads, check.text);
        entry["check_ok"] = check.ok;
        entry["rel_l2_err"] = check.rel_l2_err;
      }

      // Timing at full size.
      const std::vector<int64_t> shape{1, n, H, D};
      tools::DeviceTensor q(DType::kBFloat16, shape), k(DType::kBFloat16, shape), v(DType::kBFloat16, shape),
          o(DType::kBFloat16, shape);
      q.fill_random(21);
      k.fill_random(22);
      v.fill_random(23);
      Attention attn(pattern);
      attn.forward(q.view(), k.view(), v.view(), o.view());  // warm-up: layout, kernel load
      tools::synchronize();
      std::vector<float> times;
      tools::Timer timer;
      for (int r = 0; r < args->reps; ++r) {
        timer.start();
        attn.forward(q.view(), k.view(), v.view(), o.view());
        times.push_back(timer.stop_ms());
      }
      std::sort(times.begin(), times.end());
      const double med = times[times.size() / 2];
      const double flops = 4.0 * D * attn.explanation().stats.allowed_pairs_total;
      text << fmt::format("run:     {:.3f} ms median of {}, {:.0f} useful TFLOP/s ({})\n", med, args->reps,
                          flops / med / 1e9, attn.explanation().config.to_string());
      entry["ms"] = med;
      entry["tflops"] = flops / med / 1e9;
      report.push_back(entry);
    }
    if (globals().json) print_json({{"gpu", gpu}, {"arch", arch}, {"cases", report}});
  });
}

}  // namespace spattn::cli
