#!/usr/bin/env bash
# The game example end to end (run by ctest): game_server on a free
# loopback port, game_client with a few headless players for a second,
# then SIGTERM to the server; both must exit cleanly and report what the
# example documents. Also the client's refusals: a bad command line exits
# with 2, a server that does not answer with 1 within --timeout.
#
# usage: run-game-example.sh EXAMPLES_DIR GEN_CERTS
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 EXAMPLES_DIR GEN_CERTS" >&2
  exit 2
fi
examples=$1
gen_certs=$2

fail() { printf 'game example test: FAILED: %s\n' "$*" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-game-example.XXXXXX")
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

echo "== game_server"
"$examples/game_server" --listen 127.0.0.1:0 --cert "$tmp/certs/server.pem" \
  --key "$tmp/certs/server-key.pem" >"$tmp/server.log" 2>&1 &
server_pid=$!
port=
for _ in $(seq 100); do
  port=$(sed -n 's/^READY \([0-9][0-9]*\)$/\1/p' "$tmp/server.log")
  if [ -n "$port" ] || ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  sleep 0.1
done
[ -n "$port" ] || { cat "$tmp/server.log"; fail "no READY <port> from game_server"; }

echo "== game_client --clients 4 --seconds 1 against port $port"
status=0
timeout -s KILL 60 "$examples/game_client" --connect "127.0.0.1:$port" \
  --ca "$tmp/certs/ca.pem" --servername localhost --clients 4 --seconds 1 \
  >"$tmp/client.log" 2>&1 || status=$?
cat "$tmp/client.log"
[ "$status" -eq 0 ] || fail "game_client exited with $status"
grep -q '^game_client: total .* states/s .* loss .* delay p50 .* p99' \
  "$tmp/client.log" || fail "no summary line from game_client"
[ "$(grep -cE '^ +[0-9]+ +[0-9.]+ +[0-9]+ ' "$tmp/client.log")" -eq 4 ] ||
  fail "expected one summary row per client"

echo "== game_server: SIGTERM"
kill -TERM "$server_pid"
status=0
for _ in $(seq 50); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
wait "$server_pid" || status=$?
server_pid=
cat "$tmp/server.log"
[ "$status" -eq 0 ] || fail "game_server exited with $status after SIGTERM"
grep -q '^game_server: .* ticks at 60 Hz; 4 players joined' "$tmp/server.log" ||
  fail "no report from game_server"
grep -q '^game_server: inputs: [1-9][0-9]* received' "$tmp/server.log" ||
  fail "game_server received no inputs"

echo "== game_client refusals"
status=0
"$examples/game_client" --hz 0 >/dev/null 2>&1 || status=$?
[ "$status" -eq 2 ] || fail "a bad --hz exited with $status, expected 2"
status=0
timeout -s KILL 30 "$examples/game_client" --connect "127.0.0.1:$port" \
  --ca "$tmp/certs/ca.pem" --clients 2 --timeout 1 >"$tmp/refused.log" 2>&1 ||
  status=$?
cat "$tmp/refused.log"
[ "$status" -eq 1 ] || fail "no server: exited with $status, expected 1"
grep -q 'cannot join' "$tmp/refused.log" || fail "no reason given"
echo "game example test: OK"
