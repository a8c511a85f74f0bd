/*
 * The metrics endpoint (qrpc/metrics.h): renders the counters of a server
 * and a broker in the Prometheus text format, and answers GET /metrics
 * with it over a minimal HTTP/1.1 responder on libevent bufferevents.
 *
 * The responder is ours rather than evhttp because libevent 2.1's evhttp
 * cannot cap its connections: here each connection is counted from accept
 * to close, serves one request, and is bounded in size and time.
 */
#include "qrpc/metrics.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "qrpc/broker.qrpc.h"
#include "qrpc/dgram.h"
#include "qrpc/error.h"
#include "quic/addr.h"
#include "rpc/callstats.h"
#include "util/list.h"
#include "util/log.h"

#define METRICS_PATH "/metrics"
#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

typedef struct method_name {
  uint32_t method;
  char *name;
} method_name;

struct qrpc_metrics {
  qrpc_loop *loop;
  qrpc_metrics_opts opts;
  struct evconnlistener *lev;
  uint16_t port;
  qrpci_list conns;
  size_t nconns;
  qrpc_server *srv;
  qrpc_broker *broker;
  qrpc_client *cli;
  method_name *names;
  size_t nnames;
};

typedef struct mconn {
  qrpc_metrics *m;
  struct bufferevent *bev;
  qrpci_list node;
  int answered; /* the answer is queued */
  int eof;      /* the client has finished sending */
} mconn;

void qrpc_metrics_opts_default(qrpc_metrics_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  o->max_connections = 16;
  o->max_request_bytes = 8192;
  o->timeout_ms = 5000;
}

/* ---- Rendering -------------------------------------------------------- */

static void family(struct evbuffer *b, const char *name, const char *type,
                   const char *help) {
  evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name,
                      type);
}

static void sample(struct evbuffer *b, const char *name, const char *labels,
                   uint64_t v) {
  evbuffer_add_printf(b, "%s%s%s%s %llu\n", name, labels ? "{" : "",
                      labels ? labels : "", labels ? "}" : "",
                      (unsigned long long)v);
}

static void one(struct evbuffer *b, const char *name, const char *type,
                const char *help, uint64_t v) {
  family(b, name, type, help);
  sample(b, name, NULL, v);
}

static const char *method_label(const qrpc_metrics *m, uint32_t method,
                                char *buf, size_t cap) {
  for (size_t i = 0; i < m->nnames; i++)
    if (m->names[i].method == method) return m->names[i].name;
  snprintf(buf, cap, "%lu", (unsigned long)method);
  return buf;
}

static const char *slot_label(size_t slot) {
  int st = qrpci_slot_status(slot);
  return st < 0 ? "UNKNOWN_STATUS" : qrpc_status_name(st);
}

static void render_calls(const qrpc_metrics *m, const qrpci_callstats *cs,
                         struct evbuffer *b) {
  char idbuf[16];
  family(b, "qrpc_calls_total", "counter",
         "Calls served, by method and final status.");
  for (size_t i = 0; cs && i < cs->n; i++) {
    const qrpci_method_stats *ms = cs->methods[i];
    const char *name = method_label(m, ms->method, idbuf, sizeof(idbuf));
    for (size_t s = 0; s < QRPCI_STATUS_SLOTS; s++)
      if (ms->calls[s])
        evbuffer_add_printf(b,
                            "qrpc_calls_total{method=\"%s\",code=\"%s\"} "
                            "%llu\n",
                            name, slot_label(s),
                            (unsigned long long)ms->calls[s]);
  }
  family(b, "qrpc_call_duration_seconds", "histogram",
         "Time from a call's arrival to its last answer, by method.");
  for (size_t i = 0; cs && i < cs->n; i++) {
    const qrpci_method_stats *ms = cs->methods[i];
    const char *name = method_label(m, ms->method, idbuf, sizeof(idbuf));
    uint64_t cum = 0;
    for (size_t k = 0; k < QRPCI_LATENCY_BUCKETS; k++) {
      cum += ms->buckets[k];
      evbuffer_add_printf(
          b,
          "qrpc_call_duration_seconds_bucket{method=\"%s\",le=\"%g\"} %llu\n",
          name, (double)qrpci_latency_bounds_ns[k] / 1e9,
          (unsigned long long)cum);
    }
    evbuffer_add_printf(
        b,
        "qrpc_call_duration_seconds_bucket{method=\"%s\",le=\"+Inf\"} %llu\n",
        name, (unsigned long long)ms->count);
    evbuffer_add_printf(b,
                        "qrpc_call_duration_seconds_sum{method=\"%s\"} "
                        "%.9f\n",
                        name, (double)ms->sum_ns / 1e9);
    evbuffer_add_printf(b,
                        "qrpc_call_duration_seconds_count{method=\"%s\"} "
                        "%llu\n",
                        name, (unsigned long long)ms->count);
  }
}

static void render_transport(const qrpc_endpoint_stats *es,
                             struct evbuffer *b) {
  one(b, "qrpc_connections", "gauge", "QUIC connections open now.",
      es->connections);
  family(b, "qrpc_handshakes_total", "counter",
         "Handshakes by result: ok, failed, or refused over a limit.");
  sample(b, "qrpc_handshakes_total", "result=\"ok\"", es->accepted);
  sample(b, "qrpc_handshakes_total", "result=\"failed\"", es->handshake_failed);
  sample(b, "qrpc_handshakes_total", "result=\"refused\"", es->refused);
  one(b, "qrpc_sent_bytes_total", "counter", "UDP payload bytes sent.",
      es->bytes_sent);
  one(b, "qrpc_received_bytes_total", "counter",
      "UDP payload bytes received on connections.", es->bytes_recv);
  one(b, "qrpc_sent_packets_total", "counter", "QUIC packets sent.",
      es->pkts_sent);
  one(b, "qrpc_received_packets_total", "counter",
      "QUIC packets received on connections.", es->pkts_recv);
  one(b, "qrpc_lost_packets_total", "counter",
      "QUIC packets declared lost; their frames are retransmitted.",
      es->pkts_lost);
  one(b, "qrpc_retransmitted_bytes_total", "counter",
      "Bytes of the packets declared lost, whose frames are sent again.",
      es->bytes_lost);
  one(b, "qrpc_dropped_packets_total", "counter",
      "UDP packets dropped: undecodable or for no connection.",
      es->packets_dropped);
  one(b, "qrpc_socket_drops_total", "counter",
      "UDP packets the kernel dropped before qrpc read them (receive buffer "
      "full).",
      es->socket_drops);
  one(b, "qrpc_retries_sent_total", "counter",
      "Stateless retries sent for address validation.", es->retries_sent);
  one(b, "qrpc_dead_peers_total", "counter",
      "Connections closed because the peer stopped answering.", es->dead_peers);
  one(b, "qrpc_stream_blocked_total", "counter",
      "Times a stream's send buffer filled up.", es->stream_blocked);
  one(b, "qrpc_flow_control_blocked_total", "counter",
      "Times a stream waited for the peer's flow-control credit.",
      es->flow_blocked);
}

static void render_dgrams(const qrpc_endpoint_stats *es,
                          const qrpc_dgram_stats *ds, struct evbuffer *b) {
  one(b, "qrpc_datagrams_sent_total", "counter", "QUIC datagrams sent.",
      es->datagrams_sent);
  one(b, "qrpc_datagrams_received_total", "counter", "QUIC datagrams received.",
      es->datagrams_recv);
  one(b, "qrpc_datagrams_lost_total", "counter",
      "QUIC datagrams declared lost.", es->datagrams_lost);
  family(b, "qrpc_datagrams_dropped_total", "counter",
         "Channel datagrams dropped, by reason.");
  static const char *const reasons[] = {
      "aged",        "too_large",       "queue_full", "stale",
      "undecodable", "unknown_channel", "malformed"};
  const uint64_t v[] = {ds->dropped_aged,        ds->refused_too_large,
                        ds->refused_queue_full,  ds->dropped_stale,
                        ds->dropped_undecodable, ds->dropped_unknown,
                        ds->dropped_malformed};
  for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
    evbuffer_add_printf(b, "qrpc_datagrams_dropped_total{reason=\"%s\"} %llu\n",
                        reasons[i], (unsigned long long)v[i]);
}

static void render_broker(qrpc_broker *br, struct evbuffer *b) {
  qrpc_broker_stats st;
  qrpc_broker_get_stats(br, &st);
  one(b, "qrpc_broker_connections", "gauge",
      "Broker client connections open now.", st.connections);
  one(b, "qrpc_broker_subscriptions", "gauge", "Subscriptions open now.",
      st.subscriptions);
  one(b, "qrpc_broker_retained_topics", "gauge",
      "Topics holding a retained message.", st.retained);
  one(b, "qrpc_broker_queued_bytes", "gauge",
      "Bytes waiting in all subscribers' queues.", st.queued_bytes);
  one(b, "qrpc_broker_published_total", "counter", "Messages published.",
      st.published);
  one(b, "qrpc_broker_publishes_refused_total", "counter",
      "Publishes refused (too large, bad topic, out of memory).", st.refused);
  one(b, "qrpc_broker_delivered_total", "counter",
      "Messages delivered to subscribers.", st.delivered);
  family(b, "qrpc_broker_dropped_total", "counter",
         "Messages dropped for a subscriber, by the policy that dropped "
         "them (other: out of memory or over the fan-out limit).");
  uint64_t by_policy = st.dropped_oldest + st.dropped_newest;
  sample(b, "qrpc_broker_dropped_total", "policy=\"drop_oldest\"",
         st.dropped_oldest);
  sample(b, "qrpc_broker_dropped_total", "policy=\"drop_newest\"",
         st.dropped_newest);
  sample(b, "qrpc_broker_dropped_total", "policy=\"other\"",
         st.dropped > by_policy ? st.dropped - by_policy : 0);
  one(b, "qrpc_broker_conflated_total", "counter",
      "Queued messages replaced by a newer one on their topic.", st.conflated);
  one(b, "qrpc_broker_slow_consumer_disconnects_total", "counter",
      "Connections closed for a subscription over its queue.",
      st.slow_disconnects);
  one(b, "qrpc_broker_denied_total", "counter", "Operations the ACL denied.",
      st.denied);
}

/* One sample per backend of a client, labelled with its address. */
static void backend_family(struct evbuffer *b, const qrpc_backend_info *v,
                           size_t n, const char *name, const char *type,
                           const char *help, size_t field) {
  family(b, name, type, help);
  for (size_t i = 0; i < n; i++) {
    const qrpc_backend_info *bi = &v[i];
    uint64_t x = field == 0   ? (uint64_t)(bi->takes_calls != 0)
                 : field == 1 ? (uint64_t)bi->in_flight
                 : field == 2 ? bi->calls
                 : field == 3 ? bi->failures
                              : bi->attempts;
    evbuffer_add_printf(b, "%s{backend=\"%s\"} %llu\n", name, bi->addr,
                        (unsigned long long)x);
  }
}

static void render_client(qrpc_client *cli, struct evbuffer *b) {
  size_t n = qrpc_client_backends(cli, NULL, 0);
  qrpc_backend_info *v = n ? calloc(n, sizeof(*v)) : NULL;
  if (n && !v) return;
  n = qrpc_client_backends(cli, v, n);
  backend_family(b, v, n, "qrpc_client_backend_up", "gauge",
                 "1 while the backend takes new calls.", 0);
  backend_family(b, v, n, "qrpc_client_backend_in_flight", "gauge",
                 "Calls awaiting an answer from the backend now.", 1);
  backend_family(b, v, n, "qrpc_client_backend_calls_total", "counter",
                 "Calls started on the backend.", 2);
  backend_family(b, v, n, "qrpc_client_backend_failures_total", "counter",
                 "Failed connection attempts and lost connections.", 3);
  backend_family(b, v, n, "qrpc_client_backend_attempts_total", "counter",
                 "Connection attempts.", 4);
  one(b, "qrpc_client_resolve_failing", "gauge",
      "1 while the client's DNS name does not resolve.",
      qrpc_client_resolve_error(cli) != 0);
  free(v);
}

static int render(qrpc_metrics *m, struct evbuffer *b) {
  if (m->srv) {
    /* Every worker's figures, summed. */
    qrpc_endpoint_stats es;
    qrpc_dgram_stats ds;
    qrpci_callstats *cs = qrpci_callstats_new();
    if (qrpc_server_get_stats(m->srv, &es, NULL, 0) != 0)
      qrpc_endpoint_get_stats(qrpc_server_endpoint(m->srv), &es);
    qrpc_server_dgram_stats(m->srv, &ds);
    if (cs) qrpci_server_callstats_sum(m->srv, cs);
    render_transport(&es, b);
    render_dgrams(&es, &ds, b);
    render_calls(m, cs, b);
    qrpci_callstats_free(cs);
  }
  if (m->broker) render_broker(m->broker, b);
  if (m->cli) render_client(m->cli, b);
  return 0;
}

int qrpc_metrics_render(qrpc_metrics *m, char **out, size_t *len) {
  if (!m || !out) return QRPC_EINVAL;
  *out = NULL;
  struct evbuffer *b = evbuffer_new();
  if (!b) return QRPC_ENOMEM;
  render(m, b);
  size_t n = evbuffer_get_length(b);
  char *s = malloc(n + 1);
  if (!s) {
    evbuffer_free(b);
    return QRPC_ENOMEM;
  }
  evbuffer_remove(b, s, n);
  s[n] = '\0';
  evbuffer_free(b);
  *out = s;
  if (len) *len = n;
  return 0;
}

/* ---- Sources ---------------------------------------------------------- */

int qrpc_metrics_add_server(qrpc_metrics *m, qrpc_server *srv) {
  if (!m || !srv) return QRPC_EINVAL;
  if (m->srv) return QRPC_ESTATE;
  int rv = qrpci_server_callstats_enable(srv);
  if (rv != 0) return rv;
  m->srv = srv;
  return 0;
}

int qrpc_metrics_add_client(qrpc_metrics *m, qrpc_client *cli) {
  if (!m || !cli) return QRPC_EINVAL;
  if (m->cli) return QRPC_ESTATE;
  m->cli = cli;
  return 0;
}

int qrpc_metrics_add_broker(qrpc_metrics *m, qrpc_broker *b) {
  if (!m || !b) return QRPC_EINVAL;
  if (m->broker) return QRPC_ESTATE;
  static const struct {
    uint32_t id;
    const char *name;
  } methods[] = {
      {qrpc_broker_Broker_Hello_METHOD_ID,
       qrpc_broker_Broker_Hello_METHOD_NAME},
      {qrpc_broker_Broker_Subscribe_METHOD_ID,
       qrpc_broker_Broker_Subscribe_METHOD_NAME},
      {qrpc_broker_Broker_Unsubscribe_METHOD_ID,
       qrpc_broker_Broker_Unsubscribe_METHOD_NAME},
      {qrpc_broker_Broker_Publish_METHOD_ID,
       qrpc_broker_Broker_Publish_METHOD_NAME},
      {qrpc_broker_Broker_Stats_METHOD_ID,
       qrpc_broker_Broker_Stats_METHOD_NAME},
  };
  int rv = 0;
  for (size_t i = 0; rv == 0 && i < sizeof(methods) / sizeof(methods[0]); i++)
    rv = qrpc_metrics_name_method(m, methods[i].id, methods[i].name);
  if (rv == 0) rv = qrpc_metrics_add_server(m, qrpc_broker_server(b));
  if (rv != 0) return rv;
  m->broker = b;
  return 0;
}

static int name_ok(const char *name) {
  if (!*name) return 0;
  for (const char *p = name; *p; p++)
    if (*p < 0x20 || *p > 0x7e || *p == '"' || *p == '\\') return 0;
  return 1;
}

int qrpc_metrics_name_method(qrpc_metrics *m, uint32_t method,
                             const char *name) {
  if (!m || !name || !name_ok(name)) return QRPC_EINVAL;
  char *copy = strdup(name);
  if (!copy) return QRPC_ENOMEM;
  for (size_t i = 0; i < m->nnames; i++)
    if (m->names[i].method == method) {
      free(m->names[i].name);
      m->names[i].name = copy;
      return 0;
    }
  method_name *v = realloc(m->names, (m->nnames + 1) * sizeof(*v));
  if (!v) {
    free(copy);
    return QRPC_ENOMEM;
  }
  m->names = v;
  m->names[m->nnames++] = (method_name){method, copy};
  return 0;
}

/* ---- HTTP ------------------------------------------------------------- */

static void conn_free(mconn *c) {
  qrpci_list_remove(&c->node);
  c->m->nconns--;
  bufferevent_free(c->bev);
  free(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg);

/* After the answer the client's remaining bytes are read and discarded
 * until it closes or the timeout passes: closing with unread bytes would
 * reset the connection and could destroy the answer on its way. */
static void discard_cb(struct bufferevent *bev, void *arg) {
  struct evbuffer *in = bufferevent_get_input(bev);
  evbuffer_drain(in, evbuffer_get_length(in));
}

static void closing_write_cb(struct bufferevent *bev, void *arg) {
  mconn *c = arg;
  if (evbuffer_get_length(bufferevent_get_output(bev)) != 0) return;
  if (c->eof)
    conn_free(c);
  else
    shutdown(bufferevent_getfd(bev), SHUT_WR);
}

/* Sends status (and body, unless head) and closes once it is written. */
static void respond(mconn *c, const char *status, struct evbuffer *body,
                    int head) {
  struct evbuffer *out = bufferevent_get_output(c->bev);
  size_t n = body ? evbuffer_get_length(body) : 0;
  evbuffer_add_printf(out,
                      "HTTP/1.1 %s\r\nContent-Type: %s\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                      status, body ? CONTENT_TYPE : "text/plain", n);
  if (body && !head) evbuffer_add_buffer(out, body);
  c->answered = 1;
  bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
  bufferevent_setcb(c->bev, discard_cb, closing_write_cb, event_cb, c);
  bufferevent_enable(c->bev, EV_READ | EV_WRITE);
  discard_cb(c->bev, c);
}

static void respond_status(mconn *c, const char *status) {
  respond(c, status, NULL, 0);
}

/* The request line: method, a space, the target, a space, the version. */
static void serve(mconn *c, const char *line) {
  const char *sp = strchr(line, ' ');
  const char *sp2 = sp ? strchr(sp + 1, ' ') : NULL;
  if (!sp || !sp2 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
    respond_status(c, "400 Bad Request");
    return;
  }
  size_t mlen = (size_t)(sp - line);
  int head = mlen == 4 && memcmp(line, "HEAD", 4) == 0;
  if (!head && !(mlen == 3 && memcmp(line, "GET", 3) == 0)) {
    respond_status(c, "405 Method Not Allowed");
    return;
  }
  const char *path = sp + 1;
  size_t plen = (size_t)(sp2 - path);
  const char *q = memchr(path, '?', plen);
  if (q) plen = (size_t)(q - path);
  if (plen != strlen(METRICS_PATH) || memcmp(path, METRICS_PATH, plen) != 0) {
    respond_status(c, "404 Not Found");
    return;
  }
  struct evbuffer *body = evbuffer_new();
  if (!body) {
    respond_status(c, "503 Service Unavailable");
    return;
  }
  render(c->m, body);
  respond(c, "200 OK", body, head);
  evbuffer_free(body);
}

static void read_cb(struct bufferevent *bev, void *arg) {
  mconn *c = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  size_t max = c->m->opts.max_request_bytes;
  struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
  if (end.pos < 0) end = evbuffer_search(in, "\n\n", 2, NULL);
  if (end.pos < 0) {
    if (evbuffer_get_length(in) > max)
      respond_status(c, "431 Request Header Fields Too Large");
    return;
  }
  if ((size_t)end.pos > max) {
    respond_status(c, "431 Request Header Fields Too Large");
    return;
  }
  size_t n;
  char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
  if (!line) {
    respond_status(c, "400 Bad Request");
    return;
  }
  serve(c, line);
  free(line);
}

static void event_cb(struct bufferevent *bev, short what, void *arg) {
  mconn *c = arg;
  /* A client that half-closes after its request still gets the answer
   * queued for it; an error or a timeout ends everything. */
  if ((what & BEV_EVENT_EOF) && c->answered && !(what & BEV_EVENT_TIMEOUT) &&
      evbuffer_get_length(bufferevent_get_output(bev)) != 0) {
    c->eof = 1;
    bufferevent_disable(bev, EV_READ);
    return;
  }
  conn_free(c);
}

static void accept_cb(struct evconnlistener *lev, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg) {
  qrpc_metrics *m = arg;
  if (m->nconns >= m->opts.max_connections) {
    evutil_closesocket(fd);
    return;
  }
  mconn *c = calloc(1, sizeof(*c));
  struct bufferevent *bev =
      c ? bufferevent_socket_new(qrpc_loop_base(m->loop), fd,
                                 BEV_OPT_CLOSE_ON_FREE)
        : NULL;
  if (!bev) {
    free(c);
    evutil_closesocket(fd);
    return;
  }
  c->m = m;
  c->bev = bev;
  qrpci_list_push_back(&m->conns, &c->node);
  m->nconns++;
  struct timeval tv = {(time_t)(m->opts.timeout_ms / 1000),
                       (suseconds_t)(m->opts.timeout_ms % 1000) * 1000};
  bufferevent_set_timeouts(bev, &tv, &tv);
  /* Read at most a little past the limit, so a flood is not buffered. */
  bufferevent_setwatermark(bev, EV_READ, 0, m->opts.max_request_bytes + 4);
  bufferevent_setcb(bev, read_cb, NULL, event_cb, c);
  bufferevent_enable(bev, EV_READ);
}

static int opts_valid(const qrpc_metrics_opts *o) {
  return o->size == sizeof(*o) && o->max_connections > 0 &&
         o->max_request_bytes >= 64 && o->timeout_ms > 0;
}

static int listen_on(qrpc_metrics *m, const char *addr) {
  char *host, *port;
  int rv = qrpci_parse_addr(addr, &host, &port);
  if (rv != 0) return rv;
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  int gai = getaddrinfo(host, port, &hints, &res);
  free(host);
  free(port);
  if (gai != 0 || !res) return QRPC_EINVAL;
  m->lev = evconnlistener_new_bind(
      qrpc_loop_base(m->loop), accept_cb, m,
      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE, 16,
      res->ai_addr, (int)res->ai_addrlen);
  freeaddrinfo(res);
  if (!m->lev) return errno == EADDRINUSE ? QRPC_EADDRINUSE : QRPC_ESYSTEM;
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getsockname(evconnlistener_get_fd(m->lev), (struct sockaddr *)&ss,
                  &len) != 0)
    return QRPC_ESYSTEM;
  m->port =
      ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                     : ((struct sockaddr_in *)&ss)->sin_port);
  return 0;
}

int qrpc_metrics_serve(qrpc_loop *loop, const char *addr,
                       const qrpc_metrics_opts *opts, qrpc_metrics **out) {
  if (!loop || !addr || !out) return QRPC_EINVAL;
  *out = NULL;
  qrpc_metrics_opts o;
  qrpc_metrics_opts_default(&o);
  if (opts) {
    if (!opts_valid(opts)) return QRPC_EINVAL;
    o = *opts;
  }
  qrpc_metrics *m = calloc(1, sizeof(*m));
  if (!m) return QRPC_ENOMEM;
  m->loop = loop;
  m->opts = o;
  qrpci_list_init(&m->conns);
  int rv = listen_on(m, addr);
  if (rv != 0) {
    QRPCI_ERROR("metrics: cannot listen on %s: %s", addr, qrpc_strerror(rv));
    qrpc_metrics_free(m);
    return rv;
  }
  *out = m;
  return 0;
}

uint16_t qrpc_metrics_port(qrpc_metrics *m) { return m ? m->port : 0; }

void qrpc_metrics_free(qrpc_metrics *m) {
  if (!m) return;
  while (!qrpci_list_empty(&m->conns))
    conn_free(QRPCI_CONTAINER_OF(m->conns.next, mconn, node));
  if (m->lev) evconnlistener_free(m->lev);
  for (size_t i = 0; i < m->nnames; i++) free(m->names[i].name);
  free(m->names);
  free(m);
}
