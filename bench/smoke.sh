#!/usr/bin/env bash
# bench_smoke (run by ctest): every qrpc-bench server and client workload
# for about a second each on 127.0.0.1. Fails when a client exits non-zero,
# does not end with a RESULT line, reports errors, or measures no
# throughput; or when a server does not stop cleanly on SIGTERM with its
# own RESULT line. The connect workloads must resume (connect, and
# connect-0rtt with its calls in 0-RTT) or not (connect-full). Mutual TLS
# once: server rpc with --tls-client-ca, a client with --tls-cert and
# --tls-key measures, one without gets only errors that name the refused
# certificate.
#
# usage: smoke.sh QRPC_BENCH QRPC_BROKER GEN_CERTS
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 QRPC_BENCH QRPC_BROKER GEN_CERTS" >&2
  exit 2
fi
bench=$1
broker=$2
gen_certs=$3
# Each client gets this long before it is killed.
client_timeout=30

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-bench-smoke.XXXXXX")
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  printf 'bench_smoke: FAILED: %s\n' "$*" >&2
  exit 1
}

# start_server FAMILY [FLAG...]: starts it on a free port; sets port.
start_server() {
  local family=$1
  shift
  # Emptied first: the background job opens the file on its own time, and
  # the previous server's READY must not be taken for this one's.
  : >"$tmp/server.out"
  "$bench" server "$family" --host 127.0.0.1 --port 0 "$@" \
    >"$tmp/server.out" 2>"$tmp/server.err" &
  server_pid=$!
  port=
  for _ in $(seq 100); do
    if grep -qx READY "$tmp/server.out"; then
      port=$(sed -n 's/^PORT \([0-9][0-9]*\)$/\1/p' "$tmp/server.out")
      break
    fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$port" ]; then
    cat "$tmp/server.err" >&2
    fail "server $family did not print PORT and READY"
  fi
  echo "== server $family on 127.0.0.1:$port"
}

# stop_server: SIGTERM; the server must exit 0 with a RESULT line.
stop_server() {
  kill -TERM "$server_pid"
  local status=0
  for _ in $(seq 100); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  wait "$server_pid" || status=$?
  server_pid=
  sed 's/^/  server: /' "$tmp/server.err" "$tmp/server.out"
  [ "$status" -eq 0 ] || fail "the server exited with $status after SIGTERM"
  grep -q '^RESULT ' "$tmp/server.out" || fail "no RESULT line from the server"
}

# value KEY: KEY's value in the client's RESULT line.
value() {
  tail -n 1 "$tmp/client.out" | tr ' ' '\n' | sed -n "s/^$1=//p"
}

# run_client NAME FAMILY [FLAG...]: runs it for about a second and checks
# it ended with RESULT and JSON.
run_client() {
  local name=$1 family=$2
  shift 2
  echo "== $name: client $family $*"
  local status=0
  timeout -s KILL "$client_timeout" "$bench" client "$family" \
    --host 127.0.0.1 --port "$port" --warmup 0.2 --duration 1 --json "$@" \
    >"$tmp/client.out" 2>"$tmp/client.err" || status=$?
  sed 's/^/  /' "$tmp/client.err" "$tmp/client.out"
  [ "$status" -eq 0 ] || fail "$name: the client exited with $status"
  tail -n 1 "$tmp/client.out" | grep '^RESULT ' >/dev/null ||
    fail "$name: the last line is not RESULT"
  [ "$(grep -c '^{.*}$' "$tmp/client.out")" -eq 1 ] ||
    fail "$name: expected one JSON line"
}

# positive NAME KEY: KEY is a number above zero.
positive() {
  local v
  v=$(value "$2")
  awk -v v="$v" 'BEGIN { exit !(v ~ /^[0-9]+(\.[0-9]+)?$/ && v + 0 > 0) }' ||
    fail "$1: $2 is '$v', expected a number above 0"
}

# zero NAME KEY: KEY is 0 (or 0.0 and the like).
zero() {
  local v
  v=$(value "$2")
  awk -v v="$v" 'BEGIN { exit !(v ~ /^0+(\.0+)?$/) }' ||
    fail "$1: $2 is '$v', expected 0"
}

start_server rpc
run_client unary-1 rpc --mode unary --payload 64 --conns 1 --outstanding 1
positive unary-1 ops_per_s && positive unary-1 p50_us && zero unary-1 errors
run_client unary-128 rpc --mode unary --payload 64 --conns 1 --outstanding 128
positive unary-128 ops_per_s && zero unary-128 errors
run_client unary-10x10 rpc --mode unary --payload 64 --conns 10 \
  --outstanding 10
positive unary-10x10 ops_per_s && zero unary-10x10 errors
run_client stream-1m rpc --mode stream --payload 1048576 --conns 1 \
  --outstanding 1
positive stream-1m mb_per_s && positive stream-1m msgs_per_s &&
  zero stream-1m errors
run_client stream-64k rpc --mode stream --payload 65536 --conns 1 \
  --outstanding 1
positive stream-64k mb_per_s && zero stream-64k errors
run_client connect rpc --mode connect --payload 64
positive connect conns_per_s && positive connect p50_us &&
  zero connect errors && positive connect resumed_pct &&
  positive connect cpu_us_per_conn
run_client connect-full rpc --mode connect --payload 64 --handshake full
positive connect-full conns_per_s && zero connect-full errors &&
  zero connect-full resumed_pct
run_client connect-0rtt rpc --mode connect --payload 64 --handshake 0rtt
positive connect-0rtt conns_per_s && zero connect-0rtt errors &&
  positive connect-0rtt resumed_pct && positive connect-0rtt early_pct
run_client idle idle --conns 50 --server-pid "$server_pid"
[ "$(value conns)" = 50 ] || fail "idle: conns is '$(value conns)', expected 50"
positive idle server_rss_kb
stop_server

start_server game --tick-hz 60
run_client game-60 game --clients 10 --size 100 --hz 60
positive game-60 recv_per_s && positive game-60 sent_per_s &&
  positive game-60 down_p50_us && positive game-60 up_p50_us
run_client game-flood game --clients 10 --size 100 --hz 0
positive game-flood sent_per_s
stop_server
grep -q '^RESULT server_recv_per_s=[0-9]' "$tmp/server.out" ||
  fail "game server: no server_recv_per_s"

# The world workload: snapshots with deltas, every state checked.
start_server game --tick-hz 60 --entities 300 --entity-bytes 24 --delta --workers 2
run_client world game --clients 5 --entities 300 --entity-bytes 24
positive world down_bytes_per_s && positive world down_p50_us &&
  zero world wrong_states
stop_server
grep -q '^RESULT server_ticks=[0-9]' "$tmp/server.out" &&
  grep -q 'server_snap_delta=[1-9]' "$tmp/server.out" ||
  fail "world server: no deltas sent"

# The floor needs no server.
echo "== floor: client floor --proto udp, then tcp"
for proto in udp tcp; do
  "$bench" client floor --proto "$proto" --warmup 0.1 --duration 0.5 \
    >"$tmp/client.out" 2>"$tmp/client.err" ||
    fail "floor $proto: exited with $?"
  positive "floor-$proto" rtt_per_s && positive "floor-$proto" p50_us &&
    zero "floor-$proto" errors
done

# The pub/sub family goes through the real broker, which needs
# certificate files.
bash "$gen_certs" "$tmp/certs" >/dev/null
: >"$tmp/server.out"
"$broker" --listen 127.0.0.1:0 --cert "$tmp/certs/server.pem" \
  --key "$tmp/certs/server-key.pem" --log-level warn \
  >"$tmp/server.out" 2>"$tmp/server.err" &
server_pid=$!
port=
for _ in $(seq 100); do
  port=$(sed -n 's/^READY \([0-9][0-9]*\)$/\1/p' "$tmp/server.out")
  [ -n "$port" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$port" ] || fail "qrpc-broker did not print READY <port>"
echo "== qrpc-broker on 127.0.0.1:$port"
ca=(--tls-ca "$tmp/certs/ca.pem" --tls-name localhost)
run_client pubsub-max pubsub --subs 20 --size 128 --rate 0 --window 100 \
  "${ca[@]}"
positive pubsub-max delivered_per_s && positive pubsub-max p50_us &&
  zero pubsub-max errors
[ "$(value loss_pct)" = 0.000 ] || fail "pubsub-max: messages were lost"

run_client pubsub-paced pubsub --subs 20 --size 128 --rate 1000 "${ca[@]}"
positive pubsub-paced delivered_per_s && zero pubsub-paced errors
stop_server

echo "== mutual TLS"
certs=(--tls-ca "$tmp/certs/ca.pem" --tls-name localhost
  --tls-cert "$tmp/certs/client.pem" --tls-key "$tmp/certs/client-key.pem")
start_server rpc --tls-cert "$tmp/certs/server.pem" \
  --tls-key "$tmp/certs/server-key.pem" --tls-client-ca "$tmp/certs/ca.pem"
run_client mtls-unary rpc --mode unary --payload 64 --conns 1 \
  --outstanding 1 "${certs[@]}"
positive mtls-unary ops_per_s && zero mtls-unary errors
run_client mtls-no-cert rpc --mode unary --payload 64 --conns 1 \
  --outstanding 1 "${ca[@]}"
positive mtls-no-cert errors
grep -q 'first error: .*the server refused the client certificate' \
  "$tmp/client.err" || fail "mtls-no-cert: the first error is not the refusal"
stop_server

echo "== refusals"
status=0
"$bench" client rpc --port 1 --mode nonsense >/dev/null 2>"$tmp/err" ||
  status=$?
[ "$status" -eq 2 ] || fail "a bad --mode exited with $status, expected 2"
grep -q -- '--mode' "$tmp/err" || fail "the message does not name --mode"
status=0
"$bench" client nosuch --port 1 >/dev/null 2>&1 || status=$?
[ "$status" -eq 2 ] || fail "an unknown family exited with $status, expected 2"
"$bench" client rpc --help >"$tmp/help" ||
  fail "client rpc --help exited with $?"
grep -q -- '--outstanding' "$tmp/help" ||
  fail "client rpc --help does not list --outstanding"
echo "bench_smoke: OK"
