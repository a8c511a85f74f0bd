#!/usr/bin/env bash
# A server restart as users see it (run by ctest; docs/reliability.md
# quotes its figures): hello_client calls SayHello every 50 ms with a
# 500 ms deadline; hello_server is killed with SIGKILL 1.5 s in and
# started again on the same port at 2.0 s. With --server-key the new
# server's stateless reset ends the old connection at once; without it the
# client's dead-peer detection does. Either way calls must succeed again
# long before the 30 s idle timeout (the bound here is loose on purpose:
# it checks the mechanism, not the speed); the time each took is printed.
#
# usage: run-restart.sh EXAMPLES_DIR GEN_CERTS
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 EXAMPLES_DIR GEN_CERTS" >&2
  exit 2
fi
examples=$1
gen_certs=$2
# Recovery must come well before the idle timeout (30 s).
bound_ms=${RESTART_BOUND_MS:-8000}

fail() { printf 'restart test: FAILED: %s\n' "$*" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-restart.XXXXXX")
server_pid=
client_pid=
cleanup() {
  for pid in $server_pid $client_pid; do
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
bash "$gen_certs" "$tmp/certs" >/dev/null
certs=$tmp/certs

now_ms() { date +%s%3N; }

# start_server LISTEN ARGS...: sets server_pid and port.
start_server() {
  local listen=$1
  shift
  "$examples/hello_server" --listen "$listen" --cert "$certs/server.pem" \
    --key "$certs/server-key.pem" "$@" >"$tmp/server.log" 2>&1 &
  server_pid=$!
  port=
  for _ in $(seq 200); do
    port=$(sed -n 's/^READY \([0-9][0-9]*\)$/\1/p' "$tmp/server.log")
    if [ -n "$port" ] || ! kill -0 "$server_pid" 2>/dev/null; then break; fi
    sleep 0.01
  done
  [ -n "$port" ] || fail "hello_server did not report READY: $(cat "$tmp/server.log")"
}

# sleep_until MS: until the Unix time in ms.
sleep_until() {
  local left=$(($1 - $(now_ms)))
  if [ "$left" -gt 0 ]; then sleep "$(printf '%d.%03d' $((left / 1000)) $((left % 1000)))"; fi
}

# scenario NAME EXPECT ARGS...: one restart; ARGS go to both servers.
scenario() {
  local name=$1 expect=$2
  shift 2
  start_server 127.0.0.1:0 "$@"
  local fixed=$port
  "$examples/hello_client" --connect "127.0.0.1:$fixed" --ca "$certs/ca.pem" \
    --servername localhost --interval 50 --deadline 500 --timeout 7 \
    >"$tmp/client.out" 2>"$tmp/client.err" &
  client_pid=$!
  local t0=""
  for _ in $(seq 500); do
    t0=$(sed -n 's/^EVENT \([0-9]*\) START$/\1/p' "$tmp/client.out")
    [ -n "$t0" ] && break
    sleep 0.01
  done
  [ -n "$t0" ] || fail "$name: hello_client did not start"
  sleep_until $((t0 + 1500))
  kill -KILL "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  local killed
  killed=$(now_ms)
  sleep_until $((t0 + 2000))
  start_server "127.0.0.1:$fixed" "$@"
  local restarted
  restarted=$(now_ms)
  wait "$client_pid" || true
  client_pid=
  kill -TERM "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=

  local first_ok
  first_ok=$(awk -v k="$killed" '$1 == "EVENT" && $3 == "OK" && $2 > k { print $2; exit }' "$tmp/client.out")
  [ -n "$first_ok" ] || fail "$name: no call succeeded after the restart: $(cat "$tmp/client.out" "$tmp/client.err")"
  local took=$((first_ok - restarted))
  grep -q "DISCONNECTED .*$expect" "$tmp/client.out" ||
    fail "$name: the old connection did not end by '$expect': $(cat "$tmp/client.out")"
  local result
  result=$(grep '^RESULT' "$tmp/client.out")
  printf '%s: killed at +%d ms, restarted at +%d ms, calls succeed again %d ms after the restart (%s)\n' \
    "$name" $((killed - t0)) $((restarted - t0)) "$took" "$result"
  [ "$took" -le "$bound_ms" ] || fail "$name: recovery took $took ms (bound $bound_ms)"
}

scenario "with --server-key" "stateless reset" --server-key "$tmp/server.key"
[ "$(stat -c %a "$tmp/server.key")" = 600 ] || fail "the key file is not mode 600"
scenario "without a key" "dead peer"
echo "restart test: OK"
