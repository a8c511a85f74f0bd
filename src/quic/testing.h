/*
 * Internal hooks for the project's own tests. Not installed, not part of
 * the public API.
 */
#ifndef QRPCI_QUIC_TESTING_H
#define QRPCI_QUIC_TESTING_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/loop.h"
#include "qrpc/quic.h"
#include "qrpc/tls.h"

/* Replaces the ALPN this config offers (normally "qrpc/1"), so a test can
 * act as a peer that does not speak qrpc/1. Errors: QRPC_EINVAL. */
int qrpci_tls_config_set_alpn(qrpc_tls_config *cfg, const char *alpn);

/* Connections the loop still holds, including those in their closing or
 * draining period. 0 once everything has been released. */
size_t qrpci_loop_conn_count(qrpc_loop *loop);

/* Frees an endpoint as a killed process would: its connections go without
 * a word to their peers (their on_closed still fires here, kind
 * QRPC_CLOSE_ENDPOINT, so the test's own state stays consistent), then the
 * socket closes. Not from inside a callback of the endpoint. */
void qrpci_endpoint_vanish(qrpc_endpoint *ep);

/* Sets the endpoint socket's receive buffer to bytes (SO_RCVBUF), below
 * what endpoints ask for, so a test can overflow it with a known flood. */
void qrpci_endpoint_set_rcvbuf(qrpc_endpoint *ep, int bytes);

/* Makes a client connection deaf and mute, as if its machine lost power:
 * it reads nothing more and sends nothing more. It stays allocated until
 * it is closed or times out. */
void qrpci_conn_vanish(qrpc_conn *c);

/* When the connection's timer is due (qrpc_loop_now_ns() clock), or
 * UINT64_MAX when it is not armed. */
uint64_t qrpci_conn_timer_due(qrpc_conn *c);

/* 1 while the connection holds its TLS session: a client always, a server
 * until its handshake completed. */
int qrpci_conn_has_tls(qrpc_conn *c);

/* Starts a QUIC key update (RFC 9001, 6) on an established connection.
 * Errors: QRPC_EINVAL (not established, or the last update is not yet
 * confirmed). */
int qrpci_conn_update_key(qrpc_conn *c);

/* Makes an established connection send len bytes of 1-RTT CRYPTO data, as
 * a peer that speaks TLS after the handshake would. Errors: QRPC_EINVAL
 * (not established), QRPC_ENOMEM. */
int qrpci_conn_send_tls_data(qrpc_conn *c, const uint8_t *data, size_t len);

#endif
