# Installation: libraries, public headers, a pkg-config file and a CMake
# package, so that users can build against an installed qrpc with either
#   find_package(qrpc CONFIG REQUIRED)  ->  qrpc::qrpc, qrpc::qrpc_static
#                                           (and qrpc::wkt, which both link)
# or
#   pkg-config --cflags --libs qrpc
#
# Included from the top-level CMakeLists.txt after the targets exist.

include(CMakePackageConfigHelpers)

set(QRPC_CMAKE_INSTALL_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/qrpc)
set(QRPC_PKGCONFIG_INSTALL_DIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# The shared library exports the public qrpc_* symbols and nothing else.
set(QRPC_VERSION_SCRIPT ${PROJECT_SOURCE_DIR}/src/qrpc.map)
target_link_options(qrpc PRIVATE "LINKER:--version-script=${QRPC_VERSION_SCRIPT}")
set_property(TARGET qrpc APPEND PROPERTY LINK_DEPENDS ${QRPC_VERSION_SCRIPT})

install(TARGETS qrpc qrpc_static qrpc_wkt
  EXPORT qrpcTargets
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/qrpc
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.h")
# The well-known types' protoc-c headers, in a directory of their own that
# qrpc::wkt and qrpc.pc put on the include path: generated code includes
# them as "google/protobuf/NAME.pb-c.h".
install(FILES ${QRPC_WKT_HEADERS}
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/qrpc/wkt/google/protobuf)

# CMake package: the exported targets, a config file that finds the
# dependencies again, and a version file.
install(EXPORT qrpcTargets
  NAMESPACE qrpc::
  DESTINATION ${QRPC_CMAKE_INSTALL_DIR})

configure_package_config_file(
  ${PROJECT_SOURCE_DIR}/cmake/qrpcConfig.cmake.in
  ${PROJECT_BINARY_DIR}/qrpcConfig.cmake
  INSTALL_DESTINATION ${QRPC_CMAKE_INSTALL_DIR})
write_basic_package_version_file(
  ${PROJECT_BINARY_DIR}/qrpcConfigVersion.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/qrpcConfig.cmake
  ${PROJECT_BINARY_DIR}/qrpcConfigVersion.cmake
  DESTINATION ${QRPC_CMAKE_INSTALL_DIR})

# pkg-config file. Paths are written relative to the .pc file's own
# location (${pcfiledir}), so the file stays correct whatever prefix
# `cmake --install --prefix` chooses at install time.
function(qrpc_pc_path var dir)
  if(IS_ABSOLUTE "${dir}")
    set(${var} "${dir}" PARENT_SCOPE)
  else()
    set(${var} "\${prefix}/${dir}" PARENT_SCOPE)
  endif()
endfunction()

if(IS_ABSOLUTE "${QRPC_PKGCONFIG_INSTALL_DIR}")
  set(QRPC_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  # One "/.." per path component of lib/pkgconfig (or lib/<triplet>/pkgconfig).
  string(REGEX REPLACE "[^/]+" ".." _qrpc_pc_up "${QRPC_PKGCONFIG_INSTALL_DIR}")
  set(QRPC_PC_PREFIX "\${pcfiledir}/${_qrpc_pc_up}")
endif()
qrpc_pc_path(QRPC_PC_LIBDIR "${CMAKE_INSTALL_LIBDIR}")
qrpc_pc_path(QRPC_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")

configure_file(${PROJECT_SOURCE_DIR}/cmake/qrpc.pc.in
  ${PROJECT_BINARY_DIR}/qrpc.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/qrpc.pc
  DESTINATION ${QRPC_PKGCONFIG_INSTALL_DIR})

# The code generator: protoc-gen-qrpc in bin/ (exported as the imported
# executable qrpc::protoc-gen-qrpc), qrpc_generate() next to the package
# files (qrpcConfig.cmake includes it), and qrpc's own .proto files
# (qrpc/options.proto, qrpc/broker.proto) in share/qrpc/proto, the import directory
# qrpc_generate() adds.
install(TARGETS protoc-gen-qrpc
  EXPORT qrpcTargets
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${PROJECT_SOURCE_DIR}/cmake/QrpcGenerate.cmake
  DESTINATION ${QRPC_CMAKE_INSTALL_DIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/idl/
  DESTINATION ${CMAKE_INSTALL_DATADIR}/qrpc/proto
  FILES_MATCHING PATTERN "*.proto")

# Programs for users of an installed qrpc (the broker daemon installs
# itself from services/): development certificates (scripts/gen-certs.sh
# as qrpc-certs), the broker's command-line clients and the load generator
# the documentation uses.
install(PROGRAMS ${PROJECT_SOURCE_DIR}/scripts/gen-certs.sh
  DESTINATION ${CMAKE_INSTALL_BINDIR} RENAME qrpc-certs)
install(TARGETS qrpc-pub qrpc-sub qrpc-bench
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
