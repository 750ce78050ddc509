# Builds and runs one consumer project (cmake -P). Variables: MODE (installed_package,
# add_subdirectory or single_header), WORK_DIR, TORCHKIT_SOURCE_DIR, TORCHKIT_BINARY_DIR (for
# installed_package), CONSUMER_CXX_COMPILER, CONSUMER_GENERATOR, Torch_DIR, fmt_DIR.
cmake_minimum_required(VERSION 3.25)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
  if(NOT result EQUAL 0)
    string(REPLACE ";" " " command "${ARGN}")
    message(FATAL_ERROR "failed (${result}): ${command}\n${output}")
  endif()
  set(last_output "${output}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(consumer_source "${TORCHKIT_SOURCE_DIR}/tests/consumers/${MODE}")
set(configure_args
  -S "${consumer_source}" -B "${WORK_DIR}/build" -G "${CONSUMER_GENERATOR}"
  -DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER}
  -DCMAKE_BUILD_TYPE=Debug
  -DTORCHKIT_SOURCE_DIR=${TORCHKIT_SOURCE_DIR}
  -DTorch_DIR=${Torch_DIR} -Dfmt_DIR=${fmt_DIR})

if(MODE STREQUAL "installed_package")
  # Install, then move the prefix: the package must be relocatable.
  run(${CMAKE_COMMAND} --install "${TORCHKIT_BINARY_DIR}" --prefix "${WORK_DIR}/prefix")
  file(RENAME "${WORK_DIR}/prefix" "${WORK_DIR}/moved-prefix")
  if(EXISTS "${WORK_DIR}/moved-prefix/lib")
    message(FATAL_ERROR "a header-only package must not install lib/")
  endif()
  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${WORK_DIR}/moved-prefix")
endif()

run(${CMAKE_COMMAND} ${configure_args})
if(MODE STREQUAL "installed_package")
  file(STRINGS "${WORK_DIR}/build/CMakeCache.txt" found_dir REGEX "^torchkit_DIR:")
  if(NOT found_dir MATCHES "moved-prefix/share/torchkit")
    message(FATAL_ERROR "torchkit was not found in the moved prefix: ${found_dir}")
  endif()
endif()
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer")
message(STATUS "consumer (${MODE}) printed:\n${last_output}")
if(NOT last_output MATCHES "torchkit 0\\.1\\.0 ok")
  message(FATAL_ERROR "unexpected consumer output")
endif()
