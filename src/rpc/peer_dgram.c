/*
 * The datagram functions of a peer (qrpc/dgram.h): forwards to dgram/ with
 * the datagram state its server or client keeps for the connection. A
 * closed peer's connection is gone, so nothing is sent on it.
 */
#include <string.h>

#include "dgram/channel.h"
#include "qrpc/error.h"
#include "rpc/engine.h"

void qrpci_peer_on_datagram(qrpc_conn *c, const uint8_t *data, size_t len,
                            void *ud) {
  qrpc_peer *peer = ud;
  qrpci_dgconn_recv(peer->dg, data, len);
}

void qrpci_peer_free_dgram(qrpci_core *core, qrpc_peer *peer) {
  qrpci_dgconn_free(peer->dg);
}

int qrpc_peer_send_dgram(qrpc_peer *peer, uint32_t channel, const void *payload,
                         size_t len) {
  if (!peer) return QRPC_EINVAL;
  if (peer->closed) return QRPC_ECLOSED;
  return qrpci_dgconn_send(peer->dg, channel, qrpci_bytes(payload, len));
}

int qrpc_peer_send_dgram_msg(qrpc_peer *peer, uint32_t channel,
                             const qrpc_msg *m) {
  if (!peer) return QRPC_EINVAL;
  if (peer->closed) return QRPC_ECLOSED;
  qrpci_payload pl = qrpci_msg(m);
  return qrpci_payload_settle(&pl, qrpci_dgconn_send(peer->dg, channel, pl));
}

int qrpc_peer_send_encoded(qrpc_peer *peer, const qrpc_dgram *d) {
  if (!peer) return QRPC_EINVAL;
  if (peer->closed) return QRPC_ECLOSED;
  return qrpci_dgconn_send_encoded(peer->dg, d);
}

size_t qrpc_peer_max_dgram_payload(qrpc_peer *peer, uint32_t channel) {
  if (!peer || peer->closed) return 0;
  return qrpci_dgconn_max_payload(peer->dg, channel);
}

void qrpc_peer_dgram_count_undecodable(qrpc_peer *peer, uint32_t channel) {
  if (peer) qrpci_dgconn_count_undecodable(peer->dg, channel);
}

void qrpc_peer_dgram_stats(qrpc_peer *peer, uint32_t channel,
                           qrpc_dgram_stats *st) {
  if (!st) return;
  if (peer)
    qrpci_dgconn_stats(peer->dg, channel, st);
  else
    memset(st, 0, sizeof(*st));
}

int qrpc_peer_send_snapshot(qrpc_peer *peer, qrpc_snapshot *s) {
  if (!peer) return QRPC_EINVAL;
  if (peer->closed) return QRPC_ECLOSED;
  return qrpci_dgconn_send_snapshot(peer->dg, s);
}

int qrpc_peer_snapshot_clock(qrpc_peer *peer, uint32_t channel,
                             qrpc_snapshot_clock *c) {
  if (!peer || !c) return QRPC_EINVAL;
  return qrpci_dgconn_snapshot_clock(peer->dg, channel, c);
}
