#!/usr/bin/env bash
# Makes development certificates for qrpc servers on this machine:
#
#   ca.pem, ca-key.pem          a development certificate authority
#   server.pem, server-key.pem  a certificate for localhost, 127.0.0.1 and
#                               ::1, signed by that CA (server.pem holds the
#                               leaf certificate only)
#
# All keys are ECDSA P-256. Clients trust ca.pem (e.g. echo_client --ca).
# Existing files are kept, so running the script again changes nothing;
# --force makes everything new. For development and tests only: never use
# these keys for anything reachable from other machines.
set -euo pipefail

usage() {
  cat <<EOF
usage: $0 [--force] [DIR]

Creates a development CA and a localhost server certificate in DIR
(default: ./certs). Existing files are kept unless --force is given.
EOF
}

log() { printf 'gen-certs: %s\n' "$*"; }
die() { printf 'gen-certs: error: %s\n' "$*" >&2; exit 1; }

force=0
dir=
while [ $# -gt 0 ]; do
  case $1 in
    --force) force=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) usage >&2; die "unknown option '$1'" ;;
    *)
      [ -z "$dir" ] || die "only one DIR may be given (got '$dir' and '$1')"
      dir=$1
      ;;
  esac
  shift
done
if [ $# -gt 0 ]; then
  if [ -n "$dir" ] || [ $# -gt 1 ]; then
    die "only one DIR may be given"
  fi
  dir=$1
fi
dir=${dir:-./certs}

command -v openssl >/dev/null 2>&1 ||
  die "the openssl command is missing (scripts/setup.sh installs it)"

CA_DAYS=3650
SERVER_DAYS=825
SERVER_SAN="DNS:localhost, IP:127.0.0.1, IP:::1"

mkdir -p "$dir"
ca=$dir/ca.pem
ca_key=$dir/ca-key.pem
server=$dir/server.pem
server_key=$dir/server-key.pem

if [ "$force" = 1 ]; then
  rm -f "$ca" "$ca_key" "$server" "$server_key"
fi

# Both files of a pair must be there, or neither.
pair_state() {
  if [ -e "$1" ] && [ -e "$2" ]; then
    echo present
  elif [ -e "$1" ] || [ -e "$2" ]; then
    echo partial
  else
    echo absent
  fi
}
ca_state=$(pair_state "$ca" "$ca_key")
server_state=$(pair_state "$server" "$server_key")
[ "$ca_state" != partial ] ||
  die "only one of $ca and $ca_key exists; rerun with --force to start over"
[ "$server_state" != partial ] ||
  die "only one of $server and $server_key exists; rerun with --force to start over"
if [ "$ca_state" = absent ] && [ "$server_state" = present ]; then
  die "$server exists but its CA is gone; rerun with --force to start over"
fi

if [ "$ca_state" = present ] && [ "$server_state" = present ]; then
  openssl verify -CAfile "$ca" "$server" >/dev/null 2>&1 ||
    die "$server does not verify against $ca; rerun with --force"
  openssl x509 -checkend 86400 -noout -in "$server" >/dev/null ||
    die "$server expires within a day; rerun with --force"
  [ "$(openssl x509 -pubkey -noout -in "$server")" = \
    "$(openssl pkey -pubout -in "$server_key" 2>/dev/null)" ] ||
    die "$server_key is not the key of $server; rerun with --force"
  log "keeping the existing certificates in $dir (use --force to make new ones)"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A private configuration, so the result does not depend on the system's
# openssl.cnf.
cat >"$tmp/openssl.cnf" <<EOF
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $SERVER_SAN
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

# Writes a new ECDSA P-256 private key readable by its owner only.
new_key() {
  (umask 077 && openssl genpkey -algorithm EC \
    -pkeyopt ec_paramgen_curve:P-256 -pkeyopt ec_param_enc:named_curve \
    -out "$1" 2>/dev/null) || die "could not create the key $1"
  chmod 600 "$1"
}

if [ "$ca_state" = absent ]; then
  log "creating the development CA: $ca"
  new_key "$ca_key"
  openssl req -new -x509 -config "$tmp/openssl.cnf" -extensions ca_ext \
    -key "$ca_key" -sha256 -days "$CA_DAYS" \
    -subj "/O=qrpc development/CN=qrpc development CA" -out "$ca" ||
    die "could not create $ca"
else
  log "reusing the CA in $dir"
fi

log "creating the server certificate for $SERVER_SAN: $server"
new_key "$server_key"
openssl req -new -config "$tmp/openssl.cnf" -key "$server_key" \
  -subj "/O=qrpc development/CN=localhost" -out "$tmp/server.csr" ||
  die "could not create the certificate request"
openssl x509 -req -in "$tmp/server.csr" -CA "$ca" -CAkey "$ca_key" \
  -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$SERVER_DAYS" \
  -extfile "$tmp/openssl.cnf" -extensions server_ext -out "$server" 2>/dev/null ||
  die "could not sign $server"

openssl verify -CAfile "$ca" "$server" >/dev/null ||
  die "the new $server does not verify against $ca"
log "done: $(openssl x509 -noout -subject -in "$server"), $(openssl x509 -noout -enddate -in "$server")"
log "servers use $server and $server_key; clients trust $ca"
