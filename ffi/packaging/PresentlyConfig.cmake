# CMake package of libpresently, installed by scripts/install-c-library.
#   find_package(Presently REQUIRED)
#   target_link_libraries(app PRIVATE Presently::presently)         # the shared library
#   target_link_libraries(app PRIVATE Presently::presently_static)  # the static library (plugins)
get_filename_component(_presently_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
include(CMakeFindDependencyMacro)
find_dependency(Threads)

if(NOT TARGET Presently::presently)
  add_library(Presently::presently SHARED IMPORTED)
  set_target_properties(Presently::presently PROPERTIES
    IMPORTED_LOCATION "${_presently_prefix}/lib/${CMAKE_SHARED_LIBRARY_PREFIX}presently${CMAKE_SHARED_LIBRARY_SUFFIX}"
    IMPORTED_IMPLIB "${_presently_prefix}/lib/presently.dll.lib"
    INTERFACE_INCLUDE_DIRECTORIES "${_presently_prefix}/include")

  # What the Rust standard library and the crates need from the system when linked statically.
  if(WIN32)
    set(_presently_system_libs ws2_32 userenv ntdll bcrypt advapi32 kernel32)
  elseif(APPLE)
    set(_presently_system_libs "-framework CoreFoundation" "-framework Security" m)
  else()
    set(_presently_system_libs ${CMAKE_DL_LIBS} m)
  endif()
  add_library(Presently::presently_static STATIC IMPORTED)
  set_target_properties(Presently::presently_static PROPERTIES
    IMPORTED_LOCATION "${_presently_prefix}/lib/${CMAKE_STATIC_LIBRARY_PREFIX}presently${CMAKE_STATIC_LIBRARY_SUFFIX}"
    INTERFACE_INCLUDE_DIRECTORIES "${_presently_prefix}/include"
    INTERFACE_LINK_LIBRARIES "Threads::Threads;${_presently_system_libs}")
endif()
set(Presently_FOUND TRUE)
