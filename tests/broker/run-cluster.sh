#!/usr/bin/env bash
# Two qrpc-broker nodes sharing topics through NATS (docs/broker.md,
# "Clustering"), all real processes on loopback: two nats-server processes
# clustered by routes, on free ports, each with its own JetStream
# directory; broker A on the first, broker B on the second; qrpc-sub and
# qrpc-pub as clients. Cases: order and exactly-once from B to A,
# wildcards, one counted NATS interest per pattern that ends with its last
# subscriber (seen in nats-server's /subsz), the ACL on both sides, a NATS
# server killed (cross-node traffic resumes through the other), NATS
# unreachable at a broker's start (it serves alone, then joins), a queue
# group spread over both nodes, retained messages through JetStream, a
# killed broker node whose subscriber fails over, and bad
# --cluster values. Every process started is killed on exit, failure
# included. A missing nats-server is a failure: scripts/setup.sh installs
# it.
#
# usage: run-cluster.sh BROKER PUB SUB GEN_CERTS
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 BROKER PUB SUB GEN_CERTS" >&2; exit 2; }
broker=$1
pub=$2
sub=$3
gen_certs=$4

fail() { printf 'cluster test: FAILED: %s\n' "$*" >&2; exit 1; }
command -v nats-server >/dev/null ||
  fail "nats-server is not installed (scripts/setup.sh installs it)"
command -v curl >/dev/null || fail "curl is not installed"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-cluster.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
bash "$gen_certs" "$tmp/certs" >/dev/null
certs=$tmp/certs

# free_ports N: N distinct free TCP ports on 127.0.0.1.
free_ports() {
  python3 -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}
read -r c1 c2 c3 r1 r2 r3 m1 m2 m3 <<<"$(free_ports 9)"

# start_nats NAME CLIENT ROUTE MONITOR ROUTES: sets the pid in nats_NAME.
start_nats() {
  local name=$1 port=$2 route=$3 mon=$4 routes=$5
  nats-server -a 127.0.0.1 -p "$port" -m "$mon" -n "$name" \
    --cluster_name qrpc-test --cluster "nats://127.0.0.1:$route" \
    --routes "$routes" -js -sd "$tmp/js-$name" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  eval "nats_$name=$!"
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$mon/varz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  fail "nats-server $name did not start: $(tail -5 "$tmp/$name.log")"
}

# routed MONITOR: until that server has a route (at most 10 s).
routed() {
  for _ in $(seq 200); do
    curl -s "http://127.0.0.1:$1/routez" | grep -q '"num_routes": *[1-9]' &&
      return 0
    sleep 0.05
  done
  fail "the NATS servers did not form a cluster"
}

# start_broker NAME ARGS...: sets port_NAME and pid_NAME.
start_broker() {
  local name=$1
  shift
  "$broker" --listen 127.0.0.1:0 --cert "$certs/server.pem" \
    --key "$certs/server-key.pem" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  local pid=$!
  pids+=("$pid")
  eval "pid_$name=$pid"
  local port=
  for _ in $(seq 200); do
    port=$(sed -n 's/^READY \([0-9][0-9]*\)$/\1/p' "$tmp/$name.out")
    if [ -n "$port" ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.05
  done
  [ -n "$port" ] || fail "broker $name did not start: $(cat "$tmp/$name.err")"
  eval "port_$name=$port"
}

cli=(--ca "$certs/ca.pem" --servername localhost)
# subscribe NAME PORT TOKEN ARGS...: qrpc-sub in the background, output in
# $tmp/NAME.sub; sets sub_pid.
subscribe() {
  local name=$1 port=$2 token=$3
  shift 3
  timeout 30 "$sub" -s "127.0.0.1:$port" -t "$token" "${cli[@]}" "$@" \
    >"$tmp/$name.sub" 2>"$tmp/$name.suberr" &
  sub_pid=$!
  pids+=("$sub_pid")
  # Subscribed once it says so on stderr.
  for _ in $(seq 200); do
    grep -q 'subscribed to' "$tmp/$name.suberr" 2>/dev/null && return 0
    kill -0 "$sub_pid" 2>/dev/null || return 0
    sleep 0.05
  done
  fail "qrpc-sub $name did not subscribe: $(cat "$tmp/$name.suberr")"
}
publish() { # PORT TOKEN ARGS...
  local port=$1 token=$2
  shift 2
  timeout 10 "$pub" -s "127.0.0.1:$port" -t "$token" "${cli[@]}" "$@"
}
# interest MONITOR SUBJECT: how many NATS subscriptions the server's own
# clients hold on exactly SUBJECT.
interest() {
  curl -s "http://127.0.0.1:$1/connz?subs=1" |
    grep -oF "\"$2\"" | wc -l
}
wait_interest() { # MONITOR SUBJECT COUNT
  for _ in $(seq 200); do
    [ "$(interest "$1" "$2")" -eq "$3" ] && return 0
    sleep 0.05
  done
  fail "interest in $2 on monitor $1: $(interest "$1" "$2"), expected $3"
}

# ---- Bad command lines ------------------------------------------------
bad() { # PATTERN ARGS...
  local pattern=$1 status=0
  shift
  "$broker" --cert "$certs/server.pem" --key "$certs/server-key.pem" \
    --listen 127.0.0.1:0 "$@" >"$tmp/bad.out" 2>"$tmp/bad.err" || status=$?
  [ "$status" -eq 2 ] || fail "$*: exit status $status, expected 2"
  grep -qF -- "$pattern" "$tmp/bad.err" || fail "$*: $(cat "$tmp/bad.err")"
}
bad "--cluster: 'http://x:1' is not nats://HOST:PORT" --cluster http://x:1
bad "--cluster: 'nats://h' is not nats://HOST:PORT" --cluster nats://a:1,nats://h
bad "--cluster: 'nats://h:70000' is a port outside" --cluster nats://h:70000
bad "--cluster: URL 1 holds credentials" --cluster nats://alice:hunter2@h:1
grep -q hunter2 "$tmp/bad.err" && fail "a password was repeated in an error"
bad "--cluster-user and --cluster-prefix need --cluster" --cluster-user u
echo "ok: malformed --cluster values are refused, naming the flag"

# ---- The cluster -------------------------------------------------------
start_nats n1 "$c1" "$r1" "$m1" "nats://127.0.0.1:$r2"
start_nats n2 "$c2" "$r2" "$m2" "nats://127.0.0.1:$r1"
routed "$m1"
routed "$m2"
cat >"$tmp/acl" <<EOF
token all
  publish >
  subscribe >
token open
  publish open.>
  subscribe open.>
EOF
start_broker a --acl "$tmp/acl" --cluster "nats://127.0.0.1:$c1,nats://127.0.0.1:$c2"
start_broker b --acl "$tmp/acl" --cluster "nats://127.0.0.1:$c2,nats://127.0.0.1:$c1"
echo "ok: two NATS servers routed, brokers A ($port_a) and B ($port_b)"

# A subscriber on A, a publisher on B: all of it, once, in order.
subscribe order "$port_a" all -n 61 'seq.>'
for i in $(seq 60); do publish "$port_b" all seq.x "m$i"; done
publish "$port_b" all seq.end end
wait "$sub_pid" || fail "the ordered subscriber: $(cat "$tmp/order.suberr")"
{ for i in $(seq 60); do echo "seq.x m$i"; done; echo "seq.end end"; } >"$tmp/order.want"
diff "$tmp/order.want" "$tmp/order.sub" >/dev/null ||
  fail "B to A out of order, lost or doubled: $(diff "$tmp/order.want" "$tmp/order.sub" | head)"
echo "ok: 60 publishes on B reach a subscriber on A once each, in order"

# A burst from one qrpc-pub connection: 300 messages, then an end mark.
subscribe burst "$port_a" all -n 301 'burst.>'
publish "$port_b" all -n 300 burst.x payload
publish "$port_b" all burst.end end
wait "$sub_pid" || fail "the burst subscriber: $(cat "$tmp/burst.suberr")"
[ "$(grep -c '^burst.x payload$' "$tmp/burst.sub")" -eq 300 ] &&
  [ "$(tail -1 "$tmp/burst.sub")" = "burst.end end" ] ||
  fail "burst: $(sort "$tmp/burst.sub" | uniq -c)"
echo "ok: a burst of 300 from B reaches A, once each, before the end mark"

# Wildcards across nodes, both ways (A's own publish reaches A locally).
subscribe wild "$port_a" all -n 4 'w.*.t'
wild_pid=$sub_pid
subscribe wild2 "$port_b" all -n 1 'w.>'
wild2_pid=$sub_pid
publish "$port_a" all w.a.t one
for t in w.a.b.t w.t w.b.t w.c.t w.z.t; do publish "$port_b" all "$t" x; done
wait "$wild2_pid" || fail "the wildcard subscriber on B"
wait "$wild_pid" || fail "the wildcard subscriber on A"
[ "$(cat "$tmp/wild.sub")" = "$(printf 'w.a.t one\nw.b.t x\nw.c.t x\nw.z.t x')" ] ||
  fail "w.*.t on A got: $(cat "$tmp/wild.sub")"
grep -qx 'w.a.t one' "$tmp/wild2.sub" || fail "w.> on B got: $(cat "$tmp/wild2.sub")"
echo "ok: w.*.t on A gets w.b.t, w.c.t, w.z.t from B, not w.a.b.t or w.t; w.> on B gets A's w.a.t"

# A queue group of 3 members over both nodes (2 on A, 1 on B): each message
# reaches one member in all, published on A or on B; a plain subscriber
# gets every message.
subscribe qplain "$port_a" all 'jobs.*'
qplain_pid=$sub_pid
qpids=()
for m in qa1:"$port_a" qa2:"$port_a" qb1:"$port_b"; do
  subscribe "${m%%:*}" "${m#*:}" all --group workers 'jobs.*'
  qpids+=("$sub_pid")
done
wait_interest "$m1" 'qrpc.jobs.*' 2 # A: the plain and the group's queue subscription
wait_interest "$m2" 'qrpc.jobs.*' 1
for i in $(seq 10); do
  publish "$port_a" all -n 15 "jobs.a$i" x
  publish "$port_b" all -n 15 "jobs.b$i" x
done
qlines() { cat "$tmp"/qa1.sub "$tmp"/qa2.sub "$tmp"/qb1.sub | wc -l; }
for _ in $(seq 200); do
  [ "$(qlines)" -ge 300 ] && [ "$(wc -l <"$tmp/qplain.sub")" -ge 300 ] && break
  sleep 0.05
done
sleep 0.3 # nothing more may come
# SIGTERM to each qrpc-sub itself (the child of its timeout), which exits 0.
for p in "${qpids[@]}" "$qplain_pid"; do pkill -TERM -P "$p"; done
for p in "${qpids[@]}" "$qplain_pid"; do
  st=0
  wait "$p" || st=$?
  [ "$st" -eq 0 ] || fail "a queue group subscriber exited $st: $(cat "$tmp"/q*.suberr)"
done
[ "$(qlines)" -eq 300 ] || fail "the group got $(qlines) messages, not 300"
[ "$(wc -l <"$tmp/qplain.sub")" -eq 300 ] || fail "the plain subscriber got $(wc -l <"$tmp/qplain.sub")"
for i in $(seq 10); do
  for n in a b; do
    got=$(cat "$tmp"/qa1.sub "$tmp"/qa2.sub "$tmp"/qb1.sub | grep -c "^jobs.$n$i x$" || true)
    [ "$got" -eq 15 ] || fail "jobs.$n$i reached the group $got times, not 15"
  done
done
for m in qa1 qa2 qb1; do
  [ -s "$tmp/$m.sub" ] || fail "member $m got nothing: the group did not share"
done
echo "ok: a queue group of 3 over A and B got each of 300 messages once ($(wc -l <"$tmp/qa1.sub"), $(wc -l <"$tmp/qa2.sub") on A, $(wc -l <"$tmp/qb1.sub") on B)"

# Retained messages live in JetStream: one published on B reaches a late
# subscriber on A; a newer one replaces it; an empty one clears it.
for _ in $(seq 200); do
  grep -q 'retained messages shared through JetStream' "$tmp/a.err" &&
    grep -q 'retained messages shared through JetStream' "$tmp/b.err" && break
  sleep 0.05
done
grep -q 'retained messages shared through JetStream' "$tmp/a.err" ||
  fail "A did not set up JetStream: $(cat "$tmp/a.err")"
publish "$port_b" all -r ret.x first
publish "$port_b" all -r ret.x second
publish "$port_b" all -r ret.y kept
publish "$port_b" all -r ret.z gone
publish "$port_b" all -r ret.z </dev/null
# late_retained PORT PATTERN WANT: a late subscriber gets WANT (sorted).
late_retained() {
  for _ in $(seq 100); do
    timeout 10 "$sub" -s "127.0.0.1:$1" -t all "${cli[@]}" -F json \
      --connect-timeout 5 "$2" >"$tmp/late.sub" 2>"$tmp/late.err" &
    local lp=$!
    sleep 0.3
    kill -TERM "$lp" 2>/dev/null || true
    wait "$lp" 2>/dev/null || true
    [ "$(grep -o '"topic": *"[^"]*", *"payload": *"[^"]*"' "$tmp/late.sub" | tr -d ' ' | sort | tr '\n' ' ')" = "$3" ] && return 0
    sleep 0.1
  done
  fail "a late subscriber on $1 to $2 got: $(cat "$tmp/late.sub")"
}
late_retained "$port_a" 'ret.>' '"topic":"ret.x","payload":"second" "topic":"ret.y","payload":"kept" '
echo "ok: retained messages published on B reach a late subscriber on A (JetStream), the newest, cleared ones gone"

# Realtime (datagram) subscriptions get cross-node publishes too, best
# effort: a few publishes on B, one of which reaches a realtime subscriber
# on A.
subscribe rt "$port_a" all --realtime -n 1 'rt.>'
rt_pid=$sub_pid
for _ in $(seq 50); do
  kill -0 "$rt_pid" 2>/dev/null || break
  publish "$port_b" all rt.x live >/dev/null 2>&1 || true
  sleep 0.1
done
wait "$rt_pid" || fail "the realtime subscriber on A got nothing from B"
grep -qx 'rt.x live' "$tmp/rt.sub" || fail "realtime on A got: $(cat "$tmp/rt.sub")"
echo "ok: a realtime subscriber on A receives publishes from B as datagrams"

# One NATS interest per distinct pattern, closed with its last subscriber.
wait_interest "$m1" qrpc.i.one 0
subscribe i1 "$port_a" all -n 1 i.one
i1=$sub_pid
subscribe i2 "$port_a" all -n 2 i.one
i2=$sub_pid
wait_interest "$m1" qrpc.i.one 1
echo "ok: two subscribers of i.one on A: one NATS subscription"
publish "$port_b" all i.one first
wait "$i1" || fail "i1"
wait_interest "$m1" qrpc.i.one 1
publish "$port_b" all i.one second
wait "$i2" || fail "i2"
wait_interest "$m1" qrpc.i.one 0
[ "$(cat "$tmp/i2.sub")" = "$(printf 'i.one first\ni.one second')" ] ||
  fail "i2 got: $(cat "$tmp/i2.sub")"
echo "ok: the NATS interest stays while one subscriber is left, ends with the last"

# The ACL holds across nodes: each node checks its own clients.
status=0
publish "$port_b" open secret.x no 2>"$tmp/acl.err" || status=$?
[ "$status" -eq 1 ] && grep -q PERMISSION_DENIED "$tmp/acl.err" ||
  fail "token open published secret.x on B: status $status"
subscribe denied "$port_a" open 'secret.>'
status=0
wait "$sub_pid" || status=$?
[ "$status" -eq 1 ] || fail "token open subscribed to secret.> on A"
subscribe acl "$port_a" all -n 1 'secret.>'
publish "$port_b" open open.x fine
publish "$port_b" all secret.y allowed
wait "$sub_pid" || fail "the secret subscriber"
[ "$(cat "$tmp/acl.sub")" = "secret.y allowed" ] || fail "acl: $(cat "$tmp/acl.sub")"
echo "ok: the ACL refuses on the publisher's node and on the subscriber's"

# Malformed messages from NATS (a subject that is no valid topic of ours,
# written by a plain NATS client): counted, logged once, dropped; the node
# keeps serving.
subscribe bad "$port_a" all -n 1 'm.*'
python3 - "$c1" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.recv(4096)  # INFO
s.sendall(b'CONNECT {"verbose":false}\r\n'
          b'PUB qrpc.m.\x01 3\r\nbad\r\nPUB qrpc.m.\x7f 3\r\nbad\r\nPING\r\n')
buf = b""
while b"PONG" not in buf:
    buf += s.recv(4096)
s.close()
PY
publish "$port_b" all m.ok fine
wait "$sub_pid" || fail "the subscriber after malformed messages"
[ "$(cat "$tmp/bad.sub")" = "m.ok fine" ] || fail "m.*: $(cat "$tmp/bad.sub")"
[ "$(grep -c 'a message from NATS dropped' "$tmp/a.err")" -eq 1 ] ||
  fail "malformed messages not logged once: $(cat "$tmp/a.err")"
echo "ok: malformed subjects from NATS are dropped, logged once; A keeps serving"

# ---- Faults ------------------------------------------------------------
# NATS server n1 dies: A moves to n2; both keep serving.
kill -KILL "$nats_n1"
wait "$nats_n1" 2>/dev/null || true
subscribe local "$port_b" all -n 1 local.x
publish "$port_b" all local.x during
wait "$sub_pid" || fail "local delivery on B while n1 is down"
subscribe fail "$port_a" all -n 1 'f.>'
fail_pid=$sub_pid
for _ in $(seq 100); do
  kill -0 "$fail_pid" 2>/dev/null || break
  publish "$port_b" all f.x again >/dev/null 2>&1 || true
  sleep 0.2
done
wait "$fail_pid" || fail "no cross-node message after n1 died: $(cat "$tmp/a.err")"
grep -q 'back to NATS at nats://127.0.0.1:'"$c2" "$tmp/a.err" ||
  fail "A did not move to n2: $(cat "$tmp/a.err")"
echo "ok: n1 killed: B serves locally, A reconnects to n2, B to A resumes"

# NATS unreachable at start: C serves alone, then joins when n3 comes up.
start_broker c --acl "$tmp/acl" --cluster "nats://127.0.0.1:$c3"
grep -q 'no NATS server answers yet; serving alone' "$tmp/c.err" ||
  fail "C did not say it serves alone: $(cat "$tmp/c.err")"
subscribe alone "$port_c" all -n 1 alone.x
publish "$port_c" all alone.x here
wait "$sub_pid" || fail "C alone does not deliver locally"
subscribe late "$port_c" all -n 1 'late.>'
late_pid=$sub_pid
start_nats n3 "$c3" "$r3" "$m3" "nats://127.0.0.1:$r2"
routed "$m3"
for _ in $(seq 100); do
  kill -0 "$late_pid" 2>/dev/null || break
  publish "$port_b" all late.x joined >/dev/null 2>&1 || true
  sleep 0.2
done
wait "$late_pid" || fail "C did not join: $(cat "$tmp/c.err")"
grep -q 'joined NATS' "$tmp/c.err" || fail "C does not log joining"
echo "ok: C started without NATS, served alone, joined when n3 came up"

# A broker node dies: its client, given two nodes, fails over to the other
# one, subscribes again there, and gets what is published afterwards.
start_broker e --acl "$tmp/acl" --cluster "nats://127.0.0.1:$c3"
subscribe fo "$port_e" all -s "127.0.0.1:$port_e,127.0.0.1:$port_b" 'fo.>'
fo_pid=$sub_pid
for _ in $(seq 100); do
  [ -s "$tmp/fo.sub" ] && break
  publish "$port_b" all fo.x before >/dev/null 2>&1 || true
  sleep 0.1
done
grep -qx 'fo.x before' "$tmp/fo.sub" || fail "the subscriber on E got nothing from B"
kill -KILL "$pid_e"
wait "$pid_e" 2>/dev/null || true
for _ in $(seq 100); do
  grep -qx 'fo.x after' "$tmp/fo.sub" && break
  publish "$port_b" all fo.x after >/dev/null 2>&1 || true
  sleep 0.2
done
grep -qx 'fo.x after' "$tmp/fo.sub" ||
  fail "the subscriber did not fail over from E to B: $(cat "$tmp/fo.suberr")"
pkill -TERM -P "$fo_pid"
wait "$fo_pid" || fail "the failed-over subscriber exited $?"
[ "$(grep -c 'subscribed to' "$tmp/fo.suberr")" -ge 2 ] ||
  fail "the subscriber did not subscribe again: $(cat "$tmp/fo.suberr")"
echo "ok: broker E killed: its subscriber failed over to B and receives there"

# Credentials: a NATS server requiring a user and password; the password
# comes from the environment and appears in no log.
read -r c4 m4 <<<"$(free_ports 2)"
nats-server -a 127.0.0.1 -p "$c4" -m "$m4" --user qrpc --pass 'pw-s3cret-42' \
  >"$tmp/n4.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do
  curl -sf "http://127.0.0.1:$m4/varz" >/dev/null 2>&1 && break
  sleep 0.05
done
QRPC_CLUSTER_PASSWORD=pw-s3cret-42 start_broker d \
  --cluster "nats://127.0.0.1:$c4" --cluster-user qrpc --log-level debug
for _ in $(seq 200); do
  grep -q 'connection joined NATS' "$tmp/d.err" && break
  sleep 0.05
done
grep -q 'connection joined NATS' "$tmp/d.err" ||
  fail "D did not join a NATS server with a password: $(cat "$tmp/d.err")"
grep -q 'pw-s3cret-42' "$tmp/d.err" "$tmp/d.out" && fail "D logged the password"
kill -TERM "$pid_d"
wait "$pid_d" || fail "broker d: exit status $?"
grep -q 'pw-s3cret-42' "$tmp/d.out" && fail "D printed the password"
echo "ok: D joins with a user and a password from the environment, never logged"

# Clean stops: RESULT lines with the cluster's counters.
for n in a b c; do
  eval "p=\$pid_$n"
  kill -TERM "$p"
  wait "$p" || fail "broker $n: exit status $?"
  grep -q '^RESULT .* cluster_published=' "$tmp/$n.out" ||
    fail "broker $n: no cluster counters: $(cat "$tmp/$n.out")"
done
grep -q 'cluster_received=[1-9]' "$tmp/a.out" || fail "A counted nothing received"
grep -q 'cluster_malformed=2 ' "$tmp/a.out" || fail "A did not count 2 malformed messages"
echo "ok: brokers drained; $(grep -o 'cluster_published=[0-9]* .*' "$tmp/b.out")"
