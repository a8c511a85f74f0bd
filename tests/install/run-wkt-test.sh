#!/usr/bin/env bash
# Well-known types and rpath test (run by ctest): installs a qrpc build
# tree into a temporary prefix (outside the loader's search path), then
# builds wkt/ (a key-value service whose .proto imports
# google/protobuf/empty.proto, timestamp.proto and the other well-known
# types) against it with each compiler given, warnings as errors:
#   - with CMake: find_package(qrpc) and qrpc_generate() and nothing else;
#     the program is installed into a prefix of its own and run from there;
#   - with pkg-config: protoc, protoc-c and protoc-gen-qrpc by hand, and
#     -Wl,-rpath,$(pkg-config --variable=libdir qrpc).
# Each program makes a real call over loopback with certificates from the
# installed qrpc-certs, and runs without LD_LIBRARY_PATH: libqrpc.so is
# found through the RUNPATH the package or the command line put in.
#
# usage: run-wkt-test.sh CMAKE BUILD_DIR WKT_DIR EXTRA_FLAGS CC...
#   EXTRA_FLAGS: compile and link flags for the programs (the sanitizer
#   flags in a sanitizer build), one string, maybe empty.
set -euo pipefail

if [ $# -lt 5 ]; then
  echo "usage: $0 CMAKE BUILD_DIR WKT_DIR EXTRA_FLAGS CC..." >&2
  exit 2
fi
cmake=$1
build_dir=$2
wkt_dir=$3
read -r -a extra_flags <<<"$4"
shift 4
compilers=("$@")

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'wkt test: FAILED: %s\n' "$*" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-wkt-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
unset LD_LIBRARY_PATH

step "cmake --install $build_dir --prefix $prefix"
"$cmake" --install "$build_dir" --prefix "$prefix" >/dev/null
pc=$(find "$prefix" -name qrpc.pc -print -quit)
[ -n "$pc" ] || fail "qrpc.pc was not installed"
libdir=$(dirname "$(dirname "$pc")")
for t in any duration empty field_mask struct timestamp wrappers; do
  f=$prefix/include/qrpc/wkt/google/protobuf/$t.pb-c.h
  [ -e "$f" ] || fail "missing $f"
done
[ -e "$libdir/libqrpc_wkt.a" ] || fail "missing $libdir/libqrpc_wkt.a"
echo "ok: the well-known types' headers and libqrpc_wkt.a"

step "certificates from the installed qrpc-certs"
"$prefix/bin/qrpc-certs" "$tmp/certs" >/dev/null

# run_kv NAME PROGRAM: runs it without LD_LIBRARY_PATH; it must link
# libqrpc.so and find it through its RUNPATH.
run_kv() {
  local name=$1 program=$2 out
  # grep reads all of objdump's output: with -q it could stop early and,
  # under pipefail, objdump's SIGPIPE would fail the check.
  objdump -p "$program" | grep 'NEEDED.*libqrpc\.so' >/dev/null ||
    fail "$name: $program does not link libqrpc.so"
  readelf -d "$program" | grep -E 'RUNPATH|RPATH' | sed "s/^/  $name: /"
  out=$("$program" "$tmp/certs") || fail "$name: $program failed"
  printf '  %s: %s\n' "$name" "$out"
  echo "ok: $name"
}

for cc in "${compilers[@]}"; do
  name=$(basename "$cc")
  step "$name: find_package(qrpc) and qrpc_generate(kv kv.proto)"
  flags="${extra_flags[*]}"
  "$cmake" -S "$wkt_dir" -B "$tmp/build-$name" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_C_COMPILER="$cc" -DCMAKE_C_FLAGS="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="$flags" >/dev/null
  "$cmake" --build "$tmp/build-$name"
  "$cmake" --install "$tmp/build-$name" --prefix "$tmp/app-$name" >/dev/null
  run_kv "cmake-$name (installed)" "$tmp/app-$name/bin/kv"

  step "$name: protoc and pkg-config"
  gen=$tmp/gen-$name
  mkdir -p "$gen"
  protoc -I"$wkt_dir" --c_out="$gen" "$wkt_dir/kv.proto"
  protoc -I"$wkt_dir" --plugin=protoc-gen-qrpc="$prefix/bin/protoc-gen-qrpc" \
    --qrpc_out="$gen" "$wkt_dir/kv.proto"
  export PKG_CONFIG_PATH=$libdir/pkgconfig
  read -r -a cflags <<<"$(pkg-config --cflags qrpc libprotobuf-c)"
  read -r -a libs <<<"$(pkg-config --libs qrpc libprotobuf-c)"
  rpath=$(pkg-config --variable=libdir qrpc)
  "$cc" -std=c11 -Wall -Wextra -Werror "${extra_flags[@]}" -I"$gen" \
    "${cflags[@]}" "$wkt_dir/kv.c" "$gen/kv.pb-c.c" "$gen/kv.qrpc.c" \
    -o "$tmp/kv-pc-$name" -Wl,-rpath,"$rpath" "${libs[@]}"
  run_kv "pkg-config-$name" "$tmp/kv-pc-$name"
done

printf '\nwkt test: all checks passed\n'
