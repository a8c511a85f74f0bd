/*
 * qrpc_client: calls to one server address over a connection that is
 * re-established with exponential backoff and jitter whenever it is lost.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "dgram/channel.h"
#include "qrpc/error.h"
#include "quic/addr.h"
#include "quic/rpcstream.h"
#include "quic/tls.h"
#include "rpc/engine.h"
#include "util/clock.h"
#include "util/log.h"
#include "wire/protocol.h"

struct qrpc_client {
  qrpci_core core;
  qrpci_dgram *dg;
  char *addr;
  qrpc_tls_config *tls;
  qrpc_client_opts opts;
  qrpc_peer *peer;      /* the current connection's peer */
  qrpci_list pending;   /* calls waiting for a connection */
  size_t npending;
  struct event *retry_ev;
  uint64_t backoff_ms;
  uint64_t rng;
  uint64_t attempts; /* started so far; the current one's number */
  int freeing;
};

void qrpc_client_opts_default(qrpc_client_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  qrpc_conn_opts_default(&o->conn);
  qrpci_rpc_opts_default(&o->rpc);
  o->max_pending = 1024;
  o->backoff_initial_ms = 100;
  o->backoff_max_ms = 10000;
}

static void cli_on_established(qrpc_conn *c, void *ud);
static void cli_on_closed(qrpc_conn *c, const qrpc_close_info *info, void *ud);
static void cli_on_early(qrpc_conn *c, void *ud);

static const qrpc_conn_callbacks cli_conn_cbs = {
    .on_established = cli_on_established,
    .on_datagram = qrpci_peer_on_datagram,
    .on_closed = cli_on_closed,
};

static void connect_now(qrpc_client *cli);

static qrpc_client *client_of(qrpci_core *core) {
  return QRPCI_CONTAINER_OF(core, qrpc_client, core);
}

/* Delay before the next attempt: half the current backoff plus a random
 * part of the other half, so many clients cut off together do not all
 * come back in the same instant. */
static uint64_t next_delay(qrpc_client *cli) {
  cli->rng ^= cli->rng << 13;
  cli->rng ^= cli->rng >> 7;
  cli->rng ^= cli->rng << 17;
  uint64_t b = cli->backoff_ms;
  uint64_t delay = b / 2 + (b > 1 ? cli->rng % (b / 2 + 1) : 0);
  cli->backoff_ms = b * 2 > cli->opts.backoff_max_ms ? cli->opts.backoff_max_ms
                                                     : b * 2;
  return delay;
}

static void retry_cb(evutil_socket_t fd, short what, void *arg) {
  connect_now(arg);
}

static void schedule_retry_in(qrpc_client *cli, uint64_t ms) {
  struct timeval tv = qrpci_ns_to_tv(ms * QRPCI_NS_PER_MS);
  evtimer_add(cli->retry_ev, &tv);
}

static void report(qrpc_client *cli, qrpc_client_state state, int error,
                   const qrpc_close_info *close, int was_ready,
                   uint64_t retry_in_ms) {
  if (!cli->opts.on_state || cli->freeing) return;
  qrpc_client_state_info info = {
      .state = state,
      .attempt = cli->attempts,
      .error = error,
      .close = close,
      .was_ready = was_ready,
      .retry_in_ms = retry_in_ms,
  };
  cli->opts.on_state(cli, &info, cli->opts.user_data);
}

/* The current attempt failed or its connection was lost: say so with the
 * time of the next one, then wait for it. */
static void fail_and_retry(qrpc_client *cli, int error,
                           const qrpc_close_info *close, int was_ready,
                           uint64_t retry_in_ms) {
  report(cli, QRPC_CLIENT_FAILED, error, close, was_ready, retry_in_ms);
  if (!cli->freeing) schedule_retry_in(cli, retry_in_ms);
}

static void connect_now(qrpc_client *cli) {
  if (cli->freeing || cli->peer) return;
  cli->attempts++;
  report(cli, QRPC_CLIENT_CONNECTING, 0, NULL, 0, 0);
  if (cli->freeing || cli->peer) return;
  qrpc_conn *conn;
  int rv = qrpc_conn_connect(cli->core.loop, cli->addr, cli->opts.server_name,
                             cli->tls, &cli->opts.conn, &cli_conn_cbs, NULL,
                             &conn);
  qrpc_peer *peer = rv == 0 ? qrpci_peer_new(&cli->core, conn) : NULL;
  if (peer && !(peer->dg = qrpci_dgconn_new(cli->dg, conn, peer))) {
    qrpci_peer_closed(peer); /* frees it: it never went out */
    peer = NULL;
  }
  if (!peer) {
    /* The connection has no user data yet, so its on_closed is a no-op. */
    if (rv == 0) qrpc_conn_close(conn, QRPCI_ERR_INTERNAL_ERROR, "no memory");
    QRPCI_WARN("rpc: cannot start a connection to %s: %s", cli->addr,
               qrpc_strerror(rv ? rv : QRPC_ENOMEM));
    fail_and_retry(cli, rv ? rv : QRPC_ENOMEM, NULL, 0, next_delay(cli));
    return;
  }
  cli->peer = peer;
  qrpc_conn_set_user_data(conn, peer);
  qrpci_conn_set_early_hook(conn, cli_on_early);
}

static void unqueue(qrpc_client *cli, qrpc_call *call) {
  qrpci_list_remove(&call->node);
  cli->npending--;
  call->state = QRPCI_CALL_ACTIVE;
}

static void flush_pending(qrpc_client *cli, qrpc_peer *peer) {
  while (!qrpci_list_empty(&cli->pending) && cli->peer == peer) {
    qrpc_call *call = QRPCI_CONTAINER_OF(cli->pending.next, qrpc_call, node);
    unqueue(cli, call);
    qrpci_payload pl = qrpci_bytes(call->payload, call->len);
    int rv = qrpci_call_start(call, peer, &pl);
    if (rv != 0)
      qrpci_call_defer_done(call, QRPC_STATUS_UNAVAILABLE,
                            "could not be sent");
  }
}

/* Idempotent calls that wait go out in 0-RTT; the others keep their
 * place. One that cannot start now (the server's remembered stream limit,
 * say) waits for the handshake with them. */
static void flush_idempotent(qrpc_client *cli, qrpc_peer *peer) {
  qrpci_list *n = cli->pending.next;
  while (n != &cli->pending && cli->peer == peer) {
    qrpc_call *call = QRPCI_CONTAINER_OF(n, qrpc_call, node);
    n = n->next;
    if (!call->idempotent) continue;
    qrpci_payload pl = qrpci_bytes(call->payload, call->len);
    if (qrpci_call_start(call, peer, &pl) != 0) continue;
    qrpci_list_remove(&call->node);
    cli->npending--;
  }
}

static void cli_on_early(qrpc_conn *c, void *ud) {
  qrpc_peer *peer = ud;
  if (!peer) return;
  qrpc_client *cli = client_of(peer->core);
  if (cli->peer != peer || cli->freeing) return;
  qrpci_peer_early(peer);
  flush_idempotent(cli, peer);
}

static void cli_on_established(qrpc_conn *c, void *ud) {
  qrpc_peer *peer = ud;
  qrpc_client *cli = client_of(peer->core);
  qrpci_peer_ready(peer);
  cli->backoff_ms = cli->opts.backoff_initial_ms;
  report(cli, QRPC_CLIENT_READY, 0, NULL, 0, 0);
  if (cli->peer != peer || cli->freeing) return;
  if (cli->opts.on_connect) cli->opts.on_connect(cli, peer, cli->opts.user_data);
  flush_pending(cli, peer);
}

static void cli_on_closed(qrpc_conn *c, const qrpc_close_info *info,
                          void *ud) {
  qrpc_peer *peer = ud;
  if (!peer) return;
  qrpc_client *cli = client_of(peer->core);
  int current = cli->peer == peer;
  int was_ready = peer->ready;
  qrpci_peer_closed(peer);
  if (!current || cli->freeing) return;
  if (!was_ready) {
    QRPCI_INFO("rpc: connecting to %s failed: %s; retrying", cli->addr,
               qrpc_strerror(info->error));
  } else if (cli->opts.on_disconnect) {
    cli->opts.on_disconnect(cli, info, cli->opts.user_data);
  }
  if (cli->freeing) return;
  /* The server lost this connection (a reset: it is back already) or
   * went silent: try again at once, then back off as usual. */
  uint64_t delay = was_ready && (info->kind == QRPC_CLOSE_RESET ||
                                 info->kind == QRPC_CLOSE_DEAD_PEER)
                       ? 0
                       : next_delay(cli);
  fail_and_retry(cli, info->error ? info->error : QRPC_ECLOSED, info, was_ready,
                 delay);
}

static void cli_peer_released(qrpci_core *core, qrpc_peer *peer) {
  qrpc_client *cli = client_of(core);
  if (cli->peer == peer) cli->peer = NULL;
}

static void cli_call_unqueued(qrpci_core *core, qrpc_call *call) {
  unqueue(client_of(core), call);
}

static const qrpci_core_ops cli_core_ops = {
    .peer_released = cli_peer_released,
    .peer_freed = qrpci_peer_free_dgram,
    .call_unqueued = cli_call_unqueued,
};

int qrpc_client_new(qrpc_loop *loop, const char *addr, qrpc_tls_config *tls,
                    const qrpc_client_opts *opts, qrpc_client **out) {
  if (!loop || !addr || !tls || !out) return QRPC_EINVAL;
  /* Callers built before on_state pass the size of the struct without it. */
  if (opts && opts->size != sizeof(*opts) &&
      opts->size != offsetof(qrpc_client_opts, on_state))
    return QRPC_EINVAL;
  if (opts && (opts->backoff_initial_ms == 0 ||
               opts->backoff_max_ms < opts->backoff_initial_ms))
    return QRPC_EINVAL;
  char *host, *port;
  if (qrpci_parse_addr(addr, &host, &port) != 0) return QRPC_EINVAL;
  free(host);
  free(port);
  qrpc_client *cli = calloc(1, sizeof(*cli));
  if (!cli) return QRPC_ENOMEM;
  qrpc_client_opts_default(&cli->opts);
  if (opts) {
    memcpy(&cli->opts, opts, opts->size);
    cli->opts.size = sizeof(cli->opts);
  }
  qrpci_list_init(&cli->pending);
  cli->backoff_ms = cli->opts.backoff_initial_ms;
  cli->rng = qrpci_now_ns() | 1;
  int rv = qrpci_core_init(&cli->core, loop, &cli->opts.rpc, &cli_core_ops);
  if (rv == 0 && !(cli->dg = qrpci_dgram_new())) rv = QRPC_ENOMEM;
  cli->addr = strdup(addr);
  if (cli->opts.server_name &&
      !(cli->opts.server_name = strdup(cli->opts.server_name)))
    rv = QRPC_ENOMEM;
  cli->retry_ev = evtimer_new(qrpc_loop_base(loop), retry_cb, cli);
  if (rv == 0 && (!cli->addr || !cli->retry_ev)) rv = QRPC_ENOMEM;
  if (rv != 0) {
    qrpc_client_free(cli);
    return rv;
  }
  cli->tls = tls;
  qrpci_tls_config_ref(tls);
  connect_now(cli);
  *out = cli;
  return 0;
}

int qrpc_client_add_interceptor(qrpc_client *cli,
                                const qrpc_interceptor *icpt) {
  if (!cli) return QRPC_EINVAL;
  return qrpci_core_add_interceptor(&cli->core, icpt);
}

int qrpc_client_register(qrpc_client *cli, uint32_t method, qrpc_shape shape,
                         qrpc_handler_fn handler, void *ud) {
  if (!cli) return QRPC_EINVAL;
  return qrpci_core_register(&cli->core, method, shape, 0, handler, ud);
}

qrpc_peer *qrpc_client_peer(qrpc_client *cli) {
  qrpc_peer *p = cli->peer;
  return p && p->ready && !p->goaway_received && !p->closed ? p : NULL;
}

uint64_t qrpc_client_early_calls(qrpc_client *cli) {
  return cli ? cli->core.early_calls : 0;
}

static int client_start(qrpc_client *cli, uint32_t method, qrpc_shape shape,
                        qrpci_payload pl, const qrpc_call_opts *opts,
                        const qrpc_call_callbacks *cbs, void *ud,
                        qrpc_call **out) {
  qrpc_call_opts o;
  if (!cli || !qrpci_payload_valid(&pl) || qrpc_call_opts_copy(&o, opts) != 0)
    return QRPC_EINVAL;
  size_t len = qrpci_payload_len(&pl);
  if ((shape == QRPC_SHAPE_CLIENT_STREAM || shape == QRPC_SHAPE_BIDI_STREAM) &&
      len)
    return QRPC_EINVAL;
  if (len > cli->core.opts.max_frame) return QRPC_EMSGSIZE;
  int rc = qrpci_call_opts_check(&cli->core, &o);
  if (rc != 0) return rc;
  int fail_fast = o.fail_fast >= 0 ? o.fail_fast : cli->opts.fail_fast;
  /* Established, or in 0-RTT for an idempotent call: it goes out now. */
  qrpc_peer *peer =
      cli->peer && qrpci_peer_takes(cli->peer, o.idempotent) ? cli->peer : NULL;
  if (!peer && fail_fast) return QRPC_ECLOSED;
  if (!peer && cli->npending >= cli->opts.max_pending) return QRPC_ENOBUFS;
  qrpc_call *call = qrpci_call_new(&cli->core, method, shape, &o,
                                   cli->opts.default_timeout_ms, cbs, ud);
  if (!call) return QRPC_ENOMEM;
  const char *why = NULL;
  int st = qrpci_call_intercept(call, peer, &o, &why);
  if (st != 0) {
    qrpci_call_defer_done(call, st, why);
    if (out) *out = call;
    return 0;
  }
  int rv = 0;
  if (peer) {
    rv = qrpci_call_start(call, peer, &pl);
  } else if (len && !(call->payload = malloc(len))) {
    rv = QRPC_ENOMEM;
  } else {
    /* Waiting for a connection: the payload is kept as bytes. */
    rv = len ? qrpci_payload_write(&pl, call->payload) : 0;
    call->len = len;
  }
  if (rv != 0) {
    qrpci_call_release(call);
    return rv;
  }
  if (!peer) {
    call->state = QRPCI_CALL_QUEUED;
    qrpci_list_push_back(&cli->pending, &call->node);
    cli->npending++;
  }
  if (out) *out = call;
  return 0;
}

int qrpc_client_call(qrpc_client *cli, uint32_t method, const void *payload,
                     size_t len, const qrpc_call_opts *opts,
                     const qrpc_call_callbacks *cbs, void *ud,
                     qrpc_call **out) {
  return client_start(cli, method, QRPC_SHAPE_UNARY, qrpci_bytes(payload, len),
                      opts, cbs, ud, out);
}

int qrpc_client_call_msg(qrpc_client *cli, uint32_t method, const qrpc_msg *m,
                         const qrpc_call_opts *opts,
                         const qrpc_call_callbacks *cbs, void *ud,
                         qrpc_call **out) {
  return client_start(cli, method, QRPC_SHAPE_UNARY, qrpci_msg(m), opts, cbs,
                      ud, out);
}

/* A streaming shape: unary calls go through qrpc_client_call(). */
static int client_stream(qrpc_client *cli, uint32_t method, qrpc_shape shape,
                         qrpci_payload pl, const qrpc_call_opts *opts,
                         const qrpc_call_callbacks *cbs, void *ud,
                         qrpc_call **out) {
  if (shape == QRPC_SHAPE_UNARY || shape > QRPC_SHAPE_BIDI_STREAM)
    return QRPC_EINVAL;
  return client_start(cli, method, shape, pl, opts, cbs, ud, out);
}

int qrpc_client_stream(qrpc_client *cli, uint32_t method, qrpc_shape shape,
                       const void *payload, size_t len,
                       const qrpc_call_opts *opts,
                       const qrpc_call_callbacks *cbs, void *ud,
                       qrpc_call **out) {
  return client_stream(cli, method, shape, qrpci_bytes(payload, len), opts,
                       cbs, ud, out);
}

int qrpc_client_stream_msg(qrpc_client *cli, uint32_t method, qrpc_shape shape,
                           const qrpc_msg *m, const qrpc_call_opts *opts,
                           const qrpc_call_callbacks *cbs, void *ud,
                           qrpc_call **out) {
  return client_stream(cli, method, shape, qrpci_msg(m), opts, cbs, ud, out);
}

static int client_notify(qrpc_client *cli, uint32_t method, qrpci_payload pl) {
  if (!cli || !qrpci_payload_valid(&pl)) return QRPC_EINVAL;
  qrpc_peer *peer = qrpc_client_peer(cli);
  if (!peer) return QRPC_ECLOSED;
  return qrpci_peer_notify(peer, method, pl);
}

int qrpc_client_notify(qrpc_client *cli, uint32_t method, const void *payload,
                       size_t len) {
  return client_notify(cli, method, qrpci_bytes(payload, len));
}

int qrpc_client_notify_msg(qrpc_client *cli, uint32_t method,
                           const qrpc_msg *m) {
  return client_notify(cli, method, qrpci_msg(m));
}

static void close_peer(qrpc_peer *peer) {
  /* Calls in flight end as CANCELLED: it is this side giving up. */
  qrpc_call *call;
  while ((call = qrpci_u64map_pop(&peer->calls))) {
    call->msgid = 0; /* out of the table; the close below tells the peer */
    qrpci_call_defer_done(call, QRPC_STATUS_CANCELLED, "client closed");
  }
  qrpc_conn_close(peer->conn, QRPCI_ERR_NO_ERROR, "client closed");
}

void qrpc_client_free(qrpc_client *cli) {
  if (!cli) return;
  cli->freeing = 1;
  while (!qrpci_list_empty(&cli->pending)) {
    qrpc_call *call = QRPCI_CONTAINER_OF(cli->pending.next, qrpc_call, node);
    unqueue(cli, call);
    qrpci_call_defer_done(call, QRPC_STATUS_CANCELLED, "client closed");
  }
  if (cli->peer) close_peer(cli->peer);
  if (cli->retry_ev) event_free(cli->retry_ev);
  qrpci_core_cleanup(&cli->core);
  qrpci_dgram_free(cli->dg);
  if (cli->tls) qrpc_tls_config_free(cli->tls);
  free((char *)cli->opts.server_name);
  free(cli->addr);
  free(cli);
}

int qrpc_client_register_dgram(qrpc_client *cli, uint32_t channel,
                               const qrpc_dgram_opts *opts, qrpc_dgram_fn fn,
                               void *ud) {
  if (!cli) return QRPC_EINVAL;
  return qrpci_dgram_register(cli->dg, channel, opts, fn, ud);
}

int qrpc_client_keep(qrpc_client *cli, const void *data, size_t len,
                     void **out) {
  if (!cli) return QRPC_EINVAL;
  return qrpci_core_keep(&cli->core, data, len, out);
}
