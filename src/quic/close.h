/*
 * Ending connections for the layers above the transport: with an
 * application error now, or once everything written has been delivered;
 * and refusing new ones on a server endpoint. Internal; not installed.
 * Loop thread only; safe from inside callbacks.
 */
#ifndef QRPCI_QUIC_CLOSE_H
#define QRPCI_QUIC_CLOSE_H

#include <stdint.h>

#include "qrpc/quic.h"

/* Closes the connection with an application error code (PROTOCOL_ERROR,
 * FRAME_TOO_LARGE, ...) and a reason. */
void qrpci_conn_fail(qrpc_conn *c, uint64_t code, const char *reason);

/* Closes with an application error code once every byte written on every
 * stream has been acknowledged (or after timeout_ms), so answers already
 * queued reach the peer. on_closed follows. */
void qrpci_conn_close_after_flush(qrpc_conn *c, uint64_t code,
                                  const char *reason, uint64_t timeout_ms);

/* Makes an endpoint refuse new connections (CONNECTION_REFUSED). */
void qrpci_endpoint_refuse_new(qrpc_endpoint *ep);

#endif
