// Writes the binary seed inputs of the cache harnesses (manifests, entries, archives)
// into the corpus directories: `fuzz_make_seeds tests/fuzz/corpus`. The pattern seeds
// are hand-written JSON. Rerun after a format change (and commit the files).
#include <spattn/cache.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>

#include <unistd.h>

#include "cache/files.hpp"
#include "cache/format.hpp"

namespace fs = std::filesystem;
using namespace spattn;

namespace {

void put(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

KernelManifest manifest(const std::string& name, const std::string& arch, int variant) {
  KernelManifest m;
  m.source = "// seed " + std::to_string(variant) + "\nextern \"C\" __global__ void " + name + "() {}\n";
  if (variant % 2 == 0) m.template_hashes = {{"spattn/forward.cuh", std::string(64, 'a')}, {"spattn/params.cuh", std::string(64, 'b')}};
  m.options = {"--gpu-architecture=" + arch, "-std=c++17", "--include-path=/usr/local/cuda/include"};
  m.arch = arch;
  m.nvrtc_version = "13.0";
  m.spattn_version = SPATTN_VERSION_STRING;
  m.kernel_name = name;
  return m;
}

CompiledKernel kernel(unsigned seed) {
  CompiledKernel k;
  for (unsigned i = 0; i < 48; ++i) k.cubin.push_back(static_cast<char>(seed * 31 + i * 7));
  k.log = seed % 2 ? "ptxas info: seed\n" : "";
  k.lowered_names = {{"fwd<" + std::to_string(seed) + ">", "_Z3fwdv"}};
  k.registers = 96;
  k.shared_bytes = 49152;
  k.local_bytes = 0;
  k.compile_ms = 12.5;
  return k;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: fuzz_make_seeds CORPUS_DIR\n";
    return 2;
  }
  const fs::path root = argv[1];
  for (const char* d : {"manifest", "entry", "archive"}) fs::create_directories(root / d);
  const KernelManifest ms[] = {manifest("spattn_fwd", "sm_90a", 0), manifest("spattn_merge_bf16", "sm_80", 1),
                               manifest("k_2", "sm_100a", 2)};
  for (int k = 0; k < 3; ++k) {
    put(root / "manifest" / ("seed" + std::to_string(k) + ".json"), ms[k].canonical());
    put(root / "entry" / ("seed" + std::to_string(k) + ".spk"), cache::encode_entry(ms[k].canonical(), kernel(k), 1000 + k));
  }
  // Archives through the real export: unsigned, and signed by a throwaway key.
  const fs::path work = fs::temp_directory_path() / ("spattn-seeds-" + std::to_string(::getpid()));
  fs::remove_all(work);
  fs::create_directories(work);
  CacheConfig c;
  c.dir = work / "cache";
  c.max_bytes = 0;
  KernelCache cache(c);
  cache.ensure_writable();
  for (int k = 0; k < 2; ++k) {
    cache::write_atomic(cache.path_for(ms[k].key()), cache::encode_entry(ms[k].canonical(), kernel(k), 5));
  }
  cache.export_archive(root / "archive" / "unsigned.spka");
  generate_signing_key(work / "k.pem", work / "k.pem.pub");
  ExportOptions sign;
  sign.signing_key = work / "k.pem";
  cache.export_archive(root / "archive" / "signed.spka", sign);
  ExportOptions attached;  // a tuning database and another named file beside the kernels
  attached.attachments = {{"tuning/0123456789abcdef.json", "{\"format\": 1, \"entries\": {}}"}, {"notes/x", "y"}};
  cache.export_archive(root / "archive" / "attached.spka", attached);
  ExportOptions none;
  none.filter = [](const CacheEntry&) { return false; };
  cache.export_archive(root / "archive" / "empty.spka", none);
  fs::remove_all(work);
  std::cout << "seeds written to " << root << "\n";
  return 0;
}
