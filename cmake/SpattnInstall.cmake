# install() and export of the core, so that find_package(spattn CONFIG) gives spattn::spattn --
# from `cmake --install` and from the installed wheel alike. In the wheel (SKBUILD) the prefix is
# site-packages/spattn/, so the files land in spattn/include, spattn/lib and
# spattn/lib/cmake/spattn (python/spattn/_cmake.py returns that last directory).
include(CMakePackageConfigHelpers)

install(TARGETS spattn
  EXPORT spattnTargets
  ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  INCLUDES DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")

install(DIRECTORY "${PROJECT_SOURCE_DIR}/cpp/include/spattn"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
  FILES_MATCHING PATTERN "*.hpp" PATTERN "*.h")
# The factories of the pattern kinds, collected from their folders (cpp/CMakeLists.txt). The
# private headers (cpp/internal: predicate, tensor internals, test hooks) are not installed.
install(FILES "${PROJECT_BINARY_DIR}/generated/public/spattn/pattern_kinds.hpp"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/spattn")
# Only the backend facts of the CUDA part are public; its kernel headers need CuTe.
install(FILES "${PROJECT_SOURCE_DIR}/cuda/include/spattn/cuda/backend_info.hpp"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/spattn/cuda")

install(EXPORT spattnTargets
  NAMESPACE spattn::
  FILE spattnTargets.cmake
  DESTINATION "${SPATTN_INSTALL_CMAKEDIR}")

if(SPATTN_WITH_CUDA)
  set(_spattn_config_archs "${SPATTN_CUDA_ARCHS}")
else()
  set(_spattn_config_archs "")
endif()
configure_package_config_file(
  "${CMAKE_CURRENT_LIST_DIR}/spattnConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/spattnConfig.cmake"
  INSTALL_DESTINATION "${SPATTN_INSTALL_CMAKEDIR}")
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/spattnConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}"
  COMPATIBILITY SameMinorVersion)
install(FILES
  "${PROJECT_BINARY_DIR}/spattnConfig.cmake"
  "${PROJECT_BINARY_DIR}/spattnConfigVersion.cmake"
  DESTINATION "${SPATTN_INSTALL_CMAKEDIR}")
