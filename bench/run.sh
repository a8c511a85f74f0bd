#!/usr/bin/env bash
# Runs named qrpc-bench workloads several times and reports the median of
# each result per workload.
#
#   bench/run.sh [-n RUNS] [-w SECONDS] [-d SECONDS] [-o FILE] [-b BINARY]
#                [-r BROKER] [WORKLOAD|SET ...]
#
# Workloads (bench/README.md describes each):
#   rpc:  unary-1 unary-128 unary-100x10 stream-1m stream-64k connect
#         connect-full connect-0rtt (connect resumes each new connection
#         from the client's ticket cache, as a real client does;
#         connect-full makes full handshakes, connect-0rtt sends its call
#         in 0-RTT); unary-128-lb is unary-128 through a balancing
#         client (two backends, both the run's server, round_robin): its
#         ratio to unary-128 is what balancing costs
#   game: game-60 game-120 game-240 game-500 game-1000 game-flood
#   idle: idle-10000 idle-10000-1452 (the server's packets capped at
#         1452 bytes, as on an Ethernet path)
#   pubsub: pubsub-100-max pubsub-100-paced pubsub-1000-max
#           pubsub-1000-paced (through qrpc-broker, found beside the
#           build's bench/ as services/qrpc-broker, or given with -r)
# A set name (rpc, game, idle, pubsub, all) stands for its workloads; the
# default is all. Servers use a development certificate made for the run
# (scripts/gen-certs.sh) and clients verify it, as real clients would.
# Each run starts a fresh server on a free loopback port (pinned
# to CPU 0 with taskset when there are at least two CPUs, the client to
# CPU 1), waits for READY, runs the client, stops the server with SIGTERM,
# and appends the client's JSON object, with the server's RESULT counters,
# the workload's name and the run's number added, to FILE (default
# build/bench-results/run-<date>.jsonl). Runs go round-robin over the
# workloads, so slow drift of the machine spreads over all of them.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
runs=5
warmup=1
duration=5
bench=${QRPC_BENCH:-$root/build/bench/qrpc-bench}
broker=
out=

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

while getopts "n:w:d:o:b:r:h" opt; do
  case $opt in
  n) runs=$OPTARG ;;
  w) warmup=$OPTARG ;;
  d) duration=$OPTARG ;;
  o) out=$OPTARG ;;
  b) bench=$OPTARG ;;
  r) broker=$OPTARG ;;
  h) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

case $runs in
'' | *[!0-9]* | 0) echo "run.sh: -n expects a number of runs above 0, not '$runs'" >&2; exit 2 ;;
esac
for v in "$warmup" "$duration"; do
  [[ $v =~ ^[0-9]+(\.[0-9]+)?$ ]] ||
    { echo "run.sh: -w and -d expect seconds, not '$v'" >&2; exit 2; }
done
[ -x "$bench" ] ||
  { echo "run.sh: no qrpc-bench at $bench (build it, or give -b)" >&2; exit 2; }
[ -n "$broker" ] || broker=$(dirname "$(dirname "$bench")")/services/qrpc-broker

rpc_set="unary-1 unary-128 unary-128-lb unary-100x10 stream-1m stream-64k connect connect-full connect-0rtt"
game_set="game-60 game-120 game-240 game-500 game-1000 game-flood"
idle_set="idle-10000 idle-10000-1452"
pubsub_set="pubsub-100-max pubsub-100-paced pubsub-1000-max pubsub-1000-paced"

# The server and client arguments of a workload: sets server_args,
# client_family and client_args.
workload_args() {
  server_args=(rpc)
  client_family=rpc
  case $1 in
  unary-1) client_args=(--mode unary --payload 64 --conns 1 --outstanding 1) ;;
  unary-128) client_args=(--mode unary --payload 64 --conns 1 --outstanding 128) ;;
  unary-128-lb)
    # @PORT@ becomes the server's port in run_one.
    client_args=(--mode unary --payload 64 --conns 1 --outstanding 128
      --target 127.0.0.1:@PORT@,127.0.0.1:@PORT@ --lb round_robin)
    ;;
  unary-100x10) client_args=(--mode unary --payload 64 --conns 100 --outstanding 10) ;;
  stream-1m) client_args=(--mode stream --payload 1048576 --conns 1 --outstanding 1) ;;
  stream-64k) client_args=(--mode stream --payload 65536 --conns 1 --outstanding 1) ;;
  connect) client_args=(--mode connect --payload 64) ;;
  connect-full) client_args=(--mode connect --payload 64 --handshake full) ;;
  connect-0rtt) client_args=(--mode connect --payload 64 --handshake 0rtt) ;;
  game-flood)
    server_args=(game --tick-hz 60)
    client_family=game
    client_args=(--clients 100 --size 100 --hz 0)
    ;;
  game-[0-9]*)
    local hz=${1#game-}
    server_args=(game --tick-hz "$hz")
    client_family=game
    client_args=(--clients 100 --size 100 --hz "$hz")
    ;;
  # Idle servers keep every connection through the storm of handshakes
  # that opens them (on loopback the clients' 64 KiB path MTU probes fill
  # the server's socket buffer, so some clients go unheard for seconds):
  # dead-peer detection is off, as it is in the client.
  idle-[0-9]*-1452)
    server_args=(rpc --max-udp-payload 1452 --dead-peer-ms 0)
    client_family=idle
    local n=${1#idle-}
    client_args=(--conns "${n%-1452}")
    ;;
  idle-[0-9]*)
    server_args=(rpc --dead-peer-ms 0)
    client_family=idle
    client_args=(--conns "${1#idle-}")
    ;;
  pubsub-*)
    server_args=(broker)
    client_family=pubsub
    case $1 in
    pubsub-100-max) client_args=(--subs 100 --size 128 --rate 0 --window 1000) ;;
    pubsub-100-paced) client_args=(--subs 100 --size 128 --rate 10000) ;;
    pubsub-1000-max) client_args=(--subs 1000 --size 128 --rate 0 --window 100) ;;
    pubsub-1000-paced) client_args=(--subs 1000 --size 128 --rate 100) ;;
    *) return 1 ;;
    esac
    ;;
  *) return 1 ;;
  esac
}

workloads=()
[ $# -gt 0 ] || set -- all
for w in "$@"; do
  case $w in
  rpc) workloads+=($rpc_set) ;;
  game) workloads+=($game_set) ;;
  idle) workloads+=($idle_set) ;;
  pubsub) workloads+=($pubsub_set) ;;
  all) workloads+=($rpc_set $pubsub_set $game_set $idle_set) ;;
  *)
    workload_args "$w" ||
      { echo "run.sh: unknown workload '$w' (see run.sh -h)" >&2; exit 2; }
    workloads+=("$w")
    ;;
  esac
done

server_pin=()
client_pin=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  server_pin=(taskset -c 0)
  client_pin=(taskset -c 1)
else
  echo "run.sh: fewer than 2 CPUs or no taskset: server and client are not pinned" >&2
fi

if [ -z "$out" ]; then
  mkdir -p "$root/build/bench-results"
  out=$root/build/bench-results/run-$(date +%Y%m%d-%H%M%S).jsonl
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-bench-run.XXXXXX")
rows=$tmp/rows.jsonl
: >"$rows"
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
bash "$root/scripts/gen-certs.sh" "$tmp/certs" >/dev/null
tls_server=(--tls-cert "$tmp/certs/server.pem" --tls-key "$tmp/certs/server-key.pem")
tls_client=(--tls-ca "$tmp/certs/ca.pem" --tls-name localhost)

# start_server ARGS...: starts it on a free port; sets server_pid, port.
# "broker" starts qrpc-broker, which prints READY <port>.
start_server() {
  # Emptied first: the background job opens the file on its own time, and
  # the previous server's READY must not be taken for this one's.
  : >"$tmp/server.out"
  if [ "$1" = broker ]; then
    "${server_pin[@]}" "$broker" --listen 127.0.0.1:0 \
      --cert "$tmp/certs/server.pem" --key "$tmp/certs/server-key.pem" \
      --log-level warn >"$tmp/server.out" 2>"$tmp/server.err" &
  else
    "${server_pin[@]}" "$bench" server "$@" --host 127.0.0.1 --port 0 \
      "${tls_server[@]}" >"$tmp/server.out" 2>"$tmp/server.err" &
  fi
  server_pid=$!
  port=
  for _ in $(seq 200); do
    port=$(sed -n 's/^READY \([0-9][0-9]*\)$/\1/p' "$tmp/server.out")
    [ -z "$port" ] || return 0
    if grep -qx READY "$tmp/server.out"; then
      port=$(sed -n 's/^PORT \([0-9][0-9]*\)$/\1/p' "$tmp/server.out")
      return 0
    fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.05
  done
  cat "$tmp/server.err" >&2
  return 1
}

# stop_server: SIGTERM; prints the server's RESULT pairs as JSON members.
stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
  sed -n 's/^RESULT //p' "$tmp/server.out" | tail -n 1 | tr ' ' '\n' |
    sed -n 's/^\([a-z0-9_]*\)=\([-0-9.]*\)$/"\1":\2/p' | paste -sd, -
}

failures=0
# run_one WORKLOAD RUN: one run; appends its row to $rows.
run_one() {
  local w=$1 run=$2
  workload_args "$w"
  if ! start_server "${server_args[@]}"; then
    echo "run.sh: $w run $run: the server did not start" >&2
    failures=$((failures + 1))
    return
  fi
  local extra=() args=("${client_args[@]}")
  [ "$client_family" != idle ] || extra=(--server-pid "$server_pid")
  args=("${args[@]//@PORT@/$port}")
  local limit status=0
  limit=$(awk -v w="$warmup" -v d="$duration" 'BEGIN { print int(w + d + 120) }')
  timeout -s KILL "$limit" "${client_pin[@]}" "$bench" client "$client_family" \
    --host 127.0.0.1 --port "$port" --warmup "$warmup" --duration "$duration" \
    --json "${tls_client[@]}" "${args[@]}" "${extra[@]}" \
    >"$tmp/client.out" 2>"$tmp/client.err" || status=$?
  local server_kv json keys
  server_kv=$(stop_server)
  json=$(grep '^{' "$tmp/client.out" | tail -n 1 || true)
  keys=$(sed -n 's/^RESULT //p' "$tmp/client.out" | tail -n 1 |
    tr ' ' '\n' | sed 's/=.*//' | paste -sd' ' -)
  if [ "$status" -ne 0 ] || [ -z "$json" ] || [ -z "$keys" ]; then
    echo "run.sh: $w run $run: the client failed (status $status):" >&2
    sed 's/^/  /' "$tmp/client.err" >&2
    failures=$((failures + 1))
    return
  fi
  local head="{\"workload\":\"$w\",\"run\":$run,\"result_keys\":\"$keys\","
  json=${json#\{}
  json=${json%\}}
  [ -z "$server_kv" ] || json="$json,$server_kv"
  printf '%s%s}\n' "$head" "$json" | tee -a "$out" >>"$rows"
  printf '  %-14s run %d: %s\n' "$w" "$run" \
    "$(sed -n 's/^RESULT //p' "$tmp/client.out" | tail -n 1)"
}

echo "run.sh: ${workloads[*]}; $runs runs of ${warmup} s warmup + ${duration} s each; results in $out"
for run in $(seq "$runs"); do
  for w in "${workloads[@]}"; do
    run_one "$w" "$run"
    sleep 0.2
  done
done

echo "run.sh: medians of $runs runs:"
awk -f "$here/median.awk" -v mode=summary "$rows"
if [ "$failures" -gt 0 ]; then
  echo "run.sh: $failures runs failed" >&2
  exit 1
fi
