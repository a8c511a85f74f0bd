/*
 * Server endpoints (endpoint.c): one UDP socket, the connection-id table,
 * accepting connections and refusing new ones. Internal; not installed.
 */
#ifndef QRPCI_QUIC_ENDPOINT_H
#define QRPCI_QUIC_ENDPOINT_H

#include <ngtcp2/ngtcp2.h>
#include <pthread.h>
#include <sys/socket.h>

#include "quic/internal.h"
#include "quic/rpcstream.h"
#include "quic/udp.h"
#include "util/list.h"

/* The key that tokens and stateless reset tokens are derived from. */
#define QRPCI_STATIC_SECRET_LEN 32

typedef struct qrpci_cidmap qrpci_cidmap;
typedef struct qrpci_wgroup qrpci_wgroup;
typedef struct qrpci_handoff qrpci_handoff; /* a packet for another worker */

struct qrpc_endpoint {
  qrpc_loop *loop;
  qrpc_tls_config *tls;
  qrpc_endpoint_opts opts;
  qrpc_conn_callbacks cbs;
  void *user_data;
  qrpci_rpc_accept_fn rpc_accept;
  void *rpc_accept_ud;
  qrpci_early_fn early_hook;
  qrpci_sock sock;
  struct event *read_ev;
  struct sockaddr_storage local;
  socklen_t locallen;
  qrpci_cidmap *cids;
  qrpci_list conns;
  size_t nhandshaking;
  size_t nconns;            /* including those in their closing period */
  qrpc_endpoint_stats stats;
  qrpc_conn_stats gone; /* traffic of the connections already freed */
  /* Stateless-reset token bucket, in resets x 1e9 (ns x rate). */
  uint64_t reset_credit;
  uint64_t reset_ts;
  int reset_started;
  uint8_t secret[QRPCI_STATIC_SECRET_LEN];
  /* In a worker group (workers.h): the group, this endpoint's index in it,
   * and its inbox of packets other workers received for its connections.
   * The inbox is the only part other threads touch, under inbox_mu. */
  qrpci_wgroup *group;
  size_t widx;
  struct event *inbox_ev;
  pthread_mutex_t inbox_mu;
  int inbox_mu_init;
  qrpci_handoff *inbox_head, *inbox_tail;
  size_t inbox_len;
  /* The application's reference and one per outgoing connection through
   * it (qrpc_conn_opts.via): the struct outlives qrpc_endpoint_free()
   * while such connections exist, with its socket closed and freed set. */
  size_t refs;
  int freed;
};

/* Fills cid with len random bytes, the worker index in a group's
 * endpoint (workers.h). Errors: QRPC_ESYSTEM. */
int qrpci_endpoint_new_cid(qrpc_endpoint *ep, uint8_t *cid, size_t len);
/* Makes an endpoint on fd (already bound; gso: the kernel takes
 * UDP_SEGMENT on it). The endpoint owns fd from now on and closes it when
 * freed, even on failure. */
int qrpci_endpoint_listen_fd(qrpc_loop *loop, int fd, int gso,
                             qrpc_tls_config *tls,
                             const qrpc_endpoint_opts *opts,
                             const qrpc_conn_callbacks *cbs, void *user_data,
                             qrpci_wgroup *group, size_t widx,
                             qrpc_endpoint **out);
/* The group's endpoint idx, or NULL (workers.c). Read by other workers'
 * threads while the group runs; set before they start. */
qrpc_endpoint *qrpci_wgroup_endpoint(qrpci_wgroup *g, size_t idx);
void qrpci_wgroup_forget(qrpci_wgroup *g, size_t idx);

void qrpci_endpoint_conn_gone(qrpc_endpoint *ep, qrpc_conn *c);
/* An outgoing connection through ep (qrpc_conn_opts.via) takes a
 * reference at qrpc_conn_connect() and gives it back when freed. */
void qrpci_endpoint_ref(qrpc_endpoint *ep);
void qrpci_endpoint_unref(qrpc_endpoint *ep);
/* Joins client connection c to ep's socket and id map, scid its first
 * id. Errors: QRPC_ECLOSED (ep was freed), QRPC_EINVAL (other address
 * family than the server's), QRPC_ENOMEM. */
int qrpci_endpoint_attach(qrpc_endpoint *ep, qrpc_conn *c,
                          const struct sockaddr *peer, const ngtcp2_cid *scid);
void qrpci_endpoint_conn_closed(qrpc_endpoint *ep, qrpc_conn *c);
void qrpci_endpoint_conn_established(qrpc_endpoint *ep, qrpc_conn *c);
int qrpci_endpoint_map_cid(qrpc_endpoint *ep, const ngtcp2_cid *cid,
                           qrpc_conn *c);
void qrpci_endpoint_unmap_cid(qrpc_endpoint *ep, const ngtcp2_cid *cid);


#endif
