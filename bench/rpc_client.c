/*
 * qrpc-bench client rpc: load on the Echo service of bench.proto.
 *
 * - unary: --conns clients, each keeping --outstanding Echo calls in
 *   flight; a call is started again as soon as one ends.
 * - stream: on each connection --outstanding EchoStream calls, each
 *   sending --payload byte messages as fast as flow control lets it (or
 *   at most --window unechoed ones) and counting the echoes.
 * - connect: --conns chains of (new client, one Echo call, free client),
 *   one after the other. --handshake says how each new connection is
 *   made: resume (the default, as a real client does: one TLS config for
 *   the whole run, whose ticket cache resumes each new connection), full
 *   (resumption off: every connection a full handshake) or 0rtt (resumed,
 *   and the call is idempotent, so it travels in 0-RTT).
 *
 * --target (a list of servers or dns:name:port) replaces --host and
 * --port: each client then spreads its calls over the target's servers
 * with the --lb policy, and unary calls are marked idempotent, so a call
 * lost with a server runs again on another.
 *
 * The request is a Msg encoded once with protobuf-c; calls send its bytes
 * and echoes are checked by length, so nothing is decoded or allocated
 * per call on this side.
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.qrpc.h"
#include "client_common.h"
#include "hist.h"
#include "runner.h"

#define ECHO_ID qrpc_bench_Echo_Echo_METHOD_ID
#define ECHO_STREAM_ID qrpc_bench_Echo_EchoStream_METHOD_ID

/* Setting up connections: a fixed allowance plus time per connection. */
#define SETUP_BASE_S 20.0
#define SETUP_PER_CONN_S 0.01
/* A connect-mode call that has not completed by then is an error. */
#define CONNECT_CALL_TIMEOUT_MS 10000
/* connect --handshake 0rtt: the reply of a call in 0-RTT comes before the
 * server has the client's Finished, so before the server sends the
 * connection's fresh ticket. A chain whose cache is empty keeps the
 * client, looking again after a wait that starts at TICKET_POLL_US and
 * doubles up to TICKET_POLL_MAX_US (a loopback round trip is tens of
 * microseconds, one through a delay proxy tens of milliseconds), until a
 * ticket is in or TICKET_WAIT_MAX_MS have passed (then the next
 * connection makes a full handshake). */
#define TICKET_POLL_US 50
#define TICKET_POLL_MAX_US 4000
#define TICKET_WAIT_MAX_MS 500
#define MAX_CONNS 10000
#define MAX_OUTSTANDING 4096
#define MAX_UNARY_STREAMS 64

enum { MODE_UNARY, MODE_STREAM, MODE_CONNECT };
static const char *const mode_names[] = {"unary", "stream", "connect", NULL};
enum { HS_RESUME, HS_FULL, HS_0RTT };
static const char *const handshake_names[] = {"resume", "full", "0rtt", NULL};
/* --lb: "default" leaves the client's own choice. */
static const char *const lb_names[] = {"default", "pick_first", "round_robin",
                                       "least_outstanding", NULL};

typedef struct rpc_opts {
  bench_client_common c;
  int mode;
  uint64_t payload;
  uint64_t conns;
  uint64_t outstanding;
  uint64_t window;
  uint64_t unary_streams;
  int handshake; /* connect: HS_* */
  const char *target; /* --target: replaces --host and --port */
  int lb;             /* index in lb_names */
  int copy;           /* stream: qrpc_call_send() copies each message */
} rpc_opts;

typedef struct rpc_bench rpc_bench;

/* One connection of the unary and stream modes. */
typedef struct rpc_conn {
  rpc_bench *b;
  size_t idx;
  qrpc_client *cli;
  int connected;
} rpc_conn;

/* One call slot of the unary mode. */
typedef struct unary_slot {
  rpc_conn *conn;
  uint64_t t0;
} unary_slot;

/* One EchoStream call of the stream mode. */
typedef struct stream_slot {
  rpc_conn *conn;
  qrpc_call *call;
  uint64_t sent, echoed;
} stream_slot;

/* One chain of the connect mode. */
typedef struct connect_chain {
  rpc_bench *b;
  qrpc_client *cli;
  uint64_t t0;
  uint64_t ticket_deadline; /* 0: not waiting for a ticket */
  long poll_us;             /* the next wait for one */
  struct event *next_ev;    /* activated, or a timer while waiting */
} connect_chain;

struct rpc_bench {
  const char *prog;
  rpc_opts o;
  bench_client_env env;
  bench_runner run;
  qrpc_client_opts co;
  qrpc_call_opts unary_opts; /* of every unary-mode call */
  uint8_t *msg; /* the encoded request Msg */
  size_t msg_len;

  rpc_conn *conns;
  size_t nconns, connected;
  unary_slot *uslots;
  stream_slot *sslots;
  connect_chain *chains;
  size_t nslots;
  int started;
  int stopping; /* the run is over: completions are not counted */

  /* Totals since the load began (progress lines) and in the window. */
  uint64_t done_total, errors;
  uint64_t ops, bytes;
  /* connect, in the window: connections that resumed a session, and those
   * whose call went in 0-RTT that the server accepted; the process's CPU
   * seconds when the window opened. */
  uint64_t resumed, early;
  uint64_t ticket_timeouts; /* 0rtt: chains that gave up on a ticket */
  double cpu_at_measure, cpu_at_end;
  bench_hist lat;
  bench_rate rate;
  char first_error[200];
};

static const char *ops_unit(const rpc_bench *b) {
  return b->o.mode == MODE_UNARY    ? "calls"
         : b->o.mode == MODE_STREAM ? "msgs"
                                    : "conns";
}

static void count_error(rpc_bench *b, const char *what, const qrpc_result *r) {
  b->errors++;
  if (b->first_error[0] != '\0') return;
  if (r != NULL)
    snprintf(b->first_error, sizeof(b->first_error), "%s: %s %.*s", what,
             qrpc_status_name(r->status), (int)r->detail_len,
             r->detail ? r->detail : "");
  else
    snprintf(b->first_error, sizeof(b->first_error), "%s", what);
}

/* ---- unary --------------------------------------------------------------- */

static void unary_issue(unary_slot *s, uint64_t now);

static void unary_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  unary_slot *s = ud;
  rpc_bench *b = s->conn->b;
  (void)call;
  if (b->stopping) return;
  uint64_t now = bench_now_ns();
  b->done_total++;
  if (res->status != QRPC_STATUS_OK)
    count_error(b, "Echo failed", res);
  else if (res->len != b->msg_len)
    count_error(b, "Echo answered with another length", NULL);
  else if (bench_runner_measuring(&b->run)) {
    b->ops++;
    bench_hist_add(&b->lat, now - s->t0);
  }
  unary_issue(s, now);
}

static const qrpc_call_callbacks unary_cbs = {.on_done = unary_done};

/* Starts the slot's next call; now (the clock just read) is its start. A
 * slot whose call cannot start stays empty, and the error is counted. */
static void unary_issue(unary_slot *s, uint64_t now) {
  rpc_bench *b = s->conn->b;
  s->t0 = now;
  int rc = qrpc_client_call(s->conn->cli, ECHO_ID, b->msg, b->msg_len,
                            &b->unary_opts, &unary_cbs, s, NULL);
  if (rc != 0) {
    char what[120];
    snprintf(what, sizeof(what), "cannot start an Echo call: %s",
             qrpc_strerror(rc));
    count_error(b, what, NULL);
  }
}

/* ---- stream -------------------------------------------------------------- */

/* Every stream sends the same encoded Msg, which lives until the
 * connections are freed: given to qrpc without a copy, nothing to give
 * back. */
static void msg_kept(void *owner) { (void)owner; }

/* Sends while the stream takes more (and the window allows). */
static void stream_pump(stream_slot *s) {
  rpc_bench *b = s->conn->b;
  const qrpc_msg m = {.msg = b->msg, .size = b->msg_len, .release = msg_kept};
  while (s->call != NULL && !b->stopping &&
         (b->o.window == 0 || s->sent - s->echoed < b->o.window)) {
    int rc = b->o.copy ? qrpc_call_send(s->call, b->msg, b->msg_len)
                       : qrpc_call_send_msg(s->call, &m);
    if (rc == QRPC_EAGAIN) return; /* on_writable follows */
    if (rc != 0) {
      char what[120];
      snprintf(what, sizeof(what), "cannot send on EchoStream: %s",
               qrpc_strerror(rc));
      count_error(b, what, NULL);
      qrpc_call_cancel(s->call);
      return;
    }
    s->sent++;
  }
}

static void stream_item(qrpc_call *call, const uint8_t *data, size_t len,
                        void *ud) {
  stream_slot *s = ud;
  rpc_bench *b = s->conn->b;
  (void)call, (void)data;
  if (b->stopping) return;
  s->echoed++;
  b->done_total++;
  if (len != b->msg_len) {
    count_error(b, "EchoStream echoed another length", NULL);
  } else if (bench_runner_measuring(&b->run)) {
    b->ops++;
    b->bytes += b->o.payload;
  }
  if (b->o.window != 0) stream_pump(s);
}

static void stream_writable(qrpc_call *call, void *ud) {
  (void)call;
  stream_pump(ud);
}

static void stream_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  stream_slot *s = ud;
  (void)call;
  s->call = NULL;
  if (!s->conn->b->stopping) count_error(s->conn->b, "EchoStream ended", res);
}

static const qrpc_call_callbacks stream_cbs = {
    .on_done = stream_done,
    .on_item = stream_item,
    .on_writable = stream_writable,
};

static void stream_open(stream_slot *s) {
  rpc_bench *b = s->conn->b;
  int rc =
      qrpc_client_stream(s->conn->cli, ECHO_STREAM_ID, QRPC_SHAPE_BIDI_STREAM,
                         NULL, 0, NULL, &stream_cbs, s, &s->call);
  if (rc != 0) {
    s->call = NULL;
    char what[120];
    snprintf(what, sizeof(what), "cannot start EchoStream: %s",
             qrpc_strerror(rc));
    count_error(b, what, NULL);
    return;
  }
  stream_pump(s);
}

/* ---- connections (unary and stream) -------------------------------------- */

static void chain_start(struct connect_chain *ch);

static void start_load(rpc_bench *b) {
  b->started = 1;
  bench_runner_ready(&b->run);
  bench_rate_next(&b->rate, 0);
  for (size_t i = 0; i < b->nslots; i++) {
    if (b->o.mode == MODE_UNARY)
      unary_issue(&b->uslots[i], bench_now_ns());
    else if (b->o.mode == MODE_STREAM)
      stream_open(&b->sslots[i]);
    else
      chain_start(&b->chains[i]);
  }
}

static void on_connect(qrpc_client *cli, qrpc_peer *peer, void *ud) {
  rpc_conn *c = ud;
  rpc_bench *b = c->b;
  (void)cli, (void)peer;
  if (c->connected) return;
  c->connected = 1;
  b->connected++;
  if (!b->started && b->connected == b->nconns) start_load(b);
}

static void on_disconnect(qrpc_client *cli, const qrpc_close_info *info,
                          void *ud) {
  rpc_conn *c = ud;
  rpc_bench *b = c->b;
  (void)cli;
  c->connected = 0;
  b->connected--;
  if (b->stopping) return;
  char what[200];
  snprintf(what, sizeof(what), "connection %zu lost: %s", c->idx + 1,
           bench_close_reason(info));
  /* The calls on the connection failed first, but this is why. */
  if (bench_close_cert_refused(info)) b->first_error[0] = '\0';
  count_error(b, what, NULL);
}

/* What the clients connect to: --target, or --host and --port. */
static const char *target_of(const rpc_bench *b) {
  return b->o.target ? b->o.target : b->env.addr;
}

static int open_conns(rpc_bench *b) {
  qrpc_client_opts co = b->co;
  co.on_connect = on_connect;
  co.on_disconnect = on_disconnect;
  co.rpc.unary_streams = (size_t)b->o.unary_streams;
  co.max_pending = (size_t)b->o.outstanding + 16;
  for (size_t i = 0; i < b->nconns; i++) {
    rpc_conn *c = &b->conns[i];
    c->b = b;
    c->idx = i;
    co.user_data = c;
    int rc =
        qrpc_client_new(b->env.loop, target_of(b), b->env.tls, &co, &c->cli);
    if (rc != 0) {
      c->cli = NULL;
      const char *why = qrpc_client_target_problem(target_of(b), co.lb_policy);
      fprintf(stderr, "%s: cannot create client %zu for %s: %s\n", b->prog,
              i + 1, target_of(b), why ? why : qrpc_strerror(rc));
      return 1;
    }
  }
  return 0;
}

/* ---- connect ------------------------------------------------------------- */

/* Whether the chain's connection resumed, and whether its call went in
 * 0-RTT that the server took. */
static void chain_count_handshake(connect_chain *ch) {
  rpc_bench *b = ch->b;
  qrpc_peer *peer = qrpc_client_peer(ch->cli);
  if (peer == NULL) return;
  qrpc_conn_stats st;
  qrpc_conn_get_stats(qrpc_peer_conn(peer), &st);
  if (st.resumed) b->resumed++;
  if (qrpc_client_early_calls(ch->cli) > 0 &&
      st.early_data == QRPC_EARLY_ACCEPTED)
    b->early++;
}

static void chain_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  connect_chain *ch = ud;
  rpc_bench *b = ch->b;
  (void)call;
  if (b->stopping) return;
  uint64_t now = bench_now_ns();
  b->done_total++;
  if (res->status != QRPC_STATUS_OK) {
    count_error(b, "connect and call failed", res);
  } else if (bench_runner_measuring(&b->run)) {
    b->ops++;
    bench_hist_add(&b->lat, now - ch->t0);
    chain_count_handshake(ch);
  }
  if (b->o.handshake == HS_0RTT && qrpc_tls_config_tickets(b->env.tls) == 0) {
    ch->ticket_deadline = now + (uint64_t)TICKET_WAIT_MAX_MS * 1000000;
    ch->poll_us = TICKET_POLL_US;
  }
  /* The client cannot be freed from its own callback. */
  event_active(ch->next_ev, 0, 0);
}

static const qrpc_call_callbacks chain_cbs = {.on_done = chain_done};

static void chain_next(evutil_socket_t fd, short what, void *arg) {
  connect_chain *ch = arg;
  rpc_bench *b = ch->b;
  (void)fd, (void)what;
  if (ch->ticket_deadline != 0 && !b->stopping &&
      qrpc_tls_config_tickets(b->env.tls) == 0) {
    if (bench_now_ns() < ch->ticket_deadline) {
      const struct timeval poll = {0, ch->poll_us};
      event_add(ch->next_ev, &poll);
      if (ch->poll_us < TICKET_POLL_MAX_US) ch->poll_us *= 2;
      return;
    }
    b->ticket_timeouts++;
  }
  ch->ticket_deadline = 0;
  qrpc_client_free(ch->cli);
  ch->cli = NULL;
  if (!ch->b->stopping) chain_start(ch);
}

static void chain_start(connect_chain *ch) {
  rpc_bench *b = ch->b;
  qrpc_call_opts opts;
  qrpc_call_opts_default(&opts);
  opts.timeout_ms = CONNECT_CALL_TIMEOUT_MS;
  opts.idempotent = b->o.handshake == HS_0RTT;
  ch->t0 = bench_now_ns();
  int rc =
      qrpc_client_new(b->env.loop, target_of(b), b->env.tls, &b->co, &ch->cli);
  if (rc != 0) {
    ch->cli = NULL;
    bench_runner_fail(&b->run, "cannot create a client for %s: %s",
                      target_of(b), qrpc_strerror(rc));
    return;
  }
  rc = qrpc_client_call(ch->cli, ECHO_ID, b->msg, b->msg_len, &opts, &chain_cbs,
                        ch, NULL);
  if (rc != 0)
    bench_runner_fail(&b->run, "cannot start an Echo call: %s",
                      qrpc_strerror(rc));
}

/* ---- the run ------------------------------------------------------------- */

static void on_measure(bench_runner *r, void *ud) {
  rpc_bench *b = ud;
  (void)r;
  b->ops = 0;
  b->bytes = 0;
  b->resumed = 0;
  b->early = 0;
  b->cpu_at_measure = bench_cpu_s();
  bench_hist_reset(&b->lat);
}

static void on_progress(bench_runner *r, double t, void *ud) {
  rpc_bench *b = ud;
  double rate = bench_rate_next(&b->rate, b->done_total);
  fprintf(stderr, "%s: %5.1f s %-7s %12.0f %s/s", b->prog, t,
          bench_runner_measuring(r) ? "measure" : "warmup", rate, ops_unit(b));
  if (b->o.mode == MODE_STREAM)
    fprintf(stderr, " %10.1f MB/s", rate * (double)b->o.payload / 1e6);
  fprintf(stderr, "  errors %llu\n", (unsigned long long)b->errors);
}

static int encode_request(rpc_bench *b) {
  uint8_t *payload = malloc(b->o.payload ? b->o.payload : 1);
  if (payload == NULL) return -1;
  for (size_t i = 0; i < b->o.payload; i++) payload[i] = (uint8_t)(i * 31);
  Qrpc__Bench__Msg m = QRPC__BENCH__MSG__INIT;
  m.payload.data = payload;
  m.payload.len = (size_t)b->o.payload;
  b->msg_len = qrpc__bench__msg__get_packed_size(&m);
  b->msg = malloc(b->msg_len ? b->msg_len : 1);
  if (b->msg != NULL) qrpc__bench__msg__pack(&m, b->msg);
  free(payload);
  return b->msg ? 0 : -1;
}

static int allocate(rpc_bench *b) {
  const rpc_opts *o = &b->o;
  if (o->mode == MODE_CONNECT) {
    b->nslots = (size_t)o->conns;
    b->chains = calloc(b->nslots, sizeof(*b->chains));
    if (b->chains == NULL) return -1;
    for (size_t i = 0; i < b->nslots; i++) {
      b->chains[i].b = b;
      b->chains[i].next_ev = event_new(qrpc_loop_base(b->env.loop), -1, 0,
                                       chain_next, &b->chains[i]);
      if (b->chains[i].next_ev == NULL) return -1;
    }
    return 0;
  }
  b->nconns = (size_t)o->conns;
  b->nslots = (size_t)(o->conns * o->outstanding);
  b->conns = calloc(b->nconns, sizeof(*b->conns));
  if (b->conns == NULL) return -1;
  if (o->mode == MODE_UNARY) {
    b->uslots = calloc(b->nslots, sizeof(*b->uslots));
    if (b->uslots == NULL) return -1;
    for (size_t i = 0; i < b->nslots; i++)
      b->uslots[i].conn = &b->conns[i / o->outstanding];
  } else {
    b->sslots = calloc(b->nslots, sizeof(*b->sslots));
    if (b->sslots == NULL) return -1;
    for (size_t i = 0; i < b->nslots; i++)
      b->sslots[i].conn = &b->conns[i / o->outstanding];
  }
  return 0;
}

static void teardown(rpc_bench *b) {
  b->stopping = 1;
  for (size_t i = 0; b->conns && i < b->nconns; i++)
    qrpc_client_free(b->conns[i].cli);
  for (size_t i = 0; b->chains && i < b->nslots; i++) {
    qrpc_client_free(b->chains[i].cli);
    if (b->chains[i].next_ev) event_free(b->chains[i].next_ev);
  }
  bench_runner_cleanup(&b->run);
  bench_client_env_cleanup(&b->env);
  free(b->conns);
  free(b->uslots);
  free(b->sslots);
  free(b->chains);
  free(b->msg);
}

/* The transport's view of the run (whole run, all connections), for the
 * JSON object: packet sizes and counts explain most throughput figures. */
static void report_quic(rpc_bench *b, bench_report *r) {
  qrpc_conn_stats sum;
  memset(&sum, 0, sizeof(sum));
  uint64_t rtt = 0;
  for (size_t i = 0; b->conns && i < b->nconns; i++) {
    qrpc_peer *peer = qrpc_client_peer(b->conns[i].cli);
    if (peer == NULL) continue;
    qrpc_conn_stats st;
    qrpc_conn_get_stats(qrpc_peer_conn(peer), &st);
    sum.pkts_sent += st.pkts_sent;
    sum.pkts_recv += st.pkts_recv;
    sum.bytes_sent += st.bytes_sent;
    sum.bytes_recv += st.bytes_recv;
    if (rtt == 0 || st.smoothed_rtt_ns < rtt) rtt = st.smoothed_rtt_ns;
  }
  if (sum.pkts_sent == 0) return;
  bench_report_param_uint(r, "quic_pkts_sent", sum.pkts_sent);
  bench_report_param_uint(r, "quic_pkts_recv", sum.pkts_recv);
  bench_report_param_uint(r, "quic_bytes_sent", sum.bytes_sent);
  bench_report_param_uint(r, "quic_bytes_recv", sum.bytes_recv);
  bench_report_param_num(r, "quic_srtt_us", (double)rtt / 1e3);
}

/* The connect workload's handshake figures: the share of connections that
 * resumed and that had their call taken in 0-RTT, and the client's CPU
 * (user + system) per connection over the window. */
static void report_connect(rpc_bench *b, bench_report *r) {
  double n = (double)b->ops;
  double resumed = n > 0 ? 100.0 * (double)b->resumed / n : 0;
  double early = n > 0 ? 100.0 * (double)b->early / n : 0;
  double cpu_us = n > 0 ? (b->cpu_at_end - b->cpu_at_measure) * 1e6 / n : 0;
  bench_report_num(r, "resumed_pct", resumed, 1);
  bench_report_num(r, "early_pct", early, 1);
  bench_report_num(r, "cpu_us_per_conn", cpu_us, 1);
  if (b->o.handshake == HS_0RTT)
    bench_report_param_uint(r, "ticket_timeouts", b->ticket_timeouts);
  fprintf(stderr,
          "%s: connect (--handshake %s): %.1f %% resumed, %.1f %% with the "
          "call in 0-RTT, %.1f us of client CPU per connection\n",
          b->prog, handshake_names[b->o.handshake], resumed, early, cpu_us);
}

static void report(rpc_bench *b) {
  const rpc_opts *o = &b->o;
  double secs = bench_runner_measured_s(&b->run);
  double rate = secs > 0 ? (double)b->ops / secs : 0;
  double p50 = bench_hist_quantile(&b->lat, 0.50) / 1e3;
  double p99 = bench_hist_quantile(&b->lat, 0.99) / 1e3;
  bench_report r;
  bench_report_init(&r);
  bench_report_common(&r, "rpc", &o->c);
  bench_report_param_text(&r, "mode", mode_names[o->mode]);
  if (o->target) {
    bench_report_param_text(&r, "target", o->target);
    bench_report_param_text(&r, "lb", lb_names[o->lb]);
  }
  bench_report_param_uint(&r, "payload", o->payload);
  bench_report_param_uint(&r, "conns", o->conns);
  if (o->mode != MODE_CONNECT)
    bench_report_param_uint(&r, "outstanding", o->outstanding);
  if (o->mode == MODE_STREAM) bench_report_param_uint(&r, "window", o->window);
  if (o->mode == MODE_UNARY)
    bench_report_param_uint(&r, "unary_streams", o->unary_streams);
  if (o->mode == MODE_CONNECT)
    bench_report_param_text(&r, "handshake", handshake_names[o->handshake]);
  bench_report_param_uint(&r, "count", b->ops);
  bench_report_param_num(&r, "measured_s", secs);
  bench_report_param_num(&r, "client_cpu_s", bench_cpu_s());
  report_quic(b, &r);
  if (o->mode == MODE_STREAM) {
    double mb = secs > 0 ? (double)b->bytes / 1e6 / secs : 0;
    bench_report_num(&r, "mb_per_s", mb, 1);
    bench_report_num(&r, "msgs_per_s", rate, 1);
    fprintf(stderr,
            "%s: stream, %llu B messages, %llu connection%s x %llu "
            "stream%s: %.1f MB/s echoed, %.1f msgs/s, %llu errors over "
            "%.2f s\n",
            b->prog, (unsigned long long)o->payload,
            (unsigned long long)o->conns, o->conns == 1 ? "" : "s",
            (unsigned long long)o->outstanding, o->outstanding == 1 ? "" : "s",
            mb, rate, (unsigned long long)b->errors, secs);
  } else {
    bench_report_num(&r, o->mode == MODE_UNARY ? "ops_per_s" : "conns_per_s",
                     rate, 1);
    bench_report_num(&r, "p50_us", p50, 1);
    bench_report_num(&r, "p99_us", p99, 1);
    if (o->mode == MODE_UNARY)
      fprintf(stderr,
              "%s: unary, %llu B payload, %llu connection%s x %llu in "
              "flight: %.1f calls/s, p50 %.1f us, p99 %.1f us, %llu errors "
              "over %.2f s\n",
              b->prog, (unsigned long long)o->payload,
              (unsigned long long)o->conns, o->conns == 1 ? "" : "s",
              (unsigned long long)o->outstanding, rate, p50, p99,
              (unsigned long long)b->errors, secs);
    else
      fprintf(stderr,
              "%s: connect, %llu chain%s: %.1f connections/s (new client, "
              "one call, close), p50 %.1f us, p99 %.1f us, %llu errors over "
              "%.2f s\n",
              b->prog, (unsigned long long)o->conns, o->conns == 1 ? "" : "s",
              rate, p50, p99, (unsigned long long)b->errors, secs);
  }
  if (o->mode == MODE_CONNECT) report_connect(b, &r);
  bench_report_uint(&r, "errors", b->errors);
  if (b->errors > 0)
    fprintf(stderr, "%s: first error: %s\n", b->prog, b->first_error);
  bench_report_print(&r, o->c.json);
}

static int parse(rpc_bench *b, int argc, char **argv) {
  rpc_opts *o = &b->o;
  bench_flag flags[BENCH_MAX_FLAGS];
  size_t n = bench_client_common_flags(flags, 0, &o->c);
  o->mode = MODE_UNARY;
  o->payload = 64;
  o->conns = 1;
  o->outstanding = 1;
  o->window = 0;
  o->unary_streams = 4;
  o->handshake = HS_RESUME;
  o->target = NULL;
  o->lb = 0;
  o->copy = 0;
  /* --target may stand for --port. */
  for (size_t i = 0; i < n; i++)
    if (strcmp(flags[i].name, "--port") == 0) flags[i].required = 0;
  const bench_flag own[] = {
      {"--mode", BENCH_FLAG_CHOICE, &o->mode, 0, 0, mode_names, "MODE",
       "unary, stream or connect", 0, 0},
      {"--payload", BENCH_FLAG_UINT, &o->payload, 0, BENCH_MAX_PAYLOAD, NULL,
       "BYTES", "bytes in each Msg", 0, 0},
      {"--conns", BENCH_FLAG_UINT, &o->conns, 1, MAX_CONNS, NULL, "N",
       "connections (connect: chains running side by side)", 0, 0},
      {"--outstanding", BENCH_FLAG_UINT, &o->outstanding, 1, MAX_OUTSTANDING,
       NULL, "N", "per connection: unary calls in flight, or EchoStream calls",
       0, 0},
      {"--window", BENCH_FLAG_UINT, &o->window, 0, MAX_OUTSTANDING, NULL, "N",
       "stream: unechoed messages per stream at most (0: as flow control "
       "allows)",
       0, 0},
      {"--unary-streams", BENCH_FLAG_UINT, &o->unary_streams, 1,
       MAX_UNARY_STREAMS, NULL, "N",
       "unary: QUIC streams each connection spreads its calls over", 0, 0},
      {"--handshake", BENCH_FLAG_CHOICE, &o->handshake, 0, 0, handshake_names,
       "HOW",
       "connect: resume (from the ticket cache, as clients do by default), "
       "full (no ticket) or 0rtt (resumed, the call in 0-RTT)",
       0, 0},
      {"--target", BENCH_FLAG_STR, &o->target, 0, 0, NULL, "LIST",
       "instead of --host and --port: a client target (h1:p1,h2:p2 or "
       "dns:name:port) whose servers share the calls; unary calls are then "
       "idempotent, so they survive a server going away",
       0, 0},
      {"--lb", BENCH_FLAG_CHOICE, &o->lb, 0, 0, lb_names, "POLICY",
       "how calls are spread over the target's servers: default, "
       "pick_first, round_robin or least_outstanding",
       0, 0},
      {"--copy", BENCH_FLAG_BOOL, &o->copy, 0, 0, NULL, NULL,
       "stream: send with qrpc_call_send(), which copies each message into "
       "the stream, instead of giving it with qrpc_call_send_msg()",
       0, 0},
  };
  for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++) flags[n++] = own[i];
  int rc = bench_args_parse(
      b->prog,
      "--port P|--target LIST --mode unary|stream|connect [--lb POLICY] "
      "[--payload B] [--conns N] "
      "[--outstanding N] [flags]",
      "Loads the Echo service of 'qrpc-bench server rpc'. Prints a summary\n"
      "on stderr and, as its last line on stdout, RESULT with ops_per_s,\n"
      "p50_us, p99_us, errors (unary); mb_per_s, msgs_per_s, errors\n"
      "(stream); conns_per_s, p50_us, p99_us, resumed_pct, early_pct,\n"
      "cpu_us_per_conn, errors (connect).",
      flags, n, argc, argv);
  if (rc != 0) return rc;
  if (o->c.port == 0 && o->target == NULL) {
    fprintf(stderr, "%s: --port or --target is required\n", b->prog);
    return 2;
  }
  const char *why = o->target ? qrpc_client_target_problem(
                                    o->target, o->lb ? lb_names[o->lb] : NULL)
                              : NULL;
  if (why) {
    fprintf(stderr, "%s: --target %s: %s\n", b->prog, o->target, why);
    return 2;
  }
  if (o->conns * o->outstanding > MAX_CONNS * 16) {
    fprintf(stderr,
            "%s: --conns %llu x --outstanding %llu is more than %u slots\n",
            b->prog, (unsigned long long)o->conns,
            (unsigned long long)o->outstanding, MAX_CONNS * 16);
    return 2;
  }
  return 0;
}

int bench_client_rpc(const char *prog, int argc, char **argv) {
  rpc_bench *b = calloc(1, sizeof(*b));
  if (b == NULL) {
    fprintf(stderr, "%s: out of memory\n", prog);
    return 1;
  }
  b->prog = prog;
  int rc = parse(b, argc, argv);
  if (rc != 0) {
    free(b);
    return rc == 1 ? 0 : 2;
  }
  bench_log_init(prog);
  bench_hist_reset(&b->lat);
  bench_client_opts(&b->o.c, &b->co);
  if (b->o.lb) b->co.lb_policy = lb_names[b->o.lb];
  qrpc_call_opts_default(&b->unary_opts);
  /* Echo may run twice: a balancing client sends it again when its server
   * goes away. */
  b->unary_opts.idempotent = b->o.target != NULL;
  int status = 1;
  uint64_t fds = b->o.conns + 64;
  /* Waiting for tickets (0rtt) needs timers finer than a millisecond. */
  int precise = b->o.mode == MODE_CONNECT && b->o.handshake == HS_0RTT;
  if (bench_client_env_init(&b->env, prog, &b->o.c, fds, precise) != 0)
    goto out;
  b->co.conn.via = b->env.shared;
  if (b->o.mode == MODE_CONNECT && b->o.handshake == HS_FULL &&
      (rc = qrpc_tls_config_set_resumption(b->env.tls, 0)) != 0) {
    fprintf(stderr, "%s: cannot turn resumption off: %s\n", prog,
            qrpc_strerror(rc));
    goto out;
  }
  bench_runner_callbacks cbs = {.on_measure = on_measure,
                                .on_progress = on_progress};
  double setup = SETUP_BASE_S + SETUP_PER_CONN_S * (double)b->o.conns;
  if (bench_runner_init(&b->run, prog, b->env.loop, b->o.c.warmup_s,
                        b->o.c.duration_s, setup, &cbs, b) != 0)
    goto out;
  if (encode_request(b) != 0 || allocate(b) != 0) {
    fprintf(stderr, "%s: out of memory\n", prog);
    goto out;
  }
  if (b->o.mode == MODE_CONNECT)
    start_load(b); /* each chain connects on its own */
  else if (open_conns(b) != 0)
    goto out;
  if (bench_runner_run(&b->run) != 0) goto out;
  b->cpu_at_end = bench_cpu_s();
  b->stopping = 1;
  report(b);
  status = 0;
out:
  teardown(b);
  free(b);
  return status;
}
