# The TLS backend and the QUIC stack under it: -DQRPC_TLS=gnutls|openssl.
#
# gnutls   GnuTLS >= 3.7.2 with the system's libngtcp2 >= 1.11 and
#          libngtcp2_crypto_gnutls, through pkg-config.
# openssl  OpenSSL >= 3.5 with ngtcp2 >= 1.12 and its crypto_ossl helper:
#          the system's when pkg-config finds them, otherwise the private
#          prefix that scripts/setup.sh builds from Debian source packages
#          (scripts/tls-deps.sh names the versions and computes the path;
#          -DQRPC_TLS_PREFIX=<dir> points at another prefix of the same
#          layout). That prefix holds static libraries only: they go into
#          libqrpc.so with their symbols hidden, so that a program which
#          also links the system's libssl has two OpenSSLs that never see
#          each other, and no private libssl.so is ever loaded.
#
# Included from the top-level CMakeLists.txt after qrpc_flags exists. Sets:
#   QRPC_TLS_BACKEND       gnutls or openssl: QRPC_TLS, or QRPC_TLS_DEFAULT
#                          when that is empty
#   QRPC_TLS_DEPS          imported targets the QUIC and TLS code compiles
#                          and links against (ngtcp2, its crypto helper, the
#                          TLS library)
#   QRPC_TLS_PRIVATE       ON when QRPC_TLS_DEPS are the private prefix's
#                          static libraries: src/ links them PRIVATE and
#                          never hands them to consumers
#   QRPC_TLS_HIDE_OPTIONS  link options that keep the static libraries'
#                          symbols out of a shared library's exports
#   QRPC_TLS_SOURCE        the backend's source file, relative to src/
#   QRPC_TLS_PC_REQUIRES   what qrpc.pc's Requires.private needs for TLS
#   QRPC_TLS_CONFIG_FINDS  the lines qrpcConfig.cmake runs to find the same
# It defines qrpc_tls_bundle() (below), and puts the compile definition
# QRPC_TLS_GNUTLS or QRPC_TLS_OPENSSL on qrpc_flags, which all of the
# project's own code links. PkgConfig::GNUTLS is found by the top-level
# CMakeLists.txt whatever the backend: the tests make certificates with it.

# The backend when -DQRPC_TLS is not given. QRPC_TLS stays empty in the
# cache then, so a change of this default reaches build trees configured
# before it.
set(QRPC_TLS_DEFAULT openssl)
set(QRPC_TLS "" CACHE STRING
  "TLS backend: gnutls or openssl (empty: the default, ${QRPC_TLS_DEFAULT})")
set_property(CACHE QRPC_TLS PROPERTY STRINGS "" gnutls openssl)
if(QRPC_TLS)
  set(QRPC_TLS_BACKEND ${QRPC_TLS})
else()
  set(QRPC_TLS_BACKEND ${QRPC_TLS_DEFAULT})
endif()
message(STATUS "TLS backend: ${QRPC_TLS_BACKEND}")
set(QRPC_TLS_PREFIX "" CACHE PATH
  "Prefix with static OpenSSL >= 3.5 and ngtcp2 >= 1.12 for -DQRPC_TLS=openssl (empty: the system's, else the one scripts/setup.sh builds)")

set(QRPC_TLS_PRIVATE OFF)
set(QRPC_TLS_HIDE_OPTIONS "")

if(QRPC_TLS_BACKEND STREQUAL "gnutls")
  pkg_check_modules(NGTCP2 REQUIRED IMPORTED_TARGET libngtcp2>=1.11)
  pkg_check_modules(NGTCP2_CRYPTO REQUIRED IMPORTED_TARGET libngtcp2_crypto_gnutls>=1.11)
  set(QRPC_TLS_DEPS PkgConfig::NGTCP2_CRYPTO PkgConfig::NGTCP2 PkgConfig::GNUTLS)
  set(QRPC_TLS_PC_REQUIRES
    "libngtcp2 >= 1.11, libngtcp2_crypto_gnutls >= 1.11, gnutls >= 3.7.2, ")
  set(QRPC_TLS_CONFIG_FINDS [[
_qrpc_find_pkg(NGTCP2 libngtcp2>=1.11)
_qrpc_find_pkg(NGTCP2_CRYPTO libngtcp2_crypto_gnutls>=1.11)
_qrpc_find_pkg(GNUTLS gnutls>=3.7.2)]])
  target_compile_definitions(qrpc_flags INTERFACE QRPC_TLS_GNUTLS)

elseif(QRPC_TLS_BACKEND STREQUAL "openssl")
  # Versions and the default prefix, from the file setup.sh uses.
  execute_process(
    COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/../scripts/tls-deps.sh cmake
    OUTPUT_VARIABLE _qrpc_tls_facts
    RESULT_VARIABLE _qrpc_tls_rc)
  if(NOT _qrpc_tls_rc EQUAL 0)
    message(FATAL_ERROR "scripts/tls-deps.sh cmake failed (${_qrpc_tls_rc})")
  endif()
  string(REPLACE "\n" ";" _qrpc_tls_facts "${_qrpc_tls_facts}")
  foreach(_line IN LISTS _qrpc_tls_facts)
    if(_line MATCHES "^(QRPC_[A-Z0-9_]+)=(.*)$")
      set(_qrpc_tls_${CMAKE_MATCH_1} "${CMAKE_MATCH_2}")
    endif()
  endforeach()
  set(_min_ossl ${_qrpc_tls_QRPC_OPENSSL_MIN})
  set(_min_ngtcp2 ${_qrpc_tls_QRPC_NGTCP2_OSSL_MIN})

  if(NOT QRPC_TLS_PREFIX)
    pkg_check_modules(QRPC_OSSL QUIET IMPORTED_TARGET
      openssl>=${_min_ossl} libngtcp2>=${_min_ngtcp2}
      libngtcp2_crypto_ossl>=${_min_ngtcp2})
  endif()

  if(TARGET PkgConfig::QRPC_OSSL)
    message(STATUS "TLS: the system's OpenSSL and ngtcp2 (crypto_ossl)")
    set(QRPC_TLS_DEPS PkgConfig::QRPC_OSSL)
    set(QRPC_TLS_PC_REQUIRES
      "libngtcp2 >= ${_min_ngtcp2}, libngtcp2_crypto_ossl >= ${_min_ngtcp2}, openssl >= ${_min_ossl}, ")
    set(QRPC_TLS_CONFIG_FINDS
      "_qrpc_find_pkg(QRPC_OSSL openssl>=${_min_ossl} libngtcp2>=${_min_ngtcp2} libngtcp2_crypto_ossl>=${_min_ngtcp2})")
  else()
    if(QRPC_TLS_PREFIX)
      set(_prefix "${QRPC_TLS_PREFIX}")
    else()
      set(_prefix "${_qrpc_tls_QRPC_TLS_DEPS_PREFIX}")
      if(NOT _qrpc_tls_QRPC_TLS_DEPS_READY)
        message(FATAL_ERROR
          "TLS backend openssl: no system OpenSSL >= ${_min_ossl} with ngtcp2 >= ${_min_ngtcp2} (crypto_ossl), "
          "and the private prefix ${_prefix} is missing or incomplete. "
          "Run `make setup` (scripts/setup.sh builds it, a few minutes once), "
          "or configure with -DQRPC_TLS=gnutls.")
      endif()
    endif()
    foreach(_lib ssl crypto ngtcp2 ngtcp2_crypto_ossl)
      if(NOT EXISTS "${_prefix}/lib/lib${_lib}.a")
        message(FATAL_ERROR "TLS backend openssl: ${_prefix}/lib/lib${_lib}.a is missing")
      endif()
    endforeach()
    message(STATUS "TLS: private static OpenSSL and ngtcp2 in ${_prefix}")

    # Imported targets with full paths to the archives, so that nothing can
    # pick a shared library or the system's copy instead.
    add_library(QrpcTls::crypto STATIC IMPORTED)
    set_target_properties(QrpcTls::crypto PROPERTIES
      IMPORTED_LOCATION "${_prefix}/lib/libcrypto.a"
      INTERFACE_INCLUDE_DIRECTORIES "${_prefix}/include"
      INTERFACE_LINK_LIBRARIES "Threads::Threads;${CMAKE_DL_LIBS}")
    add_library(QrpcTls::ssl STATIC IMPORTED)
    set_target_properties(QrpcTls::ssl PROPERTIES
      IMPORTED_LOCATION "${_prefix}/lib/libssl.a"
      INTERFACE_LINK_LIBRARIES QrpcTls::crypto)
    add_library(QrpcTls::ngtcp2 STATIC IMPORTED)
    set_target_properties(QrpcTls::ngtcp2 PROPERTIES
      IMPORTED_LOCATION "${_prefix}/lib/libngtcp2.a"
      INTERFACE_INCLUDE_DIRECTORIES "${_prefix}/include"
      INTERFACE_COMPILE_DEFINITIONS NGTCP2_STATICLIB)
    add_library(QrpcTls::ngtcp2_crypto_ossl STATIC IMPORTED)
    set_target_properties(QrpcTls::ngtcp2_crypto_ossl PROPERTIES
      IMPORTED_LOCATION "${_prefix}/lib/libngtcp2_crypto_ossl.a"
      INTERFACE_LINK_LIBRARIES "QrpcTls::ngtcp2;QrpcTls::ssl")

    set(QRPC_TLS_DEPS QrpcTls::ngtcp2_crypto_ossl QrpcTls::ngtcp2
        QrpcTls::ssl QrpcTls::crypto)
    set(QRPC_TLS_PRIVATE ON)
    set(QRPC_TLS_HIDE_OPTIONS
      "LINKER:--exclude-libs,libssl.a:libcrypto.a:libngtcp2.a:libngtcp2_crypto_ossl.a")
    set(QRPC_TLS_PC_REQUIRES "")
    set(QRPC_TLS_CONFIG_FINDS "")
  endif()

  # Prove the libraries link the way the backend will use them, once per
  # set of libraries.
  set(_key "${QRPC_TLS_DEPS}|${_prefix}|${QRPC_OSSL_LIBRARIES}")
  if(NOT QRPC_TLS_CHECKED STREQUAL _key)
    try_compile(_qrpc_tls_links ${PROJECT_BINARY_DIR}/tls-check
      SOURCES ${CMAKE_CURRENT_LIST_DIR}/tls_openssl_check.c
      LINK_LIBRARIES ${QRPC_TLS_DEPS}
      OUTPUT_VARIABLE _qrpc_tls_out)
    if(NOT _qrpc_tls_links)
      message(FATAL_ERROR
        "TLS backend openssl: a program using ngtcp2_crypto_ossl and OpenSSL does not build against ${QRPC_TLS_DEPS}:\n${_qrpc_tls_out}")
    endif()
    set(QRPC_TLS_CHECKED "${_key}" CACHE INTERNAL "TLS libraries proven to link")
  endif()
  target_compile_definitions(qrpc_flags INTERFACE QRPC_TLS_OPENSSL)

else()
  message(FATAL_ERROR "QRPC_TLS must be gnutls or openssl (or empty), not '${QRPC_TLS}'")
endif()

set(QRPC_TLS_SOURCE quic/tls_${QRPC_TLS_BACKEND}.c)

# qrpc_tls_bundle(<output.o> <object library>): one relocatable object
# holding the objects of <object library> and the members of the private
# archives they use, with every defined symbol not named qrpc* made local
# (common symbols too: `ld -d` allocates them first).
# A static libqrpc.a made of it needs no private archive at link time and
# cannot clash with another OpenSSL or ngtcp2 in the program.
function(qrpc_tls_bundle out objs)
  set(archives "")
  foreach(t IN LISTS QRPC_TLS_DEPS)
    get_target_property(loc ${t} IMPORTED_LOCATION)
    list(APPEND archives ${loc})
  endforeach()
  add_custom_command(OUTPUT ${out}
    COMMAND ${CMAKE_LINKER} -r -d -o ${out}.all "$<TARGET_OBJECTS:${objs}>"
      --start-group ${archives} --end-group
    COMMAND ${CMAKE_OBJCOPY} --wildcard --keep-global-symbol=qrpc* ${out}.all ${out}
    COMMAND ${CMAKE_COMMAND} -E rm -f ${out}.all
    DEPENDS ${objs} "$<TARGET_OBJECTS:${objs}>" ${archives}
    COMMENT "Bundling qrpc with its private OpenSSL and ngtcp2"
    COMMAND_EXPAND_LISTS VERBATIM)
endfunction()
