#!/usr/bin/env bash
# A broker restart as a subscriber sees it (run by ctest; docs/reliability.md
# quotes its figures): qrpc-sub holds a subscription; qrpc-broker is killed
# with SIGKILL 1.5 s in and started again on the same port at 2.0 s. With
# --server-key the new broker's stateless reset ends the old connection at
# once; without it the subscriber's dead-peer detection does. Either way the
# subscriber must subscribe again, and receive what is published after the
# restart, long before the 30 s idle timeout (the bound here is loose on
# purpose: it checks the mechanism, not the speed); the time each took is
# printed.
#
# usage: run-broker-restart.sh BROKER PUB SUB GEN_CERTS
set -euo pipefail

if [ $# -ne 4 ]; then
  echo "usage: $0 BROKER PUB SUB GEN_CERTS" >&2
  exit 2
fi
broker=$1
pub=$2
sub=$3
gen_certs=$4
# Resubscription must come well before the idle timeout (30 s).
bound_ms=${RESTART_BOUND_MS:-8000}

fail() { printf 'broker restart test: FAILED: %s\n' "$*" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-broker-restart.XXXXXX")
broker_pid=
sub_pid=
cleanup() {
  for pid in $broker_pid $sub_pid; do
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
bash "$gen_certs" "$tmp/certs" >/dev/null
certs=$tmp/certs

now_ms() { date +%s%3N; }

# sleep_until MS: until the Unix time in ms.
sleep_until() {
  local left=$(($1 - $(now_ms)))
  if [ "$left" -gt 0 ]; then sleep "$(printf '%d.%03d' $((left / 1000)) $((left % 1000)))"; fi
}

# wait_for FILE PATTERN COUNT: until FILE has COUNT lines matching PATTERN
# (at most 10 s).
wait_for() {
  for _ in $(seq 1000); do
    [ "$(grep -c -- "$2" "$1" 2>/dev/null || true)" -ge "$3" ] && return 0
    sleep 0.01
  done
  return 1
}

# start_broker LISTEN ARGS...: sets broker_pid and port.
start_broker() {
  local listen=$1
  shift
  "$broker" --listen "$listen" --cert "$certs/server.pem" \
    --key "$certs/server-key.pem" "$@" >"$tmp/broker.log" 2>&1 &
  broker_pid=$!
  port=
  for _ in $(seq 500); do
    port=$(sed -n 's/^READY \([0-9][0-9]*\)$/\1/p' "$tmp/broker.log")
    if [ -n "$port" ] || ! kill -0 "$broker_pid" 2>/dev/null; then break; fi
    sleep 0.01
  done
  [ -n "$port" ] || fail "qrpc-broker did not report READY: $(cat "$tmp/broker.log")"
}

# scenario NAME ARGS...: one restart; ARGS go to both brokers.
scenario() {
  local name=$1
  shift
  start_broker 127.0.0.1:0 "$@"
  local fixed=$port
  : >"$tmp/sub.err"
  # Every line qrpc-sub writes to stderr gets the Unix time in ms it was
  # read at.
  timeout 30 "$sub" -s "127.0.0.1:$fixed" --ca "$certs/ca.pem" \
    --servername localhost -n 2 'restart.>' >"$tmp/sub.out" \
    2> >(while IFS= read -r line; do printf '%s %s\n' "$(now_ms)" "$line"; done >>"$tmp/sub.err") &
  sub_pid=$!
  wait_for "$tmp/sub.err" "subscribed to" 1 || fail "$name: qrpc-sub did not subscribe: $(cat "$tmp/sub.err")"
  local t0
  t0=$(now_ms)
  timeout 10 "$pub" -s "127.0.0.1:$fixed" --ca "$certs/ca.pem" \
    --servername localhost restart.before one >/dev/null ||
    fail "$name: publishing before the restart failed"
  wait_for "$tmp/sub.out" "restart.before one" 1 || fail "$name: the first message did not arrive"
  sleep_until $((t0 + 1500))
  kill -KILL "$broker_pid"
  wait "$broker_pid" 2>/dev/null || true
  local killed
  killed=$(now_ms)
  sleep_until $((t0 + 2000))
  start_broker "127.0.0.1:$fixed" "$@"
  local restarted
  restarted=$(now_ms)
  wait_for "$tmp/sub.err" "subscribed to" 2 ||
    fail "$name: qrpc-sub did not subscribe again: $(cat "$tmp/sub.err")"
  local again
  again=$(awk '/subscribed to/ { n++; if (n == 2) { print $1; exit } }' "$tmp/sub.err")
  timeout 10 "$pub" -s "127.0.0.1:$fixed" --ca "$certs/ca.pem" \
    --servername localhost restart.after two >/dev/null ||
    fail "$name: publishing after the restart failed"
  local status=0
  wait "$sub_pid" || status=$?
  sub_pid=
  [ "$status" -eq 0 ] || fail "$name: qrpc-sub exited $status: $(cat "$tmp/sub.err")"
  grep -qx 'restart.after two' "$tmp/sub.out" ||
    fail "$name: the message published after the restart did not arrive: $(cat "$tmp/sub.out")"
  kill -TERM "$broker_pid"
  wait "$broker_pid" 2>/dev/null || true
  broker_pid=
  local took=$((again - restarted))
  printf '%s: killed at +%d ms, restarted at +%d ms, subscribed again %d ms after the restart\n' \
    "$name" $((killed - t0)) $((restarted - t0)) "$took"
  [ "$took" -le "$bound_ms" ] || fail "$name: resubscription took $took ms (bound $bound_ms)"
}

scenario "with --server-key" --server-key "$tmp/server.key"
scenario "without a key"
echo "broker restart test: OK"
