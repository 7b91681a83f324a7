// The modules' one error path for CUDA runtime and cuBLASLt calls: a check macro per API
// on one [[noreturn]] thrower that names the call, the file and line, and the library's
// message, as a spattn::Error. A failed device query (no driver, no device) is kNoGpu.
#pragma once

#include <spattn/error.hpp>

#include <cuda_runtime.h>

#include <cstddef>

#include <cublasLt.h>
#include <fmt/format.h>

namespace spattn::modules {

[[noreturn]] void throw_cuda(cudaError_t status, const char* statement, const char* file, int line);
[[noreturn]] void throw_cublas(cublasStatus_t status, const char* statement, const char* file, int line);

#define SPATTN_MODULES_CUDA_CHECK(statement)                                                       \
  do {                                                                                              \
    const cudaError_t spattn_status_ = (statement);                                                 \
    if (spattn_status_ != cudaSuccess) ::spattn::modules::throw_cuda(spattn_status_, #statement, __FILE__, __LINE__); \
  } while (0)

#define SPATTN_MODULES_CUBLAS_CHECK(statement)                                                     \
  do {                                                                                              \
    const cublasStatus_t spattn_status_ = (statement);                                              \
    if (spattn_status_ != CUBLAS_STATUS_SUCCESS)                                                    \
      ::spattn::modules::throw_cublas(spattn_status_, #statement, __FILE__, __LINE__);              \
  } while (0)

// Argument checks: kInvalidArgument with a formatted message.
#define SPATTN_MODULES_REQUIRE(condition, ...)                                                      \
  do {                                                                                              \
    if (!(condition)) throw ::spattn::Error(::spattn::ErrorCode::kInvalidArgument, fmt::format(__VA_ARGS__)); \
  } while (0)

// The CUDA device a module runs on: `requested` if >= 0, else the current one. Throws
// kNoGpu (with the runtime's reason) where there is no usable device.
int resolve_device(int requested);

// Makes `device` current for the guard's lifetime, restoring the caller's device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  int device_ = -1;
};

// Device memory of one allocation; reallocated (without keeping contents) to grow.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // At least `bytes`; on growth the device is synchronised first (work queued on the old
  // allocation may still be running), so growing is for the first calls of a shape.
  void reserve(size_t bytes);
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace spattn::modules
