/* qrpc_server: endpoints whose connections each get an RPC peer; one per
 * worker (qrpc_server_opts.workers), each worker on a loop of its own. */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dgram/channel.h"
#include "qrpc/error.h"
#include "quic/close.h"
#include "quic/rpcstream.h"
#include "quic/workers.h"
#include "rpc/callstats.h"
#include "rpc/engine.h"
#include "util/clock.h"
#include "util/log.h"
#include "wire/protocol.h"

/* One worker: a loop (the caller's for worker 0, else one of its own on a
 * thread of its own), its endpoint on the group's socket, its call engine
 * and datagram state, and the peers of the connections it accepted.
 * Everything here is touched only on the worker's thread, except where
 * said. */
typedef struct srv_worker {
  qrpci_core core;
  /* &self is the user data of the worker's connections until they have a
   * peer, then the peer is. Both point at a pointer to the core (a peer
   * begins with one), so a connection callback finds the worker either
   * way, and tells which it got by the address. */
  qrpci_core *self;
  qrpc_server *srv;
  size_t idx;
  qrpc_loop *loop;
  int own_loop;
  qrpci_dgram *dg;
  qrpc_endpoint *ep;
  qrpci_list peers;
  uint64_t npeers, peers_opened;
  int shutting_down;
  int drained; /* reported to the server after its shutdown */
  struct event *deadline_ev;
  pthread_t thread;
  int has_thread;
  int stop; /* set on the worker's thread by a posted stop */
} srv_worker;

enum { GATE_CLOSED, GATE_OPEN, GATE_EXIT };

struct qrpc_server {
  qrpc_server_opts opts;
  size_t nworkers;
  srv_worker *w;
  qrpci_wgroup *group; /* NULL with one worker: a lone endpoint, as before */
  qrpc_loop *loop;     /* the caller's: worker 0's */
  int shutting_down;
  uint64_t deadline_ms;
  atomic_size_t undrained; /* workers still draining after shutdown */
  struct event *done_ev;
  struct event *start_ev;
  void (*on_done)(qrpc_server *srv, void *ud);
  void *done_ud;
  /* The worker threads wait at the gate until worker 0's loop first runs,
   * so registrations made before that need no locks. */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int gate;
};

/* The worker whose thread this is (threads of workers 1..N-1). */
static _Thread_local srv_worker *cur_worker;

void qrpc_server_opts_default(qrpc_server_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  qrpc_endpoint_opts_default(&o->endpoint);
  qrpci_rpc_opts_default(&o->rpc);
  o->workers = 1;
}

static srv_worker *worker_of(qrpci_core *core) {
  return QRPCI_CONTAINER_OF(core, srv_worker, core);
}

_Static_assert(offsetof(qrpc_peer, core) == 0,
               "a peer must begin with its core pointer");

/* The worker of a connection's user data, and its peer if it has one. */
static srv_worker *owner_of(void *ud, qrpc_peer **peer) {
  qrpci_core **owner = ud;
  srv_worker *w = worker_of(*owner);
  *peer = owner == &w->self ? NULL : (qrpc_peer *)(void *)owner;
  return w;
}

/* Gives c its peer: at the handshake, or earlier when the client's
 * 0-RTT data was accepted. NULL when out of memory (c is then closing). */
static qrpc_peer *srv_attach(srv_worker *w, qrpc_conn *c) {
  qrpc_peer *peer = qrpci_peer_new(&w->core, c);
  if (!peer) {
    qrpc_conn_close(c, QRPCI_ERR_INTERNAL_ERROR, "out of memory");
    return NULL;
  }
  qrpci_list_push_back(&w->peers, &peer->node);
  w->npeers++;
  qrpc_conn_set_user_data(c, peer);
  if (!(peer->dg = qrpci_dgconn_new(w->dg, c, peer))) {
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
  srv_worker *w = owner_of(ud, &peer);
  if (peer || !(peer = srv_attach(w, c))) return;
  /* Draining already: the early calls are refused, the connection closes
   * once that is said. */
  if (w->shutting_down) qrpci_peer_goaway(peer);
}

static void srv_on_established(qrpc_conn *c, void *ud) {
  qrpc_peer *peer;
  srv_worker *w = owner_of(ud, &peer);
  if (!peer && !(peer = srv_attach(w, c))) return;
  if (peer->closed || !peer->dg) return;
  qrpci_peer_ready(peer);
  w->peers_opened++;
  qrpc_server *srv = w->srv;
  if (srv->opts.on_peer_open) srv->opts.on_peer_open(peer, srv->opts.user_data);
  if (w->shutting_down) qrpci_peer_goaway(peer);
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
static void srv_on_closed(qrpc_conn *c, const qrpc_close_info *info, void *ud) {
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
  if (srv->on_done) srv->on_done(srv, srv->done_ud);
}

/* A draining worker has no peer left: the last one to get there has the
 * server's on_done reported on worker 0's loop. Worker thread. */
static void worker_drained(srv_worker *w) {
  if (w->drained) return;
  w->drained = 1;
  if (w->deadline_ev) evtimer_del(w->deadline_ev);
  /* event_active is thread-safe with libevent's locking on. */
  if (atomic_fetch_sub(&w->srv->undrained, 1) == 1)
    event_active(w->srv->done_ev, 0, 0);
}

static void srv_peer_released(qrpci_core *core, qrpc_peer *peer) {
  srv_worker *w = worker_of(core);
  qrpc_server *srv = w->srv;
  qrpci_list_remove(&peer->node);
  w->npeers--;
  if (peer->ready && srv->opts.on_peer_close)
    srv->opts.on_peer_close(peer, srv->opts.user_data);
  /* Reported from the loop: on_done may free the server, which must not
   * happen inside one of its connections' callbacks. */
  if (w->shutting_down && qrpci_list_empty(&w->peers)) worker_drained(w);
}

/* A server's calls go to peers that are connected: none is ever queued. */
static const qrpci_core_ops srv_core_ops = {
    .peer_released = srv_peer_released,
    .peer_freed = qrpci_peer_free_dgram,
};

/* ---- Worker threads ----------------------------------------------------- */

static void *worker_main(void *arg) {
  srv_worker *w = arg;
  qrpc_server *srv = w->srv;
  pthread_mutex_lock(&srv->mu);
  while (srv->gate == GATE_CLOSED) pthread_cond_wait(&srv->cv, &srv->mu);
  int go = srv->gate == GATE_OPEN;
  pthread_mutex_unlock(&srv->mu);
  if (!go) return NULL;
  cur_worker = w;
  /* The endpoint's socket keeps the loop busy until a posted stop. */
  while (!w->stop)
    if (qrpc_loop_run(w->loop) != 0) break;
  cur_worker = NULL;
  return NULL;
}

static void open_gate(qrpc_server *srv, int how) {
  pthread_mutex_lock(&srv->mu);
  if (srv->gate == GATE_CLOSED) srv->gate = how;
  pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
}

static int gate_state(qrpc_server *srv) {
  pthread_mutex_lock(&srv->mu);
  int g = srv->gate;
  pthread_mutex_unlock(&srv->mu);
  return g;
}

/* Worker 0's loop runs: the other workers start serving. */
static void srv_start_cb(evutil_socket_t fd, short what, void *arg) {
  open_gate(arg, GATE_OPEN);
}

static void worker_stop(qrpc_loop *loop, void *arg) {
  srv_worker *w = arg;
  w->stop = 1;
  qrpc_loop_stop(loop);
}

/* Runs fn on every worker's thread and returns when all have run it:
 * directly for worker 0 and for workers not running, through
 * qrpc_loop_post() for the others. Worker 0's thread only. */
typedef struct srv_gather {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  size_t left;
  void (*fn)(srv_worker *w, void *ctx);
  void *ctx;
} srv_gather;

static void gather_one(qrpc_loop *loop, void *arg) {
  srv_worker *w = cur_worker;
  srv_gather *g = arg;
  g->fn(w, g->ctx);
  pthread_mutex_lock(&g->mu);
  if (--g->left == 0) pthread_cond_signal(&g->cv);
  pthread_mutex_unlock(&g->mu);
}

static int on_every_worker(qrpc_server *srv,
                           void (*fn)(srv_worker *w, void *ctx), void *ctx) {
  if (cur_worker && cur_worker->srv == srv) return QRPC_ESTATE;
  srv_gather g = {.left = 0, .fn = fn, .ctx = ctx};
  pthread_mutex_init(&g.mu, NULL);
  pthread_cond_init(&g.cv, NULL);
  int running = gate_state(srv) == GATE_OPEN;
  int rv = 0;
  for (size_t i = 0; i < srv->nworkers; i++) {
    srv_worker *w = &srv->w[i];
    if (i == 0 || !running || !w->has_thread) {
      fn(w, ctx);
      continue;
    }
    pthread_mutex_lock(&g.mu);
    g.left++;
    pthread_mutex_unlock(&g.mu);
    if (qrpc_loop_post(w->loop, gather_one, &g) != 0) {
      pthread_mutex_lock(&g.mu);
      g.left--;
      pthread_mutex_unlock(&g.mu);
      rv = QRPC_ENOMEM;
    }
  }
  pthread_mutex_lock(&g.mu);
  while (g.left > 0) pthread_cond_wait(&g.cv, &g.mu);
  pthread_mutex_unlock(&g.mu);
  pthread_cond_destroy(&g.cv);
  pthread_mutex_destroy(&g.mu);
  return rv;
}

/* ---- Creating and freeing ----------------------------------------------- */

static int worker_init(qrpc_server *srv, size_t idx, const char *addr,
                       qrpc_tls_config *tls) {
  srv_worker *w = &srv->w[idx];
  w->srv = srv;
  w->idx = idx;
  w->self = &w->core;
  qrpci_list_init(&w->peers);
  int rv = 0;
  if (idx == 0) {
    w->loop = srv->loop;
  } else {
    if ((rv = qrpc_loop_new(NULL, &w->loop)) != 0) return rv;
    w->own_loop = 1;
  }
  if ((rv = qrpci_core_init(&w->core, w->loop, &srv->opts.rpc,
                            &srv_core_ops)) != 0)
    return rv;
  if (!(w->dg = qrpci_dgram_new())) return QRPC_ENOMEM;
  if (srv->group)
    rv = qrpci_wgroup_listen(srv->group, idx, w->loop, tls, &srv->opts.endpoint,
                             &srv_conn_cbs, &w->self, &w->ep);
  else
    rv = qrpc_endpoint_listen(w->loop, addr, tls, &srv->opts.endpoint,
                              &srv_conn_cbs, &w->self, &w->ep);
  if (rv != 0) return rv;
  qrpci_endpoint_set_early_hook(w->ep, srv_on_early);
  return 0;
}

static size_t workers_wanted(const qrpc_server_opts *o) {
  if (o->workers > 0) return o->workers;
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) n = 1;
  return (size_t)n > QRPCI_MAX_WORKERS ? QRPCI_MAX_WORKERS : (size_t)n;
}

int qrpc_server_new(qrpc_loop *loop, const char *addr, qrpc_tls_config *tls,
                    const qrpc_server_opts *opts, qrpc_server **out) {
  if (!loop || !addr || !tls || !out) return QRPC_EINVAL;
  if (opts && opts->size != sizeof(*opts)) return QRPC_EINVAL;
  if (opts && opts->workers > QRPCI_MAX_WORKERS) return QRPC_EINVAL;
  qrpc_server *srv = calloc(1, sizeof(*srv));
  if (!srv) return QRPC_ENOMEM;
  if (opts)
    srv->opts = *opts;
  else
    qrpc_server_opts_default(&srv->opts);
  srv->loop = loop;
  srv->nworkers = workers_wanted(&srv->opts);
  pthread_mutex_init(&srv->mu, NULL);
  pthread_cond_init(&srv->cv, NULL);
  int rv = 0;
  srv->w = calloc(srv->nworkers, sizeof(*srv->w));
  srv->done_ev = event_new(qrpc_loop_base(loop), -1, 0, srv_done_cb, srv);
  srv->start_ev = event_new(qrpc_loop_base(loop), -1, 0, srv_start_cb, srv);
  if (!srv->w || !srv->done_ev || !srv->start_ev) {
    if (!srv->w) srv->nworkers = 0;
    rv = QRPC_ENOMEM;
  }
  if (rv == 0 && srv->nworkers > 1)
    rv = qrpci_wgroup_new(addr, srv->nworkers, !qrpci_workers_no_bpf,
                          &srv->group);
  for (size_t i = 0; rv == 0 && i < srv->nworkers; i++)
    rv = worker_init(srv, i, addr, tls);
  for (size_t i = 1; rv == 0 && i < srv->nworkers; i++) {
    if (pthread_create(&srv->w[i].thread, NULL, worker_main, &srv->w[i]) != 0) {
      QRPCI_ERROR("server: cannot start worker %zu of %zu", i, srv->nworkers);
      rv = QRPC_ESYSTEM;
    } else {
      srv->w[i].has_thread = 1;
    }
  }
  if (rv != 0) {
    qrpc_server_free(srv);
    return rv;
  }
  if (srv->nworkers > 1) event_active(srv->start_ev, 0, 0);
  *out = srv;
  return 0;
}

void qrpc_server_free(qrpc_server *srv) {
  if (!srv) return;
  /* Stop every worker thread first: from here on all is on this thread. */
  int running = 0;
  pthread_mutex_lock(&srv->mu);
  if (srv->gate == GATE_CLOSED)
    srv->gate = GATE_EXIT;
  else
    running = srv->gate == GATE_OPEN;
  pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
  for (size_t i = 1; i < srv->nworkers; i++) {
    srv_worker *w = &srv->w[i];
    if (!w->has_thread) continue;
    if (running && qrpc_loop_post(w->loop, worker_stop, w) != 0) {
      /* Out of memory for the post: wake the loop another way. */
      event_base_loopbreak(qrpc_loop_base(w->loop));
    }
    pthread_join(w->thread, NULL);
  }
  for (size_t i = 0; i < srv->nworkers; i++) {
    srv_worker *w = &srv->w[i];
    /* Closing the connections fires on_peer_close here, on this thread. */
    qrpc_endpoint_free(w->ep);
    w->ep = NULL;
  }
  for (size_t i = 0; i < srv->nworkers; i++) {
    srv_worker *w = &srv->w[i];
    if (w->deadline_ev) event_free(w->deadline_ev);
    if (w->loop) qrpci_core_cleanup(&w->core);
    qrpci_dgram_free(w->dg);
    if (w->own_loop) qrpc_loop_free(w->loop);
  }
  qrpci_wgroup_free(srv->group);
  if (srv->done_ev) event_free(srv->done_ev);
  if (srv->start_ev) event_free(srv->start_ev);
  pthread_cond_destroy(&srv->cv);
  pthread_mutex_destroy(&srv->mu);
  free(srv->w);
  free(srv);
}

/* ---- Registration: on every worker, before they run --------------------- */

/* 0 while registrations may change: one worker, or workers not started. */
static int may_register(qrpc_server *srv) {
  if (srv->nworkers == 1) return 0;
  return gate_state(srv) == GATE_CLOSED ? 0 : QRPC_ESTATE;
}

int qrpc_server_register(qrpc_server *srv, uint32_t method, qrpc_shape shape,
                         qrpc_handler_fn handler, void *ud) {
  return qrpc_server_register_flags(srv, method, shape, 0, handler, ud);
}

int qrpc_server_add_interceptor(qrpc_server *srv,
                                const qrpc_interceptor *icpt) {
  if (!srv) return QRPC_EINVAL;
  int rv = may_register(srv);
  for (size_t i = 0; rv == 0 && i < srv->nworkers; i++)
    rv = qrpci_core_add_interceptor(&srv->w[i].core, icpt);
  return rv;
}

int qrpc_server_register_flags(qrpc_server *srv, uint32_t method,
                               qrpc_shape shape, unsigned flags,
                               qrpc_handler_fn handler, void *ud) {
  if (!srv) return QRPC_EINVAL;
  int rv = may_register(srv);
  for (size_t i = 0; rv == 0 && i < srv->nworkers; i++)
    rv =
        qrpci_core_register(&srv->w[i].core, method, shape, flags, handler, ud);
  return rv;
}

int qrpc_server_register_dgram(qrpc_server *srv, uint32_t channel,
                               const qrpc_dgram_opts *opts, qrpc_dgram_fn fn,
                               void *ud) {
  if (!srv) return QRPC_EINVAL;
  int rv = may_register(srv);
  for (size_t i = 0; rv == 0 && i < srv->nworkers; i++)
    rv = qrpci_dgram_register(srv->w[i].dg, channel, opts, fn, ud);
  return rv;
}

/* ---- Workers and their figures ------------------------------------------ */

uint16_t qrpc_server_port(qrpc_server *srv) {
  return qrpc_endpoint_port(srv->w[0].ep);
}

qrpc_endpoint *qrpc_server_endpoint(qrpc_server *srv) { return srv->w[0].ep; }

qrpc_endpoint *qrpci_server_own_endpoint(qrpc_server *srv) {
  return cur_worker && cur_worker->srv == srv ? cur_worker->ep : srv->w[0].ep;
}

size_t qrpc_server_workers(const qrpc_server *srv) {
  return srv ? srv->nworkers : 0;
}

qrpc_loop *qrpc_server_worker_loop(qrpc_server *srv, size_t idx) {
  return srv && idx < srv->nworkers ? srv->w[idx].loop : NULL;
}

qrpc_loop *qrpc_peer_loop(qrpc_peer *peer) {
  return peer ? peer->core->loop : NULL;
}

int qrpc_server_steered(const qrpc_server *srv) {
  return srv && srv->group ? qrpci_wgroup_bpf(srv->group) : 0;
}

/* Call counters, per worker: each worker's are its own thread's, so they
 * are made and read there. */
typedef struct calls_ctx {
  pthread_mutex_t mu;
  qrpci_callstats *sum; /* NULL: only make them */
  int err;
} calls_ctx;

static void worker_calls(srv_worker *w, void *arg) {
  calls_ctx *c = arg;
  const qrpci_callstats *cs = qrpci_core_callstats(&w->core);
  pthread_mutex_lock(&c->mu);
  if (!cs || (c->sum && qrpci_callstats_add(c->sum, cs) != 0))
    c->err = QRPC_ENOMEM;
  pthread_mutex_unlock(&c->mu);
}

static int every_worker_calls(qrpc_server *srv, qrpci_callstats *sum) {
  calls_ctx c = {.sum = sum};
  pthread_mutex_init(&c.mu, NULL);
  int rv = on_every_worker(srv, worker_calls, &c);
  pthread_mutex_destroy(&c.mu);
  return rv ? rv : c.err;
}

int qrpci_server_callstats_enable(qrpc_server *srv) {
  return every_worker_calls(srv, NULL);
}

int qrpci_server_callstats_sum(qrpc_server *srv, qrpci_callstats *sum) {
  return every_worker_calls(srv, sum);
}

typedef struct stats_ctx {
  qrpc_server_worker_stats *per; /* one per worker */
  qrpc_dgram_stats *dg;          /* one per worker */
} stats_ctx;

static void worker_figures(srv_worker *w, void *arg) {
  stats_ctx *ctx = arg;
  if (ctx->per) {
    qrpc_server_worker_stats *ws = &ctx->per[w->idx];
    qrpc_endpoint_get_stats(w->ep, &ws->endpoint);
    ws->peers = w->npeers;
    ws->peers_opened = w->peers_opened;
  }
  if (ctx->dg) qrpci_dgram_totals(w->dg, &ctx->dg[w->idx]);
}

static void add_ep(qrpc_endpoint_stats *t, const qrpc_endpoint_stats *s) {
  uint64_t *a = (uint64_t *)(void *)t;
  const uint64_t *b = (const uint64_t *)(const void *)s;
  for (size_t i = 0; i < sizeof(*t) / sizeof(uint64_t); i++) a[i] += b[i];
}

int qrpc_server_get_stats(qrpc_server *srv, qrpc_endpoint_stats *total,
                          qrpc_server_worker_stats *per, size_t nper) {
  if (!srv) return QRPC_EINVAL;
  qrpc_server_worker_stats *all = calloc(srv->nworkers, sizeof(*all));
  if (!all) return QRPC_ENOMEM;
  stats_ctx ctx = {.per = all};
  int rv = on_every_worker(srv, worker_figures, &ctx);
  if (rv == 0) {
    if (total) {
      memset(total, 0, sizeof(*total));
      for (size_t i = 0; i < srv->nworkers; i++)
        add_ep(total, &all[i].endpoint);
    }
    for (size_t i = 0; per && i < nper; i++) {
      if (i < srv->nworkers)
        per[i] = all[i];
      else
        memset(&per[i], 0, sizeof(per[i]));
    }
  }
  free(all);
  return rv;
}

void qrpc_server_dgram_stats(qrpc_server *srv, qrpc_dgram_stats *st) {
  if (!st) return;
  memset(st, 0, sizeof(*st));
  if (!srv) return;
  qrpc_dgram_stats *dg = calloc(srv->nworkers, sizeof(*dg));
  if (!dg) return;
  stats_ctx ctx = {.dg = dg};
  if (on_every_worker(srv, worker_figures, &ctx) == 0) {
    uint64_t *a = (uint64_t *)(void *)st;
    for (size_t w = 0; w < srv->nworkers; w++) {
      const uint64_t *b = (const uint64_t *)(const void *)&dg[w];
      for (size_t i = 0; i < sizeof(*st) / sizeof(uint64_t); i++) a[i] += b[i];
    }
  }
  free(dg);
}

/* ---- Graceful shutdown --------------------------------------------------- */

static void srv_deadline_cb(evutil_socket_t fd, short what, void *arg) {
  srv_worker *w = arg;
  /* Closing fires on_closed, which unlinks the peer from the list. */
  while (!qrpci_list_empty(&w->peers)) {
    qrpc_peer *peer = QRPCI_CONTAINER_OF(w->peers.next, qrpc_peer, node);
    qrpc_conn_close(peer->conn, QRPCI_ERR_GOING_AWAY, "drain deadline");
  }
}

/* Starts the drain of one worker, on its thread. */
static void worker_shutdown(srv_worker *w) {
  w->shutting_down = 1;
  qrpci_endpoint_refuse_new(w->ep);
  w->deadline_ev = evtimer_new(qrpc_loop_base(w->loop), srv_deadline_cb, w);
  if (w->deadline_ev) {
    struct timeval tv = qrpci_ns_to_tv(w->srv->deadline_ms * QRPCI_NS_PER_MS);
    evtimer_add(w->deadline_ev, &tv);
  }
  for (qrpci_list *n = w->peers.next; n != &w->peers;) {
    qrpc_peer *peer = QRPCI_CONTAINER_OF(n, qrpc_peer, node);
    n = n->next;
    qrpci_peer_goaway(peer);
  }
  if (qrpci_list_empty(&w->peers)) worker_drained(w);
}

static void worker_shutdown_post(qrpc_loop *loop, void *arg) {
  worker_shutdown(arg);
}

int qrpc_server_shutdown(qrpc_server *srv, uint64_t deadline_ms,
                         void (*on_done)(qrpc_server *srv, void *ud),
                         void *ud) {
  if (!srv) return QRPC_EINVAL;
  if (srv->shutting_down) return QRPC_ESTATE;
  srv->shutting_down = 1;
  srv->on_done = on_done;
  srv->done_ud = ud;
  srv->deadline_ms = deadline_ms;
  atomic_store(&srv->undrained, srv->nworkers);
  int running = gate_state(srv) == GATE_OPEN;
  for (size_t i = 0; i < srv->nworkers; i++) {
    srv_worker *w = &srv->w[i];
    if (i == 0 || !running) {
      worker_shutdown(w);
    } else if (qrpc_loop_post(w->loop, worker_shutdown_post, w) != 0) {
      return QRPC_ENOMEM;
    }
  }
  return 0;
}

/* The datagram state of the calling worker's thread (worker 0's for any
 * thread that is not a worker of srv). */
static qrpci_dgram *cur_dg(qrpc_server *srv) {
  srv_worker *w = cur_worker;
  return w && w->srv == srv ? w->dg : srv->w[0].dg;
}

int qrpc_server_dgram_encode(qrpc_server *srv, uint32_t channel,
                             const void *payload, size_t len,
                             qrpc_dgram **out) {
  if (!srv) return QRPC_EINVAL;
  return qrpci_dgram_encode(cur_dg(srv), channel, qrpci_bytes(payload, len),
                            out);
}

int qrpc_server_dgram_encode_msg(qrpc_server *srv, uint32_t channel,
                                 const qrpc_msg *m, qrpc_dgram **out) {
  if (!srv) return QRPC_EINVAL;
  qrpci_payload pl = qrpci_msg(m);
  return qrpci_payload_settle(
      &pl, qrpci_dgram_encode(cur_dg(srv), channel, pl, out));
}

int qrpc_server_snapshot_new(qrpc_server *srv, uint32_t channel, uint64_t tick,
                             const void *state, size_t len,
                             qrpc_snapshot **out) {
  if (!srv || !state) return QRPC_EINVAL;
  return qrpci_snapshot_new(cur_dg(srv), channel, tick, qrpci_bytes(state, len),
                            out);
}

int qrpc_server_snapshot_new_msg(qrpc_server *srv, uint32_t channel,
                                 uint64_t tick, const qrpc_msg *m,
                                 qrpc_snapshot **out) {
  if (!srv) return QRPC_EINVAL;
  qrpci_payload pl = qrpci_msg(m);
  return qrpci_payload_settle(
      &pl, qrpci_snapshot_new(cur_dg(srv), channel, tick, pl, out));
}

int qrpc_server_keep(qrpc_server *srv, const void *data, size_t len,
                     void **out) {
  if (!srv) return QRPC_EINVAL;
  return qrpci_core_keep(&srv->w[0].core, data, len, out);
}
