#!/usr/bin/env bash
# Code generator install test (run by ctest): installs a qrpc build tree
# into a temporary prefix, builds the hello example against it with
# find_package(qrpc) and qrpc_generate() (so the installed protoc-gen-qrpc,
# QrpcGenerate.cmake and qrpc/options.proto are what is used), and runs
# hello_server and hello_client over loopback.
#
# usage: run-codegen-install-test.sh CMAKE BUILD_DIR CONSUMER_DIR HELLO_DIR
#                                    GEN_CERTS CC [EXTRA_FLAGS]
#   EXTRA_FLAGS: compile and link flags for the consumer (the sanitizer
#   flags in a sanitizer build), one string.
set -euo pipefail

if [ $# -lt 6 ] || [ $# -gt 7 ]; then
  echo "usage: $0 CMAKE BUILD_DIR CONSUMER_DIR HELLO_DIR GEN_CERTS CC [EXTRA_FLAGS]" >&2
  exit 2
fi
cmake=$1
build_dir=$2
consumer_dir=$3
hello_dir=$4
gen_certs=$5
cc=$6
flags=${7:-}

fail() { printf 'codegen install test: FAILED: %s\n' "$*" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-codegen-install.XXXXXX")
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
prefix=$tmp/prefix

echo "== cmake --install $build_dir --prefix $prefix"
"$cmake" --install "$build_dir" --prefix "$prefix" >/dev/null
for f in bin/protoc-gen-qrpc share/qrpc/proto/qrpc/options.proto; do
  [ -e "$prefix/$f" ] || fail "missing $prefix/$f"
done
[ -n "$(find "$prefix" -name QrpcGenerate.cmake -print -quit)" ] ||
  fail "QrpcGenerate.cmake was not installed"

echo "== building the hello example against the installed qrpc"
"$cmake" -S "$consumer_dir" -B "$tmp/build" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_C_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="$flags" -DHELLO_DIR="$hello_dir" >/dev/null
"$cmake" --build "$tmp/build"
for f in hello_server_qrpc/hello.qrpc.h hello_server_qrpc/hello.pb-c.h \
         hello_client_qrpc/hello.qrpc.c; do
  [ -e "$tmp/build/$f" ] || fail "qrpc_generate did not produce $f"
done

echo "== running hello_server and hello_client"
bash "$gen_certs" "$tmp/certs" >/dev/null
export LD_LIBRARY_PATH="$(dirname "$(find "$prefix" -name 'libqrpc.so' -print -quit)")"
"$tmp/build/hello_server" --listen 127.0.0.1:0 --cert "$tmp/certs/server.pem" \
  --key "$tmp/certs/server-key.pem" >"$tmp/server.log" 2>&1 &
server_pid=$!
port=
for _ in $(seq 100); do
  port=$(sed -n 's/^READY \([0-9][0-9]*\)$/\1/p' "$tmp/server.log")
  if [ -n "$port" ] || ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  sleep 0.1
done
[ -n "$port" ] || { cat "$tmp/server.log" >&2; fail "hello_server did not report READY <port>"; }
reply=$("$tmp/build/hello_client" --connect "127.0.0.1:$port" \
  --ca "$tmp/certs/ca.pem" --servername localhost --timeout 10 installed) ||
  fail "hello_client failed"
[ "$reply" = "Hello, installed" ] || fail "unexpected reply '$reply'"
kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=
[ "$status" -eq 0 ] || { cat "$tmp/server.log" >&2; fail "hello_server exited with status $status"; }
echo "ok: $reply"
echo "codegen install test: all checks passed"
