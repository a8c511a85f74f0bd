#!/usr/bin/env bash
# The examples' mutual-TLS flags end to end (run by ctest): each server
# (hello_server, echo_server, game_server) with --client-ca on a free
# loopback port, and its client with the development client certificate
# (--cert/--key: it succeeds, and the server logs the certificate's
# subject), without one (status 1, naming the missing certificate), and
# with --cert alone (status 2, naming the flag); hello_client trusting the
# wrong CA stops at once with the reason. A --client-ca file that
# cannot be read stops a server with a message naming it.
#
# usage: run-mtls.sh EXAMPLES_DIR GEN_CERTS
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 EXAMPLES_DIR GEN_CERTS" >&2
  exit 2
fi
examples=$1
gen_certs=$2

fail() { printf 'examples mTLS test: FAILED: %s\n' "$*" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-examples-mtls.XXXXXX")
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
bash "$gen_certs" "$tmp/certs" >/dev/null
certs=$tmp/certs
subject="CN=qrpc development client,O=qrpc development"
server_tls=(--cert "$certs/server.pem" --key "$certs/server-key.pem")
client_tls=(--ca "$certs/ca.pem" --servername localhost)
client_cert=(--cert "$certs/client.pem" --key "$certs/client-key.pem")

# start_server NAME ARGS...: NAME on a free port requiring client
# certificates; sets server_pid and port.
start_server() {
  local name=$1
  shift
  "$examples/$name" --listen 127.0.0.1:0 "${server_tls[@]}" \
    --client-ca "$certs/ca.pem" "$@" >"$tmp/server.log" 2>&1 &
  server_pid=$!
  port=
  for _ in $(seq 100); do
    port=$(sed -n 's/^READY \([0-9][0-9]*\)$/\1/p' "$tmp/server.log")
    if [ -n "$port" ] || ! kill -0 "$server_pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  [ -n "$port" ] || fail "$name did not report READY: $(cat "$tmp/server.log")"
  grep -q 'client certificates required' "$tmp/server.log" ||
    fail "$name does not say that client certificates are required"
}

stop_server() {
  kill -TERM "$server_pid"
  local status=0
  wait "$server_pid" || status=$?
  server_pid=
  [ "$status" -eq 0 ] || fail "server exit status $status: $(cat "$tmp/server.log")"
}

# run_client WANT_STATUS PATTERN NAME ARGS...: NAME against the server must
# exit WANT_STATUS with PATTERN on its stderr (or anywhere in its output
# when WANT_STATUS is 0).
run_client() {
  local want=$1 pattern=$2 name=$3
  shift 3
  local status=0
  timeout 30 "$examples/$name" --connect "127.0.0.1:$port" "${client_tls[@]}" \
    "$@" >"$tmp/client.out" 2>"$tmp/client.err" || status=$?
  [ "$status" -eq "$want" ] ||
    fail "$name $*: status $status, expected $want: $(cat "$tmp/client.err")"
  grep -q -- "$pattern" "$tmp/client.out" "$tmp/client.err" ||
    fail "$name $*: no '$pattern' in: $(cat "$tmp/client.out" "$tmp/client.err")"
  echo "ok: $name${*:+ $*}: status $status"
}

missing="requires a client certificate: give --cert PEM and --key PEM"
alone="--cert needs --key as well"

echo "== hello"
start_server hello_server
run_client 0 "Hello, mtls" hello_client "${client_cert[@]}" mtls
run_client 1 "$missing" hello_client mtls
run_client 2 "$alone" hello_client --cert "$certs/client.pem"
# A CA that did not sign the server's certificate: the first failed
# handshake ends the client (its connection-state callback), with the
# reason, instead of a retry every backoff until --timeout.
run_client 1 "TLS handshake failed: certificate of localhost not trusted" \
  hello_client --ca "$certs/client.pem" --timeout 20 "${client_cert[@]}" mtls
stop_server
grep -qF "greeted \"mtls\" for client certificate \"$subject\"" \
  "$tmp/server.log" || fail "hello_server did not log the client's subject"

echo "== echo"
start_server echo_server
run_client 0 "result:      OK" echo_client "${client_cert[@]}" --kib 16 \
  --datagrams 2
run_client 1 "$missing" echo_client --kib 16 --datagrams 2
run_client 2 "$alone" echo_client --cert "$certs/client.pem"
stop_server
grep -qF "client certificate \"$subject\"" "$tmp/server.log" ||
  fail "echo_server did not log the client's subject"

echo "== game"
start_server game_server --verbose --bots 5
run_client 0 "total" game_client "${client_cert[@]}" --clients 2 --seconds 1
run_client 1 "$missing" game_client --clients 2 --seconds 1
run_client 2 "$alone" game_client --cert "$certs/client.pem"
stop_server
grep -qF "client certificate \"$subject\"" "$tmp/server.log" ||
  fail "game_server did not log the client's subject"

echo "== a --client-ca that cannot be read"
for name in hello_server echo_server game_server; do
  status=0
  "$examples/$name" --listen 127.0.0.1:0 "${server_tls[@]}" \
    --client-ca "$tmp/none.pem" >"$tmp/server.log" 2>&1 || status=$?
  [ "$status" -ne 0 ] || fail "$name started with a missing --client-ca"
  grep -qF "cannot load --client-ca $tmp/none.pem" "$tmp/server.log" ||
    fail "$name does not name --client-ca: $(cat "$tmp/server.log")"
  echo "ok: $name --client-ca missing: status $status"
done
echo "examples mTLS test: OK"
