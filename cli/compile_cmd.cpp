// spattn compile: generate and compile the kernels of a pattern into the cache for a
// named arch. No GPU needed.
#include <spattn/cache.hpp>

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "api/tools.hpp"
#include "cli/cli.hpp"

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
    bool backward = false;
    bool deterministic = false;
    bool documents = false;
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
  cmd->add_flag("--backward", args->backward,
                "compile the backward pass's kernel instead (--config then names a backward config, e.g. 64x128w8s1)");
  cmd->add_flag("--deterministic", args->deterministic,
                "with --backward: the deterministic backward's kernels (AttentionOptions::deterministic)");
  cmd->add_flag("--documents", args->documents,
                "the program of packed documents / padded batches (Attention::forward_varlen, forward_padded, "
                "with --backward backward_varlen, backward_padded; --seq is then the longest document)");
  cmd->callback([args] {
    if (args->deterministic && !args->backward)
      throw Error(ErrorCode::kInvalidArgument, "--deterministic applies to the backward pass: add --backward");
    const Pattern pattern = load_pattern_arg(args->pattern);
    tools::check_arch(args->arch);
    int64_t n = args->seq > 0 ? args->seq : 16384;
    if (const auto* grid = std::get_if<Neighborhood>(&pattern.node()); grid && args->seq <= 0) {
      n = 1;
      for (int64_t g : grid->grid) n *= g;
    }
    const std::optional<KernelConfig> forced =
        args->config.empty() ? std::nullopt : std::optional<KernelConfig>(KernelConfig::parse(args->config));
    Progress progress("compiling", 1);
    const tools::PatternBuild build = tools::compile_pattern(pattern, args->arch, n, args->heads, args->head_dim,
                                                             dtype_from_string(args->dtype), forced,
                                                             args->backward ? TunePass::kBackward : TunePass::kForward,
                                                             args->deterministic, args->documents);
    const KernelConfig& config = build.config;
    progress.advance();
    nlohmann::json results = nlohmann::json::array();
    for (const tools::KernelBuild& r : build.kernels) {
      if (!r.stored)
        throw Error(ErrorCode::kIo, fmt::format("{} could not be stored in the kernel cache '{}'", r.program,
                                                KernelCache::instance().config().dir.string()));
      if (!args->out.empty()) {
        namespace fs = std::filesystem;
        fs::create_directories(args->out);
        const fs::path stem = fs::path(args->out) / fs::path(r.program).stem();
        auto write = [](const fs::path& path, const char* data, size_t size) {
          std::ofstream f(path, std::ios::binary | std::ios::trunc);
          f.write(data, static_cast<std::streamsize>(size));
          if (!f) throw Error(ErrorCode::kIo, fmt::format("cannot write {}", path.string()));
        };
        write(stem.string() + ".cu", r.source.data(), r.source.size());
        write(stem.string() + ".cubin", r.cubin.data(), r.cubin.size());
        write(stem.string() + ".log", r.log.data(), r.log.size());
      }
      results.push_back({{"program", r.program},
                         {"key", r.key},
                         {"cache_hit", r.cache_hit},
                         {"ms", r.ms},
                         {"nvrtc_ms", r.nvrtc_ms},
                         {"registers", r.registers},
                         {"local_bytes", r.local_bytes},
                         {"cubin_bytes", r.cubin.size()}});
    }
    progress.finish();
    if (globals().json) {
      print_json({{"arch", args->arch}, {"config", config.to_string()}, {"config_source", build.config_source},
                  {"kernels", results}});
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
