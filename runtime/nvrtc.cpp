#include "runtime/nvrtc.hpp"

#include <nvrtc.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <regex>
#include <sstream>

#include "common/check.hpp"
#include "common/log.hpp"

#ifndef SPATTN_CUDA_HOME_DEFAULT
#error "SPATTN_CUDA_HOME_DEFAULT must be defined by the build (the CUDA toolkit root)"
#endif

#define SPATTN_NVRTC_CHECK(call)                                                              \
  do {                                                                                        \
    const nvrtcResult spattn_nvrtc_result_ = (call);                                          \
    if (spattn_nvrtc_result_ != NVRTC_SUCCESS)                                                \
      SPATTN_FAIL(::spattn::ErrorCode::kCompile, "NVRTC call failed: {} returned {}", #call, \
                  nvrtcGetErrorString(spattn_nvrtc_result_));                                 \
  } while (0)

namespace spattn::runtime {

std::string nvrtc_version() {
  int major = 0, minor = 0;
  SPATTN_NVRTC_CHECK(nvrtcVersion(&major, &minor));
  return fmt::format("{}.{}", major, minor);
}

std::string cuda_home() {
  if (const char* env = std::getenv("SPATTN_CUDA_HOME"); env && *env) {
    static std::once_flag warned;
    std::call_once(warned, [&] {
      std::error_code ec;
      if (!std::filesystem::is_directory(std::string(env) + "/include", ec))
        log::warn("SPATTN_CUDA_HOME={} has no include/ directory: NVRTC will not find the CUDA headers there "
                  "(unset it to use the toolkit found at build time, {})",
                  env, SPATTN_CUDA_HOME_DEFAULT);
    });
    return env;
  }
  return SPATTN_CUDA_HOME_DEFAULT;
}

std::vector<std::string> supported_archs() {
  int n = 0;
  SPATTN_NVRTC_CHECK(nvrtcGetNumSupportedArchs(&n));
  std::vector<int> archs(n);
  SPATTN_NVRTC_CHECK(nvrtcGetSupportedArchs(archs.data()));
  std::vector<std::string> out;
  for (int a : archs) {
    if (a < 80) continue;  // the kernels need sm_80 features (cp.async, bf16 mma)
    out.push_back(fmt::format("sm_{}", a));
    if (a == 90 || a == 100 || a == 120) out.push_back(fmt::format("sm_{}a", a));
  }
  return out;
}

void check_arch(const std::string& arch) {
  const auto archs = supported_archs();
  if (std::find(archs.begin(), archs.end(), arch) != archs.end()) return;
  SPATTN_FAIL(ErrorCode::kUnsupported, "arch '{}' is not supported by NVRTC {} for spattn kernels; supported: {}",
              arch, nvrtc_version(), fmt::join(archs, ", "));
}

std::vector<std::string> effective_options(const Program& program) {
  check_arch(program.arch);
  const std::string home = cuda_home();
  std::vector<std::string> opts = {
      "--gpu-architecture=" + program.arch,
      "-std=c++17",
      "--device-as-default-execution-space",
      "-lineinfo",
      "--ptxas-options=-v",  // resource usage into the log, parsed below
      "--include-path=" + home + "/include",
      "--include-path=" + home + "/include/cccl",
  };
  opts.insert(opts.end(), program.options.begin(), program.options.end());
  return opts;
}

namespace {

// For every "name(line): error" in the log, the generated lines around it, numbered.
std::string error_context(const Program& program, const std::string& log) {
  std::vector<std::string> lines;
  {
    std::istringstream in(program.source);
    for (std::string l; std::getline(in, l);) lines.push_back(l);
  }
  std::string out;
  const std::regex where(std::regex_replace(program.name, std::regex(R"([.^$|()\[\]{}*+?\\])"), R"(\$&)") +
                         R"(\((\d+)\): (error|catastrophic error))");
  int shown = 0;
  for (auto it = std::sregex_iterator(log.begin(), log.end(), where); it != std::sregex_iterator() && shown < 5;
       ++it, ++shown) {
    const int line = std::stoi((*it)[1]);
    out += fmt::format("\n--- {} around line {} ---\n", program.name, line);
    for (int l = std::max(1, line - 3); l <= std::min<int>(lines.size(), line + 3); ++l)
      out += fmt::format("{}{:5} | {}\n", l == line ? ">" : " ", l, lines[l - 1]);
  }
  return out;
}

// The largest value over every entry point ptxas reports (-1 if none): a program with
// several kernels is as costly as its most demanding one.
int parse_max_int(const std::string& log, const char* pattern) {
  const std::regex re(pattern);
  int best = -1;
  for (auto it = std::sregex_iterator(log.begin(), log.end(), re); it != std::sregex_iterator(); ++it)
    best = std::max(best, std::stoi((*it)[1]));
  return best;
}

}  // namespace

namespace {
std::atomic<bool> g_nvrtc_has_run{false};
}  // namespace

bool nvrtc_has_run() { return g_nvrtc_has_run.load(); }

CompiledProgram compile(const Program& program) {
  const auto t0 = std::chrono::steady_clock::now();
  g_nvrtc_has_run = true;
  const std::vector<std::string> opts = effective_options(program);

  std::vector<const char*> header_names, header_texts;
  for (const auto& [name, text] : program.headers) {
    header_names.push_back(name.c_str());
    header_texts.push_back(text.c_str());
  }
  nvrtcProgram prog = nullptr;
  SPATTN_NVRTC_CHECK(nvrtcCreateProgram(&prog, program.source.c_str(), program.name.c_str(),
                                        static_cast<int>(header_names.size()), header_texts.data(),
                                        header_names.data()));
  struct Guard {
    nvrtcProgram* p;
    ~Guard() { nvrtcDestroyProgram(p); }
  } guard{&prog};

  for (const auto& expr : program.name_expressions) SPATTN_NVRTC_CHECK(nvrtcAddNameExpression(prog, expr.c_str()));

  std::vector<const char*> copts;
  for (const auto& o : opts) copts.push_back(o.c_str());
  const nvrtcResult result = nvrtcCompileProgram(prog, static_cast<int>(copts.size()), copts.data());

  size_t log_size = 0;
  SPATTN_NVRTC_CHECK(nvrtcGetProgramLogSize(prog, &log_size));
  std::string log(log_size, '\0');
  if (log_size) SPATTN_NVRTC_CHECK(nvrtcGetProgramLog(prog, log.data()));
  while (!log.empty() && (log.back() == '\0' || log.back() == '\n')) log.pop_back();

  if (result != NVRTC_SUCCESS) {
    SPATTN_FAIL(ErrorCode::kCompile, "NVRTC could not compile {} for {}: {}\n{}{}", program.name, program.arch,
                nvrtcGetErrorString(result), log, error_context(program, log));
  }

  CompiledProgram out;
  size_t cubin_size = 0;
  SPATTN_NVRTC_CHECK(nvrtcGetCUBINSize(prog, &cubin_size));
  out.cubin.resize(cubin_size);
  SPATTN_NVRTC_CHECK(nvrtcGetCUBIN(prog, out.cubin.data()));
  for (const auto& expr : program.name_expressions) {
    const char* lowered = nullptr;
    SPATTN_NVRTC_CHECK(nvrtcGetLoweredName(prog, expr.c_str(), &lowered));
    out.lowered_names[expr] = lowered;
  }
  out.registers = parse_max_int(log, R"(Used (\d+) registers)");
  out.shared_bytes = std::max(0, parse_max_int(log, R"((\d+) bytes smem)"));
  out.local_bytes = parse_max_int(log, R"((\d+) bytes stack frame)");
  const int spills = parse_max_int(log, R"((\d+) bytes spill stores)");
  if (spills > 0) out.local_bytes = std::max(out.local_bytes, spills);
  out.log = std::move(log);
  out.compile_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  log::debug("NVRTC compiled {} for {} in {:.0f} ms ({} registers, {} B smem, {} B local)", program.name,
             program.arch, out.compile_ms, out.registers, out.shared_bytes, out.local_bytes);
  return out;
}

}  // namespace spattn::runtime
