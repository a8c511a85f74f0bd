# protobuf's well-known types for protobuf-c: the library qrpc_wkt
# (libqrpc_wkt.a, exported as qrpc::wkt), holding the protoc-c code of
# google/protobuf/{any,duration,empty,field_mask,struct,timestamp,
# wrappers}.proto, with its headers installed under
# include/qrpc/wkt/google/protobuf/.
#
# protobuf-c ships no code for these types (Debian's libprotobuf-c-dev has
# none), so a .proto importing one would otherwise need its protoc-c output
# made by hand. qrpc and qrpc_static link qrpc_wkt INTERFACE and
# qrpc_generate() links it PUBLIC, so `#include
# "google/protobuf/empty.pb-c.h"` in generated code resolves and links for
# every user of either. It is a static archive (position-independent): a
# program pulls in only the types it uses, and one that compiles a type's
# protoc-c code itself keeps its own copy without a clash.
#
# The .proto files come with protoc (libprotobuf-dev on Debian), in the
# include directory beside it, which protoc also searches by itself.
#
# Included from the top-level CMakeLists.txt before src/, after PROTOC and
# PROTOC_C are found. Sets QRPC_WKT_HEADERS (the generated headers).

set(QRPC_WKT_TYPES any duration empty field_mask struct timestamp wrappers)

get_filename_component(_qrpc_protoc_dir "${PROTOC}" DIRECTORY)
find_path(QRPC_WKT_PROTO_DIR google/protobuf/empty.proto
  HINTS ${_qrpc_protoc_dir}/../include
  DOC "directory holding protobuf's google/protobuf/*.proto")
if(NOT QRPC_WKT_PROTO_DIR)
  message(FATAL_ERROR "protobuf's well-known types (google/protobuf/empty.proto "
    "and others) were not found next to ${PROTOC}; on Debian: apt-get install "
    "libprotobuf-dev, or set QRPC_WKT_PROTO_DIR")
endif()

set(_qrpc_wkt_out ${PROJECT_BINARY_DIR}/wkt)
set(_qrpc_wkt_protos "")
set(_qrpc_wkt_deps "")
set(_qrpc_wkt_sources "")
set(QRPC_WKT_HEADERS "")
foreach(type ${QRPC_WKT_TYPES})
  set(proto google/protobuf/${type}.proto)
  if(NOT EXISTS ${QRPC_WKT_PROTO_DIR}/${proto})
    message(FATAL_ERROR "${QRPC_WKT_PROTO_DIR}/${proto} is missing")
  endif()
  list(APPEND _qrpc_wkt_protos ${proto})
  list(APPEND _qrpc_wkt_deps ${QRPC_WKT_PROTO_DIR}/${proto})
  list(APPEND _qrpc_wkt_sources ${_qrpc_wkt_out}/google/protobuf/${type}.pb-c.c)
  list(APPEND QRPC_WKT_HEADERS ${_qrpc_wkt_out}/google/protobuf/${type}.pb-c.h)
endforeach()

add_custom_command(
  OUTPUT ${_qrpc_wkt_sources} ${QRPC_WKT_HEADERS}
  COMMAND ${CMAKE_COMMAND} -E make_directory ${_qrpc_wkt_out}
  COMMAND ${PROTOC_C} -I${QRPC_WKT_PROTO_DIR} --c_out=${_qrpc_wkt_out}
          ${_qrpc_wkt_protos}
  DEPENDS ${_qrpc_wkt_deps}
  COMMENT "protoc-c: protobuf's well-known types"
  VERBATIM)

add_library(qrpc_wkt STATIC ${_qrpc_wkt_sources} ${QRPC_WKT_HEADERS})
set_target_properties(qrpc_wkt PROPERTIES EXPORT_NAME wkt
  POSITION_INDEPENDENT_CODE ON)
target_include_directories(qrpc_wkt PUBLIC
  $<BUILD_INTERFACE:${_qrpc_wkt_out}>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}/qrpc/wkt>)
target_link_libraries(qrpc_wkt PUBLIC PkgConfig::PROTOBUFC)
