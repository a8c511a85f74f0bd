/*
 * Worker groups for the layers above the transport: one server address
 * served by N endpoints, one per worker loop (thread), each with its own
 * UDP socket bound to the address with SO_REUSEPORT.
 *
 * Steering: every connection id a worker's endpoint issues carries the
 * worker's index in byte QRPCI_WORKER_CID_BYTE (the rest is random). A
 * classic BPF program attached to the group (SO_ATTACH_REUSEPORT_CBPF)
 * makes the kernel deliver a short-header packet to the socket of the
 * worker its destination id names; long-header packets (a handshake) get
 * an out-of-range answer, so the kernel's 4-tuple hash picks the worker,
 * the same one for every packet of the handshake. A short-header packet
 * that still lands on another worker (no BPF, an index the kernel did not
 * honour) is copied to its owner's inbox, a bounded queue drained on the
 * owner's loop thread. So a connection lives and dies on one worker.
 *
 * Internal; not installed. Threading as each function says.
 */
#ifndef QRPCI_QUIC_WORKERS_H
#define QRPCI_QUIC_WORKERS_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/quic.h"

/* The most workers a group may have: the index fits one id byte. */
#define QRPCI_MAX_WORKERS 256
/* The byte of a connection id (and so byte 1 of a short-header packet)
 * that holds the worker index. */
#define QRPCI_WORKER_CID_BYTE 0
/* Packets an inbox holds at most; beyond it a handed-off packet is
 * dropped (and counted), as a full socket buffer would drop it. */
#define QRPCI_INBOX_MAX 8192

typedef struct qrpci_wgroup qrpci_wgroup;

/* For tests: when non-zero, groups made from now on do not attach the
 * steering program, so packets reach workers by the kernel's hash alone
 * and misrouted ones are handed over. Set before creating the server. */
extern int qrpci_workers_no_bpf;

/* Opens n (1..QRPCI_MAX_WORKERS) UDP sockets bound to addr in order, all
 * with SO_REUSEPORT (the first binds port 0 to a free port, the others
 * to the port it got), and, with attach_bpf, attaches the steering
 * program; when the kernel refuses it, logs once (warning) and goes on
 * without it. Sockets stay open until qrpci_wgroup_free(), whatever
 * happens to the endpoints, because the kernel numbers the members of a
 * reuseport group by the order they joined. Any thread (no loop needed).
 * Errors: QRPC_EINVAL (addr, n), QRPC_EADDRINUSE, QRPC_ESYSTEM,
 * QRPC_ENOMEM. */
int qrpci_wgroup_new(const char *addr, size_t n, int attach_bpf,
                     qrpci_wgroup **out);

/* 1 if the steering program is attached. */
int qrpci_wgroup_bpf(const qrpci_wgroup *g);
size_t qrpci_wgroup_size(const qrpci_wgroup *g);

/* Makes worker idx's endpoint, on loop, with the group's socket idx;
 * arguments as qrpc_endpoint_listen() (addr aside). Call it on the thread
 * that will run loop, or before that thread starts. Each index once.
 * Errors: as qrpc_endpoint_listen(), QRPC_ESTATE (idx taken). */
int qrpci_wgroup_listen(qrpci_wgroup *g, size_t idx, qrpc_loop *loop,
                        qrpc_tls_config *tls, const qrpc_endpoint_opts *opts,
                        const qrpc_conn_callbacks *cbs, void *user_data,
                        qrpc_endpoint **out);

/* Frees the group and closes its sockets. Every endpoint made from it
 * must have been freed first, and no loop of the group may still run.
 * NULL is ignored. */
void qrpci_wgroup_free(qrpci_wgroup *g);

/* The worker index of the endpoint (0 for one outside a group). */
size_t qrpci_endpoint_worker(const qrpc_endpoint *ep);

#endif
