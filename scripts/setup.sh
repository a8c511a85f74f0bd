#!/usr/bin/env bash
# Installs everything qrpc needs to build, test and run its examples on
# Debian 12 (bookworm) or newer. Idempotent: a second run changes nothing.
#
# ngtcp2 >= 1.11 ships in bookworm-backports only. The script enables that
# suite by copying the machine's own Debian source entry with the suite name
# changed, so no mirror address is written by this project.
#
# The OpenSSL backend needs OpenSSL >= 3.5 and ngtcp2 >= 1.12 with its
# crypto_ossl helper. When the system lacks them (Debian 12 has OpenSSL
# 3.0), the script builds both from Debian's own source packages into a
# cached prefix outside the build trees; scripts/tls-deps.sh names the
# versions and the place (default $HOME/.cache/qrpc/..., QRPC_DEPS_DIR
# overrides the root). The sources come through apt with a private
# configuration: the machine's own apt sources are not changed for that.
# JOBS sets the parallelism of that build (default: the number of cores).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/tls-deps.sh
. "$here/tls-deps.sh"

NGTCP2_MIN=1.11.0
PACKAGES=(
  build-essential gcc clang libclang-rt-dev cmake make pkg-config git
  libgnutls28-dev libevent-dev
  libprotobuf-c-dev protobuf-c-compiler protobuf-compiler libprotobuf-dev
  libprotoc-dev
  check openssl ca-certificates valgrind procps
  dpkg-dev perl xz-utils libssl-dev
  prometheus
  nats-server libnats-dev curl
)
NGTCP2_PACKAGES=(libngtcp2-dev libngtcp2-crypto-gnutls-dev)

log() { printf 'setup: %s\n' "$*"; }

# The prometheus package is here for promtool, which the metrics tests run
# to check the exposition format. On a machine with systemd its postinst
# starts the Prometheus server (listening on port 9090); stop it and keep
# it from starting at boot. Where services are not started (containers
# whose policy-rc.d forbids it) there is nothing to stop.
quiet_prometheus() {
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    if systemctl is-enabled --quiet prometheus 2>/dev/null ||
       systemctl is-active --quiet prometheus 2>/dev/null; then
      log "stopping and disabling the prometheus service (only promtool is used)"
      "${SUDO[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
  fi
}
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive

have_all() {
  local p
  for p in "${PACKAGES[@]}" "${NGTCP2_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'ok installed' >/dev/null || return 1
  done
  pkg-config --atleast-version="$NGTCP2_MIN" libngtcp2 2>/dev/null
}

have_tls_deps() {
  qrpc_tls_deps_system_ok || qrpc_tls_deps_prefix_ok
}

tls_deps_where() {
  if qrpc_tls_deps_system_ok; then
    echo "the system's OpenSSL $(pkg-config --modversion openssl) and ngtcp2 $(pkg-config --modversion libngtcp2_crypto_ossl)"
  else
    echo "OpenSSL $QRPC_OPENSSL_VERSION and ngtcp2 $QRPC_NGTCP2_VERSION in $(qrpc_tls_deps_prefix)"
  fi
}

packages_ok=0
if have_all; then
  packages_ok=1
  if have_tls_deps; then
    log "all packages present; OpenSSL backend: $(tls_deps_where)"
    exit 0
  fi
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "run as root or install sudo"
  SUDO=(sudo)
fi

[ -r /etc/os-release ] || die "/etc/os-release missing: not a Debian system?"
# shellcheck disable=SC1091
. /etc/os-release
codename=${VERSION_CODENAME:-}
[ -n "$codename" ] || die "cannot tell the Debian release from /etc/os-release"

# derived_sources_deb822 TYPES SUITES: the machine's deb822 source entries
# that name the plain release suite, with Suites: set to SUITES and, unless
# TYPES is empty, Types: set to TYPES. Disabled entries are skipped.
derived_sources_deb822() {
  local types=$1 suites=$2 f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v rel="$codename" -v types="$types" -v suites="$suites" '
      function flush(   i) {
        if (n > 0 && keep && !disabled)
          for (i = 1; i <= n; i++) print line[i]
        if (n > 0 && keep && !disabled) print ""
        n = 0; keep = 0; disabled = 0
      }
      /^[[:space:]]*$/ { flush(); next }
      /^[[:space:]]*#/ { next }
      /^Enabled:[[:space:]]*no/ { disabled = 1 }
      /^Suites:/ {
        k = split($0, w, /[[:space:]]+/)
        for (i = 2; i <= k; i++) if (w[i] == rel) keep = 1
        line[++n] = "Suites: " suites
        next
      }
      /^Types:/ && types != "" { line[++n] = "Types: " types; next }
      { line[++n] = $0 }
      END { flush() }
    ' "$f"
  done
}

# derived_sources_lines TYPE SUITE...: the same for one-line sources
# (sources.list and *.list), one line per SUITE; TYPE replaces "deb" unless
# it is empty.
derived_sources_lines() {
  local type=$1 f
  shift
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v rel="$codename" -v type="$type" -v suites="$*" '
      /^[[:space:]]*deb[[:space:]]/ {
        for (i = 2; i <= NF; i++) {
          if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; continue }
          uri = i; break
        }
        if ($(uri + 1) != rel) next
        if (type != "") $1 = type
        k = split(suites, s, " ")
        for (j = 1; j <= k; j++) { $(uri + 1) = s[j]; print }
      }
    ' "$f"
  done
}

backports_enabled() {
  grep -rqsE "(^|[[:space:]])${codename}-backports([[:space:]]|$)" \
    /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null
}

install_packages() {
  local needs_backports=0 entries lines
  if [ "$codename" = bookworm ]; then
    needs_backports=1
  fi

  if [ "$needs_backports" = 1 ] && ! backports_enabled; then
    entries=$(derived_sources_deb822 "" "${codename}-backports")
    if [ -n "$entries" ]; then
      printf '%s\n' "$entries" | "${SUDO[@]}" tee /etc/apt/sources.list.d/qrpc-backports.sources >/dev/null
      log "enabled ${codename}-backports in /etc/apt/sources.list.d/qrpc-backports.sources"
    else
      lines=$(derived_sources_lines "" "${codename}-backports")
      [ -n "$lines" ] || die "no Debian '$codename' source entry found to derive ${codename}-backports from"
      printf '%s\n' "$lines" | "${SUDO[@]}" tee /etc/apt/sources.list.d/qrpc-backports.list >/dev/null
      log "enabled ${codename}-backports in /etc/apt/sources.list.d/qrpc-backports.list"
    fi
  fi

  log "apt-get update"
  "${SUDO[@]}" apt-get update -q

  log "installing: ${PACKAGES[*]}"
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
  quiet_prometheus

  if [ "$needs_backports" = 1 ]; then
    log "installing from ${codename}-backports: ${NGTCP2_PACKAGES[*]}"
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends \
      -t "${codename}-backports" "${NGTCP2_PACKAGES[@]}"
  else
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${NGTCP2_PACKAGES[@]}"
  fi

  pkg-config --atleast-version="$NGTCP2_MIN" libngtcp2 ||
    die "libngtcp2 >= $NGTCP2_MIN is required; found $(pkg-config --modversion libngtcp2 2>/dev/null || echo none)"
  log "done: ngtcp2 $(pkg-config --modversion libngtcp2), gnutls $(pkg-config --modversion gnutls)"
}

# ---- The OpenSSL backend's private prefix ---------------------------------

work=
stage=
cleanup() {
  # Build files (~360 MB) and a half-installed prefix never outlive the run.
  if [ -n "$work" ]; then rm -rf "$work"; fi
  if [ -n "$stage" ]; then rm -rf "$stage"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

tls_t0=0
# step NAME COMMAND...: runs COMMAND with its output in a log file, and
# prints one line per step with the time it took and the time so far.
step() {
  local name=$1 start=$SECONDS
  shift
  local log="$work/log/${name// /-}.log" rc=0
  printf 'setup: tls deps: %-22s ' "$name..."
  # In the background so that errexit holds inside COMMAND (bash ignores
  # it in a command whose status is tested).
  "$@" >"$log" 2>&1 &
  wait $! || rc=$?
  if [ "$rc" -ne 0 ]; then
    printf 'FAILED after %ss\n' "$((SECONDS - start))"
    tail -n 40 "$log" | sed 's/^/  | /' >&2
    die "tls deps: $name failed (the end of its output is above)"
  fi
  printf '%4ss (elapsed %ss)\n' "$((SECONDS - start))" "$((SECONDS - tls_t0))"
}

# apt with a configuration of its own: only the deb-src entries written
# below, lists and caches in the work directory. The machine's sources,
# lists and package cache are neither read nor changed.
private_apt() {
  local tool=$1
  shift
  "$tool" -q \
    -o Dir::Etc::SourceList=/dev/null \
    -o Dir::Etc::SourceParts="$work/apt/sources.list.d" \
    -o Dir::State::Lists="$work/apt/lists" \
    -o Dir::Cache="$work/apt/cache" \
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= \
    "$@"
}

write_private_sources() {
  local suites entries lines
  suites=$(printf '%s\n' "$QRPC_OPENSSL_DEB_SUITE" "$QRPC_NGTCP2_DEB_SUITE" | sort -u | tr '\n' ' ')
  suites=${suites% }
  mkdir -p "$work/apt/sources.list.d" "$work/apt/lists/partial" "$work/apt/cache"
  entries=$(derived_sources_deb822 deb-src "$suites")
  if [ -n "$entries" ]; then
    printf '%s\n' "$entries" >"$work/apt/sources.list.d/qrpc-src.sources"
  else
    # shellcheck disable=SC2086
    lines=$(derived_sources_lines deb-src $suites)
    [ -n "$lines" ] || die "no Debian '$codename' source entry found to derive the source suites ($suites) from"
    printf '%s\n' "$lines" >"$work/apt/sources.list.d/qrpc-src.list"
  fi
}

# apt checks the archive's signature on the suites' Release files and the
# size and SHA-256 of every file it downloads against the signed Sources
# index. That is the trust anchor: the uploader's signature on the .dsc
# needs the debian-keyring package (large) to check, so dpkg-source warns
# that it cannot; it still checks the files against the .dsc's strong
# checksums.
download_sources() {
  mkdir -p "$work/dl"
  if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then
    # Lets apt download as its unprivileged _apt user.
    chown _apt "$work/dl"
  fi
  (cd "$work/dl" && private_apt apt-get source --download-only \
    "openssl=$QRPC_OPENSSL_DEB_VERSION" "ngtcp2=$QRPC_NGTCP2_DEB_VERSION")
}

explain_missing_sources() {
  log "the source versions scripts/tls-deps.sh names could not be downloaded:"
  log "  openssl $QRPC_OPENSSL_DEB_VERSION ($QRPC_OPENSSL_DEB_SUITE), ngtcp2 $QRPC_NGTCP2_DEB_VERSION ($QRPC_NGTCP2_DEB_SUITE)"
  log "what the suites list now (a listed version can still be missing from the mirror):"
  private_apt apt-cache madison openssl ngtcp2 2>/dev/null | grep Sources | sed 's/^/setup:   /' || true
}

unpack_source() {
  local dsc
  dsc=$(find "$work/dl" -maxdepth 1 -name "${1}_*.dsc" -print -quit)
  [ -n "$dsc" ] || { echo "no .dsc for $1 in $work/dl"; return 1; }
  dpkg-source --require-strong-checksums -x "$dsc" "$work/src/$1"
}

# Static libraries only, compiled as position-independent code so they can
# go into libqrpc.so. OPENSSLDIR is the system's (Debian's /usr/lib/ssl), so
# the private library finds the system's CA certificates and openssl.cnf;
# no-module builds the providers into libcrypto, so nothing is loaded from
# the prefix at run time.
configure_openssl() {
  cd "$work/src/openssl"
  ./Configure --prefix="$prefix" --libdir=lib --openssldir=/usr/lib/ssl \
    no-shared no-module no-apps no-docs no-tests -fPIC
}

build_openssl() { make -C "$work/src/openssl" -j"$njobs"; }
install_openssl() { make -C "$work/src/openssl" install_sw DESTDIR="$stage"; }

configure_ngtcp2() {
  cmake -S "$work/src/ngtcp2" -B "$work/build/ngtcp2" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_INSTALL_LIBDIR=lib \
    -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
    -DENABLE_LIB_ONLY=ON -DBUILD_TESTING=OFF \
    -DENABLE_SHARED_LIB=OFF -DENABLE_STATIC_LIB=ON \
    -DENABLE_OPENSSL=ON -DENABLE_GNUTLS=OFF -DENABLE_BORINGSSL=OFF \
    -DENABLE_PICOTLS=OFF -DENABLE_WOLFSSL=OFF -DENABLE_JEMALLOC=OFF \
    -DOPENSSL_ROOT_DIR="$stage$prefix" -DOPENSSL_USE_STATIC_LIBS=ON
  # The private OpenSSL, not the system's 3.0, must be the one found, with
  # its QUIC TLS API.
  grep -qxF "OPENSSL_INCLUDE_DIR:PATH=$stage$prefix/include" "$work/build/ngtcp2/CMakeCache.txt"
  grep -qx "HAVE_SSL_SET_QUIC_TLS_CBS:INTERNAL=1" "$work/build/ngtcp2/CMakeCache.txt"
}

build_ngtcp2() { cmake --build "$work/build/ngtcp2" -j"$njobs"; }
install_ngtcp2() { DESTDIR="$stage" cmake --install "$work/build/ngtcp2"; }

# Moves the staged prefix into place (same file system: a rename).
move_prefix() {
  rm -rf "$prefix"
  mv "$stage$prefix" "$prefix"
}

# Files present, no shared library, the versions the .pc files state, and
# a program linked against the static libraries that runs and reports them.
check_prefix() {
  local f v pc=("PKG_CONFIG_LIBDIR=$prefix/lib/pkgconfig" PKG_CONFIG_PATH=)
  for f in lib/libssl.a lib/libcrypto.a lib/libngtcp2.a \
           lib/libngtcp2_crypto_ossl.a include/openssl/ssl.h \
           include/ngtcp2/ngtcp2.h include/ngtcp2/ngtcp2_crypto_ossl.h \
           lib/pkgconfig/openssl.pc lib/pkgconfig/libngtcp2.pc \
           lib/pkgconfig/libngtcp2_crypto_ossl.pc; do
    [ -f "$prefix/$f" ] || { echo "missing: $prefix/$f"; return 1; }
  done
  if find "$prefix" -name '*.so*' | grep . >/dev/null; then
    echo "shared libraries in $prefix:"; find "$prefix" -name '*.so*'
    return 1
  fi
  v=$(env "${pc[@]}" pkg-config --modversion openssl)
  [ "$v" = "$QRPC_OPENSSL_VERSION" ] || { echo "openssl.pc says $v"; return 1; }
  for f in libngtcp2 libngtcp2_crypto_ossl; do
    v=$(env "${pc[@]}" pkg-config --modversion "$f")
    [ "$v" = "$QRPC_NGTCP2_VERSION" ] || { echo "$f.pc says $v"; return 1; }
  done
  cat >"$work/check.c" <<'EOF'
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto_ossl.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <stdio.h>

int main(void) {
  SSL_CTX *ctx;
  if (ngtcp2_crypto_ossl_init() != 0) return 1;
  ctx = SSL_CTX_new(TLS_method());
  if (ctx == NULL) return 1;
  SSL_CTX_free(ctx);
  printf("%s %s\n", OpenSSL_version(OPENSSL_VERSION_STRING),
         ngtcp2_version(0)->version_str);
  return 0;
}
EOF
  cc -o "$work/check" "$work/check.c" -I"$prefix/include" -DNGTCP2_STATICLIB \
    "$prefix/lib/libngtcp2_crypto_ossl.a" "$prefix/lib/libngtcp2.a" \
    "$prefix/lib/libssl.a" "$prefix/lib/libcrypto.a" -pthread
  v=$("$work/check")
  echo "check program: $v"
  [ "$v" = "$QRPC_OPENSSL_VERSION $QRPC_NGTCP2_VERSION" ]
}

build_tls_deps() {
  local root lock_fd
  root=$(qrpc_tls_deps_root)
  prefix=$(qrpc_tls_deps_prefix)
  mkdir -p "$root"
  # One build at a time per cache (several work trees may run setup).
  exec {lock_fd}>"$root/.lock"
  if ! flock -n "$lock_fd"; then
    log "tls deps: waiting for another setup that is building in $root"
    flock "$lock_fd"
  fi
  if qrpc_tls_deps_prefix_ok; then
    log "tls deps: built meanwhile in $prefix"
    return 0
  fi
  [ "${ID:-}" = debian ] ||
    die "no OpenSSL >= $QRPC_OPENSSL_MIN with ngtcp2 >= $QRPC_NGTCP2_OSSL_MIN (crypto_ossl) found, and building them from Debian source packages needs Debian; install them, or configure with -DQRPC_TLS=gnutls"

  njobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
  log "tls deps: building OpenSSL $QRPC_OPENSSL_DEB_VERSION ($QRPC_OPENSSL_DEB_SUITE) and ngtcp2 $QRPC_NGTCP2_DEB_VERSION ($QRPC_NGTCP2_DEB_SUITE) from Debian source packages into $prefix, -j$njobs (a few minutes, once)"
  tls_t0=$SECONDS
  work=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-tls-deps.XXXXXX")
  # apt's downloads run as the _apt user when setup runs as root: it must
  # reach the lists and download directories inside.
  chmod 755 "$work"
  stage=$(mktemp -d "$root/.stage.XXXXXX")
  mkdir -p "$work/log" "$work/src" "$work/build"

  write_private_sources
  step "source index" private_apt apt-get update
  if ! (step "download" download_sources); then
    explain_missing_sources
    die "tls deps: download failed; update the versions in scripts/tls-deps.sh"
  fi
  step "unpack openssl" unpack_source openssl
  step "unpack ngtcp2" unpack_source ngtcp2
  rm -rf "$work/dl" "$work/apt"
  step "configure openssl" configure_openssl
  step "build openssl" build_openssl
  step "install openssl" install_openssl
  step "configure ngtcp2" configure_ngtcp2
  step "build ngtcp2" build_ngtcp2
  step "install ngtcp2" install_ngtcp2
  step "move into place" move_prefix
  if ! (step "check prefix" check_prefix); then
    rm -rf "$prefix"
    die "tls deps: the new prefix failed its checks and was removed"
  fi
  qrpc_tls_deps_stamp >"$prefix/$QRPC_TLS_DEPS_STAMP_NAME"
  local disk_build disk_prefix
  disk_build=$(du -sh "$work" | cut -f1)
  disk_prefix=$(du -sh "$prefix" | cut -f1)
  step "remove build files" rm -rf "$work/src" "$work/build" "$stage"
  cleanup
  work=
  stage=
  log "tls deps: done in $((SECONDS - tls_t0))s: $prefix ($disk_prefix; the build used $disk_build, now removed)"
}

if [ "$packages_ok" = 0 ]; then
  install_packages
fi

if qrpc_tls_deps_system_ok; then
  log "OpenSSL backend: $(tls_deps_where)"
elif qrpc_tls_deps_prefix_ok; then
  log "OpenSSL backend: $(tls_deps_where)"
else
  build_tls_deps
fi
