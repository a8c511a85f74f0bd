#!/usr/bin/env bash
# qrpc-pub and qrpc-sub end to end (run by ctest): a qrpc-broker with an
# ACL on a free loopback port, subscribers in the background (the test
# waits for their "subscribed to" line before publishing, never for a
# time), publishers from arguments and stdin. Checks what the subscribers
# print in each format, that -n COUNT ends them with status 0, retained
# messages, and that a wrong address, a wrong CA, an unknown token and an
# ACL denial and a bad command line exit 1, each with a message saying
# what is wrong. Every program runs under `timeout`, so the test ends by
# itself.
#
# usage: run-tools.sh BROKER PUB SUB GEN_CERTS
set -euo pipefail
broker=$1
pub=$2
sub=$3
gen_certs=$4
tmp=$(mktemp -d)
broker_pid=
bg_pids=()
cleanup() {
  local p
  for p in "${bg_pids[@]}" $broker_pid; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
# Seconds any one program may run: a bound on a hang, not a measurement.
limit=30

bash "$gen_certs" "$tmp/certs" >/dev/null
ca=$tmp/certs/ca.pem

# -- Command lines -----------------------------------------------------------

for tool in "$pub" "$sub"; do
  help=$("$tool" --help)
  for word in NAME SYNOPSIS DESCRIPTION OPTIONS "EXIT STATUS" EXAMPLES \
              --server --token --ca --cert --count --connect-timeout; do
    grep -qF -- "$word" <<<"$help" || fail "$(basename "$tool") --help lacks '$word'"
  done
done
grep -qF -- --retain <<<"$("$pub" --help)" || fail "qrpc-pub --help lacks --retain"
for word in --realtime --policy --group --format json raw; do
  grep -qF -- "$word" <<<"$("$sub" --help)" || fail "qrpc-sub --help lacks '$word'"
done
echo "ok: --help of both"

# expect STATUS PATTERN CMD...: CMD exits STATUS with PATTERN on stderr.
expect() {
  local want=$1 pattern=$2 status=0
  shift 2
  timeout "$limit" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null || status=$?
  [ "$status" -eq "$want" ] ||
    fail "$*: exit status $status, expected $want: $(cat "$tmp/err")"
  grep -qF -- "$pattern" "$tmp/err" ||
    fail "$*: stderr lacks '$pattern': $(cat "$tmp/err")"
  echo "ok: exit $want: $(head -1 "$tmp/err")"
}

expect 1 "unknown option '--bogus'" "$pub" --bogus t m
expect 1 "TOPIC is required" "$pub"
expect 1 "one TOPIC and at most one MESSAGE" "$pub" t m extra
expect 1 "-n expects a whole number from 1" "$pub" -n 0 t m
expect 1 "--cert needs --key" "$pub" --cert "$tmp/certs/client.pem" t m
expect 1 "-s expects HOST:PORT" "$pub" -s localhost t m
expect 1 "invalid topic 'a.*'" "$pub" --ca "$ca" 'a.*' m
expect 1 "at least one PATTERN" "$sub"
expect 1 "--format expects text, json or raw, not 'xml'" "$sub" -F xml a
expect 1 "--policy expects disconnect" "$sub" --policy never a
expect 1 "invalid --group 'a b': only ASCII letters, digits" "$sub" --group 'a b' a
expect 1 "--group expects a value" "$sub" --group
expect 1 "invalid pattern 'a.>.b'" "$sub" --ca "$ca" 'a.>.b'
expect 1 "--connect-timeout expects a whole number" "$sub" --connect-timeout x a

# -- A broker ------------------------------------------------------------------

cat >"$tmp/acl" <<'ACL'
token writer
  publish >
  subscribe >
token reader
  subscribe public.>
anonymous
  publish public.>
  subscribe public.>
ACL
"$broker" --listen 127.0.0.1:0 --cert "$tmp/certs/server.pem" \
  --key "$tmp/certs/server-key.pem" --acl "$tmp/acl" \
  >"$tmp/broker.out" 2>"$tmp/broker.err" &
broker_pid=$!
port=
for _ in $(seq 200); do
  port=$(sed -n 's/^READY \([0-9][0-9]*\)$/\1/p' "$tmp/broker.out")
  [ -n "$port" ] && break
  kill -0 "$broker_pid" 2>/dev/null || break
  sleep 0.05
done
[ -n "$port" ] || fail "qrpc-broker did not report READY: $(cat "$tmp/broker.err")"
# It names the address it is bound to, not the port 0 it was asked for.
grep -qF "serving on 127.0.0.1:$port " "$tmp/broker.err" ||
  fail "qrpc-broker does not name its bound address: $(cat "$tmp/broker.err")"
echo "ok: qrpc-broker on 127.0.0.1:$port"
server=(-s "127.0.0.1:$port" --ca "$ca")

# start_sub NAME ARGS...: qrpc-sub in the background, its output in
# $tmp/NAME.out and .err; returns once every pattern is subscribed.
# Patterns are the ARGS not starting with '-' that no option takes, so
# give them last, after "--".
start_sub() {
  local name=$1
  shift
  timeout "$limit" "$sub" "${server[@]}" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  eval "${name}_pid=$!"
  bg_pids+=($!)
  local patterns=0 seen=0 a after=0
  for a in "$@"; do
    if [ "$after" = 1 ]; then patterns=$((patterns + 1)); fi
    if [ "$a" = -- ]; then after=1; fi
  done
  for _ in $(seq 400); do
    seen=$(grep -c "^qrpc-sub: subscribed to " "$tmp/$name.err" || true)
    [ "$seen" -ge "$patterns" ] && return 0
    kill -0 "$(eval echo "\$${name}_pid")" 2>/dev/null || break
    sleep 0.05
  done
  fail "$name: not subscribed: $(cat "$tmp/$name.err")"
}

# wait_sub NAME: waits for it; it must exit 0.
wait_sub() {
  local status=0
  wait "$(eval echo "\$${1}_pid")" || status=$?
  [ "$status" -eq 0 ] || fail "$1: exit status $status: $(cat "$tmp/$1.err")"
}

publish() { timeout "$limit" "$pub" "${server[@]}" "$@"; }

# Text: a message from an argument and one from stdin, by two patterns.
start_sub text -t writer -n 3 -- 'news.*' 'other.>'
publish -t writer news.today 'hello world'
printf 'two\nlines\n' | publish -t writer other.deep.topic
printf 'tab\there \\ \001' | publish -t writer news.raw
wait_sub text
printf '%s\n' 'news.today hello world' 'other.deep.topic two\nlines\n' \
  'news.raw tab\there \\ \x01' >"$tmp/text.want"
diff -u "$tmp/text.want" "$tmp/text.out" || fail "text output differs"
echo "ok: text format, from an argument and stdin, -n 3 ended it"

# JSON, -n COUNT with pub -n: five copies, then exit.
start_sub json -t writer -F json -n 5 -- 'j.>'
publish -t writer -n 5 j.x 'say "hi"'
wait_sub json
[ "$(wc -l <"$tmp/json.out")" -eq 5 ] || fail "json: $(wc -l <"$tmp/json.out") lines, expected 5"
sort -u "$tmp/json.out" >"$tmp/json.uniq"
echo '{"topic":"j.x","payload":"say \"hi\"","retained":false}' >"$tmp/json.want"
diff -u "$tmp/json.want" "$tmp/json.uniq" || fail "json output differs"
echo "ok: json format, pub -n 5 and sub -n 5"

# Raw, and a payload that is not UTF-8 in JSON.
start_sub bin -t writer -F json -n 1 -- bin.x
printf '\377\000a' | publish -t writer bin.x
wait_sub bin
grep -qxF '{"topic":"bin.x","payload_base64":"/wBh","retained":false}' "$tmp/bin.out" ||
  fail "binary payload in json: $(cat "$tmp/bin.out")"
start_sub raw -t writer -F raw -n 2 -- raw.x
publish -t writer raw.x 'ab'
publish -t writer raw.x 'cd'
wait_sub raw
[ "$(cat "$tmp/raw.out")" = abcd ] || fail "raw output: $(cat "$tmp/raw.out")"
echo "ok: raw format and base64 in json"

# Retained: published before anyone subscribes, received on subscribing.
publish -r public.status 'up since 9'
timeout "$limit" "$sub" "${server[@]}" -n 1 public.status >"$tmp/ret.out" 2>"$tmp/ret.err" ||
  fail "retained: $(cat "$tmp/ret.err")"
[ "$(cat "$tmp/ret.out")" = 'public.status up since 9' ] ||
  fail "retained: $(cat "$tmp/ret.out")"
timeout "$limit" "$sub" "${server[@]}" -t reader -F json -n 1 'public.>' \
  >"$tmp/ret.out" 2>"$tmp/ret.err" || fail "retained json: $(cat "$tmp/ret.err")"
grep -qF '"retained":true' "$tmp/ret.out" || fail "retained json: $(cat "$tmp/ret.out")"
echo "ok: a retained message reaches later subscribers, marked in json"

# Refusals.
expect 1 "refused to let this client publish on 'private.x': PERMISSION_DENIED" \
  "$pub" "${server[@]}" -t reader private.x m
expect 1 "refused this client the subscription to 'private.>': PERMISSION_DENIED" \
  "$sub" "${server[@]}" -t reader 'private.>'
expect 1 "refused the token (-t): UNAUTHENTICATED" \
  "$pub" "${server[@]}" -t nobody public.x m
# A wrong CA (a certificate that signed nothing) ends the tool at the
# first failed handshake, saying why.
expect 1 "cannot connect to the broker at 127.0.0.1:$port: TLS handshake failed: certificate of 127.0.0.1 not trusted" \
  "$sub" -s "127.0.0.1:$port" --ca "$tmp/certs/client.pem" --connect-timeout 30 x
# A port nothing listens on: the broker's, once it is stopped.
kill -TERM "$broker_pid"
wait "$broker_pid" || fail "qrpc-broker did not exit 0: $(cat "$tmp/broker.err")"
broker_pid=
expect 1 "cannot connect to the broker at 127.0.0.1:$port within 2 s: no server at 127.0.0.1:$port" \
  "$pub" "${server[@]}" --connect-timeout 2 public.x m
echo "tools test: all checks passed"
