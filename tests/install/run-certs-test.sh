#!/usr/bin/env bash
# qrpc-certs test (run by ctest): installs a qrpc build tree into a
# temporary prefix, runs the installed qrpc-certs into a temporary
# directory and checks the result with openssl: both chains verify against
# the CA, the server certificate names localhost and 127.0.0.1 (and ::1),
# the client certificate is for client authentication, keys match their
# certificates and are private, a second run keeps everything, --help
# documents the command and a bad command line exits 2.
#
# usage: run-certs-test.sh CMAKE BUILD_DIR
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 CMAKE BUILD_DIR" >&2
  exit 2
fi
cmake=$1
build_dir=$2

fail() { printf 'certs test: FAILED: %s\n' "$*" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-certs-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
"$cmake" --install "$build_dir" --prefix "$prefix" >/dev/null
certs=$prefix/bin/qrpc-certs
[ -x "$certs" ] || fail "$certs is not installed or not executable"

help=$("$certs" --help) || fail "--help exited $?"
for word in SYNOPSIS OPTIONS "EXIT STATUS" --force ca.pem server.pem client.pem \
            127.0.0.1 localhost; do
  grep -qF -- "$word" <<<"$help" || fail "--help does not mention '$word'"
done
echo "ok: --help"
status=0
"$certs" --bogus >/dev/null 2>"$tmp/err" || status=$?
[ "$status" -eq 2 ] || fail "--bogus: exit status $status, expected 2"
grep -q "qrpc-certs: unknown option '--bogus'" "$tmp/err" ||
  fail "--bogus: unclear message: $(cat "$tmp/err")"
echo "ok: a bad command line exits 2: $(cat "$tmp/err")"

dir=$tmp/out/certs
"$certs" "$dir" >"$tmp/log" || fail "qrpc-certs failed: $(cat "$tmp/log")"
for f in ca.pem ca-key.pem server.pem server-key.pem client.pem client-key.pem; do
  [ -s "$dir/$f" ] || fail "missing $dir/$f"
done
for f in ca-key.pem server-key.pem client-key.pem; do
  mode=$(stat -c %a "$dir/$f")
  [ "$mode" = 600 ] || fail "$f has mode $mode, expected 600"
done
echo "ok: six files, keys readable by their owner only"

for who in server client; do
  openssl verify -CAfile "$dir/ca.pem" "$dir/$who.pem" >/dev/null ||
    fail "$who.pem does not verify against ca.pem"
  [ "$(openssl x509 -pubkey -noout -in "$dir/$who.pem")" = \
    "$(openssl pkey -pubout -in "$dir/$who-key.pem")" ] ||
    fail "$who-key.pem is not the key of $who.pem"
done
openssl verify -CAfile "$dir/ca.pem" -purpose sslserver "$dir/server.pem" \
  >/dev/null || fail "server.pem is not valid for TLS servers"
openssl verify -CAfile "$dir/ca.pem" -purpose sslclient "$dir/client.pem" \
  >/dev/null || fail "client.pem is not valid for TLS clients"
echo "ok: both chains verify, for their purposes, and the keys match"

san=$(openssl x509 -noout -ext subjectAltName -in "$dir/server.pem")
for name in DNS:localhost "IP Address:127.0.0.1" "IP Address:0:0:0:0:0:0:0:1"; do
  grep -qF "$name" <<<"$san" || fail "server.pem lacks the SAN $name: $san"
done
openssl x509 -noout -checkhost localhost -in "$dir/server.pem" | grep 'does match' >/dev/null ||
  fail "server.pem does not match the host localhost"
openssl x509 -noout -checkip 127.0.0.1 -in "$dir/server.pem" | grep 'does match' >/dev/null ||
  fail "server.pem does not match the address 127.0.0.1"
echo "ok: server.pem is for localhost and 127.0.0.1: $(tr -s ' \n' ' ' <<<"$san")"
client_san=$(openssl x509 -noout -ext subjectAltName -in "$dir/client.pem")
grep -qF "URI:spiffe://qrpc.dev/client" <<<"$client_san" ||
  fail "client.pem lacks its URI SAN: $client_san"
echo "ok: client.pem names spiffe://qrpc.dev/client"

before=$(sha256sum "$dir"/*.pem)
"$certs" "$dir" >"$tmp/log" || fail "a second run failed: $(cat "$tmp/log")"
[ "$before" = "$(sha256sum "$dir"/*.pem)" ] || fail "a second run changed the files"
grep -q "keeping the existing certificates" "$tmp/log" ||
  fail "a second run does not say it kept the files: $(cat "$tmp/log")"
echo "ok: a second run keeps everything"

echo "certs test: all checks passed"
