/*
 * What the RPC engine needs from the transport beyond the public API: RPC
 * streams (kind 0x00), in-place writes, and closing with a protocol error.
 * Internal; not installed.
 */
#ifndef QRPCI_QUIC_RPCGLUE_H
#define QRPCI_QUIC_RPCGLUE_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/quic.h"

/* Receives an RPC stream the peer opened; it must give the stream
 * callbacks with qrpc_stream_set_callbacks() or it is refused. */
typedef void (*qrpci_rpc_accept_fn)(qrpc_conn *c, qrpc_stream *s, void *ud);

/* Sets the acceptor of peer-opened RPC streams for one connection, or for
 * every connection an endpoint accepts from now on. Without one, RPC
 * streams are refused with UNKNOWN_STREAM_KIND. */
void qrpci_conn_set_rpc_acceptor(qrpc_conn *c, qrpci_rpc_accept_fn fn,
                                 void *ud);
void qrpci_endpoint_set_rpc_acceptor(qrpc_endpoint *ep, qrpci_rpc_accept_fn fn,
                                     void *ud);

/* Opens a stream of the RPC kind. Errors as qrpc_stream_open(). */
int qrpci_stream_open_rpc(qrpc_conn *c, const qrpc_stream_callbacks *cbs,
                          void *user_data, qrpc_stream **out);

/* Returns n contiguous bytes at the end of the stream's send buffer, to be
 * filled and then published with qrpci_stream_commit(s, n). There is no
 * backpressure check: the caller bounds memory by its own limits. NULL when
 * out of memory or the stream can no longer send. */
uint8_t *qrpci_stream_reserve(qrpc_stream *s, size_t n);
void qrpci_stream_commit(qrpc_stream *s, size_t n);

/* 1 if the stream's unacknowledged bytes are at the send-buffer limit; the
 * stream's on_writable then fires once they have drained. */
int qrpci_stream_congested(qrpc_stream *s);

/* Closes the connection with an application error code (PROTOCOL_ERROR,
 * FRAME_TOO_LARGE, ...) and a reason; safe from inside callbacks. */
void qrpci_conn_fail(qrpc_conn *c, uint64_t code, const char *reason);

/* Splits "host:port" or "[v6]:port" into fresh strings. Errors:
 * QRPC_EINVAL, QRPC_ENOMEM. */
int qrpci_parse_addr(const char *addr, char **host, char **port);

/* Takes a reference on a TLS config (qrpc_tls_config_free() drops it). */
void qrpci_tls_config_ref(qrpc_tls_config *cfg);

/* Makes an endpoint refuse new connections (CONNECTION_REFUSED). */
void qrpci_endpoint_refuse_new(qrpc_endpoint *ep);

/* A datagram's bytes, reference-counted so one encoding can be queued on
 * many connections. */
typedef struct qrpci_dgbuf {
  size_t refs;
  size_t len;
  uint8_t data[];
} qrpci_dgbuf;

/* A buffer of len bytes with one reference; NULL when out of memory. */
qrpci_dgbuf *qrpci_dgbuf_new(size_t len);
void qrpci_dgbuf_unref(qrpci_dgbuf *b);

/* Notices about queued datagrams, by the id they were queued with:
 * declared lost by the peer's acknowledgements, or dropped unsent because
 * they outlived their max age. */
typedef struct qrpci_dgram_hooks {
  void (*lost)(qrpc_conn *c, uint64_t id, void *ud);
  void (*aged)(qrpc_conn *c, uint64_t id, void *ud);
  void *ud;
} qrpci_dgram_hooks;

void qrpci_conn_set_dgram_hooks(qrpc_conn *c, const qrpci_dgram_hooks *h);

/* Queues buf (taking a reference on success) as a datagram with id and a
 * maximum time in the queue (0: none). Errors as
 * qrpc_conn_send_datagram(). */
int qrpci_conn_queue_dgram(qrpc_conn *c, qrpci_dgbuf *buf, uint64_t id,
                           uint64_t max_age_ns);

/* Closes with an application error code once every byte written on every
 * stream has been acknowledged (or after timeout_ms), so answers already
 * queued reach the peer. on_closed follows. */
void qrpci_conn_close_after_flush(qrpc_conn *c, uint64_t code,
                                  const char *reason, uint64_t timeout_ms);

#endif
