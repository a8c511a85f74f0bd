/*
 * Connection-id table of a server endpoint: routes each packet to its
 * connection. Chained hash table keyed by the CID bytes with a per-table
 * random seed, since clients choose some of the keys.
 */
#ifndef QRPCI_QUIC_CIDMAP_H
#define QRPCI_QUIC_CIDMAP_H

#include <ngtcp2/ngtcp2.h>
#include <stddef.h>

typedef struct qrpci_cidmap qrpci_cidmap;
struct qrpc_conn;

qrpci_cidmap *qrpci_cidmap_new(void);
void qrpci_cidmap_free(qrpci_cidmap *m);
/* Maps cid to c, replacing an existing mapping. Errors: QRPC_ENOMEM. */
int qrpci_cidmap_put(qrpci_cidmap *m, const uint8_t *cid, size_t len,
                     struct qrpc_conn *c);
struct qrpc_conn *qrpci_cidmap_get(qrpci_cidmap *m, const uint8_t *cid,
                                   size_t len);
/* Removes the mapping of cid if it points to c. */
void qrpci_cidmap_del(qrpci_cidmap *m, const uint8_t *cid, size_t len,
                      struct qrpc_conn *c);
size_t qrpci_cidmap_size(qrpci_cidmap *m);

#endif
