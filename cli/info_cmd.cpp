// spattn info: toolkit, NVRTC, GPUs and the kernel cache at a glance.
#include <spattn/cache.hpp>

#include "api/tools.hpp"
#include "cli/cli.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <iostream>

namespace spattn::cli {

void register_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "toolkit and NVRTC versions, GPUs, kernel cache");
  cmd->callback([] {
    nlohmann::json j;
    const tools::Toolchain tc = tools::toolchain();
    j["spattn_version"] = SPATTN_VERSION_STRING;
    j["cuda_home"] = tc.cuda_home;
    j["nvrtc_version"] = tc.nvrtc_version;
    j["nvrtc_archs"] = tc.archs;
    j["gpus"] = nlohmann::json::array();
    if (tools::has_gpu()) {
      for (const tools::Gpu& g : tools::gpus()) {
        j["gpus"].push_back({{"ordinal", g.ordinal},
                             {"name", g.name},
                             {"compute_capability", fmt::format("{}.{}", g.cc_major, g.cc_minor)},
                             {"arch", g.arch},
                             {"sms", g.sms},
                             {"l2_bytes", g.l2_bytes},
                             {"smem_per_block_optin", g.smem_per_block_optin},
                             {"memory_bytes", g.memory_bytes},
                             // 0 when the driver reports no memory clock or bus width
                             {"peak_bandwidth_gbps", g.peak_bandwidth / 1e9},
                             {"driver", g.driver}});
      }
    } else {
      j["no_gpu_reason"] = tools::no_gpu_reason();
    }
    const auto& cache = KernelCache::instance();
    const auto st = cache.stat();
    j["cache"] = {{"dir", st.dir.string()}, {"entries", st.entries}, {"bytes", st.bytes},
                  {"max_bytes", st.max_bytes}, {"disabled", st.disabled}};
    if (!st.problem.empty()) j["cache"]["problem"] = st.problem;
    if (globals().json) {
      print_json(j);
      return;
    }
    std::cout << "spattn " << SPATTN_VERSION_STRING << "\n";
    std::cout << "CUDA toolkit: " << j["cuda_home"].get<std::string>() << "\n";
    std::cout << "NVRTC: " << j["nvrtc_version"].get<std::string>() << " (targets: "
              << fmt::format("{}", fmt::join(tc.archs, " ")) << ")\n";
    if (j["gpus"].empty()) {
      std::cout << "GPUs: no GPU (" << tools::no_gpu_reason() << ")\n";
    } else {
      for (const auto& g : j["gpus"]) {
        const double gbps = g["peak_bandwidth_gbps"].get<double>();
        std::cout << fmt::format("GPU {}: {} (cc {}, {}, {} SMs, {} MiB L2, {} GiB, {}, driver {})\n",
                                 g["ordinal"].get<int>(), g["name"].get<std::string>(),
                                 g["compute_capability"].get<std::string>(), g["arch"].get<std::string>(),
                                 g["sms"].get<int>(), g["l2_bytes"].get<int>() >> 20,
                                 g["memory_bytes"].get<size_t>() >> 30,
                                 gbps > 0 ? fmt::format("{:.0f} GB/s peak memory bandwidth", gbps)
                                          : std::string("peak memory bandwidth unknown"),
                                 g["driver"].get<std::string>());
      }
    }
    std::cout << fmt::format("Kernel cache: {} ({} entries, {:.1f} MiB of {:.0f} MiB){}\n", st.dir.string(),
                             st.entries, st.bytes / 1048576.0, st.max_bytes / 1048576.0,
                             st.disabled ? " [disabled by SPATTN_DISABLE_CACHE]" : "");
    if (!st.problem.empty()) std::cout << "Kernel cache problem: " << st.problem << "\n";
  });
}

}  // namespace spattn::cli
