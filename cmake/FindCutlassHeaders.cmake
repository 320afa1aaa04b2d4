# FindCutlassHeaders: the CuTe/CUTLASS C++ headers (header-only), taken from the pinned PyPI
# package nvidia-cutlass (SPATTN_CUTLASS_VERSION, default 4.2.0.0), whose wheel carries them in
# cutlass_library/source/include. No CUTLASS source is copied into this repository.
#
# Looked for, in this order:
#   a. CUTLASS_INCLUDE_DIR, as a CMake variable or an environment variable: any directory with
#      cute/tensor.hpp and cutlass/version.h (a CUTLASS checkout's include/ works too). A version
#      other than the pin is used, with a warning.
#   b. the Python interpreter (Python_EXECUTABLE, else Python3_EXECUTABLE, else found here):
#      importlib.util.find_spec("cutlass_library") -- located, never imported (its imports are
#      heavy) -- when the installed distribution is exactly the pinned version.
#   c. `python -m pip download --no-deps nvidia-cutlass==<pin>` into the build directory and
#      unpack the headers from the wheel with file(ARCHIVE_EXTRACT). Only the headers are used:
#      the wheel's own dependencies (cuda-python, scipy, ...) are never installed.
#      Off with -DSPATTN_CUTLASS_DOWNLOAD=OFF.
#
# Result:
#   CutlassHeaders_FOUND, CutlassHeaders_INCLUDE_DIR, CutlassHeaders_VERSION ("4.2.0"),
#   CutlassHeaders_SOURCE (which of the ways above), CutlassHeaders_WHY (when not found),
#   target spattn::cutlass_headers (INTERFACE IMPORTED, include directory as SYSTEM).

if(NOT DEFINED SPATTN_CUTLASS_VERSION)
  set(SPATTN_CUTLASS_VERSION "4.2.0.0")
endif()
option(SPATTN_CUTLASS_DOWNLOAD "Let CMake fetch the pinned nvidia-cutlass wheel with pip when its headers are not found" ON)

set(CutlassHeaders_FOUND FALSE)
set(CutlassHeaders_WHY "")

# Reads CUTLASS_MAJOR/MINOR/PATCH from <dir>/cutlass/version.h into ${out} ("" if not headers).
function(_cutlass_headers_version dir out)
  set(${out} "" PARENT_SCOPE)
  if(NOT EXISTS "${dir}/cute/tensor.hpp" OR NOT EXISTS "${dir}/cutlass/version.h")
    return()
  endif()
  file(STRINGS "${dir}/cutlass/version.h" _lines REGEX "^#define CUTLASS_(MAJOR|MINOR|PATCH) ")
  set(_v "")
  foreach(_part MAJOR MINOR PATCH)
    set(_n "")
    foreach(_l IN LISTS _lines)
      if(_l MATCHES "^#define CUTLASS_${_part} +([0-9]+)")
        set(_n "${CMAKE_MATCH_1}")
      endif()
    endforeach()
    if(_n STREQUAL "")
      return()
    endif()
    list(APPEND _v "${_n}")
  endforeach()
  list(JOIN _v "." _v)
  set(${out} "${_v}" PARENT_SCOPE)
endfunction()

# The pin "4.2.0.0" names the wheel; the headers say "4.2.0".
string(REGEX MATCH "^[0-9]+\\.[0-9]+\\.[0-9]+" _cutlass_pin_headers "${SPATTN_CUTLASS_VERSION}")

set(_cutlass_dir "")
set(_cutlass_source "")

# a. Explicit directory.
if(NOT CUTLASS_INCLUDE_DIR AND DEFINED ENV{CUTLASS_INCLUDE_DIR} AND NOT "$ENV{CUTLASS_INCLUDE_DIR}" STREQUAL "")
  set(CUTLASS_INCLUDE_DIR "$ENV{CUTLASS_INCLUDE_DIR}")
endif()
if(CUTLASS_INCLUDE_DIR)
  _cutlass_headers_version("${CUTLASS_INCLUDE_DIR}" _v)
  if(_v STREQUAL "")
    # Given explicitly but wrong: say so rather than silently looking elsewhere.
    set(CutlassHeaders_WHY "CUTLASS_INCLUDE_DIR=${CUTLASS_INCLUDE_DIR} has no cute/tensor.hpp and cutlass/version.h")
    if(NOT CutlassHeaders_FIND_QUIETLY)
      message(WARNING "FindCutlassHeaders: ${CutlassHeaders_WHY}")
    endif()
    return()
  endif()
  if(NOT _v STREQUAL _cutlass_pin_headers)
    message(WARNING "FindCutlassHeaders: CUTLASS_INCLUDE_DIR holds CUTLASS ${_v}, spattn is tested "
                    "with ${_cutlass_pin_headers} (nvidia-cutlass==${SPATTN_CUTLASS_VERSION}); using it anyway.")
  endif()
  set(_cutlass_dir "${CUTLASS_INCLUDE_DIR}")
  set(_cutlass_source "CUTLASS_INCLUDE_DIR")
endif()

# b. The Python environment.
set(_cutlass_python "")
if(Python_EXECUTABLE)
  set(_cutlass_python "${Python_EXECUTABLE}")
elseif(Python3_EXECUTABLE)
  set(_cutlass_python "${Python3_EXECUTABLE}")
elseif(NOT _cutlass_dir)
  find_package(Python3 COMPONENTS Interpreter QUIET)
  if(Python3_Interpreter_FOUND)
    set(_cutlass_python "${Python3_EXECUTABLE}")
  endif()
endif()

if(NOT _cutlass_dir AND _cutlass_python)
  execute_process(
    COMMAND "${_cutlass_python}" -c [=[
import importlib.util, importlib.metadata, os, sys
spec = importlib.util.find_spec("cutlass_library")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
try:
    version = importlib.metadata.version("nvidia-cutlass")
except importlib.metadata.PackageNotFoundError:
    version = "unknown"
root = list(spec.submodule_search_locations)[0]
print(version + ";" + os.path.join(root, "source", "include").replace(os.sep, "/"), end="")
]=]
    RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_QUIET)
  if(_rc EQUAL 0)
    list(GET _out 0 _pyver)
    list(GET _out 1 _pydir)
    _cutlass_headers_version("${_pydir}" _v)
    if(_pyver STREQUAL SPATTN_CUTLASS_VERSION AND NOT _v STREQUAL "")
      set(_cutlass_dir "${_pydir}")
      set(_cutlass_source "installed nvidia-cutlass ${_pyver} (${_cutlass_python})")
    elseif(NOT CutlassHeaders_FIND_QUIETLY)
      message(STATUS "FindCutlassHeaders: ignoring installed nvidia-cutlass ${_pyver} "
                     "(want ${SPATTN_CUTLASS_VERSION}) at ${_pydir}")
    endif()
  endif()
endif()

# c. Fetch the pinned wheel with pip and unpack its headers into the build directory.
if(NOT _cutlass_dir AND SPATTN_CUTLASS_DOWNLOAD)
  set(_root "${CMAKE_BINARY_DIR}/_deps/nvidia-cutlass-${SPATTN_CUTLASS_VERSION}")
  set(_inc "${_root}/unpacked/cutlass_library/source/include")
  _cutlass_headers_version("${_inc}" _v)
  if(_v STREQUAL "")
    set(_wheel "")
    file(GLOB _wheel "${_root}/wheel/nvidia_cutlass-${SPATTN_CUTLASS_VERSION}-*.whl")
    if(NOT _wheel)
      # pip itself: the interpreter's; then the same without the PYTHONPATH/PYTHONNOUSERSITE of
      # pip's isolated build environment, which hides the interpreter's own pip (`pip install .`);
      # then a pip on PATH.
      set(_pip_cmds "")
      set(_clean_env "${CMAKE_COMMAND}|-E|env|--unset=PYTHONPATH|--unset=PYTHONNOUSERSITE")
      if(_cutlass_python)
        list(APPEND _pip_cmds "${_cutlass_python}|-m|pip" "${_clean_env}|${_cutlass_python}|-m|pip")
      endif()
      find_program(_cutlass_pip NAMES pip3 pip)
      if(_cutlass_pip)
        list(APPEND _pip_cmds "${_clean_env}|${_cutlass_pip}")
      endif()
      set(_pip_log "")
      foreach(_cmd IN LISTS _pip_cmds)
        string(REPLACE "|" ";" _cmd "${_cmd}")
        if(NOT CutlassHeaders_FIND_QUIETLY)
          string(REPLACE ";" " " _shown "${_cmd}")
          message(STATUS "FindCutlassHeaders: fetching nvidia-cutlass==${SPATTN_CUTLASS_VERSION} (headers only, no dependencies): ${_shown}")
        endif()
        execute_process(
          COMMAND ${_cmd} download --no-deps --only-binary=:all: --disable-pip-version-check
                  --timeout 30 --retries 2
                  "nvidia-cutlass==${SPATTN_CUTLASS_VERSION}" -d "${_root}/wheel"
          RESULT_VARIABLE _rc OUTPUT_VARIABLE _o ERROR_VARIABLE _e)
        file(GLOB _wheel "${_root}/wheel/nvidia_cutlass-${SPATTN_CUTLASS_VERSION}-*.whl")
        if(_rc EQUAL 0 AND _wheel)
          break()
        endif()
        string(REPLACE ";" " " _shown "${_cmd}")
        string(STRIP "${_e}" _e)
        string(APPEND _pip_log "\n  ${_shown}: exit ${_rc}: ${_e}")
        if(NOT _e MATCHES "No module named pip|No module named 'pip'")
          break()  # pip ran and failed (offline, no such release): another pip would too
        endif()
      endforeach()
      if(NOT _wheel)
        set(CutlassHeaders_WHY "could not download nvidia-cutlass==${SPATTN_CUTLASS_VERSION} with pip${_pip_log}")
      endif()
    endif()
    if(_wheel)
      list(GET _wheel 0 _wheel)
      file(REMOVE_RECURSE "${_root}/unpacked")
      file(ARCHIVE_EXTRACT INPUT "${_wheel}" DESTINATION "${_root}/unpacked"
           PATTERNS "cutlass_library/source/include/*")
      _cutlass_headers_version("${_inc}" _v)
      if(_v STREQUAL "")
        set(CutlassHeaders_WHY "${_wheel} holds no cutlass_library/source/include")
      endif()
    endif()
  endif()
  if(NOT _v STREQUAL "")
    set(_cutlass_dir "${_inc}")
    set(_cutlass_source "nvidia-cutlass ${SPATTN_CUTLASS_VERSION} wheel fetched by pip into the build directory")
  endif()
elseif(NOT _cutlass_dir)
  set(CutlassHeaders_WHY "not given (CUTLASS_INCLUDE_DIR), not installed in the Python environment, and SPATTN_CUTLASS_DOWNLOAD is OFF")
endif()

if(_cutlass_dir)
  _cutlass_headers_version("${_cutlass_dir}" CutlassHeaders_VERSION)
  set(CutlassHeaders_INCLUDE_DIR "${_cutlass_dir}")
  set(CutlassHeaders_SOURCE "${_cutlass_source}")
  set(CutlassHeaders_FOUND TRUE)
  if(NOT TARGET spattn::cutlass_headers)
    add_library(spattn::cutlass_headers INTERFACE IMPORTED)
    # SYSTEM (imported targets' includes are): CUTLASS's own warnings are not ours.
    set_target_properties(spattn::cutlass_headers PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${CutlassHeaders_INCLUDE_DIR}")
  endif()
elseif(CutlassHeaders_WHY STREQUAL "")
  set(CutlassHeaders_WHY "no Python interpreter to locate or fetch nvidia-cutlass with; set CUTLASS_INCLUDE_DIR")
endif()

if(CutlassHeaders_FIND_REQUIRED AND NOT CutlassHeaders_FOUND)
  message(FATAL_ERROR "FindCutlassHeaders: ${CutlassHeaders_WHY}")
endif()
