// NVRTC compilation of a rendered kernel, for the codegen tests (no GPU needed).
#pragma once

#include <string>

#include "codegen/kernel_spec.hpp"
#include "runtime/nvrtc.hpp"

namespace spattn::test {

inline runtime::CompiledProgram compile_rendered(const codegen::RenderedKernel& r, const std::string& arch) {
  runtime::Program prog;
  prog.name = r.program_name;
  prog.source = r.source;
  prog.headers = r.headers;
  prog.arch = arch;
  return runtime::compile(prog);
}

}  // namespace spattn::test
