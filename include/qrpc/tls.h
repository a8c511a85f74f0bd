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

/* ---- Server keys ------------------------------------------------------
 * A server key is one secret from which a server derives everything that
 * must survive it or be shared with its twins: its session-ticket keys
 * (a new one every hour, the two before still accepted, so tickets live
 * up to two hours), its stateless-reset tokens and its Retry tokens.
 * Servers that load the same key file accept each other's session
 * tickets and tokens, and a restarted server can reset the connections
 * its previous run left behind. Without one, a config makes a random key
 * of its own when it first serves; endpoints sharing that config share it.
 * The file holds a line "qrpc-server-key 1" and 64 hex digits; it is
 * written with mode 0600 and refused when its group or others may read or
 * write it. */
#define QRPC_SERVER_KEY_LEN 32

/* Writes a new random key to path with mode 0600. The file must not exist
 * (a key in use is never overwritten by accident). Any thread.
 * Errors: QRPC_EINVAL, QRPC_EADDRINUSE (the file exists), QRPC_ESYSTEM
 * (logged with the cause). */
int qrpc_server_key_write(const char *path);

/* Sets the config's server key: QRPC_SERVER_KEY_LEN bytes (copied), or
 * the key in a file that qrpc_server_key_write() made. A file that others
 * may read, or whose content is malformed, is refused, with the reason in
 * the log. Errors: QRPC_EINVAL, QRPC_ESTATE, QRPC_ESYSTEM (unreadable),
 * QRPC_ETLS (malformed or readable by others). */
int qrpc_tls_config_set_server_key(qrpc_tls_config *cfg, const void *key,
                                   size_t len);
int qrpc_tls_config_load_server_key(qrpc_tls_config *cfg, const char *path);

/* For servers' command lines (--server-key FILE): loads the key in path,
 * after writing a new one there with qrpc_server_key_write() if the file
 * does not exist yet, so the first run makes the key its restarts and
 * twins then share. Loop or any thread, before the config is used.
 * Errors: as qrpc_server_key_write() (except QRPC_EADDRINUSE) and
 * qrpc_tls_config_load_server_key(). */
int qrpc_tls_config_use_server_key_file(qrpc_tls_config *cfg,
                                        const char *path);

/* ---- Session resumption (clients) --------------------------------------
 * A client config keeps the session tickets servers send in a cache,
 * keyed by the server name and port it connected to, and resumes the
 * next connection to the same server with one of them: a resumed
 * handshake skips the certificate and its signature, and lets calls to
 * idempotent methods travel in 0-RTT (docs/api.md). Each ticket is used
 * once and dropped when its lifetime ends. On by default. The cache is
 * safe to share between loops on different threads. */

/* Turns resumption off (on = 0) or on for clients using cfg; off, no
 * ticket is used or kept. Errors: QRPC_EINVAL, QRPC_ESTATE. */
int qrpc_tls_config_set_resumption(qrpc_tls_config *cfg, int on);

/* Saves the cache's live tickets to path (mode 0600, replaced atomically),
 * so that a later process resumes with them. Returns the number of tickets
 * saved, or QRPC_EINVAL, QRPC_ESYSTEM (logged). Any thread. */
int qrpc_tls_config_save_tickets(qrpc_tls_config *cfg, const char *path);

/* Adds the tickets saved in path to the cache and returns how many were
 * usable. A missing file gives 0; expired tickets are skipped; a file that
 * is corrupted, or was written by another TLS backend, is ignored with a
 * warning (0). Errors: QRPC_EINVAL, QRPC_ESYSTEM (unreadable). Any
 * thread. */
int qrpc_tls_config_load_tickets(qrpc_tls_config *cfg, const char *path);

/* The number of tickets in the cache now (expired ones not counted). Any
 * thread. */
size_t qrpc_tls_config_tickets(qrpc_tls_config *cfg);

#ifdef __cplusplus
}
#endif
#endif
