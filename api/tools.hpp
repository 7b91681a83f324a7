// The one internal facade of the `spattn` command (cli/) beyond the public API: what
// its informational and compile/run commands need from the toolchain, the GPU and the
// kernel pipeline, so that they include no engine, runtime or codegen header. Part of
// libspattn, not installed. (The autotune command is the autotuner's own front end and
// uses autotune/ directly.)
#pragma once

#include <spattn/config.hpp>
#include <spattn/layout.hpp>
#include <spattn/pattern.hpp>
#include <spattn/tensor.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

typedef struct CUstream_st* CUstream;

namespace spattn::tools {

struct Toolchain {
  std::string cuda_home;      // the toolkit whose headers NVRTC uses
  std::string nvrtc_version;  // "13.0"
  std::vector<std::string> archs;  // NVRTC targets spattn can compile for
};
Toolchain toolchain();
// Throws kUnsupported naming the supported targets when NVRTC cannot compile for arch.
void check_arch(const std::string& arch);

struct Gpu {
  int ordinal = 0;
  std::string name, arch, driver;
  int cc_major = 0, cc_minor = 0, sms = 0, l2_bytes = 0, smem_per_block_optin = 0;
  size_t memory_bytes = 0;
  double peak_bandwidth = 0;  // bytes/s from the driver's memory clock and bus width; 0 when unknown
};
bool has_gpu();
std::string no_gpu_reason();  // "" when there is a GPU
std::vector<Gpu> gpus();      // empty without a GPU
Gpu current_gpu();            // throws kNoGpu without one
void synchronize();           // the current context

// A 16-bit (or fp32, int32) device tensor, contiguous, of rank 1 to 4 ([B, N, H, D], [B, H, N]...).
class DeviceTensor {
 public:
  DeviceTensor(DType dtype, std::vector<int64_t> shape);
  ~DeviceTensor();
  DeviceTensor(DeviceTensor&&) noexcept;
  DeviceTensor& operator=(DeviceTensor&&) noexcept;
  // Uniform values in [-scale, scale) from a counter hash of seed (fp16/bf16 only).
  void fill_random(uint64_t seed, float scale = 1.0f);
  void fill_bytes(uint8_t value);
  // Copies host values into an fp32 tensor (exactly as many as it has elements).
  void upload(const std::vector<float>& values);
  // Copies host values into an int32 tensor (exactly as many as it has elements).
  void upload_int32(const std::vector<int32_t>& values);
  // The contents of an int32 tensor (synchronous).
  std::vector<int32_t> download_int32() const;
  TensorView view() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A CUDA stream of the current context (non-blocking), made current on any thread with
// make_current() first (the virtual ranks of a loopback ring run one thread each).
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  CUstream get() const { return stream_; }
  void synchronize() const;

 private:
  CUstream stream_ = nullptr;
};
// Makes the current device of the calling thread's process current on this thread.
void make_current(int device);
int current_device();

// CUDA events on the default stream.
class Timer {
 public:
  Timer();
  ~Timer();
  void start();
  float stop_ms();  // waits for the stop event

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One kernel program of a pattern, compiled through the kernel cache.
struct KernelBuild {
  std::string program, key, source, log;
  std::vector<char> cubin;
  bool cache_hit = false, stored = false;
  double ms = 0, nvrtc_ms = 0;
  int registers = -1, local_bytes = -1;
};
struct PatternBuild {
  KernelConfig config;
  std::string config_source;  // "forced", or the heuristic's reason
  LayoutStats stats;
  double layout_ms = 0;
  std::vector<KernelBuild> kernels;  // the pass's kernel, then the support kernels
};
// The forward (or backward; `deterministic`: the deterministic backward's kernels) kernel
// of `pattern` at (nq, heads, head_dim, dtype) for `arch`, with `config` or the
// heuristic's choice for a GPU of that arch (the local one if it is of that arch, else a
// typical one), and the support kernels, compiled through the cache (no GPU needed).
// Throws kUnsupported for a config the target cannot run. `documents`: the program of
// Attention::forward_varlen / forward_padded or of their backward calls (nq is the
// longest document).
PatternBuild compile_pattern(const Pattern& pattern, const std::string& arch, int64_t nq, int64_t heads, int head_dim,
                             DType dtype, const std::optional<KernelConfig>& config,
                             TunePass pass = TunePass::kForward, bool deterministic = false, bool documents = false);

// An output of Attention::forward against the fp32 GPU reference of the same inputs, at
// the autotuner's correctness-gate tolerances (no NaN, LSE -inf exactly where the
// reference has it).
struct Check {
  bool ok = false;
  double rel_l2_err = 0;
  std::string text;
};
Check check_against_reference(const Pattern& pattern, const TensorView& q, const TensorView& k, const TensorView& v,
                              const TensorView& o, const TensorView* lse);

// Tuning databases carried in cache archives (`cache export --tuning`, `cache import`).
// Attachments named "tuning/<fingerprint hash>.json" hold the database files of
// <cache_dir>/tuning. `selector`: "all", "none", or a fingerprint hash (the file name's
// stem) or GPU name; throws kInvalidArgument listing the databases there when a selector
// names none of them.
std::vector<std::pair<std::string, std::string>> tuning_attachments(const std::filesystem::path& cache_dir,
                                                                    const std::string& selector);
struct TuningImport {
  std::string attachment;  // its name in the archive
  std::string gpu;         // the fingerprint, described
  std::string file;        // the database merged into
  size_t added = 0, updated = 0, kept = 0, same = 0;
  std::vector<std::string> conflicts;  // one line each
  std::string error;       // not a usable database (nothing merged)
};
// Merges the tuning databases among `attachments` into <cache_dir>/tuning (the later
// measurement of a bucket wins); other attachments are skipped.
std::vector<TuningImport> import_tuning(const std::filesystem::path& cache_dir,
                                        const std::vector<std::pair<std::string, std::string>>& attachments);

}  // namespace spattn::tools
