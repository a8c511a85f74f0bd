/*
 * Streams of the RPC kind (0x00) for the call engine above the transport:
 * accepting the ones the peer opens, opening our own, writing frames in
 * place, backpressure, and keeping the path checked while answers are due.
 * Raw streams are public API (qrpc/quic.h).
 * Internal; not installed. Loop thread only.
 */
#ifndef QRPCI_QUIC_RPCSTREAM_H
#define QRPCI_QUIC_RPCSTREAM_H

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

/* ---- 0-RTT (docs/protocol.md, "Calls in 0-RTT") -------------------------
 * Called once when a connection enters its 0-RTT phase, with the
 * connection's user data: on a client right before its first packet,
 * when it resumes with a ticket that allows early data (streams may then
 * be opened and written before on_established); on a server when it
 * accepted the client's early data (streams may then arrive before
 * on_established, and on_closed fires even if the handshake never
 * completes). If the server rejects early data, the streams the client
 * opened in 0-RTT are sent again after the handshake, with new stream
 * ids, without a word to the layer above. */
typedef void (*qrpci_early_fn)(qrpc_conn *c, void *ud);
void qrpci_conn_set_early_hook(qrpc_conn *c, qrpci_early_fn fn);
void qrpci_endpoint_set_early_hook(qrpc_endpoint *ep, qrpci_early_fn fn);
/* 1 while c is in its 0-RTT phase: the hook fired and the handshake has
 * not completed. */
int qrpci_conn_in_early(qrpc_conn *c);
/* Inside a stream's on_read: 1 if the bytes delivered came in 0-RTT
 * packets, or before the handshake completed. */
int qrpci_stream_rx_early(qrpc_stream *s);
/* Inside a stream's on_read: when the packet that carried the bytes was
 * read (qrpci_now_ns() time), so the layer above dates arrivals without a
 * clock read of its own. */
uint64_t qrpci_stream_rx_ns(qrpc_stream *s);

/* Opens a stream of the RPC kind. Errors as qrpc_stream_open(). */
int qrpci_stream_open_rpc(qrpc_conn *c, const qrpc_stream_callbacks *cbs,
                          void *user_data, qrpc_stream **out);

/* Returns n contiguous bytes at the end of the stream's send buffer, to be
 * filled and then published with qrpci_stream_commit(s, n). There is no
 * backpressure check: the caller bounds memory by its own limits. NULL when
 * out of memory or the stream can no longer send. */
uint8_t *qrpci_stream_reserve(qrpc_stream *s, size_t n);
void qrpci_stream_commit(qrpc_stream *s, size_t n);
/* Commits n bytes written at what qrpci_stream_reserve() returned, then
 * len bytes at data that the stream now owns without copying them; it
 * calls release(owner) once when it no longer needs them (acknowledged,
 * or the stream freed). Both go out or neither: on QRPC_ENOMEM nothing
 * was committed and data stays the caller's. */
int qrpci_stream_commit_given(qrpc_stream *s, size_t n, const uint8_t *data,
                              size_t len, void (*release)(void *owner),
                              void *owner);

/* Inside on_read of s: the last n bytes on_read was given were not used.
 * s pauses (as qrpc_stream_pause_read()), keeps them and delivers them
 * first when resumed, with the FIN if it came with them; the peer gets
 * their credit back only then. */
void qrpci_stream_hold_rest(qrpc_stream *s, size_t n);

/* 1 if the stream's unacknowledged bytes are at the send-buffer limit; the
 * stream's on_writable then fires once they have drained. */
int qrpci_stream_congested(qrpc_stream *s);

/* Tells the transport whether calls on c wait for answers. While they do,
 * c sends a PING once it has neither sent nor received anything for
 * QRPCI_KEEP_ALIVE_MS (or half the idle timeout, if less). A client whose
 * address changed under it (a NAT rebinding) is found by the server only
 * through a packet it sends; without this, a client that waits in silence
 * would never send one, and the answers would go to the old address until
 * the idle timeout closed the connection. */
void qrpci_conn_set_awaiting(qrpc_conn *c, int awaiting);

#endif
