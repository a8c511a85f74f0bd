#!/usr/bin/env bash
# The TLS backends side by side: the same qrpc-bench workloads on a build
# of each backend, interleaved run by run so both see the same machine,
# with the medians and the ratio OpenSSL / GnuTLS.
#
#   bench/backends.sh [-n RUNS] [-d SECONDS] OPENSSL_BUILD GNUTLS_BUILD
#
# Workloads: unary 64 B with 1 and with 128 calls in flight, a bidi stream
# of 1 MiB messages, and connection setup (a full handshake each). The
# server runs on CPU 0, the client on CPU 1. Certificates are made afresh
# and verified by the client. Prints one line per workload.
set -euo pipefail

runs=5
secs=3
while getopts "n:d:" o; do
  case $o in
    n) runs=$OPTARG ;;
    d) secs=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 2 ] || { echo "usage: $0 [-n RUNS] [-d SECONDS] OPENSSL_BUILD GNUTLS_BUILD" >&2; exit 2; }
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
bash "$top/scripts/gen-certs.sh" "$tmp/certs" >/dev/null
c=$tmp/certs

# workload NAME KEY CLIENT_ARGS...
workloads=(
  "unary_1 ops_per_s --mode unary --payload 64 --outstanding 1"
  "unary_128 ops_per_s --mode unary --payload 64 --outstanding 128"
  "stream_1MiB mb_per_s --mode stream --payload 1048576 --outstanding 1"
  "connect conns_per_s --mode connect --conns 1"
)

# one BUILD ARGS...: prints the RESULT line of one client run.
one() {
  local b=$1/bench/qrpc-bench
  shift
  taskset -c 0 "$b" server rpc --port 0 --tls-cert "$c/server.pem" \
    --tls-key "$c/server-key.pem" >"$tmp/server.out" 2>/dev/null &
  local spid=$! port=
  for _ in $(seq 100); do
    port=$(sed -n 's/^PORT \([0-9]*\)$/\1/p' "$tmp/server.out")
    grep -q READY "$tmp/server.out" && [ -n "$port" ] && break
    sleep 0.05
  done
  taskset -c 1 "$b" client rpc --port "$port" --tls-ca "$c/ca.pem" \
    --warmup 1 --duration "$secs" "$@" 2>/dev/null | tail -n 1
  kill -TERM "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
}

value() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

printf '%-12s %-12s %14s %14s %8s\n' workload metric openssl gnutls ratio
for w in "${workloads[@]}"; do
  read -r name key args <<<"$w"
  : >"$tmp/o" && : >"$tmp/g"
  for _ in $(seq "$runs"); do
    # shellcheck disable=SC2086
    one "$1" $args | value "$key" >>"$tmp/o"
    # shellcheck disable=SC2086
    one "$2" $args | value "$key" >>"$tmp/g"
  done
  o=$(median <"$tmp/o")
  g=$(median <"$tmp/g")
  printf '%-12s %-12s %14s %14s %8s   (runs: openssl %s; gnutls %s)\n' \
    "$name" "$key" "$o" "$g" "$(awk -v a="$o" -v b="$g" 'BEGIN {printf "%.2f", b ? a / b : 0}')" \
    "$(tr '\n' ' ' <"$tmp/o")" "$(tr '\n' ' ' <"$tmp/g")"
done
