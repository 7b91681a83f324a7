# cmake -DBUILD_DIR=... -DWORK_DIR=... -DCONSUMER_SOURCE=... -DGENERATOR=... -DCXX=...
#       [-DMAKE_PROGRAM=...] [-DCUDA_ROOT=...] [-DREADME=README.md]
#       -DLIBDIR=lib -DBINDIR=bin -DINCLUDEDIR=include -P install_check.cmake
# Installs BUILD_DIR into WORK_DIR/prefix, builds the consumer project (and the C++ quick
# start of README, if given) against that prefix alone and runs the consumer. Fails
# (non-zero exit) with the failing step's output.
cmake_minimum_required(VERSION 3.25)

function(step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install check: ${what} failed (${rc}):\n${out}")
  endif()
  message(STATUS "install check: ${what}: ok")
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

set(prefix ${WORK_DIR}/prefix)
set(consumer_build ${WORK_DIR}/consumer-build)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

step("cmake --install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
foreach(f ${INCLUDEDIR}/spattn/spattn.hpp ${INCLUDEDIR}/spattn/spattn.h ${LIBDIR}/libspattn.so
          ${LIBDIR}/cmake/spattn/spattnConfig.cmake ${LIBDIR}/cmake/spattn/spattnConfigVersion.cmake
          ${LIBDIR}/cmake/spattn/spattnTargets.cmake ${BINDIR}/spattn)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "install check: ${f} is missing from the installed tree ${prefix}")
  endif()
endforeach()

set(configure_args -S ${CONSUMER_SOURCE} -B ${consumer_build} -G ${GENERATOR}
  -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release
  -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON -DCMAKE_FIND_PACKAGE_NO_SYSTEM_PACKAGE_REGISTRY=ON)
if(MAKE_PROGRAM)
  list(APPEND configure_args -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
endif()
if(CUDA_ROOT)
  list(APPEND configure_args -DCUDAToolkit_ROOT=${CUDA_ROOT})
endif()
# README's quick start: the ```cpp block after the "<!-- quickstart.cpp" marker.
if(README)
  file(READ ${README} readme)
  string(FIND "${readme}" "<!-- quickstart.cpp" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "install check: no '<!-- quickstart.cpp' marker in ${README}")
  endif()
  string(SUBSTRING "${readme}" ${at} -1 rest)
  string(FIND "${rest}" "```cpp\n" begin)
  if(begin EQUAL -1)
    message(FATAL_ERROR "install check: no ```cpp block after the quick start marker in ${README}")
  endif()
  math(EXPR begin "${begin} + 7")
  string(SUBSTRING "${rest}" ${begin} -1 rest)
  string(FIND "${rest}" "\n```" end)
  string(SUBSTRING "${rest}" 0 ${end} quickstart)
  file(WRITE ${WORK_DIR}/quickstart.cpp "${quickstart}\n")
  list(APPEND configure_args -DSPATTN_QUICKSTART_SOURCE=${WORK_DIR}/quickstart.cpp)
endif()
step("configure the consumer" ${CMAKE_COMMAND} ${configure_args})
# The package must come from the temporary prefix, not from some other installation.
file(STRINGS ${consumer_build}/CMakeCache.txt spattn_dir REGEX "^spattn_DIR:")
string(FIND "${spattn_dir}" "${prefix}/" at)
if(NOT at GREATER -1)
  message(FATAL_ERROR "install check: the consumer found spattn elsewhere (${spattn_dir}), not in ${prefix}")
endif()

step("build the consumer" ${CMAKE_COMMAND} --build ${consumer_build})
step("run the consumer" ${CMAKE_COMMAND} -E env SPATTN_CACHE_DIR=${WORK_DIR}/kernel-cache
  ${consumer_build}/spattn_consumer)
message("${step_output}")

# The installed CLI runs against the installed library, with no help from the environment.
step("installed spattn --version" ${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH ${prefix}/${BINDIR}/spattn --version)
if(NOT step_output MATCHES "[0-9]+\\.[0-9]+\\.[0-9]+")
  message(FATAL_ERROR "install check: the installed spattn --version printed no version:\n${step_output}")
endif()
