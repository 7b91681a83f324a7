#include "modules/cuda_check.hpp"

#include <utility>

namespace spattn::modules {

void throw_cuda(cudaError_t status, const char* statement, const char* file, int line) {
  const bool no_gpu = status == cudaErrorNoDevice || status == cudaErrorInsufficientDriver;
  throw Error(no_gpu ? ErrorCode::kNoGpu : ErrorCode::kCuda,
              fmt::format("{} failed: {} ({}) at {}:{}{}", statement, cudaGetErrorString(status), cudaGetErrorName(status),
                          file, line, no_gpu ? "; the attention modules need an NVIDIA GPU and its driver" : ""));
}

void throw_cublas(cublasStatus_t status, const char* statement, const char* file, int line) {
  throw Error(status == CUBLAS_STATUS_NOT_SUPPORTED ? ErrorCode::kUnsupported : ErrorCode::kCuda,
              fmt::format("{} failed: {} ({}) at {}:{}", statement, cublasLtGetStatusString(status),
                          cublasLtGetStatusName(status), file, line));
}

int resolve_device(int requested) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess)
    throw Error(ErrorCode::kNoGpu, fmt::format("no usable NVIDIA GPU: cudaGetDeviceCount: {} ({}); the attention "
                                               "modules run on the GPU",
                                               cudaGetErrorString(status), cudaGetErrorName(status)));
  if (count == 0) throw Error(ErrorCode::kNoGpu, "no NVIDIA GPU found; the attention modules run on the GPU");
  if (requested >= 0) {
    SPATTN_MODULES_REQUIRE(requested < count, "CUDA device {} does not exist: this host has {} (devices 0 to {})",
                           requested, count, count - 1);
    return requested;
  }
  int current = 0;
  SPATTN_MODULES_CUDA_CHECK(cudaGetDevice(&current));
  return current;
}

DeviceGuard::DeviceGuard(int device) : device_(device) {
  SPATTN_MODULES_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device_) SPATTN_MODULES_CUDA_CHECK(cudaSetDevice(device_));
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0 && previous_ != device_) cudaSetDevice(previous_);  // best effort: destructors do not throw
}

DeviceBuffer::~DeviceBuffer() {
  if (data_) cudaFree(data_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::reserve(size_t bytes) {
  if (bytes <= bytes_) return;
  if (data_) {
    SPATTN_MODULES_CUDA_CHECK(cudaDeviceSynchronize());
    SPATTN_MODULES_CUDA_CHECK(cudaFree(data_));
    data_ = nullptr;
    bytes_ = 0;
  }
  SPATTN_MODULES_CUDA_CHECK(cudaMalloc(&data_, bytes));
  bytes_ = bytes;
}

}  // namespace spattn::modules
