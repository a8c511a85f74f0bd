/*
 * What the transport asks of its TLS backend (tls_gnutls.c), and the
 * references the layers above keep on a qrpc_tls_config. Nothing here
 * names a TLS library: a backend is a sibling file implementing these
 * functions, and the public configuration calls of qrpc/tls.h.
 * Internal; not installed. Loop thread only, unless said otherwise.
 */
#ifndef QRPCI_QUIC_TLS_H
#define QRPCI_QUIC_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/quic.h"

/* Takes a reference on a TLS config (qrpc_tls_config_free() drops it) and
 * marks it in use, so later changes to it are refused. */
void qrpci_tls_config_ref(qrpc_tls_config *cfg);

/* 1 if the config has a certificate and key to present. */
int qrpci_tls_config_has_cert(const qrpc_tls_config *cfg);

/* Creates c->tls for a client (server_name: SNI and the name verified) or
 * a server connection, and hands it to c->q. Errors: QRPC_ETLS,
 * QRPC_ENOMEM. */
int qrpci_tls_session_new(qrpc_tls_config *cfg, qrpc_conn *c, int server,
                          const char *server_name);
/* Frees c->tls, if any, once ngtcp2 no longer uses it. */
void qrpci_tls_session_free(qrpc_conn *c);

/* The handshake completed: copies the negotiated ALPN and the peer's
 * certificates into c (they outlive the session). Errors: QRPC_EALPN
 * when the ALPN is not the config's, QRPC_ENOMEM is ignored (the chain is
 * then empty). */
int qrpci_tls_handshake_done(qrpc_conn *c);

/* The qrpc error a TLS alert stands for: QRPC_ECERT, QRPC_EALPN or
 * QRPC_ETLS (tls.c). */
int qrpci_tls_alert_error(uint8_t alert);

/* Fills dest with len bytes from the TLS library's random generator, fit
 * for keys and connection ids. Any thread. Errors: QRPC_ESYSTEM. */
int qrpci_tls_rand(void *dest, size_t len);

#endif
