#include "runtime/device.hpp"

#include <algorithm>
#include <mutex>
#include <optional>
#include <vector>

#include "runtime/driver.hpp"

namespace spattn::runtime {

std::string DeviceInfo::arch() const {
  // Hopper's arch-specific target enables wgmma/setmaxnreg; other chips use the plain one.
  if (cc_major == 9 && cc_minor == 0) return "sm_90a";
  return fmt::format("sm_{}{}", cc_major, cc_minor);
}

std::string DeviceInfo::driver_version_string() const {
  return fmt::format("{}.{}", driver_version / 1000, (driver_version % 1000) / 10);
}

int device_count() {
  if (!has_gpu()) return 0;
  int n = 0;
  SPATTN_CU_CHECK(cuDeviceGetCount(&n));
  return n;
}

namespace {

CUdevice device_handle(int ordinal) {
  const int n = device_count();
  if (n == 0) driver();  // throws kNoGpu with the reason
  SPATTN_REQUIRE(ordinal >= 0 && ordinal < n, "device {} does not exist: {} CUDA device(s) visible", ordinal, n);
  CUdevice dev;
  SPATTN_CU_CHECK(cuDeviceGet(&dev, ordinal));
  return dev;
}

int attribute(CUdevice dev, CUdevice_attribute attr) {
  int v = 0;
  SPATTN_CU_CHECK(cuDeviceGetAttribute(&v, attr, dev));
  return v;
}

// An attribute newer drivers may no longer report (0 then), never an error.
int optional_attribute(CUdevice dev, CUdevice_attribute attr) {
  int v = 0;
  return driver().cuDeviceGetAttribute(&v, attr, dev) == CUDA_SUCCESS ? v : 0;
}

}  // namespace

namespace {

DeviceInfo query_device_info(int ordinal);

}  // namespace

DeviceInfo device_info(int ordinal) {
  // Some attribute queries take hundreds of microseconds; device properties do not
  // change while the process runs, so they are read once per device.
  static std::mutex mu;
  static std::vector<std::optional<DeviceInfo>> cached;
  std::lock_guard<std::mutex> lock(mu);
  if (ordinal >= 0 && static_cast<size_t>(ordinal) < cached.size() && cached[ordinal]) return *cached[ordinal];
  DeviceInfo info = query_device_info(ordinal);
  if (cached.size() <= static_cast<size_t>(ordinal)) cached.resize(ordinal + 1);
  cached[ordinal] = info;
  return info;
}

namespace {

DeviceInfo query_device_info(int ordinal) {
  const CUdevice dev = device_handle(ordinal);
  DeviceInfo info;
  info.ordinal = ordinal;
  char name[256] = {};
  SPATTN_CU_CHECK(cuDeviceGetName(name, sizeof(name), dev));
  info.name = name;
  info.cc_major = attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
  info.cc_minor = attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
  info.sm_count = attribute(dev, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
  info.smem_per_block_optin = attribute(dev, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN);
  info.smem_per_sm = attribute(dev, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR);
  info.regs_per_sm = attribute(dev, CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR);
  info.l2_bytes = attribute(dev, CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE);
  info.clock_khz = attribute(dev, CU_DEVICE_ATTRIBUTE_CLOCK_RATE);
  info.memory_clock_khz = optional_attribute(dev, CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE);
  info.memory_bus_bits = optional_attribute(dev, CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH);
  SPATTN_CU_CHECK(cuDeviceTotalMem(&info.total_memory, dev));
  SPATTN_CU_CHECK(cuDriverGetVersion(&info.driver_version));
  return info;
}

}  // namespace

void make_current(int ordinal) {
  static std::mutex mu;
  static std::vector<CUcontext> contexts;
  CUcontext ctx = nullptr;
  CUcontext current = nullptr;
  SPATTN_CU_CHECK(cuCtxGetCurrent(&current));
  {
    std::lock_guard<std::mutex> lock(mu);
    const CUdevice dev = device_handle(ordinal);
    if (contexts.size() <= static_cast<size_t>(ordinal)) contexts.resize(ordinal + 1, nullptr);
    if (!contexts[ordinal]) SPATTN_CU_CHECK(cuDevicePrimaryCtxRetain(&contexts[ordinal], dev));
    ctx = contexts[ordinal];
  }
  if (current != ctx) SPATTN_CU_CHECK(cuCtxSetCurrent(ctx));
}

int current_device() {
  CUcontext current = nullptr;
  SPATTN_CU_CHECK(cuCtxGetCurrent(&current));
  if (!current) {
    make_current(0);
    return 0;
  }
  CUdevice dev;
  SPATTN_CU_CHECK(cuCtxGetDevice(&dev));
  return static_cast<int>(dev);
}

// --- DeviceBuffer -------------------------------------------------------------------

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  current_device();
  if (bytes > 0) SPATTN_CU_CHECK(cuMemAlloc(&ptr_, bytes));
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) driver().cuMemFree(ptr_);  // no throw from a destructor
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept : ptr_(other.ptr_), bytes_(other.bytes_) {
  other.ptr_ = 0;
  other.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (ptr_) driver().cuMemFree(ptr_);
    ptr_ = other.ptr_;
    bytes_ = other.bytes_;
    other.ptr_ = 0;
    other.bytes_ = 0;
  }
  return *this;
}

void DeviceBuffer::upload(const void* host, size_t bytes, size_t offset) {
  SPATTN_REQUIRE(offset + bytes <= bytes_, "upload of {} bytes at {} overruns a {}-byte buffer", bytes, offset, bytes_);
  if (bytes) SPATTN_CU_CHECK(cuMemcpyHtoD(ptr_ + offset, host, bytes));
}

void DeviceBuffer::download(void* host, size_t bytes, size_t offset) const {
  SPATTN_REQUIRE(offset + bytes <= bytes_, "download of {} bytes at {} overruns a {}-byte buffer", bytes, offset, bytes_);
  if (bytes) SPATTN_CU_CHECK(cuMemcpyDtoH(host, ptr_ + offset, bytes));
}

void DeviceBuffer::fill_bytes(uint8_t value) {
  if (bytes_) SPATTN_CU_CHECK(cuMemsetD8(ptr_, value, bytes_));
}

// --- Kernel -------------------------------------------------------------------------

Kernel Kernel::load(const std::vector<char>& cubin, const std::string& name) {
  current_device();
  CUmodule mod = nullptr;
  SPATTN_CU_CHECK(cuModuleLoadDataEx(&mod, cubin.data(), 0, nullptr, nullptr));
  Kernel k;
  k.module_ = std::shared_ptr<CUmod_st>(mod, [](CUmodule m) { driver().cuModuleUnload(m); });
  SPATTN_CU_CHECK(cuModuleGetFunction(&k.function_, mod, name.c_str()));
  k.name_ = name;
  return k;
}

int Kernel::attribute(CUfunction_attribute attr) const {
  int v = 0;
  SPATTN_CU_CHECK(cuFuncGetAttribute(&v, attr, function_));
  return v;
}

void Kernel::set_max_dynamic_shared(int bytes) const {
  SPATTN_CU_CHECK(cuFuncSetAttribute(function_, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes));
}

void Kernel::launch(Dim3 grid, Dim3 block, unsigned shared_bytes, CUstream stream, void** args) const {
  SPATTN_ASSERT(function_ != nullptr);
  SPATTN_CU_CHECK(cuLaunchKernel(function_, grid.x, grid.y, grid.z, block.x, block.y, block.z, shared_bytes,
                                 stream, args, nullptr));
}

// --- Event --------------------------------------------------------------------------

Event::Event() {
  current_device();
  SPATTN_CU_CHECK(cuEventCreate(&event_, CU_EVENT_DEFAULT));
}

Event::~Event() {
  if (event_) driver().cuEventDestroy(event_);
}

void Event::record(CUstream stream) { SPATTN_CU_CHECK(cuEventRecord(event_, stream)); }

void Event::synchronize() { SPATTN_CU_CHECK(cuEventSynchronize(event_)); }

float Event::elapsed_ms_since(const Event& start) const {
  float ms = 0;
  SPATTN_CU_CHECK(cuEventElapsedTime(&ms, start.event_, event_));
  return ms;
}

void synchronize(CUstream stream) {
  if (stream) SPATTN_CU_CHECK(cuStreamSynchronize(stream));
  else SPATTN_CU_CHECK(cuCtxSynchronize());
}

bool encode_tensor_map(void* map128, const void* base, int rank, const uint64_t* dims, const uint64_t* strides,
                       const uint32_t* box) {
  if (rank < 1 || rank > 5 || reinterpret_cast<uintptr_t>(base) % 16 != 0) return false;
  cuuint64_t d[5], st[4];
  cuuint32_t b[5], e[5];
  for (int k = 0; k < rank; ++k) {
    if (dims[k] < 1 || dims[k] > (uint64_t{1} << 32) || box[k] < 1 || box[k] > 256) return false;
    d[k] = dims[k];
    b[k] = box[k];
    e[k] = 1;
  }
  for (int k = 0; k + 1 < rank; ++k) {
    // A dimension of extent 1 is only ever read at coordinate 0: its stride is free.
    const uint64_t s = dims[k + 1] == 1 ? std::max<uint64_t>(16, strides[k] / 16 * 16) : strides[k];
    if (s == 0 || s % 16 != 0 || s >= (uint64_t{1} << 40)) return false;
    st[k] = s;
  }
  const CUresult r = driver().cuTensorMapEncodeTiled(
      static_cast<CUtensorMap*>(map128), CU_TENSOR_MAP_DATA_TYPE_UINT16, static_cast<cuuint32_t>(rank),
      const_cast<void*>(base), d, st, b, e, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

}  // namespace spattn::runtime
