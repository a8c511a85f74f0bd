/*
 * qrpc_client: calls to one or more server addresses (backends: a list, or
 * the addresses a DNS name has), each over a connection that is
 * re-established with exponential backoff and jitter whenever it is lost,
 * and a policy that picks the backend of each call.
 */
#include <event2/dns.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dgram/channel.h"
#include "qrpc/error.h"
#include "qrpc/health.h"
#include "quic/addr.h"
#include "quic/loop.h"
#include "quic/rpcstream.h"
#include "quic/tls.h"
#include "rpc/engine.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/pbwire.h"
#include "wire/protocol.h"

/* Balancing policies (qrpc_client_opts.lb_policy). */
enum { LB_PICK_FIRST, LB_ROUND_ROBIN, LB_LEAST_OUTSTANDING };

#define DNS_REFRESH_DEFAULT_MS 30000
#define DNS_FAILURE_REFRESH_MS 1000
#define MAX_BACKENDS 256

/* One server address: what the client owned when it knew one address, its
 * connection, peer, backoff and retry timer. */
typedef struct backend {
  qrpc_client *cli;
  char *addr;      /* "host:port" */
  qrpc_peer *peer; /* the current connection's peer */
  struct event *retry_ev;
  uint64_t backoff_ms;
  uint64_t attempts; /* started so far; the current one's number */
  int retiring;      /* the name no longer lists it: no new calls, no
                        reconnection, freed once its connection closed */
  qrpc_client_state state;
  uint64_t calls;    /* calls started on it */
  uint64_t failures; /* attempts that failed and connections lost */
  /* Health watching (opts.health_service): the Watch call on the current
   * connection, the status it last sent (UNKNOWN until one came), and
   * whether the server has no health service at all. */
  qrpc_call *watch;
  int health;
  int no_health;
  struct event *watch_ev; /* starts the watch again */
  uint64_t watch_backoff_ms;
} backend;

struct qrpc_client {
  qrpci_core core;
  qrpci_dgram *dg;
  qrpc_tls_config *tls;
  qrpc_client_opts opts;
  int policy;
  backend **b; /* in target order (resolution order for names) */
  size_t nb;
  size_t rr;          /* where round_robin looks next */
  int balancing;      /* a list or a name: calls may move between
                         backends, so unary calls keep their payload */
  qrpci_list pending; /* calls waiting for a backend */
  size_t npending;
  struct event *flush_ev;
  uint64_t rng;
  int freeing;
  /* "dns:name:port" targets. */
  char *dns_host, *dns_port;
  struct evdns_base *dns_own; /* when opts.dns_resolver names one */
  struct evdns_getaddrinfo_request *dnsreq;
  struct event *resolve_ev;
  uint64_t resolve_backoff_ms;
  uint64_t next_resolve_ns;
  int resolve_error; /* the last resolution's QRPC_E*, 0 once it worked */
  uint64_t resolutions;
};

void qrpc_client_opts_default(qrpc_client_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  qrpc_conn_opts_default(&o->conn);
  qrpci_rpc_opts_default(&o->rpc);
  o->max_pending = 1024;
  o->backoff_initial_ms = 100;
  o->backoff_max_ms = 10000;
  o->dns_refresh_ms = DNS_REFRESH_DEFAULT_MS;
}

static void cli_on_established(qrpc_conn *c, void *ud);
static void cli_on_closed(qrpc_conn *c, const qrpc_close_info *info, void *ud);
static void cli_on_early(qrpc_conn *c, void *ud);

static const qrpc_conn_callbacks cli_conn_cbs = {
    .on_established = cli_on_established,
    .on_datagram = qrpci_peer_on_datagram,
    .on_closed = cli_on_closed,
};

static void connect_now(backend *b);
static void watch_start(backend *b);
static void watch_stop(backend *b);
static void schedule_flush(qrpc_client *cli);
static void schedule_resolve(qrpc_client *cli, uint64_t ms);

static qrpc_client *client_of(qrpci_core *core) {
  return QRPCI_CONTAINER_OF(core, qrpc_client, core);
}

static backend *backend_of(qrpc_client *cli, const qrpc_peer *peer) {
  for (size_t i = 0; i < cli->nb; i++)
    if (cli->b[i]->peer == peer) return cli->b[i];
  return NULL;
}

/* ---- Targets ---------------------------------------------------------- */

static const char *const policy_names[] = {"pick_first", "round_robin",
                                           "least_outstanding"};

static int policy_of(const char *name) {
  for (size_t i = 0; i < sizeof(policy_names) / sizeof(policy_names[0]); i++)
    if (strcmp(name, policy_names[i]) == 0) return (int)i;
  return -1;
}

/* A target split into addresses, or a name to resolve. */
typedef struct target {
  char **addrs;
  size_t n;
  char *dns_host, *dns_port;
} target;

static void target_free(target *t) {
  for (size_t i = 0; i < t->n; i++) free(t->addrs[i]);
  free(t->addrs);
  free(t->dns_host);
  free(t->dns_port);
  memset(t, 0, sizeof(*t));
}

/* Parses a target; on QRPC_EINVAL *why says what is wrong with it. */
static int target_parse(const char *s, target *t, const char **why) {
  memset(t, 0, sizeof(*t));
  *why = NULL;
  if (!s || !*s) {
    *why = "the target is empty";
    return QRPC_EINVAL;
  }
  if (strncmp(s, "dns:", 4) == 0) {
    if (qrpci_parse_addr(s + 4, &t->dns_host, &t->dns_port) != 0) {
      *why = "a dns: target is dns:name:port";
      return QRPC_EINVAL;
    }
    return 0;
  }
  const char *p = s;
  for (;;) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == 0) {
      *why = "the target list has an empty entry";
      goto bad;
    }
    if (t->n == MAX_BACKENDS) {
      *why = "the target list has more than 256 addresses";
      goto bad;
    }
    char *a = strndup(p, len);
    char **v = a ? realloc(t->addrs, (t->n + 1) * sizeof(*v)) : NULL;
    if (!v) {
      free(a);
      target_free(t);
      return QRPC_ENOMEM;
    }
    t->addrs = v;
    t->addrs[t->n++] = a;
    char *host, *port;
    int rv = qrpci_parse_addr(a, &host, &port);
    if (rv == QRPC_ENOMEM) {
      target_free(t);
      return rv;
    }
    if (rv != 0) {
      *why = "an address of the target is not host:port or [v6]:port";
      goto bad;
    }
    free(host);
    free(port);
    if (!e) return 0;
    p = e + 1;
  }
bad:
  target_free(t);
  return QRPC_EINVAL;
}

const char *qrpc_client_target_problem(const char *target_str,
                                       const char *lb_policy) {
  target t;
  const char *why;
  int rv = target_parse(target_str, &t, &why);
  if (rv == QRPC_ENOMEM) return "out of memory";
  if (rv != 0) return why;
  target_free(&t);
  if (lb_policy && policy_of(lb_policy) < 0)
    return "unknown balancing policy (pick_first, round_robin, "
           "least_outstanding)";
  return NULL;
}

/* ---- Backends --------------------------------------------------------- */

/* Delay before the next attempt: half the current backoff plus a random
 * part of the other half, so many clients cut off together do not all
 * come back in the same instant. */
static uint64_t next_delay(backend *b) {
  qrpc_client *cli = b->cli;
  cli->rng ^= cli->rng << 13;
  cli->rng ^= cli->rng >> 7;
  cli->rng ^= cli->rng << 17;
  uint64_t d = b->backoff_ms;
  uint64_t delay = d / 2 + (d > 1 ? cli->rng % (d / 2 + 1) : 0);
  b->backoff_ms =
      d * 2 > cli->opts.backoff_max_ms ? cli->opts.backoff_max_ms : d * 2;
  return delay;
}

static void retry_cb(evutil_socket_t fd, short what, void *arg) {
  connect_now(arg);
}

static void schedule_retry_in(backend *b, uint64_t ms) {
  struct timeval tv = qrpci_ns_to_tv(ms * QRPCI_NS_PER_MS);
  evtimer_add(b->retry_ev, &tv);
}

static void report(backend *b, qrpc_client_state state, int error,
                   const qrpc_close_info *close, int was_ready,
                   uint64_t retry_in_ms) {
  qrpc_client *cli = b->cli;
  if (b->state != state || state == QRPC_CLIENT_FAILED) {
    if (cli->nb > 1 || cli->dns_host) {
      if (state == QRPC_CLIENT_READY)
        QRPCI_INFO("rpc: backend %s is ready", b->addr);
      else if (state == QRPC_CLIENT_FAILED && b->state != QRPC_CLIENT_FAILED)
        QRPCI_INFO("rpc: backend %s failed: %s", b->addr, qrpc_strerror(error));
    }
  }
  b->state = state;
  if (!cli->opts.on_state || cli->freeing) return;
  qrpc_client_state_info info = {
      .state = state,
      .attempt = b->attempts,
      .error = error,
      .close = close,
      .was_ready = was_ready,
      .retry_in_ms = retry_in_ms,
      .backend = b->addr,
  };
  cli->opts.on_state(cli, &info, cli->opts.user_data);
}

/* The current attempt failed or its connection was lost: say so with the
 * time of the next one, then wait for it. */
static void fail_and_retry(backend *b, int error, const qrpc_close_info *close,
                           int was_ready, uint64_t retry_in_ms) {
  b->failures++;
  report(b, QRPC_CLIENT_FAILED, error, close, was_ready, retry_in_ms);
  if (!b->cli->freeing && !b->retiring) schedule_retry_in(b, retry_in_ms);
}

static void connect_now(backend *b) {
  qrpc_client *cli = b->cli;
  if (cli->freeing || b->peer || b->retiring) return;
  b->attempts++;
  report(b, QRPC_CLIENT_CONNECTING, 0, NULL, 0, 0);
  if (cli->freeing || b->peer) return;
  qrpc_conn *conn;
  /* A name's backends are verified as the name, as a list's as their
   * hosts, unless server_name says otherwise. */
  const char *sni =
      cli->opts.server_name ? cli->opts.server_name : cli->dns_host;
  int rv = qrpc_conn_connect(cli->core.loop, b->addr, sni, cli->tls,
                             &cli->opts.conn, &cli_conn_cbs, NULL, &conn);
  qrpc_peer *peer = rv == 0 ? qrpci_peer_new(&cli->core, conn) : NULL;
  if (peer && !(peer->dg = qrpci_dgconn_new(cli->dg, conn, peer))) {
    qrpci_peer_closed(peer); /* frees it: it never went out */
    peer = NULL;
  }
  if (!peer) {
    /* The connection has no user data yet, so its on_closed is a no-op. */
    if (rv == 0) qrpc_conn_close(conn, QRPCI_ERR_INTERNAL_ERROR, "no memory");
    QRPCI_WARN("rpc: cannot start a connection to %s: %s", b->addr,
               qrpc_strerror(rv ? rv : QRPC_ENOMEM));
    fail_and_retry(b, rv ? rv : QRPC_ENOMEM, NULL, 0, next_delay(b));
    return;
  }
  b->peer = peer;
  qrpc_conn_set_user_data(conn, peer);
  qrpci_conn_set_early_hook(conn, cli_on_early);
}

/* Forgets b; its connection is gone or never was. */
static void backend_free(backend *b) {
  if (b->retry_ev) event_free(b->retry_ev);
  if (b->watch_ev) event_free(b->watch_ev);
  free(b->addr);
  free(b);
}

static void watch_cb(evutil_socket_t fd, short what, void *arg) {
  watch_start(arg);
}

static backend *backend_new(qrpc_client *cli, const char *addr) {
  backend *b = calloc(1, sizeof(*b));
  if (!b) return NULL;
  b->cli = cli;
  b->addr = strdup(addr);
  b->backoff_ms = cli->opts.backoff_initial_ms;
  b->state = QRPC_CLIENT_FAILED;
  b->health = QRPC_HEALTH_UNKNOWN;
  b->retry_ev = evtimer_new(qrpc_loop_base(cli->core.loop), retry_cb, b);
  b->watch_ev = evtimer_new(qrpc_loop_base(cli->core.loop), watch_cb, b);
  if (!b->addr || !b->retry_ev || !b->watch_ev) {
    backend_free(b);
    return NULL;
  }
  return b;
}

static int backend_add(qrpc_client *cli, const char *addr) {
  backend **v = realloc(cli->b, (cli->nb + 1) * sizeof(*v));
  if (!v) return QRPC_ENOMEM;
  cli->b = v;
  backend *b = backend_new(cli, addr);
  if (!b) return QRPC_ENOMEM;
  cli->b[cli->nb++] = b;
  return 0;
}

static void backend_remove(qrpc_client *cli, backend *b) {
  for (size_t i = 0; i < cli->nb; i++) {
    if (cli->b[i] != b) continue;
    memmove(&cli->b[i], &cli->b[i + 1], (cli->nb - i - 1) * sizeof(b));
    cli->nb--;
    break;
  }
  backend_free(b);
}

/* The name no longer lists b: it takes no new calls, finishes those it
 * has, and goes once its connection has closed. */
static void backend_retire(qrpc_client *cli, backend *b) {
  b->retiring = 1;
  evtimer_del(b->retry_ev);
  watch_stop(b);
  QRPCI_INFO("rpc: backend %s is no longer listed", b->addr);
  if (!b->peer) {
    backend_remove(cli, b);
    return;
  }
  /* Closes the connection once its calls are over. */
  qrpci_peer_goaway(b->peer);
}

/* ---- Picking ---------------------------------------------------------- */

static int backend_takes(const backend *b, int idempotent) {
  return !b->retiring && b->peer && qrpci_peer_takes(b->peer, idempotent) &&
         (!b->cli->opts.health_service || b->no_health ||
          b->health == QRPC_HEALTH_SERVING);
}

/* The application's calls awaiting an answer on peer. */
static size_t in_flight(const qrpc_peer *peer) {
  return peer->calls.size - peer->bg_calls;
}

/* The backend a new call goes to, or NULL while none takes it. */
static backend *pick(qrpc_client *cli, int idempotent) {
  size_t n = cli->nb;
  if (n == 1) return backend_takes(cli->b[0], idempotent) ? cli->b[0] : NULL;
  if (cli->policy == LB_PICK_FIRST) {
    for (size_t i = 0; i < n; i++)
      if (backend_takes(cli->b[i], idempotent)) return cli->b[i];
    return NULL;
  }
  backend *best = NULL;
  size_t at = 0;
  for (size_t k = 0; k < n; k++) {
    size_t i = (cli->rr + k) % n;
    backend *b = cli->b[i];
    if (!backend_takes(b, idempotent)) continue;
    if (cli->policy == LB_ROUND_ROBIN) {
      best = b;
      at = i;
      break;
    }
    if (!best || in_flight(b->peer) < in_flight(best->peer)) {
      best = b;
      at = i;
    }
  }
  if (best) cli->rr = at + 1;
  return best;
}

static void unqueue(qrpc_client *cli, qrpc_call *call) {
  qrpci_list_remove(&call->node);
  cli->npending--;
  call->state = QRPCI_CALL_ACTIVE;
}

/* Starts the waiting calls that a backend takes now, in order; calls that
 * none takes (not idempotent, while backends are only in 0-RTT) keep their
 * place. */
static void flush_pending(qrpc_client *cli) {
  qrpci_list *n = cli->pending.next;
  while (n != &cli->pending && !cli->freeing) {
    qrpc_call *call = QRPCI_CONTAINER_OF(n, qrpc_call, node);
    backend *b = pick(cli, call->idempotent);
    if (!b) {
      if (!pick(cli, 1)) return; /* nothing takes any call */
      n = n->next;
      continue;
    }
    n = n->next;
    unqueue(cli, call);
    qrpci_payload pl = qrpci_bytes(call->payload, call->len);
    b->calls++;
    int rv = qrpci_call_start(call, b->peer, &pl);
    if (rv != 0)
      qrpci_call_defer_done(call, QRPC_STATUS_UNAVAILABLE, "could not be sent");
  }
}

static void flush_cb(evutil_socket_t fd, short what, void *arg) {
  flush_pending(arg);
}

static void schedule_flush(qrpc_client *cli) {
  if (!cli->freeing) event_active(cli->flush_ev, 0, 0);
}

static void cli_on_early(qrpc_conn *c, void *ud) {
  qrpc_peer *peer = ud;
  if (!peer) return;
  qrpc_client *cli = client_of(peer->core);
  backend *b = backend_of(cli, peer);
  if (!b || cli->freeing) return;
  qrpci_peer_early(peer);
  flush_pending(cli);
}

static void cli_on_established(qrpc_conn *c, void *ud) {
  qrpc_peer *peer = ud;
  qrpc_client *cli = client_of(peer->core);
  qrpci_peer_ready(peer);
  backend *b = backend_of(cli, peer);
  if (!b) return;
  b->backoff_ms = cli->opts.backoff_initial_ms;
  b->watch_backoff_ms = cli->opts.backoff_initial_ms;
  report(b, QRPC_CLIENT_READY, 0, NULL, 0, 0);
  if (b->peer != peer || cli->freeing) return;
  if (cli->opts.health_service) watch_start(b);
  if (cli->opts.on_connect)
    cli->opts.on_connect(cli, peer, cli->opts.user_data);
  if (b->peer != peer || cli->freeing) return;
  flush_pending(cli);
}

/* Resolves the name again soon after a backend failed, unless that is
 * planned already. */
static void resolve_soon(qrpc_client *cli) {
  if (!cli->dns_host || cli->dnsreq || cli->freeing) return;
  uint64_t soon = qrpci_now_ns() + DNS_FAILURE_REFRESH_MS * QRPCI_NS_PER_MS;
  if (cli->next_resolve_ns > soon)
    schedule_resolve(cli, DNS_FAILURE_REFRESH_MS);
}

static void cli_on_closed(qrpc_conn *c, const qrpc_close_info *info, void *ud) {
  qrpc_peer *peer = ud;
  if (!peer) return;
  qrpc_client *cli = client_of(peer->core);
  backend *b = backend_of(cli, peer);
  int was_ready = peer->ready;
  if (b) {
    /* Its call ends with the connection; the next one watches anew. */
    b->watch = NULL;
    b->health = QRPC_HEALTH_UNKNOWN;
    b->no_health = 0;
    evtimer_del(b->watch_ev);
  }
  qrpci_peer_closed(peer);
  if (!b || cli->freeing) return;
  if (b->retiring) {
    backend_remove(cli, b);
    return;
  }
  if (!was_ready) {
    QRPCI_INFO("rpc: connecting to %s failed: %s; retrying", b->addr,
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
                       : next_delay(b);
  fail_and_retry(b, info->error ? info->error : QRPC_ECLOSED, info, was_ready,
                 delay);
  resolve_soon(cli);
  /* Calls moved off the lost connection may go elsewhere now. */
  schedule_flush(cli);
}

static void cli_peer_released(qrpci_core *core, qrpc_peer *peer) {
  qrpc_client *cli = client_of(core);
  backend *b = backend_of(cli, peer);
  if (b) b->peer = NULL;
}

static void cli_call_unqueued(qrpci_core *core, qrpc_call *call) {
  unqueue(client_of(core), call);
}

/* A call in flight on a connection that is lost (ran 1: its REQUEST may
 * have been served) or that the server's GOAWAY refused (ran 0). Takes it
 * back to send again, once, when that is safe: unary, and either not run
 * or idempotent; otherwise *detail says what the failure means. */
static int cli_call_lost(qrpci_core *core, qrpc_call *call, int ran,
                         const char **detail) {
  qrpc_client *cli = client_of(core);
  if (cli->freeing) return 0;
  if (call->shape != QRPC_SHAPE_UNARY || !call->kept || call->retried ||
      (ran && !call->idempotent)) {
    if (ran)
      *detail = strcmp(*detail, "stream closed") == 0
                    ? "stream closed; the call may have run"
                    : "connection lost; the call may have run";
    return 0;
  }
  call->retried = 1;
  call->kept = 0; /* the next attempt frees the payload */
  /* Interceptors' after hooks must not see the lost peer, which goes. */
  call->icpt_peer = NULL;
  call->state = QRPCI_CALL_QUEUED;
  qrpci_list_push_back(cli->pending.next, &call->node); /* first */
  cli->npending++;
  schedule_flush(cli);
  return 1;
}

/* The server's GOAWAY: the backend takes no new calls, and its watch
 * would keep the server from draining. */
static void cli_peer_goaway(qrpci_core *core, qrpc_peer *peer) {
  backend *b = backend_of(client_of(core), peer);
  if (b) watch_stop(b);
}

static const qrpci_core_ops cli_core_ops = {
    .peer_released = cli_peer_released,
    .peer_freed = qrpci_peer_free_dgram,
    .call_unqueued = cli_call_unqueued,
    .call_lost = cli_call_lost,
    .peer_goaway = cli_peer_goaway,
};

/* ---- Health ----------------------------------------------------------- */

static const char *health_name(int st) {
  switch (st) {
  case QRPC_HEALTH_SERVING: return "SERVING";
  case QRPC_HEALTH_NOT_SERVING: return "NOT_SERVING";
  case QRPC_HEALTH_SERVICE_UNKNOWN: return "SERVICE_UNKNOWN";
  default: return "UNKNOWN";
  }
}

static backend *backend_watching(qrpc_client *cli, const qrpc_call *call) {
  for (size_t i = 0; i < cli->nb; i++)
    if (cli->b[i]->watch == call) return cli->b[i];
  return NULL;
}

/* A HealthCheckResponse: the backend goes in or out of rotation. */
static void watch_on_item(qrpc_call *call, const uint8_t *data, size_t len,
                          void *ud) {
  qrpc_client *cli = ud;
  backend *b = cli->freeing ? NULL : backend_watching(cli, call);
  if (!b) return;
  uint64_t st;
  if (qrpci_pb_field_varint(data, len, 1, &st) != 0 ||
      st > QRPC_HEALTH_SERVICE_UNKNOWN) {
    QRPCI_WARN("rpc: backend %s sent a health status that does not decode",
               b->addr);
    st = QRPC_HEALTH_UNKNOWN;
  }
  if ((int)st == b->health) return;
  int was_in = b->health == QRPC_HEALTH_SERVING;
  b->health = (int)st;
  b->watch_backoff_ms = cli->opts.backoff_initial_ms;
  if (st == QRPC_HEALTH_SERVING) {
    QRPCI_INFO("rpc: backend %s is SERVING: in rotation", b->addr);
    schedule_flush(cli);
  } else if (was_in || cli->nb > 1 || cli->dns_host) {
    QRPCI_INFO("rpc: backend %s is %s: out of rotation", b->addr,
               health_name((int)st));
  }
}

/* The watch ended. A server without the health service is judged by its
 * connection; a watch the server ended while the connection lives is
 * started again after a backoff, the last status holding meanwhile. */
static void watch_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  qrpc_client *cli = ud;
  backend *b = cli->freeing ? NULL : backend_watching(cli, call);
  if (!b) return;
  b->watch = NULL;
  if (res->status == QRPC_STATUS_UNIMPLEMENTED) {
    QRPCI_INFO("rpc: backend %s has no health service: judged by its "
               "connection alone",
               b->addr);
    b->no_health = 1;
    schedule_flush(cli);
    return;
  }
  qrpc_peer *p = b->peer;
  if (!p || p->closed || p->goaway_received || b->retiring) return;
  uint64_t d = b->watch_backoff_ms;
  b->watch_backoff_ms =
      d * 2 > cli->opts.backoff_max_ms ? cli->opts.backoff_max_ms : d * 2;
  QRPCI_INFO("rpc: backend %s ended its health watch (%s); watching again "
             "in %llu ms",
             b->addr, qrpc_status_name(res->status), (unsigned long long)d);
  struct timeval tv = qrpci_ns_to_tv(d * QRPCI_NS_PER_MS);
  evtimer_add(b->watch_ev, &tv);
}

/* Opens Watch(opts.health_service) on b's connection. Its calls are the
 * client's own: no interceptor sees them, and they do not count as calls
 * in flight. */
static void watch_start(backend *b) {
  qrpc_client *cli = b->cli;
  qrpc_peer *p = b->peer;
  if (b->watch || !p || !p->ready || p->closed || p->goaway_received ||
      b->retiring || cli->freeing)
    return;
  const char *name = cli->opts.health_service;
  size_t nlen = strlen(name);
  uint8_t req[3 + QRPC_HEALTH_NAME_MAX];
  size_t len = 0;
  if (nlen) { /* HealthCheckRequest{service}: proto3 leaves "" out */
    req[len++] = 0x0a;
    if (nlen >= 0x80) {
      req[len++] = (uint8_t)(nlen | 0x80);
      req[len++] = (uint8_t)(nlen >> 7);
    } else {
      req[len++] = (uint8_t)nlen;
    }
    memcpy(req + len, name, nlen);
    len += nlen;
  }
  static const qrpc_call_callbacks cbs = {.on_done = watch_on_done,
                                          .on_item = watch_on_item};
  qrpc_call_opts o;
  qrpc_call_opts_default(&o);
  qrpc_call *call = qrpci_call_new(&cli->core, QRPC_HEALTH_WATCH_METHOD_ID,
                                   QRPC_SHAPE_SERVER_STREAM, &o, 0, &cbs, cli);
  if (!call) {
    QRPCI_WARN("rpc: no memory to watch the health of %s", b->addr);
    return;
  }
  call->background = 1;
  qrpci_payload pl = qrpci_bytes(req, len);
  if (qrpci_call_start(call, p, &pl) != 0) {
    qrpci_call_release(call);
    QRPCI_WARN("rpc: cannot watch the health of %s", b->addr);
    return;
  }
  b->watch = call;
}

/* Ends b's watch, if any, without a word from its on_done. */
static void watch_stop(backend *b) {
  evtimer_del(b->watch_ev);
  qrpc_call *call = b->watch;
  b->watch = NULL;
  if (call) qrpc_call_cancel(call);
}

/* ---- Names ------------------------------------------------------------ */

static void resolve_cb(evutil_socket_t fd, short what, void *arg);

static void schedule_resolve(qrpc_client *cli, uint64_t ms) {
  struct timeval tv = qrpci_ns_to_tv(ms * QRPCI_NS_PER_MS);
  cli->next_resolve_ns = qrpci_now_ns() + ms * QRPCI_NS_PER_MS;
  evtimer_add(cli->resolve_ev, &tv);
}

static int has_addr(char **v, size_t n, const char *a) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(v[i], a) == 0) return 1;
  return 0;
}

static void report_resolve_failure(qrpc_client *cli, int error,
                                   uint64_t retry_in_ms) {
  if (!cli->opts.on_state) return;
  qrpc_client_state_info info = {
      .state = QRPC_CLIENT_FAILED,
      .attempt = cli->resolutions,
      .error = error,
      .retry_in_ms = retry_in_ms,
      .backend = NULL,
  };
  cli->opts.on_state(cli, &info, cli->opts.user_data);
}

/* Takes the addresses the name has now: new ones become backends, those
 * gone retire. */
static void apply_addrs(qrpc_client *cli, char **v, size_t n) {
  for (size_t i = 0; i < cli->nb;) {
    backend *b = cli->b[i];
    if (!b->retiring && !has_addr(v, n, b->addr)) {
      backend_retire(cli, b);
      if (i < cli->nb && cli->b[i] == b) i++;
    } else {
      i++;
    }
  }
  for (size_t k = 0; k < n; k++) {
    int known = 0;
    for (size_t i = 0; i < cli->nb; i++)
      if (!cli->b[i]->retiring && strcmp(cli->b[i]->addr, v[k]) == 0) known = 1;
    if (known || cli->nb >= MAX_BACKENDS) continue;
    if (backend_add(cli, v[k]) != 0) {
      QRPCI_WARN("rpc: no memory for backend %s", v[k]);
      continue;
    }
    QRPCI_INFO("rpc: %s lists backend %s", cli->dns_host, v[k]);
    connect_now(cli->b[cli->nb - 1]);
    if (cli->freeing) return;
  }
}

static void dns_done(int result, struct evutil_addrinfo *res, void *arg) {
  if (result == EVUTIL_EAI_CANCEL) return; /* the client is being freed */
  qrpc_client *cli = arg;
  cli->dnsreq = NULL;
  cli->resolutions++;
  char **v = NULL;
  size_t n = 0;
  for (struct evutil_addrinfo *ai = res; ai && result == 0; ai = ai->ai_next) {
    char host[64], a[96];
    const void *ip =
        ai->ai_family == AF_INET
            ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
            : (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
    if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
        !evutil_inet_ntop(ai->ai_family, ip, host, sizeof(host)))
      continue;
    snprintf(a, sizeof(a), ai->ai_family == AF_INET6 ? "[%s]:%s" : "%s:%s",
             host, cli->dns_port);
    if (has_addr(v, n, a)) continue;
    char **nv = realloc(v, (n + 1) * sizeof(*nv));
    if (!nv) break;
    v = nv;
    if ((v[n] = strdup(a))) n++;
  }
  if (res) evutil_freeaddrinfo(res);
  if (n == 0) {
    uint64_t d = cli->resolve_backoff_ms;
    cli->resolve_backoff_ms =
        d * 2 > cli->opts.backoff_max_ms ? cli->opts.backoff_max_ms : d * 2;
    if (cli->resolve_error == 0)
      QRPCI_WARN("rpc: %s does not resolve: %s; retrying", cli->dns_host,
                 result ? evutil_gai_strerror(result) : "no addresses");
    cli->resolve_error = QRPC_ERESOLVE;
    schedule_resolve(cli, d);
    report_resolve_failure(cli, QRPC_ERESOLVE, d);
    free(v);
    return;
  }
  cli->resolve_error = 0;
  cli->resolve_backoff_ms = cli->opts.backoff_initial_ms;
  schedule_resolve(cli, cli->opts.dns_refresh_ms);
  apply_addrs(cli, v, n);
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

static void resolve_cb(evutil_socket_t fd, short what, void *arg) {
  qrpc_client *cli = arg;
  if (cli->dnsreq || cli->freeing) return;
  struct evdns_base *dns =
      cli->dns_own ? cli->dns_own : qrpci_loop_dns(cli->core.loop);
  if (!dns) {
    report_resolve_failure(cli, QRPC_ERESOLVE, cli->resolve_backoff_ms);
    schedule_resolve(cli, cli->resolve_backoff_ms);
    return;
  }
  struct evutil_addrinfo hints;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  hints.ai_protocol = IPPROTO_UDP;
  /* May answer before it returns (numeric hosts, the hosts file). */
  struct evdns_getaddrinfo_request *r = evdns_getaddrinfo(
      dns, cli->dns_host, cli->dns_port, &hints, dns_done, cli);
  if (r) cli->dnsreq = r;
}

/* ---- Creation --------------------------------------------------------- */

/* Creates the resolver of opts.dns_resolver ("ip" or "ip:port"). */
static int make_resolver(qrpc_client *cli) {
  cli->dns_own = evdns_base_new(qrpc_loop_base(cli->core.loop), 0);
  if (!cli->dns_own) return QRPC_ENOMEM;
  if (evdns_base_nameserver_ip_add(cli->dns_own, cli->opts.dns_resolver) != 0) {
    QRPCI_WARN("rpc: bad DNS resolver address %s", cli->opts.dns_resolver);
    return QRPC_EINVAL;
  }
  return 0;
}

int qrpc_client_new(qrpc_loop *loop, const char *addr, qrpc_tls_config *tls,
                    const qrpc_client_opts *opts, qrpc_client **out) {
  if (!loop || !addr || !tls || !out) return QRPC_EINVAL;
  /* Callers built before on_state, or before the balancing options, pass
   * the size of the struct without them. */
  if (opts && opts->size != sizeof(*opts) &&
      opts->size != offsetof(qrpc_client_opts, on_state) &&
      opts->size != offsetof(qrpc_client_opts, lb_policy) &&
      opts->size != offsetof(qrpc_client_opts, health_service))
    return QRPC_EINVAL;
  qrpc_client_opts o;
  qrpc_client_opts_default(&o);
  if (opts) {
    memcpy(&o, opts, opts->size);
    o.size = sizeof(o);
  }
  if (o.backoff_initial_ms == 0 || o.backoff_max_ms < o.backoff_initial_ms ||
      o.dns_refresh_ms == 0 ||
      (o.health_service && strlen(o.health_service) > QRPC_HEALTH_NAME_MAX))
    return QRPC_EINVAL;
  const char *why = qrpc_client_target_problem(addr, o.lb_policy);
  if (why) {
    QRPCI_WARN("rpc: client target \"%s\" (policy %s): %s", addr,
               o.lb_policy ? o.lb_policy : "default", why);
    return strcmp(why, "out of memory") == 0 ? QRPC_ENOMEM : QRPC_EINVAL;
  }
  target t;
  int rv = target_parse(addr, &t, &why);
  if (rv != 0) return rv;
  qrpc_client *cli = calloc(1, sizeof(*cli));
  if (!cli) {
    target_free(&t);
    return QRPC_ENOMEM;
  }
  cli->opts = o;
  cli->opts.lb_policy = NULL; /* not kept: policy says it */
  qrpci_list_init(&cli->pending);
  cli->rng = qrpci_now_ns() | 1;
  cli->balancing = t.dns_host != NULL || t.n > 1;
  cli->policy = o.lb_policy      ? policy_of(o.lb_policy)
                : cli->balancing ? LB_ROUND_ROBIN
                                 : LB_PICK_FIRST;
  cli->resolve_backoff_ms = cli->opts.backoff_initial_ms;
  cli->dns_host = t.dns_host;
  cli->dns_port = t.dns_port;
  t.dns_host = t.dns_port = NULL;
  cli->opts.dns_resolver = NULL; /* set below once copied */
  cli->opts.server_name = NULL;
  cli->opts.health_service = NULL;
  rv = qrpci_core_init(&cli->core, loop, &cli->opts.rpc, &cli_core_ops);
  if (rv == 0 && !(cli->dg = qrpci_dgram_new())) rv = QRPC_ENOMEM;
  if (rv == 0 && o.server_name &&
      !(cli->opts.server_name = strdup(o.server_name)))
    rv = QRPC_ENOMEM;
  if (rv == 0 && o.dns_resolver &&
      !(cli->opts.dns_resolver = strdup(o.dns_resolver)))
    rv = QRPC_ENOMEM;
  if (rv == 0 && o.health_service &&
      !(cli->opts.health_service = strdup(o.health_service)))
    rv = QRPC_ENOMEM;
  if (rv == 0 && cli->dns_host && cli->opts.dns_resolver)
    rv = make_resolver(cli);
  cli->flush_ev = event_new(qrpc_loop_base(loop), -1, 0, flush_cb, cli);
  if (rv == 0 && !cli->flush_ev) rv = QRPC_ENOMEM;
  if (rv == 0 && cli->dns_host &&
      !(cli->resolve_ev = evtimer_new(qrpc_loop_base(loop), resolve_cb, cli)))
    rv = QRPC_ENOMEM;
  for (size_t i = 0; rv == 0 && i < t.n; i++) rv = backend_add(cli, t.addrs[i]);
  target_free(&t);
  if (rv != 0) {
    qrpc_client_free(cli);
    return rv;
  }
  cli->tls = tls;
  qrpci_tls_config_ref(tls);
  size_t n = cli->nb;
  for (size_t i = 0; i < n && !cli->freeing; i++) connect_now(cli->b[i]);
  /* The name is looked up from the loop, never inside this function. */
  if (cli->dns_host) schedule_resolve(cli, 0);
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
  for (size_t i = 0; i < cli->nb; i++) {
    qrpc_peer *p = cli->b[i]->retiring ? NULL : cli->b[i]->peer;
    if (p && p->ready && !p->goaway_received && !p->closed) return p;
  }
  return NULL;
}

size_t qrpc_client_backends(qrpc_client *cli, qrpc_backend_info *out,
                            size_t cap) {
  if (!cli) return 0;
  for (size_t i = 0; i < cli->nb && i < cap && out; i++) {
    const backend *b = cli->b[i];
    qrpc_peer *p = b->peer;
    out[i] = (qrpc_backend_info){
        .addr = b->addr,
        .state = b->state,
        .takes_calls = backend_takes(b, 0),
        .retiring = b->retiring,
        .in_flight = p && !p->closed ? in_flight(p) : 0,
        .health = !cli->opts.health_service || b->no_health ? -1 : b->health,
        .calls = b->calls,
        .failures = b->failures,
        .attempts = b->attempts,
    };
  }
  return cli->nb;
}

int qrpc_client_resolve_error(qrpc_client *cli) {
  return cli ? cli->resolve_error : QRPC_EINVAL;
}

uint64_t qrpc_client_early_calls(qrpc_client *cli) {
  return cli ? cli->core.early_calls : 0;
}

static int client_start(qrpc_client *cli, uint32_t method, qrpc_shape shape,
                        qrpci_payload *pl, const qrpc_call_opts *opts,
                        const qrpc_call_callbacks *cbs, void *ud,
                        qrpc_call **out) {
  qrpc_call_opts o;
  if (!cli || !qrpci_payload_valid(pl) || qrpc_call_opts_copy(&o, opts) != 0)
    return QRPC_EINVAL;
  size_t len = qrpci_payload_len(pl);
  if ((shape == QRPC_SHAPE_CLIENT_STREAM || shape == QRPC_SHAPE_BIDI_STREAM) &&
      len)
    return QRPC_EINVAL;
  if (len > cli->core.opts.max_frame) return QRPC_EMSGSIZE;
  int rc = qrpci_call_opts_check(&cli->core, &o);
  if (rc != 0) return rc;
  int fail_fast = o.fail_fast >= 0 ? o.fail_fast : cli->opts.fail_fast;
  /* A backend established, or in 0-RTT for an idempotent call: it goes
   * out now. */
  backend *b = pick(cli, o.idempotent);
  qrpc_peer *peer = b ? b->peer : NULL;
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
  /* A unary call of a balancing client keeps its payload while in flight,
   * to go to another backend if its own goes away. */
  int keep = cli->balancing && shape == QRPC_SHAPE_UNARY;
  if (peer && !keep) {
    b->calls++;
    rv = qrpci_call_start(call, peer, pl);
  } else if (len && !(call->payload = malloc(len))) {
    rv = QRPC_ENOMEM;
  } else {
    /* Waiting for a connection: the payload is kept as bytes. */
    rv = len ? qrpci_payload_write(pl, call->payload) : 0;
    call->len = len;
    call->kept = keep;
    if (rv == 0 && peer) {
      qrpci_payload copy = qrpci_bytes(call->payload, len);
      b->calls++;
      rv = qrpci_call_start(call, peer, &copy);
    }
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
  qrpci_payload pl = qrpci_bytes(payload, len);
  return client_start(cli, method, QRPC_SHAPE_UNARY, &pl, opts, cbs, ud, out);
}

int qrpc_client_call_msg(qrpc_client *cli, uint32_t method, const qrpc_msg *m,
                         const qrpc_call_opts *opts,
                         const qrpc_call_callbacks *cbs, void *ud,
                         qrpc_call **out) {
  qrpci_payload pl = qrpci_msg(m);
  return qrpci_payload_settle(
      &pl, client_start(cli, method, QRPC_SHAPE_UNARY, &pl, opts, cbs, ud, out));
}

/* A streaming shape: unary calls go through qrpc_client_call(). */
static int client_stream(qrpc_client *cli, uint32_t method, qrpc_shape shape,
                         qrpci_payload *pl, const qrpc_call_opts *opts,
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
  qrpci_payload pl = qrpci_bytes(payload, len);
  return client_stream(cli, method, shape, &pl, opts, cbs, ud, out);
}

int qrpc_client_stream_msg(qrpc_client *cli, uint32_t method, qrpc_shape shape,
                           const qrpc_msg *m, const qrpc_call_opts *opts,
                           const qrpc_call_callbacks *cbs, void *ud,
                           qrpc_call **out) {
  qrpci_payload pl = qrpci_msg(m);
  return qrpci_payload_settle(
      &pl, client_stream(cli, method, shape, &pl, opts, cbs, ud, out));
}

static int client_notify(qrpc_client *cli, uint32_t method,
                         qrpci_payload *pl) {
  if (!cli || !qrpci_payload_valid(pl)) return QRPC_EINVAL;
  backend *b = pick(cli, 0);
  if (!b || !qrpc_client_peer(cli)) return QRPC_ECLOSED;
  return qrpci_peer_notify(b->peer, method, pl);
}

int qrpc_client_notify(qrpc_client *cli, uint32_t method, const void *payload,
                       size_t len) {
  qrpci_payload pl = qrpci_bytes(payload, len);
  return client_notify(cli, method, &pl);
}

int qrpc_client_notify_msg(qrpc_client *cli, uint32_t method,
                           const qrpc_msg *m) {
  qrpci_payload pl = qrpci_msg(m);
  return qrpci_payload_settle(&pl, client_notify(cli, method, &pl));
}

static void close_peer(qrpc_peer *peer) {
  /* Calls in flight end as CANCELLED: it is this side giving up. */
  qrpc_call *call;
  peer->bg_calls = 0;
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
  for (size_t i = 0; i < cli->nb; i++)
    if (cli->b[i]->peer) close_peer(cli->b[i]->peer);
  for (size_t i = 0; i < cli->nb; i++) backend_free(cli->b[i]);
  free(cli->b);
  if (cli->dnsreq) evdns_getaddrinfo_cancel(cli->dnsreq);
  /* A cancelled lookup still reports to its resolver from the loop. */
  if (cli->dns_own && cli->dnsreq)
    qrpci_loop_retire_dns(cli->core.loop, cli->dns_own);
  else if (cli->dns_own)
    evdns_base_free(cli->dns_own, 1);
  if (cli->resolve_ev) event_free(cli->resolve_ev);
  if (cli->flush_ev) event_free(cli->flush_ev);
  qrpci_core_cleanup(&cli->core);
  qrpci_dgram_free(cli->dg);
  if (cli->tls) qrpc_tls_config_free(cli->tls);
  free((char *)cli->opts.server_name);
  free((char *)cli->opts.dns_resolver);
  free((char *)cli->opts.health_service);
  free(cli->dns_host);
  free(cli->dns_port);
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
