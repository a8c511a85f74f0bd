#!/usr/bin/env bash
# The time to the first reply of a new connection, in round trips: runs the
# connect workloads (connect-full, connect, connect-0rtt) through the
# project's UDP delay proxy (tests/faults lossy_proxy), which holds every
# packet for DELAY ms in each direction, and prints each run's RESULT and
# the median p50_us per workload. A full handshake needs 2 round trips
# before the reply (4 x DELAY), a resumed one too (its call waits for the
# handshake), a call in 0-RTT 1 round trip (2 x DELAY).
#
#   bench/connect-rtt.sh [-n RUNS] [-d DELAY_MS] [-t SECONDS] [-b BINARY]
#                        [-p PROXY]
#
# Defaults: 3 runs, 20 ms, 4 s measured (1 s warmup), build/bench/qrpc-bench
# and build/tests/faults/lossy_proxy.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
runs=3
delay=20
duration=4
bench=$root/build/bench/qrpc-bench
proxy=

while getopts "n:d:t:b:p:h" opt; do
  case $opt in
  n) runs=$OPTARG ;;
  d) delay=$OPTARG ;;
  t) duration=$OPTARG ;;
  b) bench=$OPTARG ;;
  p) proxy=$OPTARG ;;
  h) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) exit 2 ;;
  esac
done
[ -n "$proxy" ] || proxy=$(dirname "$(dirname "$bench")")/tests/faults/lossy_proxy
for f in "$bench" "$proxy"; do
  [ -x "$f" ] || { echo "connect-rtt.sh: $f is not built" >&2; exit 2; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-connect-rtt.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# wait_line FILE REGEX: waits for a line matching REGEX and prints it.
wait_line() {
  for _ in $(seq 100); do
    if grep -m1 -E "$2" "$1"; then return 0; fi
    sleep 0.05
  done
  echo "connect-rtt.sh: no '$2' in $1" >&2
  return 1
}

"$bench" server rpc --host 127.0.0.1 --port 0 >"$tmp/server.out" \
  2>"$tmp/server.err" &
pids+=($!)
wait_line "$tmp/server.out" '^READY$' >/dev/null
port=$(sed -n 's/^PORT //p' "$tmp/server.out")
"$proxy" --upstream "127.0.0.1:$port" --both "delay=$delay" \
  >"$tmp/proxy.out" 2>"$tmp/proxy.err" &
pids+=($!)
pport=$(wait_line "$tmp/proxy.out" '^READY [0-9]+$' | sed 's/^READY //')
echo "connect-rtt.sh: server on $port, proxy on $pport with $delay ms each way"

declare -A p50s
for run in $(seq "$runs"); do
  for hs in full resume 0rtt; do
    line=$("$bench" client rpc --host 127.0.0.1 --port "$pport" \
      --mode connect --payload 64 --handshake "$hs" --warmup 1 \
      --duration "$duration" 2>/dev/null | tail -n 1)
    printf '  %-6s run %d: %s\n' "$hs" "$run" "$line"
    p50s[$hs]+="$(echo "$line" | tr ' ' '\n' | sed -n 's/^p50_us=//p') "
  done
done
for hs in full resume 0rtt; do
  printf '%s\n' ${p50s[$hs]} | sort -n |
    awk -v hs="$hs" -v d="$delay" '{ v[NR] = $1 }
      END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%-6s median p50 %.1f ms = %.2f round trips of %d ms\n",
                   hs, m / 1000, m / 1000 / (2 * d), 2 * d }'
done
