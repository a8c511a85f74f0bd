/*
 * UDP sockets (udp.c): batched receive, GSO sends, and the shared send
 * queue of a server socket. Internal; not installed.
 */
#ifndef QRPCI_QUIC_UDP_H
#define QRPCI_QUIC_UDP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "quic/internal.h"
#include "util/list.h"

/* A receive buffer holds the largest datagram UDP can carry (65527 bytes
 * over IPv6), rounded up. */
#define QRPCI_MAX_UDP 65536
#define QRPCI_RECV_BATCH 32
#define QRPCI_RECV_BUDGET 512   /* packets read per readiness callback */
/* The kernel refuses a whole GSO send (EMSGSIZE or EINVAL, and every
 * packet in it is lost) when its bytes exceed what one IPv4 UDP datagram
 * may carry or it has more than 64 segments, so a batch stays within
 * both. Packets grown by PMTUD make the byte limit the one that binds:
 * four 16 KiB packets are already too many. */
#define QRPCI_GSO_MAX_BYTES 65507
#define QRPCI_GSO_MAX_SEGS 64

struct qrpc_loop;

/* Packets of many connections waiting for one sendmmsg on a shared
 * (server) socket; see qrpci_sock_enable_txq(). */
typedef struct qrpci_txq qrpci_txq;

/* Per-socket send state: the GSO batch being assembled. */
typedef struct qrpci_sock {
  int fd;
  int gso;                  /* kernel accepts UDP_SEGMENT */
  int connected;            /* client sockets are connected */
  int icmp_error;           /* errno of the last ICMP error reported on a
                               connected socket; 0: none */
  struct event *write_ev;   /* armed when the socket buffer was full */
  int blocked;
  void (*on_writable)(void *arg); /* the owner resumes sending */
  void *owner;
  qrpci_txq *txq;           /* NULL: every send is its own sendmsg */
  qrpci_list txq_node;      /* in the loop's txq_socks while it holds data */
  struct qrpc_loop *loop;
} qrpci_sock;

int qrpci_sock_open(qrpci_sock *s, int family);
/* Raises the receive buffer of an endpoint's socket, which many
 * connections share, to QRPCI_EP_RCVBUF: beyond net.core.rmem_max when
 * the process may (CAP_NET_ADMIN), else as far as that allows, saying so
 * once per process at info level. */
void qrpci_sock_grow_rcvbuf(qrpci_sock *s);
/* Packets the kernel has dropped on s since it opened, nearly all for a
 * full receive buffer (the owner did not read fast enough); 0 if the
 * kernel does not say. One system call. */
uint64_t qrpci_sock_drops(const qrpci_sock *s);
void qrpci_sock_close(qrpci_sock *s);
/* Makes sends on a socket shared by many connections wait in a queue that
 * leaves in one sendmmsg per loop turn (or when full), instead of one
 * sendmsg per connection. Errors: QRPC_ENOMEM. */
int qrpci_sock_enable_txq(qrpci_sock *s, struct qrpc_loop *loop);
/* Sends what the queues of the loop's sockets hold. */
void qrpci_loop_flush_txqs(struct qrpc_loop *loop);
int qrpci_sock_watch(qrpci_sock *s, struct event_base *base,
                     void (*on_writable)(void *owner), void *owner);
int qrpci_sock_send(qrpci_sock *s, const struct sockaddr *to, socklen_t tolen,
                    const uint8_t *data, size_t len, size_t segsize);
typedef void (*qrpci_recv_fn)(void *ctx, const struct sockaddr *from,
                              socklen_t fromlen, uint8_t *data, size_t len);
int qrpci_sock_recv_batch(qrpci_sock *s, uint8_t (*bufs)[QRPCI_MAX_UDP],
                          qrpci_recv_fn fn, void *ctx);


#endif
