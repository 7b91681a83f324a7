#include "runtime/driver.hpp"

#include <dlfcn.h>

#include <mutex>

namespace spattn::runtime {
namespace {

struct DriverState {
  DriverApi api;
  bool ok = false;
  std::string reason;
};

const DriverState& state() {
  static const DriverState s = [] {
    DriverState st;
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* err = dlerror();
      st.reason = std::string("no NVIDIA driver found: cannot load libcuda.so.1 (") + (err ? err : "?") +
                  "); install the NVIDIA driver, or run GPU work on a machine that has one";
      return st;
    }
#define SPATTN_STR2(x) #x
#define SPATTN_STR(x) SPATTN_STR2(x)
#define SPATTN_DRIVER_RESOLVE(fn)                                                          \
  st.api.fn = reinterpret_cast<decltype(st.api.fn)>(dlsym(lib, SPATTN_STR(fn)));           \
  if (!st.api.fn) {                                                                        \
    st.reason = "NVIDIA driver too old: libcuda.so.1 lacks " SPATTN_STR(fn) "; update the driver"; \
    return st;                                                                             \
  }
    SPATTN_DRIVER_FUNCTIONS(SPATTN_DRIVER_RESOLVE)
#undef SPATTN_DRIVER_RESOLVE
    if (CUresult r = st.api.cuInit(0); r != CUDA_SUCCESS) {
      const char* name = nullptr;
      st.api.cuGetErrorName(r, &name);
      st.reason = std::string("no NVIDIA driver found: cuInit failed with ") + (name ? name : "?") +
                  " (is a GPU visible to this process? check CUDA_VISIBLE_DEVICES)";
      return st;
    }
    int count = 0;
    if (st.api.cuDeviceGetCount(&count) != CUDA_SUCCESS || count == 0) {
      st.reason = "no NVIDIA driver found: the driver loaded but reports no CUDA device";
      return st;
    }
    st.ok = true;
    return st;
  }();
  return s;
}

}  // namespace

bool has_gpu() { return state().ok; }

std::string no_gpu_reason() { return state().reason; }

const DriverApi& driver() {
  const DriverState& s = state();
  if (!s.ok) SPATTN_FAIL(ErrorCode::kNoGpu, "{}", s.reason);
  return s.api;
}

std::string describe(CUresult result) {
  const char* name = nullptr;
  const char* text = nullptr;
  const DriverState& s = state();
  if (s.api.cuGetErrorName) s.api.cuGetErrorName(result, &name);
  if (s.api.cuGetErrorString) s.api.cuGetErrorString(result, &text);
  return fmt::format("{} ({})", name ? name : fmt::format("CUresult {}", static_cast<int>(result)),
                     text ? text : "no description");
}

[[noreturn]] void throw_cuda_error(CUresult result, const char* statement, const char* file, int line) {
  detail::throw_error(ErrorCode::kCuda, file, line,
                      fmt::format("CUDA driver call failed: {} returned {}", statement, describe(result)));
}

}  // namespace spattn::runtime
