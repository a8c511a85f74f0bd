#!/usr/bin/env bash
# The example servers' --metrics flag: hello_server and game_server serve
# Prometheus metrics; a scrape over loopback TCP after their clients ran
# shows the calls by method name (three SayHello from three hello_client
# runs; one Join per game client), and promtool accepts the format
# (skipped, saying so, where it is not installed). Everything binds to
# 127.0.0.1 and stops by itself.
#
# usage: run-metrics.sh EXAMPLES_DIR GEN_CERTS
set -euo pipefail
examples=$1
gen_certs=$2
tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-ex-metrics.XXXXXX")
pid=
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { printf 'example metrics: FAILED: %s\n' "$*" >&2; exit 1; }

bash "$gen_certs" "$tmp/certs" >/dev/null
ca=$tmp/certs/ca.pem
srv=(--cert "$tmp/certs/server.pem" --key "$tmp/certs/server-key.pem")

# start NAME ARGS...: the server on free ports; sets pid, port and mport.
start() {
  local name=$1
  shift
  "$examples/$name" --listen 127.0.0.1:0 "${srv[@]}" \
    --metrics 127.0.0.1:0 "$@" >"$tmp/out" 2>"$tmp/err" &
  pid=$!
  port=
  for _ in $(seq 100); do
    port=$(sed -n 's/^READY \([0-9][0-9]*\)$/\1/p' "$tmp/out")
    if [ -n "$port" ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  [ -n "$port" ] || fail "$name did not start: $(cat "$tmp/err")"
  mport=$(sed -n 's/.*metrics on .*tcp port \([0-9][0-9]*\),.*/\1/p' "$tmp/out")
  [ -n "$mport" ] || fail "$name printed no metrics port"
}

stop() {
  kill -TERM "$pid"
  local status=0
  wait "$pid" || status=$?
  pid=
  [ "$status" -eq 0 ] || fail "exit status $status after SIGTERM"
}

scrape() {
  timeout 10 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" >&3
    cat <&3' scrape "$mport" | tr -d '\r' | sed '1,/^$/d'
}

check_format() {
  if command -v promtool >/dev/null; then
    promtool check metrics <"$1" || fail "promtool check metrics: $1"
  else
    echo "skipped: promtool is not installed (Debian package prometheus)"
  fi
}

start hello_server
for n in a b c; do
  "$examples/hello_client" --connect "127.0.0.1:$port" --ca "$ca" \
    --servername localhost "$n" >/dev/null || fail "hello_client $n"
done
scrape >"$tmp/hello"
grep -qx 'qrpc_calls_total{method="qrpc.examples.hello.Greeter/SayHello",code="OK"} 3' \
  "$tmp/hello" || fail "SayHello not counted 3 times: $(grep calls_total "$tmp/hello")"
grep -qx 'qrpc_handshakes_total{result="ok"} 3' "$tmp/hello" ||
  fail "handshakes: $(grep handshakes "$tmp/hello")"
check_format "$tmp/hello"
stop
echo "ok: hello_server --metrics"

# On two workers: the players spread over both, every one of them must
# get the world (game_client fails otherwise), and the metrics sum both.
start game_server --bots 5 --workers 2
"$examples/game_client" --connect "127.0.0.1:$port" --ca "$ca" \
  --servername localhost --clients 6 --seconds 1 >/dev/null ||
  fail "game_client"
scrape >"$tmp/game"
grep -qx 'qrpc_calls_total{method="qrpc.examples.game.Game/Join",code="OK"} 6' \
  "$tmp/game" || fail "Join not counted 6 times: $(grep calls_total "$tmp/game")"
sent=$(sed -n 's/^qrpc_datagrams_sent_total \([0-9]*\)$/\1/p' "$tmp/game")
[ "${sent:-0}" -gt 0 ] || fail "no datagrams counted as sent"
check_format "$tmp/game"
stop
echo "ok: game_server --workers 2 --metrics ($sent datagrams sent)"
