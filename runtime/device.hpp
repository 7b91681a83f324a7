// Devices, contexts, device memory, streams, events, modules and launches over the
// dlopen'ed driver (runtime/driver.hpp). spattn works in each device's primary context,
// the one the CUDA runtime (and PyTorch, cuBLAS) use, so pointers and streams from
// those libraries can be passed in directly.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace spattn::runtime {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int cc_major = 0;
  int cc_minor = 0;
  int sm_count = 0;
  int smem_per_block_optin = 0;  // largest dynamic shared memory a block may opt into
  int smem_per_sm = 0;
  int regs_per_sm = 0;
  int l2_bytes = 0;
  int clock_khz = 0;
  size_t total_memory = 0;
  int driver_version = 0;        // e.g. 13000
  int memory_clock_khz = 0;      // peak memory clock; 0 when the driver does not report it
  int memory_bus_bits = 0;       // global memory bus width; 0 when the driver does not report it

  // The NVRTC target spattn compiles for on this device: "sm_90a" on Hopper (wgmma,
  // setmaxnreg), otherwise "sm_<major><minor>".
  std::string arch() const;
  std::string driver_version_string() const;  // "13.0"
  // Peak DRAM bandwidth in bytes/s from the memory clock and bus width (double data rate),
  // 0 when either is unknown. A datasheet figure, not a measured one.
  double peak_bandwidth() const { return 2.0 * memory_clock_khz * 1e3 * (memory_bus_bits / 8.0); }
};

int device_count();                    // 0 without a driver
DeviceInfo device_info(int ordinal);   // throws kNoGpu / kInvalidArgument
// The device of the context current on this thread; the primary context of device 0
// is made current when none is.
int current_device();
// Makes the primary context of `ordinal` current on the calling thread (retained once
// per process, never released before exit).
void make_current(int ordinal);

// Device memory owned by this object (cuMemAlloc / cuMemFree).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  CUdeviceptr get() const { return ptr_; }
  void* data() const { return reinterpret_cast<void*>(ptr_); }
  size_t size() const { return bytes_; }

  void upload(const void* host, size_t bytes, size_t offset = 0);
  void download(void* host, size_t bytes, size_t offset = 0) const;
  void fill_bytes(uint8_t value);

 private:
  CUdeviceptr ptr_ = 0;
  size_t bytes_ = 0;
};

// A loaded module and one of its kernels. Unloading happens when the last Kernel that
// refers to the module dies.
class Kernel {
 public:
  Kernel() = default;
  // Loads `cubin` into the current context; throws kCuda if the driver rejects it.
  static Kernel load(const std::vector<char>& cubin, const std::string& name);

  CUfunction function() const { return function_; }
  const std::string& name() const { return name_; }
  explicit operator bool() const { return function_ != nullptr; }

  int attribute(CUfunction_attribute attr) const;
  // Allows `bytes` of dynamic shared memory per block (needed above 48 KiB).
  void set_max_dynamic_shared(int bytes) const;
  void launch(Dim3 grid, Dim3 block, unsigned shared_bytes, CUstream stream, void** args) const;

 private:
  std::shared_ptr<CUmod_st> module_;
  CUfunction function_ = nullptr;
  std::string name_;
};

// Device events for timing.
class Event {
 public:
  Event();
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(CUstream stream = nullptr);
  void synchronize();
  float elapsed_ms_since(const Event& start) const;
  CUevent get() const { return event_; }

 private:
  CUevent event_ = nullptr;
};

void synchronize(CUstream stream = nullptr);

// A TMA tensor map of a 16-bit tensor of rank <= 5 (dims innermost first, strides in
// bytes of dims 1..rank-1), read in boxes of `box` elements with 128-byte swizzle, out-
// of-bounds elements read as zeros. Returns false (leaving `map` unspecified) when the
// tensor cannot be described by one (strides not multiples of 16 bytes or beyond 2^40,
// misaligned address) or the driver refuses it; callers then fall back to plain loads.
bool encode_tensor_map(void* map128, const void* base, int rank, const uint64_t* dims, const uint64_t* strides,
                       const uint32_t* box);

}  // namespace spattn::runtime
