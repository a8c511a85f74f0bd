#!/usr/bin/env bash
# Installs everything qrpc needs to build, test and run its examples on
# Debian 12 (bookworm) or newer. Idempotent: a second run changes nothing.
#
# ngtcp2 >= 1.11 ships in bookworm-backports only. The script enables that
# suite by copying the machine's own Debian source entry with the suite name
# changed, so no mirror address is written by this project.
set -euo pipefail

NGTCP2_MIN=1.11.0
PACKAGES=(
  build-essential gcc clang libclang-rt-dev cmake make pkg-config git
  libgnutls28-dev libevent-dev
  libprotobuf-c-dev protobuf-c-compiler protobuf-compiler libprotobuf-dev
  libprotoc-dev
  check openssl ca-certificates valgrind procps
)
NGTCP2_PACKAGES=(libngtcp2-dev libngtcp2-crypto-gnutls-dev)

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive

have_all() {
  local p
  for p in "${PACKAGES[@]}" "${NGTCP2_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || return 1
  done
  pkg-config --atleast-version="$NGTCP2_MIN" libngtcp2 2>/dev/null
}

if have_all; then
  log "all packages present"
  exit 0
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

# Prints the sources entries that name the plain release suite, rewritten for
# its -backports suite. Handles both deb822 .sources files and one-line lists.
backports_entries() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v rel="$codename" '
      function flush() {
        if (stanza != "" && keep) printf "%s\n", stanza
        stanza = ""; keep = 0
      }
      /^[[:space:]]*$/ { flush(); next }
      /^[[:space:]]*#/ { next }
      /^Suites:/ {
        n = split($0, w, /[[:space:]]+/)
        for (i = 2; i <= n; i++) if (w[i] == rel) keep = 1
        if (keep) { stanza = stanza "Suites: " rel "-backports\n"; next }
      }
      { stanza = stanza $0 "\n" }
      END { flush() }
    ' "$f"
  done
}

backports_lines() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v rel="$codename" '
      /^[[:space:]]*deb[[:space:]]/ {
        for (i = 2; i <= NF; i++) {
          if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; continue }
          uri = i; break
        }
        if ($(uri + 1) == rel) { $(uri + 1) = rel "-backports"; print }
      }
    ' "$f"
  done
}

backports_enabled() {
  grep -rqsE "(^|[[:space:]])${codename}-backports([[:space:]]|$)" \
    /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null
}

needs_backports=0
if [ "$codename" = bookworm ]; then
  needs_backports=1
fi

if [ "$needs_backports" = 1 ] && ! backports_enabled; then
  entries=$(backports_entries)
  if [ -n "$entries" ]; then
    printf '%s\n' "$entries" | "${SUDO[@]}" tee /etc/apt/sources.list.d/qrpc-backports.sources >/dev/null
    log "enabled ${codename}-backports in /etc/apt/sources.list.d/qrpc-backports.sources"
  else
    lines=$(backports_lines)
    [ -n "$lines" ] || die "no Debian '$codename' source entry found to derive ${codename}-backports from"
    printf '%s\n' "$lines" | "${SUDO[@]}" tee /etc/apt/sources.list.d/qrpc-backports.list >/dev/null
    log "enabled ${codename}-backports in /etc/apt/sources.list.d/qrpc-backports.list"
  fi
fi

log "apt-get update"
"${SUDO[@]}" apt-get update -q

log "installing: ${PACKAGES[*]}"
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"

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
