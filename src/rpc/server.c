/* qrpc_server: an endpoint whose connections each get an RPC peer. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "dgram/channel.h"
#include "qrpc/error.h"
#include "quic/close.h"
#include "quic/rpcstream.h"
#include "rpc/callstats.h"
#include "rpc/engine.h"
#include "util/clock.h"
#include "wire/protocol.h"

struct qrpc_server {
  qrpci_core core;
  /* &self is the user data of the server's connections until they have a
   * peer, then the peer is. Both point at a pointer to the core (a peer
   * begins with one), so a connection callback finds the server either
   * way, and tells which it got by the address. */
  qrpci_core *self;
  qrpci_dgram *dg;
  qrpc_endpoint *ep;
  qrpc_server_opts opts;
  qrpci_list peers;
  int shutting_down;
  struct event *deadline_ev;
  struct event *done_ev;
  void (*on_done)(qrpc_server *srv, void *ud);
  void *done_ud;
};

void qrpc_server_opts_default(qrpc_server_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  qrpc_endpoint_opts_default(&o->endpoint);
  qrpci_rpc_opts_default(&o->rpc);
}

static qrpc_server *server_of(qrpci_core *core) {
  return QRPCI_CONTAINER_OF(core, qrpc_server, core);
}

_Static_assert(offsetof(qrpc_peer, core) == 0,
               "a peer must begin with its core pointer");

/* The server of a connection's user data, and its peer if it has one. */
static qrpc_server *owner_of(void *ud, qrpc_peer **peer) {
  qrpci_core **owner = ud;
  qrpc_server *srv = server_of(*owner);
  *peer = owner == &srv->self ? NULL : (qrpc_peer *)(void *)owner;
  return srv;
}

/* Gives c its peer: at the handshake, or earlier when the client's
 * 0-RTT data was accepted. NULL when out of memory (c is then closing). */
static qrpc_peer *srv_attach(qrpc_server *srv, qrpc_conn *c) {
  qrpc_peer *peer = qrpci_peer_new(&srv->core, c);
  if (!peer) {
    qrpc_conn_close(c, QRPCI_ERR_INTERNAL_ERROR, "out of memory");
    return NULL;
  }
  qrpci_list_push_back(&srv->peers, &peer->node);
  qrpc_conn_set_user_data(c, peer);
  if (!(peer->dg = qrpci_dgconn_new(srv->dg, c, peer))) {
    /* on_closed, from inside this call or later, releases the peer. */
    qrpc_conn_close(c, QRPCI_ERR_INTERNAL_ERROR, "out of memory");
    return NULL;
  }
  return peer;
}

/* The client's early data was accepted: its calls may arrive now. The
 * peer is not ready (on_peer_open waits for the handshake), and its own
 * calls wait too. */
static void srv_on_early(qrpc_conn *c, void *ud) {
  qrpc_peer *peer;
  qrpc_server *srv = owner_of(ud, &peer);
  if (peer || !(peer = srv_attach(srv, c))) return;
  /* Draining already: the early calls are refused, the connection closes
   * once that is said. */
  if (srv->shutting_down) qrpci_peer_goaway(peer);
}

static void srv_on_established(qrpc_conn *c, void *ud) {
  qrpc_peer *peer;
  qrpc_server *srv = owner_of(ud, &peer);
  if (!peer && !(peer = srv_attach(srv, c))) return;
  if (peer->closed || !peer->dg) return;
  qrpci_peer_ready(peer);
  if (srv->opts.on_peer_open) srv->opts.on_peer_open(peer, srv->opts.user_data);
  if (srv->shutting_down) qrpci_peer_goaway(peer);
}

/* Datagrams count once the handshake is done: one that arrives in 0-RTT
 * could be a replay, and qrpc never sends one there. */
static void srv_on_datagram(qrpc_conn *c, const uint8_t *data, size_t len,
                            void *ud) {
  qrpc_peer *peer;
  owner_of(ud, &peer);
  if (peer && peer->ready) qrpci_peer_on_datagram(c, data, len, peer);
}

/* Established connections reach here, and those that entered 0-RTT; a
 * connection whose peer could not be made has none to release. */
static void srv_on_closed(qrpc_conn *c, const qrpc_close_info *info,
                          void *ud) {
  qrpc_peer *peer;
  owner_of(ud, &peer);
  if (peer) qrpci_peer_closed(peer);
}

static const qrpc_conn_callbacks srv_conn_cbs = {
    .on_established = srv_on_established,
    .on_datagram = srv_on_datagram,
    .on_closed = srv_on_closed,
};

static void srv_done_cb(evutil_socket_t fd, short what, void *arg) {
  qrpc_server *srv = arg;
  if (srv->deadline_ev) evtimer_del(srv->deadline_ev);
  if (srv->on_done) srv->on_done(srv, srv->done_ud);
}

static void srv_peer_released(qrpci_core *core, qrpc_peer *peer) {
  qrpc_server *srv = server_of(core);
  qrpci_list_remove(&peer->node);
  if (peer->ready && srv->opts.on_peer_close)
    srv->opts.on_peer_close(peer, srv->opts.user_data);
  /* Reported from the loop: on_done may free the server, which must not
   * happen inside one of its connections' callbacks. */
  if (srv->shutting_down && qrpci_list_empty(&srv->peers))
    event_active(srv->done_ev, 0, 0);
}

/* A server's calls go to peers that are connected: none is ever queued. */
static const qrpci_core_ops srv_core_ops = {
    .peer_released = srv_peer_released,
    .peer_freed = qrpci_peer_free_dgram,
};

int qrpc_server_new(qrpc_loop *loop, const char *addr, qrpc_tls_config *tls,
                    const qrpc_server_opts *opts, qrpc_server **out) {
  if (!loop || !addr || !tls || !out) return QRPC_EINVAL;
  if (opts && opts->size != sizeof(*opts)) return QRPC_EINVAL;
  qrpc_server *srv = calloc(1, sizeof(*srv));
  if (!srv) return QRPC_ENOMEM;
  if (opts)
    srv->opts = *opts;
  else
    qrpc_server_opts_default(&srv->opts);
  qrpci_list_init(&srv->peers);
  int rv = qrpci_core_init(&srv->core, loop, &srv->opts.rpc, &srv_core_ops);
  srv->self = &srv->core;
  if (rv == 0 && !(srv->dg = qrpci_dgram_new())) rv = QRPC_ENOMEM;
  if (rv == 0) {
    srv->done_ev = event_new(qrpc_loop_base(loop), -1, 0, srv_done_cb, srv);
    if (!srv->done_ev) rv = QRPC_ENOMEM;
  }
  if (rv == 0)
    rv = qrpc_endpoint_listen(loop, addr, tls, &srv->opts.endpoint,
                              &srv_conn_cbs, &srv->self, &srv->ep);
  if (rv == 0) qrpci_endpoint_set_early_hook(srv->ep, srv_on_early);
  if (rv != 0) {
    qrpc_server_free(srv);
    return rv;
  }
  *out = srv;
  return 0;
}

int qrpc_server_register(qrpc_server *srv, uint32_t method, qrpc_shape shape,
                         qrpc_handler_fn handler, void *ud) {
  return qrpc_server_register_flags(srv, method, shape, 0, handler, ud);
}

int qrpc_server_add_interceptor(qrpc_server *srv,
                                const qrpc_interceptor *icpt) {
  if (!srv) return QRPC_EINVAL;
  return qrpci_core_add_interceptor(&srv->core, icpt);
}

int qrpc_server_register_flags(qrpc_server *srv, uint32_t method,
                               qrpc_shape shape, unsigned flags,
                               qrpc_handler_fn handler, void *ud) {
  if (!srv) return QRPC_EINVAL;
  return qrpci_core_register(&srv->core, method, shape, flags, handler, ud);
}

uint16_t qrpc_server_port(qrpc_server *srv) {
  return qrpc_endpoint_port(srv->ep);
}

qrpc_endpoint *qrpc_server_endpoint(qrpc_server *srv) { return srv->ep; }

qrpci_callstats *qrpci_server_callstats(qrpc_server *srv) {
  return qrpci_core_callstats(&srv->core);
}

void qrpc_server_dgram_stats(qrpc_server *srv, qrpc_dgram_stats *st) {
  if (!st) return;
  if (srv)
    qrpci_dgram_totals(srv->dg, st);
  else
    memset(st, 0, sizeof(*st));
}

static void srv_deadline_cb(evutil_socket_t fd, short what, void *arg) {
  qrpc_server *srv = arg;
  /* Closing fires on_closed, which unlinks the peer from the list. */
  while (!qrpci_list_empty(&srv->peers)) {
    qrpc_peer *peer = QRPCI_CONTAINER_OF(srv->peers.next, qrpc_peer, node);
    qrpc_conn_close(peer->conn, QRPCI_ERR_GOING_AWAY, "drain deadline");
  }
}

int qrpc_server_shutdown(qrpc_server *srv, uint64_t deadline_ms,
                         void (*on_done)(qrpc_server *srv, void *ud),
                         void *ud) {
  if (!srv) return QRPC_EINVAL;
  if (srv->shutting_down) return QRPC_ESTATE;
  srv->shutting_down = 1;
  srv->on_done = on_done;
  srv->done_ud = ud;
  qrpci_endpoint_refuse_new(srv->ep);
  srv->deadline_ev =
      evtimer_new(qrpc_loop_base(srv->core.loop), srv_deadline_cb, srv);
  if (!srv->deadline_ev) return QRPC_ENOMEM;
  struct timeval tv = qrpci_ns_to_tv(deadline_ms * QRPCI_NS_PER_MS);
  evtimer_add(srv->deadline_ev, &tv);
  for (qrpci_list *n = srv->peers.next; n != &srv->peers;) {
    qrpc_peer *peer = QRPCI_CONTAINER_OF(n, qrpc_peer, node);
    n = n->next;
    qrpci_peer_goaway(peer);
  }
  if (qrpci_list_empty(&srv->peers)) event_active(srv->done_ev, 0, 0);
  return 0;
}

void qrpc_server_free(qrpc_server *srv) {
  if (!srv) return;
  qrpc_endpoint_free(srv->ep);
  if (srv->deadline_ev) event_free(srv->deadline_ev);
  if (srv->done_ev) event_free(srv->done_ev);
  qrpci_core_cleanup(&srv->core);
  qrpci_dgram_free(srv->dg);
  free(srv);
}

int qrpc_server_register_dgram(qrpc_server *srv, uint32_t channel,
                               const qrpc_dgram_opts *opts, qrpc_dgram_fn fn,
                               void *ud) {
  if (!srv) return QRPC_EINVAL;
  return qrpci_dgram_register(srv->dg, channel, opts, fn, ud);
}

int qrpc_server_dgram_encode(qrpc_server *srv, uint32_t channel,
                             const void *payload, size_t len,
                             qrpc_dgram **out) {
  if (!srv) return QRPC_EINVAL;
  return qrpci_dgram_encode(srv->dg, channel, qrpci_bytes(payload, len), out);
}

int qrpc_server_dgram_encode_msg(qrpc_server *srv, uint32_t channel,
                                 const qrpc_msg *m, qrpc_dgram **out) {
  if (!srv) return QRPC_EINVAL;
  return qrpci_dgram_encode(srv->dg, channel, qrpci_msg(m), out);
}

int qrpc_server_keep(qrpc_server *srv, const void *data, size_t len,
                     void **out) {
  if (!srv) return QRPC_EINVAL;
  return qrpci_core_keep(&srv->core, data, len, out);
}
