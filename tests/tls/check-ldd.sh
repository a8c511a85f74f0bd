#!/usr/bin/env bash
# check-ldd.sh FILE... -- FILE...: the files before -- must load no libssl
# or libcrypto at all; those after it exactly one of each (the system's).
set -euo pipefail
status=0
mode=none
for f in "$@"; do
  if [ "$f" = -- ]; then mode=one; continue; fi
  libs=$(ldd "$f" | awk '{print $1}' | grep -E '^lib(ssl|crypto)\.so' | sort || true)
  n=$(printf '%s' "$libs" | grep -c . || true)
  if [ "$mode" = none ] && [ "$n" -ne 0 ]; then
    echo "check-ldd: $f loads $libs"; status=1
  elif [ "$mode" = one ] && [ "$n" -ne 2 ]; then
    echo "check-ldd: $f should load the system's libssl and libcrypto once each, loads: $libs"; status=1
  else
    echo "check-ldd: $f: ${libs:-no libssl or libcrypto}" | tr '\n' ' '; echo
  fi
done
exit $status
