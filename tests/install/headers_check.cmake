# cmake -DCXX=... -DINCLUDE_DIR=<source>/include -DWORK_DIR=... [-DCUDA_INCLUDE_DIR=...]
#       -P headers_check.cmake
# Every public header must compile on its own, with nothing on the include path but
# the public headers, and include only standard headers and other public headers: an
# installed spattn is include/spattn/* plus libspattn, nothing else. spattn.h must also
# compile as C. With CUDA_INCLUDE_DIR, attention.hpp must coexist with cuda.h (both
# declare CUstream) in either order.
cmake_minimum_required(VERSION 3.25)

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
file(GLOB headers RELATIVE ${INCLUDE_DIR} ${INCLUDE_DIR}/spattn/*.hpp ${INCLUDE_DIR}/spattn/*.h)
if(NOT headers)
  message(FATAL_ERROR "no public headers under ${INCLUDE_DIR}/spattn")
endif()
set(c_headers assert.h limits.h stdbool.h stddef.h stdint.h)  # the C ABI header may use these
set(problems "")

function(try_compile_text name text)  # extra compiler arguments in ARGN
  set(src ${WORK_DIR}/${name})
  file(WRITE ${src} "${text}")
  execute_process(COMMAND ${CXX} ${ARGN} -fsyntax-only -Wall -Wextra -Werror -I${INCLUDE_DIR} ${src}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    set(problems "${problems}\n-- ${name} does not compile:\n${out}" PARENT_SCOPE)
  endif()
endfunction()

foreach(h IN LISTS headers)
  string(MAKE_C_IDENTIFIER ${h} id)
  # 1. Includes: <spattn/...>, a standard C++ header (no directory, no extension), or a
  #    standard C header from the list above.
  file(STRINGS ${INCLUDE_DIR}/${h} lines REGEX "^[ \t]*#[ \t]*include")
  foreach(line IN LISTS lines)
    string(REGEX MATCH "include[ \t]*([<\"][^>\"]*[>\"])" _ "${line}")
    set(inc "${CMAKE_MATCH_1}")
    if(inc MATCHES "^<spattn/[A-Za-z0-9_]+\\.(hpp|h)>$" OR inc MATCHES "^<[a-z_]+>$")
      continue()
    endif()
    string(REGEX REPLACE "^<(.*)>$" "\\1" bare "${inc}")
    if(bare IN_LIST c_headers)
      continue()
    endif()
    set(problems "${problems}\n-- ${h} includes ${inc}: public headers may include only standard and spattn/ headers")
  endforeach()
  # 2. Compiles alone, as the first and only include of a C++20 translation unit.
  try_compile_text(${id}.cpp "#include <${h}>\n" -x c++ -std=c++20)
endforeach()

# 3. The C ABI header is C.
try_compile_text(spattn_h.c "#include <spattn/spattn.h>\nint main(void) { return spattn_version() == 0; }\n" -x c -std=c11)

# 4. attention.hpp next to cuda.h, in both orders.
if(CUDA_INCLUDE_DIR AND EXISTS ${CUDA_INCLUDE_DIR}/cuda.h)
  try_compile_text(cuda_first.cpp "#include <cuda.h>\n#include <spattn/attention.hpp>\n" -x c++ -std=c++20
    -I${CUDA_INCLUDE_DIR})
  try_compile_text(cuda_last.cpp "#include <spattn/attention.hpp>\n#include <cuda.h>\n" -x c++ -std=c++20
    -I${CUDA_INCLUDE_DIR})
endif()

list(LENGTH headers n)
if(problems)
  message(FATAL_ERROR "public header check failed:${problems}")
endif()
message(STATUS "${n} public headers are self-contained")
