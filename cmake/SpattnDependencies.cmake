# Third-party dependencies. All come from distribution packages (Debian 12 on the
# build host, Ubuntu 24.04 on the GPU host); the code compiles against both sets.
find_package(CUDAToolkit 12.4 REQUIRED)   # NVRTC, cuda.h (types only), cuBLAS
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(OpenSSL REQUIRED COMPONENTS Crypto)
find_package(Threads REQUIRED)
find_package(CLI11 REQUIRED)

# NCCL sits in the toolkit's lib/ on some hosts and in the system library dir on others.
find_library(SPATTN_NCCL_LIBRARY NAMES nccl
  HINTS ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}/lib64 ENV NCCL_HOME
  PATH_SUFFIXES lib lib64)
find_path(SPATTN_NCCL_INCLUDE_DIR NAMES nccl.h
  HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV NCCL_HOME PATH_SUFFIXES include)
if(SPATTN_NCCL_LIBRARY AND SPATTN_NCCL_INCLUDE_DIR)
  set(SPATTN_HAVE_NCCL ON)
  message(STATUS "spattn: NCCL ${SPATTN_NCCL_LIBRARY}")
else()
  set(SPATTN_HAVE_NCCL OFF)
  message(STATUS "spattn: NCCL not found; multi-GPU support disabled")
endif()

# The CUDA include directory is recorded at build time as the default NVRTC include
# root; SPATTN_CUDA_HOME overrides it at run time.
list(GET CUDAToolkit_INCLUDE_DIRS 0 SPATTN_CUDA_INCLUDE_DIR)
get_filename_component(SPATTN_CUDA_HOME_DEFAULT "${SPATTN_CUDA_INCLUDE_DIR}/.." ABSOLUTE)
