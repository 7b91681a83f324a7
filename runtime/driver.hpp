// The CUDA driver API, loaded at run time with dlopen("libcuda.so.1").
//
// Nothing in spattn links libcuda: a host without an NVIDIA driver still runs the CLI,
// NVRTC compilation, the cache and every CPU test. Every entry point is resolved once
// into one table; any GPU call on a driverless host throws ErrorCode::kNoGpu.
#pragma once

#include <cuda.h>

#include <string>

#include "common/check.hpp"

namespace spattn::runtime {

// X-macro of every driver entry point spattn uses. The names go through cuda.h's
// versioning macros (cuMemAlloc -> cuMemAlloc_v2), so the symbol looked up is the
// one the header's prototype describes.
#define SPATTN_DRIVER_FUNCTIONS(X)  \
  X(cuInit)                         \
  X(cuDriverGetVersion)             \
  X(cuGetErrorName)                 \
  X(cuGetErrorString)               \
  X(cuDeviceGetCount)               \
  X(cuDeviceGet)                    \
  X(cuDeviceGetName)                \
  X(cuDeviceGetAttribute)           \
  X(cuDeviceTotalMem)               \
  X(cuDevicePrimaryCtxRetain)       \
  X(cuDevicePrimaryCtxRelease)      \
  X(cuCtxSetCurrent)                \
  X(cuCtxGetCurrent)                \
  X(cuCtxGetDevice)                 \
  X(cuCtxSynchronize)               \
  X(cuModuleLoadDataEx)             \
  X(cuModuleUnload)                 \
  X(cuModuleGetFunction)            \
  X(cuFuncGetAttribute)             \
  X(cuFuncSetAttribute)             \
  X(cuLaunchKernel)                 \
  X(cuMemAlloc)                     \
  X(cuMemFree)                      \
  X(cuMemGetInfo)                   \
  X(cuMemcpyHtoD)                   \
  X(cuMemcpyDtoH)                   \
  X(cuMemcpyDtoD)                   \
  X(cuMemcpyHtoDAsync)              \
  X(cuMemcpyDtoHAsync)              \
  X(cuMemsetD8)                     \
  X(cuMemsetD8Async)                \
  X(cuMemsetD32Async)               \
  X(cuMemAllocHost)                 \
  X(cuMemFreeHost)                  \
  X(cuStreamCreate)                 \
  X(cuStreamDestroy)                \
  X(cuStreamSynchronize)            \
  X(cuStreamWaitEvent)              \
  X(cuMemcpyDtoDAsync)              \
  X(cuEventCreate)                  \
  X(cuEventDestroy)                 \
  X(cuEventRecord)                  \
  X(cuEventSynchronize)             \
  X(cuEventElapsedTime)             \
  X(cuPointerGetAttribute)           \
  X(cuStreamBeginCapture)           \
  X(cuStreamEndCapture)             \
  X(cuStreamIsCapturing)            \
  X(cuGraphInstantiateWithFlags)    \
  X(cuGraphLaunch)                  \
  X(cuGraphExecDestroy)             \
  X(cuGraphDestroy)                 \
  X(cuTensorMapEncodeTiled)

struct DriverApi {
#define SPATTN_DRIVER_FIELD(fn) decltype(&::fn) fn = nullptr;
  SPATTN_DRIVER_FUNCTIONS(SPATTN_DRIVER_FIELD)
#undef SPATTN_DRIVER_FIELD
};

// True when libcuda loads, cuInit succeeds and at least one device is visible.
bool has_gpu();
// Why has_gpu() is false ("" when it is true).
std::string no_gpu_reason();

// The resolved driver table; throws kNoGpu ("no NVIDIA driver found: ...") when the
// driver is missing or has no device.
const DriverApi& driver();

// "CUDA_ERROR_OUT_OF_MEMORY (out of memory)" for a result code.
std::string describe(CUresult result);

[[noreturn]] void throw_cuda_error(CUresult result, const char* statement, const char* file, int line);

}  // namespace spattn::runtime

// Calls a driver entry point through the table and throws kCuda on failure, naming the
// statement and the driver's error text.
#define SPATTN_CU_CHECK(call)                                                            \
  do {                                                                                   \
    const CUresult spattn_cu_result_ = ::spattn::runtime::driver().call;                 \
    if (spattn_cu_result_ != CUDA_SUCCESS)                                               \
      ::spattn::runtime::throw_cuda_error(spattn_cu_result_, #call, __FILE__, __LINE__); \
  } while (0)
