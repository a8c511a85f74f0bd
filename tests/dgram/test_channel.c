/*
 * Datagram channels over real connections: the game pattern (many clients,
 * a ticking server broadcasting one encoding of the state), latest-only,
 * age limits, size and negotiation refusals, unknown channels, counters.
 */
#include <check.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "certs.h"
#include "harness.h"
#include "qrpc/qrpc.h"
#include "util/varint.h"

#define CH_INPUT 11
#define CH_STATE 12
#define NCLIENTS 100
#define TICK_MS 16 /* about 60 Hz */
#define RUN_MS 2000
#define STATE_LEN 100

static qt_certs certs;
static qrpc_loop *loop;

/* ---- Fixture: one server, its peers, and clients ------------------------ */

typedef struct server_side {
  qrpc_server *srv;
  char addr[64];
  qrpc_peer *peers[NCLIENTS + 1];
  int npeers;
  uint64_t inputs;
} server_side;

typedef struct client_side {
  qrpc_client *cli;
  int connected;
  uint64_t states;
  uint64_t last_seq;
  int out_of_order;
  uint8_t last[STATE_LEN];
  size_t last_len;
} client_side;

static void peer_open(qrpc_peer *peer, void *ud) {
  server_side *s = ud;
  if (s->npeers < NCLIENTS + 1) s->peers[s->npeers++] = peer;
}

static void peer_close(qrpc_peer *peer, void *ud) {
  server_side *s = ud;
  for (int i = 0; i < s->npeers; i++) {
    if (s->peers[i] == peer) {
      s->peers[i] = s->peers[--s->npeers];
      return;
    }
  }
}

static void on_input(qrpc_peer *peer, uint32_t ch, uint64_t seq,
                     const uint8_t *p, size_t n, void *ud) {
  ((server_side *)ud)->inputs++;
}

static void on_state(qrpc_peer *peer, uint32_t ch, uint64_t seq,
                     const uint8_t *p, size_t n, void *ud) {
  client_side *c = ud;
  if (seq <= c->last_seq) c->out_of_order++;
  c->last_seq = seq;
  c->states++;
  c->last_len = n < STATE_LEN ? n : STATE_LEN;
  memcpy(c->last, p, c->last_len);
}

static void on_connect(qrpc_client *cli, qrpc_peer *peer, void *ud) {
  ((client_side *)ud)->connected = 1;
}

static void server_start(server_side *s, const qrpc_dgram_opts *state_opts) {
  memset(s, 0, sizeof(*s));
  qrpc_server_opts o;
  qrpc_server_opts_default(&o);
  o.on_peer_open = peer_open;
  o.on_peer_close = peer_close;
  o.user_data = s;
  qrpc_tls_config *tls = qt_server_tls(&certs);
  ck_assert_int_eq(qrpc_server_new(loop, "127.0.0.1:0", tls, &o, &s->srv), 0);
  qrpc_tls_config_free(tls);
  snprintf(s->addr, sizeof(s->addr), "127.0.0.1:%u", qrpc_server_port(s->srv));
  ck_assert_int_eq(
      qrpc_server_register_dgram(s->srv, CH_INPUT, NULL, on_input, s), 0);
  ck_assert_int_eq(
      qrpc_server_register_dgram(s->srv, CH_STATE, state_opts, NULL, NULL), 0);
}

static void client_start(client_side *c, const char *addr,
                         const qrpc_dgram_opts *opts, int enable_dgrams) {
  memset(c, 0, sizeof(*c));
  qrpc_client_opts o;
  qrpc_client_opts_default(&o);
  o.server_name = "localhost";
  o.on_connect = on_connect;
  o.user_data = c;
  o.conn.enable_datagrams = enable_dgrams;
  qrpc_tls_config *tls = qt_client_tls(certs.ca_pem);
  ck_assert_int_eq(qrpc_client_new(loop, addr, tls, &o, &c->cli), 0);
  qrpc_tls_config_free(tls);
  ck_assert_int_eq(
      qrpc_client_register_dgram(c->cli, CH_STATE, opts, on_state, c), 0);
}

typedef struct wait_all {
  client_side *c;
  int n;
} wait_all;

static int all_connected(void *arg) {
  wait_all *w = arg;
  for (int i = 0; i < w->n; i++)
    if (!w->c[i].connected) return 0;
  return 1;
}

static void teardown_all(server_side *s, client_side *c, int n) {
  for (int i = 0; i < n; i++) qrpc_client_free(c[i].cli);
  qrpc_server_free(s->srv);
  /* Each connection lingers for its closing period (three PTOs), which a
   * sanitizer build on a loaded machine stretches: the bound grows with
   * the number of connections, as a ceiling on a hang. */
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS + (uint64_t)n * 150));
}

static void setup(void) {
  ck_assert_int_eq(qrpc_loop_new(NULL, &loop), 0);
}

static void teardown(void) {
  qrpc_loop_free(loop);
  loop = NULL;
}

/* ---- The game pattern ---------------------------------------------------- */

typedef struct game {
  server_side *s;
  client_side *c;
  int ticks;
} game;

static void tick_cb(evutil_socket_t fd, short what, void *arg) {
  game *g = arg;
  uint8_t state[STATE_LEN];
  memset(state, (int)(g->ticks & 0xff), sizeof(state));
  /* The server encodes the world once and shares the bytes. */
  qrpc_dgram *d;
  ck_assert_int_eq(
      qrpc_server_dgram_encode(g->s->srv, CH_STATE, state, sizeof(state), &d),
      0);
  for (int i = 0; i < g->s->npeers; i++)
    qrpc_peer_send_encoded(g->s->peers[i], d);
  qrpc_dgram_free(d);
  for (int i = 0; i < NCLIENTS; i++) {
    qrpc_peer *p = qrpc_client_peer(g->c[i].cli);
    if (p) qrpc_peer_send_dgram(p, CH_INPUT, state, 32);
  }
  g->ticks++;
}

/* The server's stats for the connection of client c. */
static void server_stats_for(server_side *s, client_side *c,
                             qrpc_dgram_stats *ss) {
  memset(ss, 0, sizeof(*ss));
  for (int k = 0; k < s->npeers; k++) {
    qrpc_conn *pc = qrpc_peer_conn(s->peers[k]);
    struct sockaddr_storage a, b;
    socklen_t al, bl;
    qrpc_conn_remote_addr(pc, &a, &al);
    qrpc_conn_local_addr(qrpc_peer_conn(qrpc_client_peer(c->cli)), &b, &bl);
    if (al == bl && memcmp(&a, &b, al) == 0)
      qrpc_peer_dgram_stats(s->peers[k], CH_STATE, ss);
  }
}

typedef struct settled {
  server_side *s;
  client_side *c;
} settled;

/* Every datagram the server queued has been received, declared lost or
 * dropped for age: none is still queued or in flight. */
static int all_accounted(void *arg) {
  settled *st = arg;
  for (int i = 0; i < NCLIENTS; i++) {
    qrpc_dgram_stats rs, ss;
    qrpc_peer_dgram_stats(qrpc_client_peer(st->c[i].cli), CH_STATE, &rs);
    server_stats_for(st->s, &st->c[i], &ss);
    if (rs.received + ss.lost + ss.dropped_aged < ss.sent) return 0;
  }
  return 1;
}

START_TEST(test_hundred_clients_at_60hz) {
  static server_side s;
  static client_side c[NCLIENTS];
  qrpc_dgram_opts lo;
  qrpc_dgram_opts_default(&lo);
  lo.latest_only = 1;
  server_start(&s, NULL);
  for (int i = 0; i < NCLIENTS; i++) client_start(&c[i], s.addr, &lo, 1);
  wait_all w = {c, NCLIENTS};
  ck_assert(qt_run_until(loop, all_connected, &w, 3 * QT_WAIT_MS));
  /* A client is connected one flight before the server sees its Finished. */
  ck_assert(qt_run_until_count(loop, &s.npeers, NCLIENTS, QT_WAIT_MS));

  game g = {&s, c, 0};
  struct event *tick =
      event_new(qrpc_loop_base(loop), -1, EV_PERSIST, tick_cb, &g);
  struct timeval tv = {0, TICK_MS * 1000};
  event_add(tick, &tv);
  qt_run_for(loop, RUN_MS);
  event_free(tick);
  /* Let the last datagrams land, or be declared lost: on a loaded
   * machine some still wait in queues when the ticks stop. */
  settled st = {&s, c};
  qt_run_until(loop, all_accounted, &st, 5000);

  uint64_t total = 0;
  for (int i = 0; i < NCLIENTS; i++) {
    ck_assert_msg(c[i].states > 0, "client %d received no state", i);
    ck_assert_int_eq(c[i].out_of_order, 0); /* latest-only */
    ck_assert_uint_eq(c[i].last_len, STATE_LEN);
    total += c[i].states;
    /* Counters add up on the receiving side of every connection. */
    qrpc_dgram_stats rs;
    qrpc_peer_dgram_stats(qrpc_client_peer(c[i].cli), CH_STATE, &rs);
    ck_assert_uint_eq(rs.received, rs.delivered + rs.dropped_stale);
    ck_assert_uint_eq(rs.delivered, c[i].states);
  }
  /* And across each connection: what the server queued was received,
   * declared lost, or dropped for age; nothing vanished unaccounted. */
  uint64_t sent = 0;
  for (int i = 0; i < NCLIENTS; i++) {
    qrpc_dgram_stats rs, ss;
    qrpc_peer_dgram_stats(qrpc_client_peer(c[i].cli), CH_STATE, &rs);
    server_stats_for(&s, &c[i], &ss);
    ck_assert_uint_gt(ss.sent, 0);
    ck_assert_uint_le(rs.received, ss.sent);
    ck_assert_uint_ge(rs.received + ss.lost + ss.dropped_aged, ss.sent);
    sent += ss.sent;
  }
  fprintf(stderr, "game: %d ticks, %llu states delivered to %d clients "
                  "(%llu sent), %llu inputs at the server\n",
          g.ticks, (unsigned long long)total, NCLIENTS,
          (unsigned long long)sent, (unsigned long long)s.inputs);
  ck_assert_uint_gt(s.inputs, 0);
  teardown_all(&s, c, NCLIENTS);
}
END_TEST

/* ---- Latest-only, with reordering injected ------------------------------- */

/* Sends a hand-built datagram (Channel, Seq, payload) on a raw connection,
 * bypassing the sender's own counter, to reorder on purpose. */
static void send_raw(qrpc_conn *c, uint32_t ch, uint64_t seq) {
  uint8_t buf[32];
  size_t n = qrpci_varint_put(buf, ch);
  n += qrpci_varint_put(buf + n, seq);
  buf[n++] = (uint8_t)seq;
  ck_assert_int_eq(qrpc_conn_send_datagram(c, buf, n), 0);
}

static void run_reorder(int latest_only, uint64_t *delivered,
                        qrpc_dgram_stats *st) {
  server_side s;
  client_side c;
  qrpc_dgram_opts o;
  qrpc_dgram_opts_default(&o);
  o.latest_only = latest_only;
  server_start(&s, NULL);
  client_start(&c, s.addr, &o, 1);
  wait_all w = {&c, 1};
  ck_assert(qt_run_until(loop, all_connected, &w, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &s.npeers, 1, QT_WAIT_MS));
  static const uint64_t order[] = {5, 3, 6, 6, 1, 9, 8};
  for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
    send_raw(qrpc_peer_conn(s.peers[0]), CH_STATE, order[i]);
  /* A channel the client never registered: counted, not fatal. */
  send_raw(qrpc_peer_conn(s.peers[0]), 999, 1);
  qt_run_for(loop, 300);
  *delivered = c.states;
  qrpc_peer_dgram_stats(qrpc_client_peer(c.cli), CH_STATE, st);
  ck_assert_int_eq(qrpc_conn_is_established(qrpc_peer_conn(s.peers[0])), 1);
  teardown_all(&s, &c, 1);
}

START_TEST(test_latest_only_drops_reordered) {
  uint64_t delivered;
  qrpc_dgram_stats st;
  run_reorder(1, &delivered, &st);
  /* 5, 6, 9 pass; 3, 6 (again), 1, 8 are stale. Loopback does not lose
   * these few, but the counters must agree whatever arrived. */
  ck_assert_uint_eq(st.received, st.delivered + st.dropped_stale);
  ck_assert_uint_eq(st.received, 7);
  ck_assert_uint_eq(st.delivered, 3);
  ck_assert_uint_eq(st.dropped_stale, 4);
  ck_assert_uint_eq(delivered, 3);
  ck_assert_uint_eq(st.dropped_unknown, 1);
}
END_TEST

START_TEST(test_without_latest_only_all_delivered) {
  uint64_t delivered;
  qrpc_dgram_stats st;
  run_reorder(0, &delivered, &st);
  ck_assert_uint_eq(st.received, 7);
  ck_assert_uint_eq(st.delivered, 7);
  ck_assert_uint_eq(st.dropped_stale, 0);
}
END_TEST

/* ---- Undecodable payloads, as the application reports them -------------- */

START_TEST(test_count_undecodable_is_bounded) {
  server_side s;
  client_side c;
  server_start(&s, NULL);
  client_start(&c, s.addr, NULL, 1);
  wait_all w = {&c, 1};
  ck_assert(qt_run_until(loop, all_connected, &w, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &s.npeers, 1, QT_WAIT_MS));
  for (uint64_t seq = 1; seq <= 3; seq++)
    send_raw(qrpc_peer_conn(s.peers[0]), CH_STATE, seq);
  qt_run_for(loop, 200);
  ck_assert_uint_eq(c.states, 3);
  qrpc_peer *p = qrpc_client_peer(c.cli);
  /* More reports than deliveries, and reports for a channel that
   * delivered nothing, are ignored. */
  for (int i = 0; i < 5; i++) qrpc_peer_dgram_count_undecodable(p, CH_STATE);
  qrpc_peer_dgram_count_undecodable(p, CH_INPUT);
  qrpc_peer_dgram_count_undecodable(NULL, CH_STATE);
  qrpc_dgram_stats st;
  qrpc_peer_dgram_stats(p, CH_STATE, &st);
  ck_assert_uint_eq(st.delivered, 3);
  ck_assert_uint_eq(st.dropped_undecodable, 3);
  ck_assert_uint_eq(st.received, st.delivered + st.dropped_stale);
  qrpc_peer_dgram_stats(p, CH_INPUT, &st);
  ck_assert_uint_eq(st.dropped_undecodable, 0);
  teardown_all(&s, &c, 1);
}
END_TEST

/* ---- Refusals ------------------------------------------------------------- */

START_TEST(test_too_large_and_queue_full_are_distinct) {
  server_side s;
  client_side c;
  server_start(&s, NULL);
  client_start(&c, s.addr, NULL, 1);
  wait_all w = {&c, 1};
  ck_assert(qt_run_until(loop, all_connected, &w, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &s.npeers, 1, QT_WAIT_MS));
  qrpc_peer *p = s.peers[0];
  size_t max = qrpc_peer_max_dgram_payload(p, CH_STATE);
  ck_assert_uint_gt(max, 1000);
  uint8_t *big = calloc(1, max + 64);
  ck_assert_int_eq(qrpc_peer_send_dgram(p, CH_STATE, big, max), 0);
  ck_assert_int_eq(qrpc_peer_send_dgram(p, CH_STATE, big, max + 64),
                   QRPC_EMSGSIZE);
  /* Fill the connection's queue (1024 by default) within one callback. */
  int rv = 0, sent = 1;
  while ((rv = qrpc_peer_send_dgram(p, CH_STATE, big, 10)) == 0) sent++;
  ck_assert_int_eq(rv, QRPC_ENOBUFS);
  qrpc_dgram_stats st;
  qrpc_peer_dgram_stats(p, CH_STATE, &st);
  ck_assert_uint_eq(st.sent, (uint64_t)sent);
  ck_assert_uint_eq(st.refused_too_large, 1);
  ck_assert_uint_eq(st.refused_queue_full, 1);
  free(big);
  teardown_all(&s, &c, 1);
}
END_TEST

START_TEST(test_peer_without_datagrams_refused) {
  server_side s;
  client_side c;
  server_start(&s, NULL);
  client_start(&c, s.addr, NULL, 0);
  wait_all w = {&c, 1};
  ck_assert(qt_run_until(loop, all_connected, &w, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &s.npeers, 1, QT_WAIT_MS));
  ck_assert_uint_eq(qrpc_peer_max_dgram_payload(s.peers[0], CH_STATE), 0);
  ck_assert_int_eq(qrpc_peer_send_dgram(s.peers[0], CH_STATE, "x", 1),
                   QRPC_ENODGRAM);
  teardown_all(&s, &c, 1);
}
END_TEST

/* Every datagram function of a peer answers a NULL peer, or a NULL
 * argument, the same documented way instead of crashing. */
START_TEST(test_null_arguments) {
  server_side s;
  client_side c;
  server_start(&s, NULL);
  client_start(&c, s.addr, NULL, 1);
  wait_all w = {&c, 1};
  ck_assert(qt_run_until(loop, all_connected, &w, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &s.npeers, 1, QT_WAIT_MS));
  qrpc_peer *p = s.peers[0];
  ck_assert_int_eq(qrpc_peer_send_dgram(NULL, CH_STATE, "x", 1), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_peer_send_dgram(p, CH_STATE, NULL, 1), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_peer_send_dgram_msg(NULL, CH_STATE, NULL),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_peer_send_dgram_msg(p, CH_STATE, NULL), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_peer_send_encoded(p, NULL), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_peer_send_encoded(NULL, NULL), QRPC_EINVAL);
  ck_assert_uint_eq(qrpc_peer_max_dgram_payload(NULL, CH_STATE), 0);
  qrpc_dgram *d = NULL;
  ck_assert_int_eq(qrpc_server_dgram_encode(NULL, CH_STATE, "x", 1, &d),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_server_dgram_encode(s.srv, CH_STATE, "x", 1, NULL),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_server_dgram_encode_msg(s.srv, CH_STATE, NULL, &d),
                   QRPC_EINVAL);
  ck_assert_ptr_null(d);
  qrpc_dgram_free(NULL);
  qrpc_dgram_stats st;
  memset(&st, 0xff, sizeof(st));
  qrpc_peer_dgram_stats(NULL, CH_STATE, &st);
  ck_assert_uint_eq(st.sent, 0);
  ck_assert_uint_eq(st.dropped_malformed, 0);
  qrpc_peer_dgram_stats(p, CH_STATE, NULL);
  /* None of the refusals above reached the counters. */
  qrpc_peer_dgram_stats(p, CH_STATE, &st);
  ck_assert_uint_eq(st.sent, 0);
  teardown_all(&s, &c, 1);
}
END_TEST

/* ---- Age limit ------------------------------------------------------------ */

START_TEST(test_max_age_drops_stale_state) {
  server_side s;
  client_side c;
  qrpc_dgram_opts aged;
  qrpc_dgram_opts_default(&aged);
  aged.max_age_ms = 1;
  server_start(&s, &aged);
  client_start(&c, s.addr, NULL, 1);
  wait_all w = {&c, 1};
  ck_assert(qt_run_until(loop, all_connected, &w, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &s.npeers, 1, QT_WAIT_MS));
  /* Queued now, but the loop only gets to send them after they expired. */
  for (int i = 0; i < 20; i++)
    ck_assert_int_eq(qrpc_peer_send_dgram(s.peers[0], CH_STATE, "state", 5),
                     0);
  usleep(20 * 1000);
  qt_run_for(loop, 200);
  qrpc_dgram_stats st;
  qrpc_peer_dgram_stats(s.peers[0], CH_STATE, &st);
  ck_assert_uint_eq(st.sent, 20);
  ck_assert_uint_eq(st.dropped_aged, 20);
  ck_assert_uint_eq(c.states, 0);
  teardown_all(&s, &c, 1);
}
END_TEST

/* ---- Reliable calls keep flowing under a datagram flood ------------------- */

#define ECHO_METHOD 77
#define MIX_CALLS 1000

typedef struct mix {
  qrpc_client *cli;
  qrpc_peer *srv_peer;
  int calls_done, calls_ok, started;
  uint64_t flood_sent, flood_refused;
  int flooding;
} mix;

static void echo_handler(qrpc_req *req, const uint8_t *p, size_t n, void *ud) {
  qrpc_req_reply(req, p, n);
}

static void mix_call(mix *m);

static void mix_done(qrpc_call *call, const qrpc_result *r, void *ud) {
  mix *m = ud;
  m->calls_done++;
  if (r->status == QRPC_STATUS_OK && r->len == sizeof(int)) m->calls_ok++;
  if (m->started < MIX_CALLS) mix_call(m);
}

static void mix_call(mix *m) {
  static const qrpc_call_callbacks cb = {.on_done = mix_done};
  qrpc_call_opts o;
  qrpc_call_opts_default(&o);
  o.timeout_ms = 5000;
  m->started++;
  ck_assert_int_eq(qrpc_client_call(m->cli, ECHO_METHOD, &m->started,
                                    sizeof(int), &o, &cb, m, NULL),
                   0);
}

static void flood_cb(evutil_socket_t fd, short what, void *arg) {
  mix *m = arg;
  uint8_t state[200];
  memset(state, 0x5a, sizeof(state));
  /* Each turn, fill whatever room the datagram queue has. */
  int rv;
  while ((rv = qrpc_peer_send_dgram(m->srv_peer, CH_STATE, state,
                                    sizeof(state))) == 0)
    m->flood_sent++;
  ck_assert_int_eq(rv, QRPC_ENOBUFS);
  m->flood_refused++;
}

START_TEST(test_calls_flow_during_datagram_flood) {
  server_side s;
  client_side c;
  server_start(&s, NULL);
  ck_assert_int_eq(qrpc_server_register(s.srv, ECHO_METHOD, QRPC_SHAPE_UNARY,
                                        echo_handler, NULL),
                   0);
  client_start(&c, s.addr, NULL, 1);
  wait_all w = {&c, 1};
  ck_assert(qt_run_until(loop, all_connected, &w, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &s.npeers, 1, QT_WAIT_MS));
  mix m;
  memset(&m, 0, sizeof(m));
  m.cli = c.cli;
  m.srv_peer = s.peers[0];
  struct event *flood =
      event_new(qrpc_loop_base(loop), -1, EV_PERSIST, flood_cb, &m);
  struct timeval tv = {0, 1000};
  event_add(flood, &tv);
  for (int i = 0; i < 8; i++) mix_call(&m);
  ck_assert(qt_run_until_count(loop, &m.calls_done, MIX_CALLS, 4 * QT_WAIT_MS));
  event_free(flood);
  ck_assert_int_eq(m.calls_ok, MIX_CALLS);
  /* The queue was found full on several turns while the calls ran. */
  ck_assert_uint_ge(m.flood_refused, 2);
  ck_assert_uint_gt(m.flood_sent, 1024);
  ck_assert_uint_gt(c.states, 0);
  fprintf(stderr, "flood: %llu datagrams queued, %llu delivered, during %d "
                  "calls\n",
          (unsigned long long)m.flood_sent, (unsigned long long)c.states,
          MIX_CALLS);
  teardown_all(&s, &c, 1);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("dgram");
  TCase *tc = tcase_create("channel");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_hundred_clients_at_60hz);
  tcase_add_test(tc, test_latest_only_drops_reordered);
  tcase_add_test(tc, test_without_latest_only_all_delivered);
  tcase_add_test(tc, test_count_undecodable_is_bounded);
  tcase_add_test(tc, test_too_large_and_queue_full_are_distinct);
  tcase_add_test(tc, test_peer_without_datagrams_refused);
  tcase_add_test(tc, test_null_arguments);
  tcase_add_test(tc, test_max_age_drops_stale_state);
  tcase_add_test(tc, test_calls_flow_during_datagram_flood);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  if (qt_certs_generate(&certs) != 0) return 1;
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  qt_certs_free(&certs);
  return failed ? 1 : 0;
}
