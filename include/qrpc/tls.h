/*
 * TLS configuration for qrpc endpoints (TLS 1.3 inside QUIC).
 *
 * A qrpc_tls_config is built once and shared by any number of endpoints and
 * connections; they keep it alive by reference, so the application may free
 * its handle as soon as it has passed it on. Configure it before first use:
 * setters on a config already in use return QRPC_ESTATE.
 *
 * The ALPN is always "qrpc/1"; a peer that does not offer it is refused
 * during the handshake. Clients verify the server's certificate against the
 * configured CA (or the system store when none is set) and the server name.
 *
 * Threading: a config may be shared by loops on different threads once it is
 * fully configured; setters are not thread-safe.
 */
#ifndef QRPC_TLS_H
#define QRPC_TLS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qrpc_tls_config qrpc_tls_config;
typedef struct qrpc_conn qrpc_conn;

/* A DER-encoded certificate, borrowed. */
typedef struct qrpc_cert {
  const unsigned char *der;
  size_t len;
} qrpc_cert;

/* Called after the built-in verification (unless disabled) with its
 * verdict: on a client for the server's chain (ok is 1 when it verified
 * against the CA and the server name), on a server with client
 * authentication for the client's chain (ok is 1 when it verified against
 * the CA). chain[0] is the peer's own certificate; the array and its bytes are
 * borrowed for the duration of the call. Return 0 to accept the peer, any
 * other value to refuse it (the handshake fails with QRPC_ECERT). Runs on
 * the loop thread during the handshake; it must not call back into qrpc. */
typedef int (*qrpc_verify_fn)(qrpc_conn *conn, const qrpc_cert *chain,
                              size_t chain_len, int ok, void *user_data);

/* The TLS library this build of qrpc uses: "openssl" or "gnutls". Any
 * thread. */
const char *qrpc_tls_backend(void);

/* Creates an empty config. Errors: QRPC_ENOMEM, QRPC_ETLS. */
int qrpc_tls_config_new(qrpc_tls_config **out);

/* Drops the caller's reference; the config lives on while endpoints or
 * connections use it. NULL is ignored. */
void qrpc_tls_config_free(qrpc_tls_config *cfg);

/* Sets the certificate chain and private key (required on servers; on a
 * client, presented when a server asks for it) from PEM files or from
 * in-memory PEM strings (NUL-terminated, copied). The log says which file
 * and what is wrong. Errors: QRPC_EINVAL, QRPC_ETLS (unreadable, malformed,
 * expired, or a key that does not match the certificate). */
int qrpc_tls_config_set_cert_files(qrpc_tls_config *cfg, const char *cert_path,
                                   const char *key_path);
int qrpc_tls_config_set_cert_pem(qrpc_tls_config *cfg, const char *cert_pem,
                                 const char *key_pem);

/* Adds trusted CA certificates from a PEM file or PEM string: on a client
 * for the server's chain (without any, the system store is used), on a
 * server for client certificates. Errors: QRPC_EINVAL, QRPC_ETLS
 * (unreadable, or no certificate in it). */
int qrpc_tls_config_set_ca_file(qrpc_tls_config *cfg, const char *path);
int qrpc_tls_config_set_ca_pem(qrpc_tls_config *cfg, const char *pem);

/* Installs a verification callback that sees the peer's chain (see
 * qrpc_verify_fn). user_data is passed through. Errors: QRPC_ESTATE. */
int qrpc_tls_config_set_verify_callback(qrpc_tls_config *cfg,
                                        qrpc_verify_fn fn, void *user_data);

/* How a server asks connecting clients for a certificate (mutual TLS). */
typedef enum qrpc_client_auth {
  QRPC_CLIENT_AUTH_NONE = 0, /* none asked for (the default) */
  QRPC_CLIENT_AUTH_REQUEST,  /* asked for: a client without one comes in
                                without an identity; one whose certificate
                                does not verify is refused */
  QRPC_CLIENT_AUTH_REQUIRE,  /* a client without a certificate that
                                verifies is refused */
} qrpc_client_auth;

/* Servers: asks clients for a certificate and verifies it against this
 * config's CA certificates (qrpc_tls_config_set_ca_file() or _pem(), which
 * a server needs for this: the system store is never trusted for client
 * certificates), for TLS client use, then gives the verification callback
 * (if any) the last word. A refused client's handshake fails with
 * QRPC_ECERT on both sides. qrpc_conn_peer_identity() names an accepted
 * client. Clients present the certificate set with
 * qrpc_tls_config_set_cert_files() or _pem() when a server asks.
 * Errors: QRPC_EINVAL (unknown mode), QRPC_ESTATE; qrpc_endpoint_listen()
 * fails with QRPC_EINVAL when the config has no CA for it. */
int qrpc_tls_config_set_client_auth(qrpc_tls_config *cfg,
                                    qrpc_client_auth mode);

/* DANGER: turns certificate verification off for clients using this config,
 * so any server, including an attacker in the path, is accepted. For local
 * experiments only; the first connection made with it logs a warning. The
 * chain is not checked at all unless a verification callback is set (it
 * then gets the verdict, and decides).
 * Errors: QRPC_ESTATE. */
int qrpc_tls_config_INSECURE_skip_verify(qrpc_tls_config *cfg);

#ifdef __cplusplus
}
#endif
#endif
