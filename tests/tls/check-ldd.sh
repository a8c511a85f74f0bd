#!/usr/bin/env bash
# check-ldd.sh FILE... -- FILE...: every file loads at most one libssl and
# one libcrypto, and only the system's (from the system library
# directories): qrpc's own OpenSSL is linked in statically with its
# symbols hidden, never loaded as a shared library. The files before --
# may load none (libqrpc loads the system's only because libnats, the
# broker cluster's NATS client, needs it); those after it must load both
# (they use the system's libssl themselves).
set -euo pipefail
status=0
mode=none
for f in "$@"; do
  if [ "$f" = -- ]; then mode=one; continue; fi
  # ldd's output is read whole first: a grep -q on a pipe from ldd can
  # stop reading early, and under pipefail ldd's SIGPIPE fails the test.
  deps=$(ldd "$f")
  libs=$(awk '$1 ~ /^lib(ssl|crypto)\.so/ {print $1 " " $3}' <<<"$deps" | sort || true)
  n=$(printf '%s' "$libs" | grep -c . || true)
  names=$(printf '%s\n' "$libs" | awk 'NF {print $1}' | sort -u | grep -c . || true)
  foreign=$(printf '%s\n' "$libs" | awk 'NF && $2 !~ /^\/(usr\/)?lib(64)?\/(x86_64-linux-gnu\/)?lib(ssl|crypto)/' || true)
  if [ -n "$foreign" ]; then
    echo "check-ldd: $f loads a libssl or libcrypto that is not the system's: $foreign"; status=1
  elif [ "$n" -ne "$names" ]; then
    echo "check-ldd: $f loads a libssl or libcrypto twice: $libs"; status=1
  elif [ "$mode" = none ] && [ "$n" -ne 0 ] && ! grep -q 'libnats' <<<"$deps"; then
    echo "check-ldd: $f loads $libs without libnats needing it"; status=1
  elif [ "$mode" = one ] && [ "$n" -ne 2 ]; then
    echo "check-ldd: $f should load the system's libssl and libcrypto once each, loads: $libs"; status=1
  else
    echo "check-ldd: $f: ${libs:-no libssl or libcrypto}" | tr '\n' ' '; echo
  fi
done
exit $status
