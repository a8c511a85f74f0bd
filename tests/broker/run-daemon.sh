#!/usr/bin/env bash
# The qrpc-broker daemon's command line: --help, refusals of a bad
# configuration (exit 2 with a message naming what is wrong), and a clean
# start and drain: READY <port> on stdout, SIGTERM exits 0 after a RESULT
# line. Then mutual TLS with --client-ca and an ACL section by certificate
# subject, driven by the chat example: with the development client
# certificate it may chat, without one it is refused at the handshake, and
# with a certificate the ACL does not name it gets no rights. Everything
# binds to 127.0.0.1 and stops by itself.
#
# usage: run-daemon.sh BROKER GEN_CERTS CHAT
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
client_cert=(--cert "$tmp/certs/client.pem" --key "$tmp/certs/client-key.pem")

"$broker" --help | grep -- '--acl' >/dev/null || fail "--help does not list --acl"

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
expect_refusal "ACL with a bad pattern" \
  "acl-bad-pattern:2: invalid pattern 'chat.>.x': '>' may only be the last level" \
  --cert "$cert" --key "$key" --listen 127.0.0.1:0 --acl "$tmp/acl-bad-pattern"
[ "$(grep -c -- "acl-bad-pattern:2" "$tmp/err")" -eq 1 ] ||
  fail "the ACL error is printed more than once: $(cat "$tmp/err")"
printf '# certificates\ncert subject "CN=a,O=b\n' >"$tmp/acl-bad-cert"
expect_refusal "ACL with an unterminated quoted value" \
  "acl-bad-cert:2: quoted value without its closing" \
  --cert "$cert" --key "$key" --listen 127.0.0.1:0 --acl "$tmp/acl-bad-cert"
expect_refusal "missing --client-ca file" \
  "cannot load --client-ca $tmp/none.pem" \
  --cert "$cert" --key "$key" --listen 127.0.0.1:0 --client-ca "$tmp/none.pem"

# start_broker ARGS...: starts the daemon on a free port with the server
# certificate and ARGS; sets pid and port.
start_broker() {
  "$broker" --listen 127.0.0.1:0 --cert "$cert" --key "$key" "$@" \
    >"$tmp/out" 2>"$tmp/err" &
  pid=$!
  port=
  for _ in $(seq 100); do
    port=$(sed -n 's/^READY \([0-9][0-9]*\)$/\1/p' "$tmp/out")
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$port" ] || fail "no READY line: $(cat "$tmp/err")"
  echo "ok: READY $port ($*)"
}

# stop_broker PUBLISHED: SIGTERM, exit status 0 and a RESULT line counting
# PUBLISHED messages.
stop_broker() {
  kill -TERM "$pid"
  local status=0
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  wait "$pid" || status=$?
  pid=
  [ "$status" -eq 0 ] || fail "exit status $status after SIGTERM: $(cat "$tmp/err")"
  grep -q "^RESULT published=$1 " "$tmp/out" ||
    fail "no RESULT line with published=$1: $(cat "$tmp/out")"
  grep -q 'SIGTERM: draining' "$tmp/err" || fail "no drain message"
  echo "ok: SIGTERM drained and exited 0"
}

# chat_demo USERS ARGS...: runs chat --demo USERS against the broker; its
# exit status is left in chat_status, its stderr in $tmp/chat.err.
chat_demo() {
  local users=$1
  shift
  chat_status=0
  "$chat" --demo "$users" --connect "127.0.0.1:$port" --ca "$ca" \
    --servername localhost "$@" >"$tmp/chat.out" 2>"$tmp/chat.err" ||
    chat_status=$?
}

printf 'token s3cret\n  publish >\n  subscribe >\n' >"$tmp/acl"
start_broker --acl "$tmp/acl" --log-level info
stop_broker 0

# Mutual TLS, and rights by certificate subject.
dev_subject="CN=qrpc development client,O=qrpc development"
printf 'cert subject "%s"\n  publish chat.>\n  subscribe chat.>\n' \
  "$dev_subject" >"$tmp/acl-cert"
start_broker --client-ca "$ca" --acl "$tmp/acl-cert" --log-level debug
grep -q 'client certificates required' "$tmp/err" ||
  fail "the start-up line does not say client certificates are required"
chat_demo 2 "${client_cert[@]}"
[ "$chat_status" -eq 0 ] ||
  fail "chat with the client certificate: status $chat_status: $(cat "$tmp/chat.err")"
grep -qF "client certificate '$dev_subject': ACL cert section of line 1" \
  "$tmp/err" || fail "the broker did not log the client's subject and section"
echo "ok: a client certificate named by the ACL may chat"
chat_demo 1
[ "$chat_status" -eq 1 ] || fail "chat without a certificate: status $chat_status"
grep -q "refused this client's certificate, or requires one" "$tmp/chat.err" ||
  fail "chat without a certificate does not say why: $(cat "$tmp/chat.err")"
echo "ok: a client without a certificate is refused: $(tail -1 "$tmp/chat.err")"
stop_broker 6

printf 'cert subject "CN=someone else"\n  publish chat.>\n  subscribe chat.>\n' \
  >"$tmp/acl-other"
start_broker --client-ca "$ca" --acl "$tmp/acl-other"
chat_demo 1 "${client_cert[@]}"
[ "$chat_status" -eq 1 ] ||
  fail "chat with a certificate the ACL does not name: status $chat_status"
grep -q 'PERMISSION_DENIED' "$tmp/chat.err" ||
  fail "chat with an unnamed certificate was not denied: $(cat "$tmp/chat.err")"
echo "ok: a certificate the ACL does not name gets no rights: $(head -1 "$tmp/chat.err")"
stop_broker 0
