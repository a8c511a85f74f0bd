#!/usr/bin/env bash
# Makes development certificates for qrpc servers on this machine:
#
#   ca.pem, ca-key.pem          a development certificate authority
#   server.pem, server-key.pem  a certificate for localhost, 127.0.0.1 and
#                               ::1, signed by that CA (server.pem holds the
#                               leaf certificate only)
#   client.pem, client-key.pem  a client certificate signed by that CA, for
#                               servers that require one (--client-ca ca.pem):
#                               CN "qrpc development client", URI
#                               spiffe://qrpc.dev/client
#
# All keys are ECDSA P-256. Clients trust ca.pem (e.g. echo_client --ca).
# Existing files are kept, so running the script again changes nothing;
# --force makes everything new. For development and tests only: never use
# these keys for anything reachable from other machines.
#
# Installed with qrpc as bin/qrpc-certs; in the source tree it is
# scripts/gen-certs.sh (make certs runs it).
set -euo pipefail

prog=$(basename "$0")

usage() {
  cat <<EOF
NAME
    $prog - development certificates for qrpc servers and clients

SYNOPSIS
    $prog [--force] [DIR]
    $prog --help

DESCRIPTION
    Creates, with the openssl command, in DIR (default: ./certs):

    ca.pem, ca-key.pem
        a development certificate authority (CN "qrpc development CA"),
        valid for 10 years;
    server.pem, server-key.pem
        a server certificate signed by that CA, for the names localhost,
        127.0.0.1 and ::1 (subjectAltName DNS:localhost, IP:127.0.0.1,
        IP:::1), valid for 825 days;
    client.pem, client-key.pem
        a client certificate signed by that CA, for mutual TLS (CN "qrpc
        development client", subjectAltName URI:spiffe://qrpc.dev/client).

    All keys are ECDSA P-256 and readable by their owner only. Existing
    files are kept (after checking that the server certificate still
    verifies against the CA and matches its key), so running $prog again
    changes nothing; a missing client certificate is added to an existing
    CA.

    Servers load server.pem and server-key.pem (qrpc-broker --cert --key,
    qrpc_tls_config_set_cert_files()); clients trust ca.pem (--ca,
    qrpc_tls_config_set_ca_file()). For mutual TLS a server also trusts
    ca.pem for client certificates (qrpc-broker --client-ca) and clients
    present client.pem and client-key.pem (--cert --key).

    These certificates are for development and tests only: never use them
    for anything reachable from other machines.

OPTIONS
    --force     make everything new, replacing the files in DIR
    -h, --help  this text

EXIT STATUS
    0 when the certificates are in DIR, 1 when they could not be made or
    the existing ones are inconsistent (the message says which and
    suggests --force), 2 on a bad command line.

EXAMPLES
    $prog certs
    qrpc-broker --cert certs/server.pem --key certs/server-key.pem &
    qrpc-sub -s localhost:7422 --ca certs/ca.pem 'chat.>'
EOF
}

log() { printf '%s: %s\n' "$prog" "$*"; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }
# A bad command line: exit status 2, as qrpc's other programs.
bad_usage() {
  printf '%s: %s (see --help)\n' "$prog" "$*" >&2
  exit 2
}

force=0
dir=
while [ $# -gt 0 ]; do
  case $1 in
    --force) force=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) bad_usage "unknown option '$1'" ;;
    *)
      [ -z "$dir" ] || bad_usage "only one DIR may be given (got '$dir' and '$1')"
      dir=$1
      ;;
  esac
  shift
done
if [ $# -gt 0 ]; then
  if [ -n "$dir" ] || [ $# -gt 1 ]; then
    bad_usage "only one DIR may be given"
  fi
  dir=$1
fi
dir=${dir:-./certs}

command -v openssl >/dev/null 2>&1 ||
  die "the openssl command is missing (on Debian: apt-get install openssl)"

CA_DAYS=3650
SERVER_DAYS=825
SERVER_SAN="DNS:localhost, IP:127.0.0.1, IP:::1"
CLIENT_SAN="URI:spiffe://qrpc.dev/client"

mkdir -p "$dir"
ca=$dir/ca.pem
ca_key=$dir/ca-key.pem
server=$dir/server.pem
server_key=$dir/server-key.pem
client=$dir/client.pem
client_key=$dir/client-key.pem

if [ "$force" = 1 ]; then
  rm -f "$ca" "$ca_key" "$server" "$server_key" "$client" "$client_key"
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
client_state=$(pair_state "$client" "$client_key")
[ "$ca_state" != partial ] ||
  die "only one of $ca and $ca_key exists; rerun with --force to start over"
[ "$server_state" != partial ] ||
  die "only one of $server and $server_key exists; rerun with --force to start over"
[ "$client_state" != partial ] ||
  die "only one of $client and $client_key exists; rerun with --force to start over"
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
  if [ "$client_state" = present ]; then
    log "keeping the existing certificates in $dir (use --force to make new ones)"
    exit 0
  fi
  only_client=1
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
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = $CLIENT_SAN
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

# signed NAME SUBJECT EXTENSIONS DAYS: a new key and a certificate signed by
# the CA, at $dir/NAME.pem and $dir/NAME-key.pem.
signed() {
  new_key "$dir/$1-key.pem"
  openssl req -new -config "$tmp/openssl.cnf" -key "$dir/$1-key.pem" \
    -subj "$2" -out "$tmp/$1.csr" ||
    die "could not create the certificate request for $1"
  openssl x509 -req -in "$tmp/$1.csr" -CA "$ca" -CAkey "$ca_key" \
    -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$4" \
    -extfile "$tmp/openssl.cnf" -extensions "$3" -out "$dir/$1.pem" 2>/dev/null ||
    die "could not sign $dir/$1.pem"
  openssl verify -CAfile "$ca" "$dir/$1.pem" >/dev/null ||
    die "the new $dir/$1.pem does not verify against $ca"
  log "done: $(openssl x509 -noout -subject -in "$dir/$1.pem"), $(openssl x509 -noout -enddate -in "$dir/$1.pem")"
}

if [ "${only_client:-0}" = 0 ]; then
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
  signed server "/O=qrpc development/CN=localhost" server_ext "$SERVER_DAYS"
fi
log "creating the client certificate for $CLIENT_SAN: $client"
signed client "/O=qrpc development/CN=qrpc development client" client_ext \
  "$SERVER_DAYS"
log "servers use $server and $server_key; clients trust $ca; servers that"
log "require client certificates trust $ca too (--client-ca), and clients"
log "present $client and $client_key"
