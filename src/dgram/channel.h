/*
 * Datagram channels (docs/protocol.md section 4), the layer beside the call
 * engine: Channel and Seq in front of each payload, per-channel sequence
 * numbers, latest-only filtering, age limits and counters.
 *
 * A server or client owns one qrpci_dgram (its channels and their Seq
 * counters) and one qrpci_dgconn per connection (what arrived, what was
 * sent, what was lost), creating and freeing them itself. This layer sits
 * on the transport (quic/) and wire/ only: it knows a connection's RPC
 * peer just as the opaque handle it hands to the channel's function.
 *
 * Internal; not installed. Loop thread only.
 */
#ifndef QRPCI_DGRAM_CHANNEL_H
#define QRPCI_DGRAM_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/dgram.h"
#include "qrpc/quic.h"
#include "wire/payload.h"

typedef struct qrpci_dgram qrpci_dgram;
typedef struct qrpci_dgconn qrpci_dgconn;

/* The channels of a server or client. NULL when out of memory. */
qrpci_dgram *qrpci_dgram_new(void);
/* Frees dg. Its connections' qrpci_dgconn must be freed first; encoded
 * datagrams (qrpc_dgram) stay valid. NULL is ignored. */
void qrpci_dgram_free(qrpci_dgram *dg);

/* Configures a channel; opts NULL means defaults. Re-registering
 * replaces. Errors: QRPC_EINVAL (opts of another size), QRPC_ENOMEM. */
int qrpci_dgram_register(qrpci_dgram *dg, uint32_t channel,
                         const qrpc_dgram_opts *opts, qrpc_dgram_fn fn,
                         void *ud);

/* The counters of every channel on every connection of dg, summed since
 * dg was created. */
void qrpci_dgram_totals(const qrpci_dgram *dg, qrpc_dgram_stats *st);

/* Encodes a payload for channel with the next Seq of dg. Errors:
 * QRPC_EINVAL (invalid payload, out NULL, a pack that wrote another size),
 * QRPC_ENOMEM. */
int qrpci_dgram_encode(qrpci_dgram *dg, uint32_t channel, qrpci_payload pl,
                       qrpc_dgram **out);

/* The datagram state of one connection of dg. peer is what the channels'
 * functions receive. The connection's lost, acknowledged and aged notices
 * now reach it. With conn NULL it only receives (what a fuzzer or a test
 * of this layer feeds it), and every send fails with QRPC_ECLOSED. NULL
 * when out of memory. */
qrpci_dgconn *qrpci_dgconn_new(qrpci_dgram *dg, qrpc_conn *conn,
                               qrpc_peer *peer);
/* Frees dc; call it before the connection is freed or once it is closed.
 * NULL is ignored. */
void qrpci_dgconn_free(qrpci_dgconn *dc);

/* A datagram arrived on the connection: checked, counted, and handed to
 * its channel's function. data is borrowed. */
void qrpci_dgconn_recv(qrpci_dgconn *dc, const uint8_t *data, size_t len);

/* Encodes and queues a payload. Errors as qrpc_peer_send_dgram(). */
int qrpci_dgconn_send(qrpci_dgconn *dc, uint32_t channel, qrpci_payload pl);
/* Queues an encoded datagram. Errors as qrpc_peer_send_encoded(). */
int qrpci_dgconn_send_encoded(qrpci_dgconn *dc, const qrpc_dgram *d);

/* Makes the state of tick on a snapshot channel of dg (see
 * qrpc_server_snapshot_new()). Errors: QRPC_EINVAL, QRPC_EMSGSIZE,
 * QRPC_ENOMEM. */
int qrpci_snapshot_new(qrpci_dgram *dg, uint32_t channel, uint64_t tick,
                       qrpci_payload pl, qrpc_snapshot **out);
/* Queues s (made on dc's qrpci_dgram) to dc. Errors as
 * qrpc_peer_send_snapshot(), and QRPC_EINVAL for a snapshot of another
 * server or worker. */
int qrpci_dgconn_send_snapshot(qrpci_dgconn *dc, qrpc_snapshot *s);
/* See qrpc_peer_snapshot_clock(). */
int qrpci_dgconn_snapshot_clock(qrpci_dgconn *dc, uint32_t channel,
                                qrpc_snapshot_clock *c);

/* See qrpc_peer_max_dgram_payload(), qrpc_peer_dgram_count_undecodable()
 * and qrpc_peer_dgram_stats(). */
size_t qrpci_dgconn_max_payload(const qrpci_dgconn *dc, uint32_t channel);
void qrpci_dgconn_count_undecodable(qrpci_dgconn *dc, uint32_t channel);
void qrpci_dgconn_stats(const qrpci_dgconn *dc, uint32_t channel,
                        qrpc_dgram_stats *st);

#endif
