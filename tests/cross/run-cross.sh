#!/usr/bin/env bash
# The cross-backend test: cross_peer servers of one build against
# cross_peer clients of another, both ways, with unary, streaming and
# datagram traffic, without client certificates, with mutual TLS accepted,
# and with mutual TLS refused (no certificate; one from another CA).
#
#   run-cross.sh BUILD_A [BUILD_B]
#
# BUILD_B defaults to BUILD_A, which tests one backend against itself.
# Certificates are made afresh in a temporary directory. Exits non-zero
# when any case did not go as expected.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
peer_a=$1/tests/cross/cross_peer
peer_b=${2:-$1}/tests/cross/cross_peer
for p in "$peer_a" "$peer_b"; do
  [ -x "$p" ] || { echo "run-cross: $p is not built" >&2; exit 2; }
done

tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

bash "$top/scripts/gen-certs.sh" "$tmp/certs" >/dev/null
# A second CA and a client certificate it signed: a server that trusts only
# the first must refuse it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$tmp/other-ca-key.pem" -out "$tmp/other-ca.pem" -days 2 \
  -subj "/CN=another CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$tmp/other-key.pem" -out "$tmp/other.csr" \
  -subj "/CN=stranger" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' >"$tmp/other.ext"
openssl x509 -req -in "$tmp/other.csr" -CA "$tmp/other-ca.pem" \
  -CAkey "$tmp/other-ca-key.pem" -set_serial 7 -days 2 \
  -extfile "$tmp/other.ext" -out "$tmp/other.pem" 2>/dev/null

c=$tmp/certs
client_subject="CN=qrpc development client,O=qrpc development"
failures=0

# case NAME SERVER CLIENT SERVER_ARGS -- CLIENT_ARGS
case_run() {
  local name=$1 server=$2 client=$3
  shift 3
  local sargs=() cargs=()
  while [ "$1" != -- ]; do sargs+=("$1"); shift; done
  shift
  cargs=("$@")
  "$server" serve --cert "$c/server.pem" --key "$c/server-key.pem" \
    --seconds 60 "${sargs[@]}" >"$tmp/server.log" 2>&1 &
  server_pid=$!
  local port=
  for _ in $(seq 100); do
    port=$(sed -n 's/^READY \([0-9][0-9]*\)$/\1/p' "$tmp/server.log")
    [ -n "$port" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  local status=0
  if [ -z "$port" ]; then
    echo "cross: $name: FAILED: the server did not start"
    status=1
  elif ! timeout 60 "$client" call --connect "127.0.0.1:$port" \
      --ca "$c/ca.pem" "${cargs[@]}" >"$tmp/client.log" 2>&1; then
    echo "cross: $name: FAILED"
    status=1
  else
    echo "cross: $name: ok ($(tail -n 1 "$tmp/client.log"))"
  fi
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
  if [ "$status" -ne 0 ]; then
    sed 's/^/  client| /' "$tmp/client.log"
    sed 's/^/  server| /' "$tmp/server.log"
    failures=$((failures + 1))
  fi
}

backend_of() { "$1" backend; }

for dir in ab ba; do
  if [ "$dir" = ab ]; then s=$peer_a; k=$peer_b; else s=$peer_b; k=$peer_a; fi
  label="server $(backend_of "$s"), client $(backend_of "$k")"
  case_run "$label, no client certificate" "$s" "$k" -- --expect-subject -
  case_run "$label, mutual TLS" "$s" "$k" --client-ca "$c/ca.pem" -- \
    --cert "$c/client.pem" --key "$c/client-key.pem" \
    --expect-subject "$client_subject"
  case_run "$label, mutual TLS without a certificate" "$s" "$k" \
    --client-ca "$c/ca.pem" -- --expect-refused
  case_run "$label, mutual TLS with another CA's certificate" "$s" "$k" \
    --client-ca "$c/ca.pem" -- --cert "$tmp/other.pem" \
    --key "$tmp/other-key.pem" --expect-refused
  [ "$peer_a" != "$peer_b" ] || break
done

if [ "$failures" -ne 0 ]; then
  echo "cross: $failures case(s) FAILED"
  exit 1
fi
echo "cross: all cases passed"
