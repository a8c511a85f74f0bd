/*
 * What every file of the QUIC transport shares. Each file has its own
 * header for the rest (loop.h, udp.h, endpoint.h, conn.h, stream.h, tls.h,
 * cidmap.h, addr.h); the layers above see only the narrow headers made for
 * them (rpcstream.h, dgqueue.h, close.h) and the public qrpc/quic.h.
 * Nothing here is visible to users.
 *
 * Reentrancy rule: ngtcp2 must not be re-entered from its own callbacks
 * (read, write and expiry handling). User callbacks run inside those
 * callbacks, so everything a user may call there either only touches our own
 * buffers and marks the connection for the next flush, or is deferred until
 * ngtcp2 returns (see qrpc_conn.busy).
 */
#ifndef QRPCI_QUIC_INTERNAL_H
#define QRPCI_QUIC_INTERNAL_H

#include <event2/event.h>

#include "qrpc/quic.h"

#endif
