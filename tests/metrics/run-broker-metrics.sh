#!/usr/bin/env bash
# qrpc-broker --metrics: the daemon serves its counters at /metrics over
# HTTP; a scrape over loopback TCP answers 200 with the broker's series,
# the chat demo's traffic shows up in them, other paths get 404, the format
# passes promtool (skipped, saying so, where promtool is not installed),
# and a metrics address already in use is refused with exit status 2.
# Everything binds to 127.0.0.1 and stops by itself.
#
# usage: run-broker-metrics.sh BROKER GEN_CERTS CHAT
set -euo pipefail
broker=$1
gen_certs=$2
chat=$3
tmp=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

bash "$gen_certs" "$tmp/certs" >/dev/null
cert=$tmp/certs/server.pem
key=$tmp/certs/server-key.pem
ca=$tmp/certs/ca.pem

grep -q -- '--metrics' <<<"$("$broker" --help)" || fail "--help does not list --metrics"

"$broker" --listen 127.0.0.1:0 --cert "$cert" --key "$key" \
  --metrics 127.0.0.1:0 >"$tmp/out" 2>"$tmp/err" &
pid=$!
port=
mport=
for _ in $(seq 100); do
  port=$(sed -n 's/^READY \([0-9][0-9]*\)$/\1/p' "$tmp/out")
  mport=$(sed -n 's/.*metrics on .*tcp port \([0-9][0-9]*\),.*/\1/p' "$tmp/err")
  if [ -n "$port" ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
  sleep 0.1
done
[ -n "$port" ] || fail "no READY line: $(cat "$tmp/err")"
[ -n "$mport" ] || fail "no metrics port on stderr: $(cat "$tmp/err")"

# http PATH: the whole answer to GET PATH, through bash's /dev/tcp.
http() {
  timeout 10 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3
    cat <&3' http "$mport" "$1" | tr -d '\r'
}

http /metrics >"$tmp/scrape0"
head -1 "$tmp/scrape0" | grep -q '^HTTP/1.1 200 ' || fail "scrape: $(head -1 "$tmp/scrape0")"
grep -q '^qrpc_broker_subscriptions 0$' "$tmp/scrape0" || fail "no subscriptions gauge at 0"
grep -q '^qrpc_broker_published_total 0$' "$tmp/scrape0" || fail "published not 0"
echo "ok: scrape before traffic"

grep -q '^HTTP/1.1 404 ' <<<"$(http /other)" || fail "/other did not get 404"
echo "ok: other paths get 404"

# Five chat users, three lines each: 15 publishes, each delivered to 5.
timeout 60 "$chat" --connect "127.0.0.1:$port" --ca "$ca" \
  --servername localhost --demo 5 >/dev/null 2>&1 || fail "chat demo failed"
http /metrics >"$tmp/scrape1"
published=$(sed -n 's/^qrpc_broker_published_total \([0-9]*\)$/\1/p' "$tmp/scrape1")
delivered=$(sed -n 's/^qrpc_broker_delivered_total \([0-9]*\)$/\1/p' "$tmp/scrape1")
[ "${published:-0}" -ge 15 ] || fail "published_total $published, expected at least 15"
[ "${delivered:-0}" -ge 75 ] || fail "delivered_total $delivered, expected at least 75"
grep -q '^qrpc_handshakes_total{result="ok"} [1-9]' "$tmp/scrape1" || fail "no handshakes counted"
echo "ok: the chat demo's traffic is counted ($published published, $delivered delivered)"

if command -v promtool >/dev/null; then
  sed '1,/^$/d' "$tmp/scrape1" | promtool check metrics || fail "promtool check metrics"
  echo "ok: promtool check metrics"
else
  echo "skipped: promtool is not installed (Debian package prometheus)"
fi

status=0
"$broker" --listen 127.0.0.1:0 --cert "$cert" --key "$key" \
  --metrics "127.0.0.1:$mport" >/dev/null 2>"$tmp/err2" || status=$?
[ "$status" -eq 2 ] || fail "a taken metrics address: exit status $status, expected 2"
grep -q -- "cannot serve --metrics" "$tmp/err2" || fail "no message: $(cat "$tmp/err2")"
echo "ok: a taken metrics address is refused"

kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=
[ "$status" -eq 0 ] || fail "exit status $status after SIGTERM"
echo "ok: SIGTERM"
