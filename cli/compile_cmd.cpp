// spattn compile: generate and compile the kernels of a pattern into the cache for a
// named arch. No GPU needed.
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "cli/cli.hpp"
#include "autotune/search_space.hpp"
#include "engine/forward.hpp"
#include "engine/jit.hpp"
#include "engine/select.hpp"
#include "runtime/nvrtc.hpp"

namespace spattn::cli {

void register_compile(CLI::App& app) {
  struct Args {
    std::string pattern;
    std::string arch = "sm_90a";
    std::string dtype = "bf16";
    std::string config;
    int head_dim = 128;
    int64_t seq = 0;
    int64_t heads = 16;
    std::string out;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("compile", "compile a pattern's kernels into the cache for an arch (no GPU needed)");
  cmd->add_option("-p,--pattern", args->pattern, "pattern: inline JSON, @file.json or a preset name")->required();
  cmd->add_option("--arch", args->arch, "NVRTC target, e.g. sm_90a, sm_80")->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "fp16 or bf16")->capture_default_str();
  cmd->add_option("--head-dim", args->head_dim, "head dimension")->capture_default_str();
  cmd->add_option("--config", args->config,
                  "kernel config, e.g. 128x64w4s2 or sm90:128x128s2 (default: the heuristic's for a typical GPU of the arch)");
  cmd->add_option("--seq", args->seq, "sequence length used to derive the layout parts (default: 16384 or the grid size)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  cmd->add_option("--out", args->out,
                  "also write each program's generated source (.cu), CUBIN (.cubin, for cuobjdump -sass) and NVRTC log "
                  "(.log) into this directory");
  cmd->add_option("--heads", args->heads, "query heads")->capture_default_str();
  cmd->callback([args] {
    const Pattern pattern = load_pattern_arg(args->pattern);
    runtime::check_arch(args->arch);
    engine::Problem problem;
    problem.nq = problem.nk = args->seq > 0 ? args->seq : 16384;
    if (const auto* n = std::get_if<Neighborhood>(&pattern.node()); n && args->seq <= 0) {
      int64_t cells = 1;
      for (int64_t g : n->grid) cells *= g;
      problem.nq = problem.nk = cells;
    }
    problem.heads = problem.kv_heads = args->heads;
    problem.head_dim = args->head_dim;
    problem.dtype = dtype_from_string(args->dtype);
    check_problem_supported(args->head_dim, problem.dtype);
    pattern.validate(problem.shape());
    const KernelConfig config =
        args->config.empty()
            ? engine::heuristic(pattern, problem, autotune::typical_device(args->arch)).config
            : KernelConfig::parse(args->config);
    config.check(args->head_dim, problem.dtype, args->arch, autotune::arch_limits(args->arch).smem_per_block);

    const Layout layout = compile_layout(pattern, problem.shape(), config.layout_options());
    const codegen::RenderedKernel rendered = engine::render_kernel(layout, config, problem, args->arch);
    const codegen::RenderedKernel support = codegen::render_support_kernels();

    nlohmann::json results = nlohmann::json::array();
    Progress progress("compiling", 2);
    for (const auto* r : {&rendered, &support}) {
      const auto t0 = std::chrono::steady_clock::now();
      const CacheLookup found = engine::compile_cached(*r, args->arch);
      if (!found.stored)
        throw Error(ErrorCode::kIo, fmt::format("{} could not be stored in the kernel cache '{}'", r->program_name,
                                                KernelCache::instance().config().dir.string()));
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      progress.advance();
      if (!args->out.empty()) {
        namespace fs = std::filesystem;
        fs::create_directories(args->out);
        const fs::path stem = fs::path(args->out) / fs::path(r->program_name).stem();
        auto write = [](const fs::path& path, const char* data, size_t size) {
          std::ofstream f(path, std::ios::binary | std::ios::trunc);
          f.write(data, static_cast<std::streamsize>(size));
          if (!f) throw Error(ErrorCode::kIo, fmt::format("cannot write {}", path.string()));
        };
        write(stem.string() + ".cu", r->source.data(), r->source.size());
        write(stem.string() + ".cubin", found.kernel.cubin.data(), found.kernel.cubin.size());
        write(stem.string() + ".log", found.kernel.log.data(), found.kernel.log.size());
      }
      results.push_back({{"program", r->program_name},
                         {"key", found.key},
                         {"cache_hit", found.hit},
                         {"ms", ms},
                         {"nvrtc_ms", found.kernel.compile_ms},
                         {"registers", found.kernel.registers},
                         {"local_bytes", found.kernel.local_bytes},
                         {"cubin_bytes", found.kernel.cubin.size()}});
    }
    progress.finish();
    if (globals().json) {
      print_json({{"arch", args->arch}, {"config", config.to_string()}, {"kernels", results}});
      return;
    }
    for (const auto& r : results)
      std::cout << fmt::format("{:<32} {} {:>8.1f} ms  {:>3} regs  {:>4} B local  {:>7} B cubin  key {}\n",
                               r["program"].get<std::string>(), r["cache_hit"].get<bool>() ? "hit     " : "compiled",
                               r["ms"].get<double>(), r["registers"].get<int>(), r["local_bytes"].get<int>(),
                               r["cubin_bytes"].get<size_t>(), r["key"].get<std::string>().substr(0, 16));
  });
}

}  // namespace spattn::cli
