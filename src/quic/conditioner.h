/*
 * The link conditioner (qrpc_conn_opts.sim_*; docs/datagrams.md, "Link
 * conditioner"): a development aid that drops, delays and reorders one
 * connection's outgoing packets before they reach its socket, in place of
 * network emulation the kernel may lack. One per connection, on the
 * connection's loop thread. Internal; not installed.
 */
#ifndef QRPCI_QUIC_CONDITIONER_H
#define QRPCI_QUIC_CONDITIONER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "qrpc/quic.h"
#include "quic/udp.h"

struct event_base;
typedef struct qrpci_sim qrpci_sim;

/* Whether o turns the conditioner on. */
int qrpci_sim_wanted(const qrpc_conn_opts *o);

/* A conditioner sending through sock, with o's settings (copied), or NULL
 * when out of memory. The process's first one logs that it is on, with
 * name and the settings. */
qrpci_sim *qrpci_sim_new(struct event_base *base, qrpci_sock *sock,
                         const qrpc_conn_opts *o, const char *name);

/* Takes the packets data[0..len) bound for to: segments of seg bytes (0:
 * one packet). Each is dropped, or copied and sent when its delay is
 * over (at once when it has none and nothing is held). */
void qrpci_sim_send(qrpci_sim *s, const struct sockaddr *to, socklen_t tolen,
                    const uint8_t *data, size_t len, size_t seg);

/* Packets dropped so far. */
uint64_t qrpci_sim_dropped(const qrpci_sim *s);

/* Sends every packet still held, at once, and frees s. NULL is ignored. */
void qrpci_sim_free(qrpci_sim *s);

#endif
