// spattn demo: README's main job. Builds a LongNet and a sliding-window pattern at 16k
// tokens, compiles their kernels (cold compile vs cache hit), and where a GPU is present
// runs them, checks them against the fp32 GPU reference and prints time and useful
// TFLOP/s. Without a GPU it compiles and says plainly that it could not run.
#include <spattn/attention.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <iostream>

#include "cli/cli.hpp"
#include "autotune/search_space.hpp"
#include "engine/forward.hpp"
#include "engine/select.hpp"
#include "engine/jit.hpp"
#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

namespace spattn::cli {

namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

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
    const bool gpu = runtime::has_gpu();
    // With --json the readable lines go to stderr and one JSON object to stdout.
    std::ostream& text = globals().json ? std::cerr : std::cout;
    std::string arch = "sm_90a";
    runtime::DeviceInfo device = autotune::typical_device(arch);
    if (gpu) {
      const auto info = runtime::device_info(runtime::current_device());
      arch = info.arch();
      device = info;
      text << fmt::format("GPU: {} ({}, {} SMs)\n", info.name, arch, info.sm_count);
    } else {
      text << "GPU: none (" << runtime::no_gpu_reason() << ")\n"
                << "     kernels are compiled for " << arch << " into the cache; nothing can run here.\n";
    }
    const int64_t n = args->seq, H = args->heads, D = 128;
    nlohmann::json report = nlohmann::json::array();
    for (const DemoCase& c : cases) {
      const Pattern pattern = Pattern::parse(c.json);
      engine::Problem problem;
      problem.nq = problem.nk = n;
      problem.heads = problem.kv_heads = H;
      problem.head_dim = D;
      problem.dtype = DType::kBFloat16;
      text << "\n== " << c.name << ", " << n << " tokens, " << H << " heads, head dim 128, bf16\n";

      // Layout and kernel source for the configuration the library would choose.
      const KernelConfig config = engine::heuristic(pattern, problem, device).config;
      const auto t_layout = std::chrono::steady_clock::now();
      const Layout layout = compile_layout(pattern, problem.shape(), config.layout_options());
      const LayoutStats stats = layout_stats(pattern, layout, D);
      text << fmt::format("layout:  {:.1f} ms; density {:.4f} ({} active tiles of {}, {} full)\n",
                               ms_since(t_layout), stats.density, stats.active_tiles, stats.total_tiles,
                               stats.full_tiles);
      const auto rendered = engine::render_kernel(layout, config, problem, arch);
      const auto t_first = std::chrono::steady_clock::now();
      const CacheLookup first = engine::compile_cached(rendered, arch);
      const double first_ms = ms_since(t_first);
      const auto t_second = std::chrono::steady_clock::now();
      engine::compile_cached(rendered, arch);  // now a hit: timed
      const double second_ms = ms_since(t_second);
      if (first.hit)
        text << fmt::format("compile: cache hit in {:.2f} ms (NVRTC took {:.0f} ms when it was compiled)\n",
                                 first_ms, first.kernel.compile_ms);
      else
        text << fmt::format("compile: cold NVRTC compile {:.0f} ms, then cache hit {:.2f} ms\n", first_ms,
                                 second_ms);
      text << fmt::format("kernel:  {} ({} registers, {} bytes spilled)\n", rendered.program_name,
                               first.kernel.registers, first.kernel.local_bytes);
      nlohmann::json entry = {{"case", c.name}, {"config", config.to_string()}, {"cold_compile", !first.hit}, {"first_ms", first_ms},
                              {"hit_ms", second_ms}, {"density", stats.density}};
      if (!gpu) {
        text << "run:     skipped: no GPU on this machine\n";
        report.push_back(entry);
        continue;
      }

      // Correctness on a few heads against the fp32 reference.
      {
        engine::Problem small = problem;
        small.heads = small.kv_heads = args->check_heads;
        const int64_t elems = small.nq * small.heads * D;
        runtime::DeviceBuffer q(elems * 2), k(elems * 2), v(elems * 2), o(elems * 2), lse(small.heads * n * 4);
        engine::fill_random(q.data(), elems, DType::kBFloat16, 11);
        engine::fill_random(k.data(), elems, DType::kBFloat16, 12);
        engine::fill_random(v.data(), elems, DType::kBFloat16, 13);
        o.fill_bytes(0xff);  // poison: NaN in bf16
        const auto tq = TensorView::contiguous(q.data(), DType::kBFloat16, {1, n, small.heads, D});
        const auto tk = TensorView::contiguous(k.data(), DType::kBFloat16, {1, n, small.heads, D});
        const auto tv = TensorView::contiguous(v.data(), DType::kBFloat16, {1, n, small.heads, D});
        const auto to = TensorView::contiguous(o.data(), DType::kBFloat16, {1, n, small.heads, D});
        const auto tl = TensorView::contiguous3(lse.data(), DType::kFloat32, {1, small.heads, n});
        Attention attn(pattern);
        attn.forward(tq, tk, tv, to, &tl);
        runtime::synchronize();
        const auto ref = engine::reference_forward(pattern, small, tq, tk, tv, 0);
        std::vector<uint16_t> out(elems);
        std::vector<float> lse_out(small.heads * n);
        o.download(out.data(), out.size() * 2);
        lse.download(lse_out.data(), lse_out.size() * 4);
        const auto cmp = engine::compare(out, DType::kBFloat16, lse_out, ref);
        const bool ok = cmp.nonfinite == 0 && cmp.lse_mismatch == 0 && cmp.rel_l2_err < 1e-2;
        text << fmt::format("check:   {} vs fp32 reference ({} heads): {}\n", ok ? "PASS" : "FAIL",
                                 small.heads, cmp.to_string());
        entry["check_ok"] = ok;
        entry["rel_l2_err"] = cmp.rel_l2_err;
      }

      // Timing at full size.
      const int64_t elems = n * H * D;
      runtime::DeviceBuffer q(elems * 2), k(elems * 2), v(elems * 2), o(elems * 2);
      engine::fill_random(q.data(), elems, DType::kBFloat16, 21);
      engine::fill_random(k.data(), elems, DType::kBFloat16, 22);
      engine::fill_random(v.data(), elems, DType::kBFloat16, 23);
      const auto tq = TensorView::contiguous(q.data(), DType::kBFloat16, {1, n, H, D});
      const auto tk = TensorView::contiguous(k.data(), DType::kBFloat16, {1, n, H, D});
      const auto tv = TensorView::contiguous(v.data(), DType::kBFloat16, {1, n, H, D});
      const auto to = TensorView::contiguous(o.data(), DType::kBFloat16, {1, n, H, D});
      Attention attn(pattern);
      attn.forward(tq, tk, tv, to);  // warm-up: layout, kernel load
      runtime::synchronize();
      std::vector<float> times;
      for (int r = 0; r < args->reps; ++r) {
        runtime::Event start, stop;
        start.record();
        attn.forward(tq, tk, tv, to);
        stop.record();
        stop.synchronize();
        times.push_back(stop.elapsed_ms_since(start));
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
