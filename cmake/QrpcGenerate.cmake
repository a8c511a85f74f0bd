# qrpc_generate(): typed C stubs for qrpc services from .proto files.
#
#   qrpc_generate(<target> <file.proto>...
#                 [IMPORT_DIRS <dir>...]
#                 [OUT_DIR <dir>])
#
# For every .proto file given, runs protoc with protoc-c (messages:
# NAME.pb-c.h, NAME.pb-c.c) and with protoc-gen-qrpc (services:
# NAME.qrpc.h, NAME.qrpc.c), adds the .c files to <target>, the output
# directory to its include path (PUBLIC) and links it to libprotobuf-c
# (PUBLIC). The target must also link qrpc itself (qrpc::qrpc or
# qrpc::qrpc_static; qrpc or qrpc_static inside qrpc's own build).
#
# - Relative file names are taken from the current source directory. Each
#   file must lie under one of IMPORT_DIRS (default: the current source
#   directory); its name there ("dir/x.proto") is the name imports use and
#   decides where the outputs go (<OUT_DIR>/dir/x.qrpc.h, included as
#   "dir/x.qrpc.h").
# - Files that import each other are given together, in one call or in
#   calls with the same OUT_DIR; a file imported but not given must have
#   its protoc-c output on the include path some other way.
# - qrpc's own options (import "qrpc/options.proto") and protoc's
#   google/protobuf/*.proto are always importable. The protoc-c code of the
#   well-known types (any, duration, empty, field_mask, struct, timestamp,
#   wrappers) is qrpc's library qrpc_wkt (qrpc::wkt when installed), which
#   <target> is linked to PUBLIC, so their headers resolve and link.
# - OUT_DIR defaults to <current binary dir>/<target>_qrpc.
#
# protoc-c gets the files without their services (protoc-gen-qrpc
# --strip-services), since qrpc does not use protoc-c's service code and
# protoc-c 1.4 cannot compile it for some method names; see
# docs/codegen.md.
#
# Variables: QRPC_PROTOC and QRPC_PROTOC_C (the programs, found on PATH),
# QRPC_PROTO_DIR (the directory holding qrpc/options.proto).

# Script mode: the command qrpc_generate() adds to the build runs this file
# with -P and -DQRPC_GENERATE_RUN=1 to do the generation.
if(CMAKE_SCRIPT_MODE_FILE AND QRPC_GENERATE_RUN)
  # Runs one command, stopping the build with its output if it fails.
  function(_qrpc_generate_exec what)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "qrpc_generate: ${what} failed (${rc})")
    endif()
  endfunction()

  foreach(var INCLUDES FILES RELS)
    string(REPLACE "|" ";" ${var} "${${var}}")
  endforeach()
  get_filename_component(work "${DESC}" DIRECTORY)
  file(MAKE_DIRECTORY "${work}")

  # 1. Every file with its imports, as protoc sees them.
  _qrpc_generate_exec("protoc" ${PROTOC} ${INCLUDES} --include_imports
    --descriptor_set_out=${DESC} ${FILES})
  # 2. The build's dependencies: protoc writes them for one file at a time,
  #    so they are collected per file and merged under the one output the
  #    build knows them by.
  set(deps "")
  set(i 0)
  foreach(file ${FILES})
    set(d "${DESC}.${i}.d")
    _qrpc_generate_exec("protoc --dependency_out" ${PROTOC} ${INCLUDES}
      --descriptor_set_out=${DESC}.${i}.tmp --dependency_out=${d} ${file})
    file(READ "${d}" text)
    string(REGEX REPLACE "\\\\\n" " " text "${text}")
    string(REGEX REPLACE "^[^:]*: " "" text "${text}")
    string(REGEX REPLACE "[ \n]+" ";" text "${text}")
    list(APPEND deps ${text})
    file(REMOVE "${d}" "${DESC}.${i}.tmp")
    math(EXPR i "${i} + 1")
  endforeach()
  list(REMOVE_ITEM deps "")
  list(REMOVE_DUPLICATES deps)
  string(REPLACE " " "\\ " target "${DESC}")
  set(lines "${target}:")
  foreach(dep ${deps})
    string(APPEND lines " \\\n  ${dep}")
  endforeach()
  file(WRITE "${DESC}.d" "${lines}\n")
  # 3. Messages: protoc-c on the files without their services.
  _qrpc_generate_exec("protoc-gen-qrpc --strip-services" ${PLUGIN}
    --strip-services ${DESC} ${DESC}.for-protoc-c)
  _qrpc_generate_exec("protoc-c" ${PROTOC_C}
    --descriptor_set_in=${DESC}.for-protoc-c --c_out=${OUT} ${RELS})
  # 4. Services: the plugin.
  _qrpc_generate_exec("protoc-gen-qrpc" ${PROTOC} --descriptor_set_in=${DESC}
    --plugin=protoc-gen-qrpc=${PLUGIN} --qrpc_out=all_files:${OUT} ${RELS})
  return()
endif()

include_guard(GLOBAL)

if(NOT DEFINED QRPC_PROTO_DIR)
  # In qrpc's own source tree; the installed package sets it beforehand.
  set(QRPC_PROTO_DIR "${CMAKE_CURRENT_LIST_DIR}/../idl")
endif()
get_filename_component(QRPC_PROTO_DIR "${QRPC_PROTO_DIR}" ABSOLUTE)

find_program(QRPC_PROTOC NAMES protoc DOC "protoc, the protobuf compiler")
find_program(QRPC_PROTOC_C NAMES protoc-c
  DOC "protoc-c, protobuf-c's code generator")

function(qrpc_generate target)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "OUT_DIR" "IMPORT_DIRS")
  set(files ${arg_UNPARSED_ARGUMENTS})
  if(NOT TARGET ${target})
    message(FATAL_ERROR "qrpc_generate: ${target} is not a target")
  endif()
  if(NOT files)
    message(FATAL_ERROR "qrpc_generate(${target}): no .proto files given")
  endif()
  foreach(prog QRPC_PROTOC QRPC_PROTOC_C)
    if(NOT ${prog})
      message(FATAL_ERROR "qrpc_generate: ${prog} not found (on Debian: "
        "apt-get install protobuf-compiler protobuf-c-compiler)")
    endif()
  endforeach()

  # The plugin: just built in qrpc's own tree, or the installed one.
  if(TARGET protoc-gen-qrpc)
    set(plugin $<TARGET_FILE:protoc-gen-qrpc>)
    set(plugin_dep protoc-gen-qrpc)
  elseif(TARGET qrpc::protoc-gen-qrpc)
    set(plugin $<TARGET_FILE:qrpc::protoc-gen-qrpc>)
    set(plugin_dep qrpc::protoc-gen-qrpc)
  else()
    message(FATAL_ERROR "qrpc_generate: no protoc-gen-qrpc target (call "
      "find_package(qrpc CONFIG) first)")
  endif()

  if(NOT TARGET PkgConfig::PROTOBUFC)
    find_package(PkgConfig REQUIRED)
    pkg_check_modules(PROTOBUFC REQUIRED IMPORTED_TARGET libprotobuf-c>=1.4)
  endif()

  set(import_dirs ${arg_IMPORT_DIRS})
  if(NOT import_dirs)
    set(import_dirs ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  set(abs_import_dirs "")
  set(include_args "")
  foreach(dir ${import_dirs} ${QRPC_PROTO_DIR})
    get_filename_component(dir "${dir}" ABSOLUTE
      BASE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
    list(APPEND abs_import_dirs "${dir}")
    list(APPEND include_args "-I${dir}")
  endforeach()

  set(out ${arg_OUT_DIR})
  if(NOT out)
    set(out ${CMAKE_CURRENT_BINARY_DIR}/${target}_qrpc)
  endif()
  get_filename_component(out "${out}" ABSOLUTE
    BASE_DIR ${CMAKE_CURRENT_BINARY_DIR})

  # Each file's name relative to the import directory holding it.
  set(abs_files "")
  set(rel_files "")
  set(sources "")
  set(headers "")
  foreach(file ${files})
    get_filename_component(abs "${file}" ABSOLUTE
      BASE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
    set(rel "")
    foreach(dir ${abs_import_dirs})
      file(RELATIVE_PATH candidate "${dir}" "${abs}")
      if(NOT candidate MATCHES "^\\.\\./" AND NOT IS_ABSOLUTE "${candidate}")
        set(rel "${candidate}")
        break()
      endif()
    endforeach()
    if(rel STREQUAL "")
      message(FATAL_ERROR "qrpc_generate(${target}): ${abs} is not under "
        "any of IMPORT_DIRS (${abs_import_dirs})")
    endif()
    string(REGEX REPLACE "\\.proto$" "" base "${rel}")
    list(APPEND abs_files "${abs}")
    list(APPEND rel_files "${rel}")
    list(APPEND sources ${out}/${base}.pb-c.c ${out}/${base}.qrpc.c)
    list(APPEND headers ${out}/${base}.pb-c.h ${out}/${base}.qrpc.h)
  endforeach()

  # One set of descriptors per call, named after its files.
  string(MD5 key "${target};${rel_files}")
  string(SUBSTRING "${key}" 0 12 key)
  set(desc ${out}/.qrpc/${key}.desc)
  string(REPLACE ";" "|" includes "${include_args}")
  string(REPLACE ";" "|" abs_list "${abs_files}")
  string(REPLACE ";" "|" rel_list "${rel_files}")
  set(script ${CMAKE_CURRENT_FUNCTION_LIST_FILE})

  add_custom_command(
    OUTPUT ${desc} ${sources} ${headers}
    COMMAND ${CMAKE_COMMAND} -DQRPC_GENERATE_RUN=1
            -DPROTOC=${QRPC_PROTOC} -DPROTOC_C=${QRPC_PROTOC_C}
            -DPLUGIN=${plugin} -DINCLUDES=${includes} -DFILES=${abs_list}
            -DRELS=${rel_list} -DOUT=${out} -DDESC=${desc}
            -P ${script}
    DEPENDS ${abs_files} ${plugin_dep} ${script}
    DEPFILE ${desc}.d
    COMMENT "qrpc_generate(${target}): ${rel_files}"
    VERBATIM)

  target_sources(${target} PRIVATE ${sources} ${headers})
  target_include_directories(${target} PUBLIC $<BUILD_INTERFACE:${out}>)
  target_link_libraries(${target} PUBLIC PkgConfig::PROTOBUFC)
  # The well-known types' protoc-c code, for files that import them.
  if(TARGET qrpc_wkt)
    target_link_libraries(${target} PUBLIC qrpc_wkt)
  elseif(TARGET qrpc::wkt)
    target_link_libraries(${target} PUBLIC qrpc::wkt)
  endif()
endfunction()
