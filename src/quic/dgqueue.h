/*
 * Datagrams queued for the layers above the transport: bytes shared by
 * reference (one encoding queued on many connections), an id per datagram,
 * an age limit, and notices when one is lost or dropped for its age.
 * Internal; not installed. Loop thread only.
 */
#ifndef QRPCI_QUIC_DGQUEUE_H
#define QRPCI_QUIC_DGQUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/quic.h"

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
 * written into a packet (it left the queue), declared lost by the peer's
 * acknowledgements, dropped unsent because they outlived their max age,
 * or acknowledged by the peer (its QUIC stack received the packet). Any
 * of them may be NULL. */
typedef struct qrpci_dgram_hooks {
  void (*sent)(qrpc_conn *c, uint64_t id, void *ud);
  void (*lost)(qrpc_conn *c, uint64_t id, void *ud);
  void (*acked)(qrpc_conn *c, uint64_t id, void *ud);
  void (*aged)(qrpc_conn *c, uint64_t id, void *ud);
  void *ud;
} qrpci_dgram_hooks;

/* Sets the notices of c; NULL removes them. */
void qrpci_conn_set_dgram_hooks(qrpc_conn *c, const qrpci_dgram_hooks *h);

/* Queues buf (taking a reference on success) as a datagram with id and a
 * maximum time in the queue (0: none). Errors as
 * qrpc_conn_send_datagram(). */
int qrpci_conn_queue_dgram(qrpc_conn *c, qrpci_dgbuf *buf, uint64_t id,
                           uint64_t max_age_ns);

/* How many more datagrams c's queue takes now (0 when closed or before
 * the handshake), so a message of several fragments is queued whole or
 * not at all. */
size_t qrpci_conn_dgram_room(qrpc_conn *c);

#endif
