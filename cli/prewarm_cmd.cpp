// spattn prewarm MANIFEST.json: compile every kernel a manifest of patterns x shapes x
// dtypes x archs needs into the kernel cache, in parallel (no GPU needed), then
// optionally load them all on this GPU (--load-all).
#include <spattn/autotune.hpp>
#include <spattn/cache.hpp>

#include <fmt/format.h>

#include <iostream>

#include "cli/cli.hpp"

namespace spattn::cli {

void register_prewarm(CLI::App& app) {
  struct Args {
    std::string manifest;
    std::vector<std::string> archs;
    bool load_all = false;
    bool list = false;
    int device = 0;
    int threads = 0;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("prewarm",
                                 "compile every kernel a manifest needs into the cache (no GPU needed); ship it with "
                                 "'spattn cache export'");
  cmd->add_option("MANIFEST", args->manifest, "manifest JSON file (DESIGN.md §8), or - for stdin")->required();
  cmd->add_option("--arch", args->archs, "only this arch of the manifest (repeatable)");
  cmd->add_flag("--load-all", args->load_all,
                "also load every module for this GPU's arch now (no lazy module loads later, e.g. under NCCL)");
  cmd->add_flag("--list", args->list, "list every kernel with its configuration and status");
  cmd->add_option("--device", args->device, "CUDA device for --load-all and this host's selection")->capture_default_str();
  cmd->add_option("--threads", args->threads, "compile threads (default: $SPATTN_NVRTC_THREADS or the core count)");

  cmd->callback([args] {
    const std::string text = read_input_file(args->manifest, "MANIFEST");
    if (args->threads < 0) throw UsageError("--threads must be >= 1");
    // Filling the cache is the whole job: a cache that cannot take the kernels fails now,
    // before minutes of compiling, and not with "N compiled" afterwards.
    KernelCache& cache = KernelCache::instance();
    cache.ensure_writable();

    PrewarmOptions options;
    options.archs = args->archs;
    options.load_all = args->load_all;
    options.device = args->device;
    options.threads = args->threads;
    ProgressFeed feed("prewarm");
    options.progress = feed.callback();
    const PrewarmReport report = prewarm(text, options);
    feed.finish();

    if (globals().json) {
      print_json(nlohmann::json::parse(report.to_json()));
    } else {
      if (args->list) {
        for (const PrewarmKernel& k : report.kernels)
          std::cout << fmt::format("{:<8} {:<10} {:<32} {:<22} {:>8.0f} ms  {}\n", k.arch, k.status, k.program,
                                   k.config.empty() ? "(support)" : k.config, k.ms,
                                   k.uses.empty() ? k.source : fmt::format("{} use(s), {}", k.uses.size(), k.source));
      }
      std::cout << fmt::format("prewarm: {} kernels: {} compiled, {} already cached, {} failed{} in {:.1f} s on {} "
                               "thread(s)\n",
                               report.kernels.size(), report.compiled, report.cached, report.failed,
                               args->load_all ? fmt::format(", {} loaded on the GPU", report.loaded) : "",
                               report.seconds, report.threads);
    }
    for (const PrewarmKernel& k : report.kernels)
      if (k.status == "failed") std::cerr << fmt::format("spattn: {} {} ({}): {}\n", k.arch, k.program, k.config, k.error);
    if (report.failed > 0)
      throw Error(ErrorCode::kCompile, fmt::format("{} of {} kernels failed to compile", report.failed, report.kernels.size()));
    // And every kernel that compiled (or hit) must now be in the cache.
    size_t missing = 0;
    std::string first;
    for (const PrewarmKernel& k : report.kernels) {
      if (k.status == "failed" || cache.contains(k.key)) continue;
      if (missing++ == 0) first = fmt::format("{} {} ({})", k.arch, k.program, k.key.substr(0, 12));
    }
    if (missing > 0) {
      throw Error(ErrorCode::kIo, fmt::format("{} of {} kernels are not in the kernel cache '{}' (first: {}); see the "
                                              "warnings above",
                                              missing, report.kernels.size(), cache.config().dir.string(), first));
    }
  });
}

}  // namespace spattn::cli
