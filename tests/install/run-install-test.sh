#!/usr/bin/env bash
# Install test driver (run by ctest): installs a qrpc build tree into a
# temporary prefix and checks that a consumer builds and runs against it,
# with CMake's find_package and with pkg-config, shared and static. The
# shared programs run without LD_LIBRARY_PATH (the prefix is outside the
# loader's search path): the CMake package and -Wl,-rpath give them a
# RUNPATH, also once a CMake consumer is installed.
#
# usage: run-install-test.sh CMAKE BUILD_DIR CONSUMER_DIR CC [EXTRA_FLAGS]
#   EXTRA_FLAGS: compile and link flags for the consumer (the sanitizer
#   flags in a sanitizer build), one string.
set -euo pipefail

if [ $# -lt 4 ] || [ $# -gt 5 ]; then
  echo "usage: $0 CMAKE BUILD_DIR CONSUMER_DIR CC [EXTRA_FLAGS]" >&2
  exit 2
fi
cmake=$1
build_dir=$2
consumer_dir=$3
cc=$4
read -r -a extra_flags <<<"${5:-}"

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'install test: FAILED: %s\n' "$*" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-install-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

step "cmake --install $build_dir --prefix $prefix"
"$cmake" --install "$build_dir" --prefix "$prefix"

step "installed files"
pc=$(find "$prefix" -name qrpc.pc -print -quit)
[ -n "$pc" ] || fail "qrpc.pc was not installed"
libdir=$(dirname "$(dirname "$pc")")
for f in "$prefix/include/qrpc/qrpc.h" "$prefix/include/qrpc/quic.h" \
         "$prefix/include/qrpc/stub.h" \
         "$libdir/libqrpc.a" "$libdir/libqrpc.so" \
         "$libdir/cmake/qrpc/qrpcConfig.cmake" \
         "$libdir/cmake/qrpc/qrpcConfigVersion.cmake" \
         "$libdir/cmake/qrpc/qrpcTargets.cmake"; do
  [ -e "$f" ] || fail "missing $f"
  echo "ok: ${f#"$prefix"/}"
done
[ -L "$libdir/libqrpc.so" ] || fail "libqrpc.so is not a symlink to the versioned library"
soname=$(objdump -p "$libdir/libqrpc.so" | awk '$1 == "SONAME" { print $2 }')
if [ -z "$soname" ] || [ ! -e "$libdir/$soname" ]; then
  fail "soname '$soname' not installed"
fi
echo "ok: soname $soname"
for p in qrpc-broker qrpc-pub qrpc-sub qrpc-bench qrpc-certs protoc-gen-qrpc; do
  [ -x "$prefix/bin/$p" ] || fail "missing $prefix/bin/$p"
done
for p in qrpc-broker qrpc-pub qrpc-sub qrpc-bench qrpc-certs; do
  env -u LD_LIBRARY_PATH "$prefix/bin/$p" --help >/dev/null ||
    fail "installed $p --help failed"
done
echo "ok: bin/ programs run"
stray=$(find "$prefix/include" -type f ! -path "$prefix/include/qrpc/*.h")
[ -z "$stray" ] || fail "unexpected files under include/: $stray"

step "exported symbols of libqrpc.so"
exported=$(nm -D --defined-only "$libdir/libqrpc.so" | awk '{ print $3 }' |
  grep -vxE '_init|_fini|_edata|_end|__bss_start' || true)
# Every function the installed headers declare must be there.
declared=$(grep -ohE '\bqrpc_[A-Za-z0-9_]+[[:space:]]*\(' "$prefix"/include/qrpc/*.h |
  tr -d ' \t(' | sort -u)
[ -n "$declared" ] || fail "no qrpc_* functions found in the installed headers"
if ! grep -q '^qrpc_' <<<"$exported"; then
  fail "libqrpc.so exports no qrpc_* function at all (compiled with hidden visibility and no public function marked visible?)"
fi
missing=$(comm -23 <(printf '%s\n' "$declared") <(printf '%s\n' "$exported" | sort -u))
if [ -n "$missing" ]; then
  fail "libqrpc.so lacks $(wc -l <<<"$missing") of the $(wc -l <<<"$declared") functions the headers declare: $(tr '\n' ' ' <<<"$missing")"
fi
stray=$(grep -v '^qrpc_' <<<"$exported" || true)
[ -z "$stray" ] || fail "libqrpc.so exports non-API symbols: $(tr '\n' ' ' <<<"$stray")"
echo "ok: $(wc -l <<<"$exported") symbols, all qrpc_*, covering the $(wc -l <<<"$declared") functions the headers declare"

# Checks a consumer's output: the version must match the installed
# package's and the error name must be a real one.
check_output() {
  local name=$1 out=$2 want
  want=$(PKG_CONFIG_PATH=$libdir/pkgconfig pkg-config --modversion qrpc)
  printf '%s\n' "$out" | sed "s/^/  $name: /"
  grep -qx "qrpc $want" <<<"$out" || fail "$name: expected 'qrpc $want'"
  grep -q '^QRPC_ETLS: .' <<<"$out" || fail "$name: no error name printed"
  if grep -qi 'unknown' <<<"$out"; then
    fail "$name: qrpc_strerror(QRPC_ETLS) is unknown"
  fi
  echo "ok: $name"
}

step "consumer with find_package(qrpc CONFIG)"
flags="${extra_flags[*]}"
"$cmake" -S "$consumer_dir" -B "$tmp/consumer-build" \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_COMPILER="$cc" \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags"
"$cmake" --build "$tmp/consumer-build"
check_output cmake-shared "$("$tmp/consumer-build/consumer_shared")"
check_output cmake-static "$("$tmp/consumer-build/consumer_static")"
# Installed, the program loses the build tree's rpath: it still finds
# libqrpc.so through the one the CMake package gives qrpc::qrpc.
"$cmake" --install "$tmp/consumer-build" --prefix "$tmp/consumer-prefix" >/dev/null
readelf -d "$tmp/consumer-prefix/bin/consumer_shared" | grep "RUNPATH.*$libdir" >/dev/null ||
  fail "the installed consumer_shared has no RUNPATH to $libdir"
check_output cmake-shared-installed \
  "$(env -u LD_LIBRARY_PATH "$tmp/consumer-prefix/bin/consumer_shared")"
if objdump -p "$tmp/consumer-build/consumer_static" | grep 'NEEDED.*libqrpc' >/dev/null; then
  fail "consumer_static depends on libqrpc.so"
fi

step "consumer with pkg-config"
export PKG_CONFIG_PATH=$libdir/pkgconfig
read -r -a pc_cflags <<<"$(pkg-config --cflags qrpc)"
read -r -a pc_libs <<<"$(pkg-config --libs qrpc)"
echo "pkg-config --cflags --libs qrpc: ${pc_cflags[*]} ${pc_libs[*]}"
# The prefix is not one the loader searches: the program finds libqrpc.so
# through the RUNPATH that -Wl,-rpath gives it (README, "Building against
# an installed qrpc"), not through LD_LIBRARY_PATH.
unset LD_LIBRARY_PATH
pc_libdir=$(pkg-config --variable=libdir qrpc)
"$cc" -std=c11 -Wall -Wextra -Werror "${extra_flags[@]}" "${pc_cflags[@]}" \
  "$consumer_dir/main.c" -o "$tmp/consumer_pc" -Wl,-rpath,"$pc_libdir" \
  "${pc_libs[@]}"
check_output pkg-config-shared "$("$tmp/consumer_pc")"

# Static: libqrpc.a named explicitly (so the linker cannot pick the shared
# library), plus the modules in Requires.private linked as usual. This checks
# that Requires.private names every library libqrpc.a needs. (A fully static
# link with `pkg-config --static` would also need static archives of all of
# GnuTLS's own dependencies, which Debian does not ship.)
read -r -a private_mods <<<"$(pkg-config --print-requires-private qrpc | awk '{ print $1 }' | tr '\n' ' ')"
[ "${#private_mods[@]}" -gt 0 ] || fail "qrpc.pc has no Requires.private"
read -r -a private_libs <<<"$(pkg-config --libs "${private_mods[@]}")"
read -r -a other_libs <<<"$(pkg-config --static --libs-only-other qrpc)"
echo "static link: libqrpc.a ${private_libs[*]} ${other_libs[*]}"
"$cc" -std=c11 -Wall -Wextra -Werror "${extra_flags[@]}" "${pc_cflags[@]}" \
  "$consumer_dir/main.c" -o "$tmp/consumer_pc_static" "$libdir/libqrpc.a" \
  "${private_libs[@]}" "${other_libs[@]}"
check_output pkg-config-static "$("$tmp/consumer_pc_static")"

printf '\ninstall test: all checks passed\n'
