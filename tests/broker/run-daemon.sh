#!/usr/bin/env bash
# The qrpc-broker daemon's command line: --help, refusals of a bad
# configuration (exit 2 with a message naming what is wrong), and a clean
# start and drain: READY <port> on stdout, SIGTERM exits 0 after a RESULT
# line. Everything binds to 127.0.0.1 and stops by itself.
#
# usage: run-daemon.sh BROKER GEN_CERTS
set -euo pipefail
broker=$1
gen_certs=$2
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

"$broker" --help | grep -q -- '--acl' || fail "--help does not list --acl"

# expect_refusal WHAT PATTERN ARGS...: exit status 2 and PATTERN on stderr.
expect_refusal() {
  local what=$1 pattern=$2
  shift 2
  local status=0
  "$broker" "$@" >"$tmp/out" 2>"$tmp/err" || status=$?
  [ "$status" -eq 2 ] || fail "$what: exit status $status, expected 2"
  grep -q -- "$pattern" "$tmp/err" ||
    fail "$what: stderr lacks '$pattern': $(cat "$tmp/err")"
  echo "ok: $what: $(head -1 "$tmp/err")"
}

expect_refusal "no certificate" "--cert and --key are required" \
  --listen 127.0.0.1:0
expect_refusal "unknown flag" "unknown argument '--bogus'" \
  --cert "$cert" --key "$key" --bogus 1
expect_refusal "bad number" "--queue-messages expects a whole number" \
  --cert "$cert" --key "$key" --queue-messages lots
expect_refusal "missing certificate file" "cannot load --cert" \
  --cert "$tmp/none.pem" --key "$key" --listen 127.0.0.1:0
printf 'publish chat.>\n' >"$tmp/acl-no-section"
expect_refusal "ACL permission outside a section" "acl-no-section:1" \
  --cert "$cert" --key "$key" --listen 127.0.0.1:0 --acl "$tmp/acl-no-section"
printf 'token t\n  subscribe chat.>.x\n' >"$tmp/acl-bad-pattern"
expect_refusal "ACL with a bad pattern" "acl-bad-pattern:2" \
  --cert "$cert" --key "$key" --listen 127.0.0.1:0 --acl "$tmp/acl-bad-pattern"

printf 'token s3cret\n  publish >\n  subscribe >\n' >"$tmp/acl"
"$broker" --listen 127.0.0.1:0 --cert "$cert" --key "$key" --acl "$tmp/acl" \
  --log-level info >"$tmp/out" 2>"$tmp/err" &
pid=$!
port=
for _ in $(seq 100); do
  port=$(sed -n 's/^READY \([0-9][0-9]*\)$/\1/p' "$tmp/out")
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
[ -n "$port" ] || fail "no READY line: $(cat "$tmp/err")"
echo "ok: READY $port"
kill -TERM "$pid"
status=0
for _ in $(seq 100); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
wait "$pid" || status=$?
pid=
[ "$status" -eq 0 ] || fail "exit status $status after SIGTERM: $(cat "$tmp/err")"
grep -q '^RESULT published=0 ' "$tmp/out" || fail "no RESULT line: $(cat "$tmp/out")"
grep -q 'SIGTERM: draining' "$tmp/err" || fail "no drain message"
echo "ok: SIGTERM drained and exited 0"
