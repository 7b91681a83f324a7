// NVRTC compilation of a rendered kernel, and the SASS of a CUBIN, for the codegen tests
// (no GPU needed).
#pragma once

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

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

// cuobjdump: $SPATTN_CUOBJDUMP, the toolkit's, the one scripts/setup.sh fetches into the
// build tree when the toolkit has none, or PATH.
inline std::string find_cuobjdump() {
  if (const char* env = std::getenv("SPATTN_CUOBJDUMP"); env && *env) return env;
  const std::filesystem::path in_toolkit = std::filesystem::path(runtime::cuda_home()) / "bin" / "cuobjdump";
  if (std::filesystem::exists(in_toolkit)) return in_toolkit.string();
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(SPATTN_TOOLS_DIR, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec))
    if (it->path().filename() == "cuobjdump") return it->path().string();
  if (std::system("command -v cuobjdump >/dev/null 2>&1") == 0) return "cuobjdump";
  return "";
}

inline std::string sass_of(const std::string& tool, const std::vector<char>& cubin, const std::filesystem::path& dir) {
  const auto file = dir / "kernel.cubin";
  std::ofstream(file, std::ios::binary).write(cubin.data(), static_cast<std::streamsize>(cubin.size()));
  const std::string bin_dir = std::filesystem::path(tool).parent_path().string();
  // cuobjdump runs nvdisasm, which sits beside it.
  const std::string cmd = (bin_dir.empty() ? "" : "PATH=\"" + bin_dir + ":$PATH\" ") + "\"" + tool + "\" -sass \"" +
                          file.string() + "\" 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(cmd.c_str(), "r"), pclose);
  std::string out;
  std::array<char, 4096> buf;
  while (pipe && fgets(buf.data(), buf.size(), pipe.get())) out += buf.data();
  return out;
}

}  // namespace spattn::test
