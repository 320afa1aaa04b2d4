# CUDA policy of spattn. Sets SPATTN_WITH_CUDA to 0 or 1; when 1, the CUDA language is enabled,
# CUDAToolkit is found and the target spattn::cutlass_headers exists.
#
#   SPATTN_CUDA = AUTO (default): build the CUDA part when an NVIDIA GPU is visible and nvcc
#                                 and the CuTe headers are found, else say why and build
#                                 CPU-only (kernels that cannot run here would cost minutes
#                                 of compilation for nothing).
#                 ON:             build it or stop with an error saying what is missing.
#                 OFF:            CPU-only; nvcc is not even looked for.
# The first configure takes its value from the environment variable SPATTN_CUDA when set
# (`SPATTN_CUDA=OFF pip install .`); -DSPATTN_CUDA=... always wins.

# The one place where the CUTLASS version is pinned (mirrored by the `cuda` extra in
# pyproject.toml): the CuTe headers come from this release of the nvidia-cutlass wheel.
set(SPATTN_CUTLASS_VERSION "4.2.0.0" CACHE STRING "nvidia-cutlass release whose CuTe headers are used")

if(DEFINED ENV{SPATTN_CUDA} AND NOT "$ENV{SPATTN_CUDA}" STREQUAL "")
  set(_spattn_cuda_default "$ENV{SPATTN_CUDA}")
else()
  set(_spattn_cuda_default AUTO)
endif()
set(SPATTN_CUDA "${_spattn_cuda_default}" CACHE STRING "Build the CUDA backend: AUTO, ON or OFF")
set_property(CACHE SPATTN_CUDA PROPERTY STRINGS AUTO ON OFF)
string(TOUPPER "${SPATTN_CUDA}" _spattn_cuda_mode)
if(_spattn_cuda_mode STREQUAL "TRUE" OR _spattn_cuda_mode STREQUAL "1" OR _spattn_cuda_mode STREQUAL "YES")
  set(_spattn_cuda_mode ON)
elseif(_spattn_cuda_mode STREQUAL "FALSE" OR _spattn_cuda_mode STREQUAL "0" OR _spattn_cuda_mode STREQUAL "NO")
  set(_spattn_cuda_mode OFF)
endif()
if(NOT _spattn_cuda_mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "spattn: SPATTN_CUDA must be AUTO, ON or OFF, not '${SPATTN_CUDA}'")
endif()

set(SPATTN_CUDA_ARCHS "80;90a" CACHE STRING
    "CUDA architectures to compile for (each gets its own object library); supported: 80, 90a")
option(SPATTN_CUDA_REDUCED "Compile fewer CUDA kernel instantiations (quick compile checks, CI)" OFF)

set(SPATTN_WITH_CUDA 0)

# Stop (ON) or fall back to CPU-only (AUTO) with a message saying why.
macro(_spattn_cuda_unavailable why)
  if(_spattn_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "spattn: SPATTN_CUDA=ON but ${why}\n"
                        "Set SPATTN_CUDA=OFF (or AUTO) for a CPU-only build.")
  else()
    message(WARNING "spattn: building CPU-only (SPATTN_CUDA=AUTO): ${why}")
  endif()
endmacro()

if(NOT _spattn_cuda_mode STREQUAL "OFF")
  foreach(_a IN LISTS SPATTN_CUDA_ARCHS)
    if(NOT _a MATCHES "^(80|90a)$")
      message(FATAL_ERROR "spattn: SPATTN_CUDA_ARCHS entry '${_a}' is not supported; the kernels "
                          "exist for 80 (sm_80, runs on sm_8x) and 90a (sm_90a, Hopper).")
    endif()
  endforeach()

  set(_spattn_gpu_seen TRUE)
  if(_spattn_cuda_mode STREQUAL "AUTO")
    set(_spattn_gpu_seen FALSE)
    file(GLOB _spattn_gpus "/proc/driver/nvidia/gpus/*")
    find_program(SPATTN_NVIDIA_SMI nvidia-smi)
    if(_spattn_gpus)
      set(_spattn_gpu_seen TRUE)
    elseif(SPATTN_NVIDIA_SMI)
      execute_process(COMMAND "${SPATTN_NVIDIA_SMI}" -L RESULT_VARIABLE _rc OUTPUT_VARIABLE _out
                      ERROR_QUIET TIMEOUT 20)
      if(_rc EQUAL 0 AND _out MATCHES "GPU")
        set(_spattn_gpu_seen TRUE)
      endif()
    endif()
  endif()

  include(CheckLanguage)
  if(NOT _spattn_gpu_seen)
    _spattn_cuda_unavailable("no NVIDIA GPU is visible on this machine (nvidia-smi -L); set "
                             "SPATTN_CUDA=ON to compile the CUDA kernels anyway.")
  else()
    check_language(CUDA)
    if(NOT CMAKE_CUDA_COMPILER)
      _spattn_cuda_unavailable("no CUDA compiler (nvcc) was found; put nvcc on PATH or set CUDACXX.")
    else()
      # Architecture flags are given per target (cuda/CMakeLists.txt), never by CMake's default.
      if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
        set(CMAKE_CUDA_ARCHITECTURES OFF)
      endif()
      enable_language(CUDA)
      find_package(CUDAToolkit REQUIRED)
      find_package(CutlassHeaders)
      if(NOT CutlassHeaders_FOUND)
        _spattn_cuda_unavailable("the CuTe/CUTLASS headers (nvidia-cutlass==${SPATTN_CUTLASS_VERSION}) were not found: ${CutlassHeaders_WHY}")
      else()
        set(SPATTN_WITH_CUDA 1)
        set(_spattn_reduced_note "")
        if(SPATTN_CUDA_REDUCED)
          set(_spattn_reduced_note " (reduced instantiations)")
        endif()
        message(STATUS "spattn: CUDA ${CMAKE_CUDA_COMPILER_VERSION} for ${SPATTN_CUDA_ARCHS}"
                       "${_spattn_reduced_note}, CuTe headers from ${CutlassHeaders_SOURCE}: "
                       "${CutlassHeaders_INCLUDE_DIR}")
      endif()
    endif()
  endif()
endif()
