/*
 * TLS inside the transport: the configuration every backend shares, the
 * interface a backend implements (tls_gnutls.c, tls_openssl.c), and the
 * references the layers above keep on a qrpc_tls_config. Nothing here
 * names a TLS library. tls.c holds what backends share: the public
 * setters' checks, the last word on a peer's chain, the meaning of alerts,
 * and peer identities.
 * Internal; not installed. Loop thread only, unless said otherwise.
 */
#ifndef QRPCI_QUIC_TLS_H
#define QRPCI_QUIC_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/quic.h"
#include "qrpc/tls.h"

typedef struct qrpci_tlsb qrpci_tlsb; /* the backend's part of a config */

struct qrpc_tls_config {
  int refs;
  int in_use;
  int has_cert;
  int has_ca;
  int insecure;
  int insecure_warned; /* the warning was logged once */
  qrpc_client_auth client_auth;
  qrpc_verify_fn verify_fn;
  void *verify_ud;
  char alpn[256];
  size_t alpn_len;
  qrpci_tlsb *be;
};

/* Takes a reference on a TLS config (qrpc_tls_config_free() drops it) and
 * marks it in use, so later changes to it are refused. */
void qrpci_tls_config_ref(qrpc_tls_config *cfg);

/* 0 if cfg can serve: it has a certificate, and a CA when it verifies
 * clients. Errors, logged with the cause: QRPC_ETLS (no certificate),
 * QRPC_EINVAL (client authentication without a CA). */
int qrpci_tls_config_check_server(const qrpc_tls_config *cfg);

/* ---- What a backend implements ---------------------------------------- */

/* The backend's part of a new config (cfg->be). Errors: QRPC_ENOMEM,
 * QRPC_ETLS. */
int qrpci_tlsb_new(qrpc_tls_config *cfg);
void qrpci_tlsb_free(qrpc_tls_config *cfg);
/* Loads the certificate chain and key, from files (files = 1) or PEM
 * strings, checking that they parse, match each other and are not
 * expired. Logs the file or the cause. Errors: QRPC_ETLS, QRPC_ENOMEM. */
int qrpci_tlsb_set_cert(qrpc_tls_config *cfg, const char *cert,
                        const char *key, int files);
/* Adds trusted CA certificates from a file or a PEM string. Errors:
 * QRPC_ETLS (unreadable, malformed, or no certificate in it). */
int qrpci_tlsb_add_ca(qrpc_tls_config *cfg, const char *ca, int file);

/* Creates c->tls for a client (server_name: SNI and the name verified) or
 * a server connection, and hands it to c->q. Errors: QRPC_ETLS,
 * QRPC_ENOMEM. */
int qrpci_tls_session_new(qrpc_tls_config *cfg, qrpc_conn *c, int server,
                          const char *server_name);
/* Frees c->tls, if any, once ngtcp2 no longer uses it. */
void qrpci_tls_session_free(qrpc_conn *c);

/* The handshake completed: copies the negotiated ALPN, the peer's chain
 * and, if it verified, its identity into c (they outlive the session).
 * Errors: QRPC_EALPN when the ALPN is not the config's; running out of
 * memory leaves the chain or identity empty. */
int qrpci_tls_handshake_done(qrpc_conn *c);

/* Fills dest with len bytes from the TLS library's random generator, fit
 * for keys and connection ids. Any thread. Errors: QRPC_ESYSTEM. */
int qrpci_tls_rand(void *dest, size_t len);

/* ---- What backends share (tls.c) -------------------------------------- */

/* The last word on a peer's chain (chain[0] is the peer's): the built-in
 * verdict, the config's insecure flag (clients only), then its
 * verification callback. Sets c->peer_verified when the built-in check
 * passed and the chain was accepted, c->cert_rejected when it was refused.
 * Returns 1 to accept. */
int qrpci_tls_decide(qrpc_conn *c, int verified, const qrpc_cert *chain,
                     size_t n);

/* Logs, once per config, that a client connects without verification. */
void qrpci_tls_warn_insecure(qrpc_tls_config *cfg, const char *server_name);

/* 1 if name is an IPv4 or IPv6 address literal (never sent as SNI, and
 * verified against iPAddress entries). */
int qrpci_tls_is_ip_literal(const char *name);

/* The qrpc error a TLS alert stands for: QRPC_ECERT, QRPC_EALPN or
 * QRPC_ETLS. */
int qrpci_tls_alert_error(uint8_t alert);

/* Parts of a certificate's identity, borrowed from the backend. */
typedef enum qrpci_id_kind {
  QRPCI_ID_SUBJECT,
  QRPCI_ID_DNS,
  QRPCI_ID_URI,
  QRPCI_ID_EMAIL,
  QRPCI_ID_IP,
} qrpci_id_kind;

typedef struct qrpci_id_part {
  qrpci_id_kind kind;
  const char *ptr;
  size_t len;
} qrpci_id_part;

/* Packs parts into one allocation that holds the identity and copies of
 * its strings, each NUL-terminated; free() releases it. NULL when out of
 * memory. */
qrpc_identity *qrpci_identity_pack(const qrpci_id_part *parts, size_t n);

#endif
