// NVRTC as explicit stages: Program (source + headers) -> compile() -> CompiledProgram
// (CUBIN + log + lowered names). No GPU is needed for any of it: kernels compile for a
// named arch (sm_80, sm_90a, ...) on a host without a driver.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace spattn::runtime {

// "13.0" for the NVRTC this process loaded.
std::string nvrtc_version();

// The CUDA toolkit root used for NVRTC include paths: $SPATTN_CUDA_HOME if set, else the
// toolkit found at build time.
std::string cuda_home();

// Archs NVRTC can target here, e.g. {"sm_80", "sm_86", "sm_89", "sm_90", "sm_90a", ...}.
std::vector<std::string> supported_archs();
// Throws kUnsupported naming the supported archs unless `arch` is one of them.
void check_arch(const std::string& arch);

struct Program {
  std::string name;                                           // e.g. "spattn_fwd_ab12cd.cu"
  std::string source;                                         // the generated translation unit
  std::vector<std::pair<std::string, std::string>> headers;   // in-memory headers: include name -> text
  std::vector<std::string> name_expressions;                  // kernels to lower (templates); extern "C" need none
  std::vector<std::string> options;                           // extra NVRTC options (-D..., -std=c++17...)
  std::string arch;                                           // "sm_90a"
};

struct CompiledProgram {
  std::vector<char> cubin;
  std::string log;                                  // NVRTC log (warnings), may be empty
  std::map<std::string, std::string> lowered_names;  // name expression -> mangled name
  // From ptxas's report, the most over the program's entry points:
  int registers = -1;       // per thread (-1 if unknown)
  int shared_bytes = -1;    // static shared memory per block
  int local_bytes = -1;     // stack frame / spills
  double compile_ms = 0;
};

// The full option list NVRTC will see for this program (arch, include paths, defaults
// plus program.options): part of every cache key.
std::vector<std::string> effective_options(const Program& program);

// Whether this process has run an NVRTC compilation. NVRTC initialises the CUDA
// driver, and a process forked after that cannot use CUDA (the autotuner's workers).
bool nvrtc_has_run();

// Compiles to CUBIN for program.arch. Throws kCompile with the NVRTC log and, for each
// error, the generated source lines around it (with line numbers).
CompiledProgram compile(const Program& program);

}  // namespace spattn::runtime
