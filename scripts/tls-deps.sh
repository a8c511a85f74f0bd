#!/usr/bin/env bash
# The OpenSSL backend's dependencies: OpenSSL >= 3.5 (the first release with
# a QUIC TLS API) and ngtcp2 >= 1.12 with its crypto_ossl helper.
#
# When the system has neither, scripts/setup.sh builds both from Debian's
# own source packages into a private prefix (static libraries only), and
# CMake links them into libqrpc with their symbols hidden. This file is the
# one place that names the versions and computes that prefix:
#   - setup.sh sources it;
#   - CMake (cmake/QrpcTls.cmake) runs `bash scripts/tls-deps.sh cmake`;
#   - `bash scripts/tls-deps.sh prefix` prints the prefix for people.
#
# The prefix lives outside the build trees, so `make clean` keeps it:
#   ${QRPC_DEPS_DIR:-$HOME/.cache/qrpc}/openssl-<version>-ngtcp2-<version>-r<recipe>
# Set QRPC_DEPS_DIR to keep it elsewhere (the same value for setup and for
# CMake's configure step), or pass -DQRPC_TLS_PREFIX=<dir> to CMake to use a
# prefix built by other means.

# What the OpenSSL backend needs from a system installation.
QRPC_OPENSSL_MIN=3.5.0
QRPC_NGTCP2_OSSL_MIN=1.12.0

# The exact Debian source packages, and the suite each comes from. A suite
# keeps only its current version of a package, so these move now and then:
# when one is gone, setup.sh says which versions the suite holds now; put
# the new one here.
QRPC_OPENSSL_DEB_VERSION=3.5.7-1~deb13u2
QRPC_OPENSSL_DEB_SUITE=trixie
QRPC_NGTCP2_DEB_VERSION=1.24.0-1
QRPC_NGTCP2_DEB_SUITE=sid

# Raise this when setup.sh builds the prefix differently (configure flags),
# so that existing prefixes are rebuilt rather than trusted.
QRPC_TLS_DEPS_RECIPE=1

# Upstream versions: the Debian version without its revision.
QRPC_OPENSSL_VERSION=${QRPC_OPENSSL_DEB_VERSION%-*}
QRPC_NGTCP2_VERSION=${QRPC_NGTCP2_DEB_VERSION%-*}

qrpc_tls_deps_root() {
  printf '%s\n' "${QRPC_DEPS_DIR:-${HOME:?HOME is not set}/.cache/qrpc}"
}

qrpc_tls_deps_prefix() {
  printf '%s/openssl-%s-ngtcp2-%s-r%s\n' "$(qrpc_tls_deps_root)" \
    "$QRPC_OPENSSL_VERSION" "$QRPC_NGTCP2_VERSION" "$QRPC_TLS_DEPS_RECIPE"
}

# The stamp a complete prefix holds; written last, after the prefix passed
# its checks.
QRPC_TLS_DEPS_STAMP_NAME=qrpc-tls-deps.stamp
qrpc_tls_deps_stamp() {
  printf 'recipe %s\nopenssl %s %s\nngtcp2 %s %s\n' "$QRPC_TLS_DEPS_RECIPE" \
    "$QRPC_OPENSSL_DEB_VERSION" "$QRPC_OPENSSL_DEB_SUITE" \
    "$QRPC_NGTCP2_DEB_VERSION" "$QRPC_NGTCP2_DEB_SUITE"
}

# True when the private prefix is complete and built from these versions.
qrpc_tls_deps_prefix_ok() {
  local stamp
  stamp="$(qrpc_tls_deps_prefix)/$QRPC_TLS_DEPS_STAMP_NAME"
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(qrpc_tls_deps_stamp)" ]
}

# True when the system's pkg-config finds a usable OpenSSL and ngtcp2.
qrpc_tls_deps_system_ok() {
  pkg-config --exists "openssl >= $QRPC_OPENSSL_MIN" \
    "libngtcp2 >= $QRPC_NGTCP2_OSSL_MIN" \
    "libngtcp2_crypto_ossl >= $QRPC_NGTCP2_OSSL_MIN" 2>/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case ${1:-} in
    prefix)
      qrpc_tls_deps_prefix
      ;;
    cmake)
      # KEY=VALUE lines for cmake/QrpcTls.cmake.
      ready=0
      if qrpc_tls_deps_prefix_ok; then ready=1; fi
      printf 'QRPC_OPENSSL_MIN=%s\n' "$QRPC_OPENSSL_MIN"
      printf 'QRPC_NGTCP2_OSSL_MIN=%s\n' "$QRPC_NGTCP2_OSSL_MIN"
      printf 'QRPC_OPENSSL_VERSION=%s\n' "$QRPC_OPENSSL_VERSION"
      printf 'QRPC_NGTCP2_VERSION=%s\n' "$QRPC_NGTCP2_VERSION"
      printf 'QRPC_TLS_DEPS_PREFIX=%s\n' "$(qrpc_tls_deps_prefix)"
      printf 'QRPC_TLS_DEPS_READY=%s\n' "$ready"
      ;;
    *)
      echo "usage: $0 prefix|cmake" >&2
      exit 2
      ;;
  esac
fi
