#!/usr/bin/env bash
# The chat demo across a two-node broker cluster, on loopback: two
# nats-server processes clustered by routes, a qrpc-broker on each
# (--cluster), and `chat --demo N --connect A,B`, whose users alternate
# between the two nodes: every user must get every message exactly once
# and in each sender's order, half of them from the other node. Needs
# nats-server (scripts/setup.sh installs it). Everything it starts is
# stopped on exit.
#
# usage: run-cluster.sh BUILD_DIR [USERS]
#   e.g. bash examples/chat/run-cluster.sh build 6
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BUILD_DIR [USERS]" >&2; exit 2; }
build=$(cd "$1" && pwd)
users=${2:-6}
here=$(cd "$(dirname "$0")" && pwd)
command -v nats-server >/dev/null ||
  { echo "run-cluster: nats-server is not installed (scripts/setup.sh)" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-chat-cluster.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
bash "$here/../../scripts/gen-certs.sh" "$tmp/certs" >/dev/null

read -r c1 c2 r1 r2 m1 m2 <<<"$(python3 -c '
import socket
s = [socket.socket() for _ in range(6)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')"

for i in 1 2; do
  eval "port=\$c$i route=\$r$i mon=\$m$i"
  other=$([ "$i" = 1 ] && echo "$r2" || echo "$r1")
  nats-server -a 127.0.0.1 -p "$port" -m "$mon" -n "n$i" --cluster_name chat \
    --cluster "nats://127.0.0.1:$route" --routes "nats://127.0.0.1:$other" \
    >"$tmp/n$i.log" 2>&1 &
  pids+=($!)
done

# The two servers route to each other before any broker subscribes.
for mon in "$m1" "$m2"; do
  for _ in $(seq 200); do
    curl -s "http://127.0.0.1:$mon/routez" 2>/dev/null >"$tmp/routez" || true
    grep -q '"num_routes": *[1-9]' "$tmp/routez" && break
    sleep 0.05
  done
  grep -q '"num_routes": *[1-9]' "$tmp/routez" ||
    { echo "run-cluster: the NATS servers did not route to each other" >&2; exit 1; }
done

# start_broker N NATS_PORT: starts broker N and sets b1 or b2 to its UDP
# port (run in this shell, so that cleanup knows its pid).
start_broker() {
  "$build/services/qrpc-broker" --listen 127.0.0.1:0 \
    --cert "$tmp/certs/server.pem" --key "$tmp/certs/server-key.pem" \
    --cluster "nats://127.0.0.1:$2" >"$tmp/b$1.out" 2>"$tmp/b$1.err" &
  pids+=($!)
  local p=
  for _ in $(seq 200); do
    p=$(sed -n 's/^READY \([0-9][0-9]*\)$/\1/p' "$tmp/b$1.out")
    [ -n "$p" ] && grep -q 'connection joined NATS' "$tmp/b$1.err" &&
      grep -q 'queue-group connection joined NATS' "$tmp/b$1.err" &&
      { eval "b$1=$p"; return 0; }
    sleep 0.05
  done
  echo "run-cluster: broker $1 did not start and join NATS:" >&2
  cat "$tmp/b$1.err" >&2
  return 1
}
start_broker 1 "$c1"
start_broker 2 "$c2"
echo "run-cluster: brokers on udp ports $b1 (NATS n1) and $b2 (NATS n2)"
"$build/examples/chat" --demo "$users" --ca "$tmp/certs/ca.pem" \
  --connect "127.0.0.1:$b1,127.0.0.1:$b2"
