/*
 * Fragmented datagram channels over real loopback connections: a 40 KB
 * message arrives whole on the smallest path; through a lossy proxy only
 * whole messages are delivered and partial ones stay within the memory
 * bound; fragments that break the rules are dropped and counted, hold no
 * memory and leave the connection up for the messages that follow.
 */
#include <check.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certs.h"
#include "harness.h"
#include "lossy_proxy.h"
#include "qrpc/qrpc.h"
#include "util/varint.h"

#define CH_BIG 21
#define MAX_MSG (64 * 1024)
#define BIG_LEN (40 * 1024)

static qt_certs certs;
static qrpc_loop *loop;

typedef struct server_side {
  qrpc_server *srv;
  char addr[64];
  qrpc_peer *peer;
  int closed;
} server_side;

typedef struct client_side {
  qrpc_client *cli;
  int connected;
  int disconnected;
  uint64_t close_code;
  uint64_t delivered;
  uint64_t corrupt;
  size_t last_len;
} client_side;

static void peer_open(qrpc_peer *peer, void *ud) {
  ((server_side *)ud)->peer = peer;
}

static void peer_close(qrpc_peer *peer, void *ud) {
  server_side *s = ud;
  s->closed++;
  if (s->peer == peer) s->peer = NULL;
}

/* Each message is qt_dgram_fill() of its length, seeded by its Seq. */
static void on_big(qrpc_peer *peer, uint32_t ch, uint64_t seq, const uint8_t *p,
                   size_t n, void *ud) {
  client_side *c = ud;
  c->delivered++;
  c->last_len = n;
  if (n < 8 || !qt_dgram_check(p, n)) c->corrupt++;
}

static void on_connect(qrpc_client *cli, qrpc_peer *peer, void *ud) {
  ((client_side *)ud)->connected = 1;
}

static void on_disconnect(qrpc_client *cli, const qrpc_close_info *info,
                          void *ud) {
  client_side *c = ud;
  if (!c->disconnected++) c->close_code = info->code;
}

static void big_opts(qrpc_dgram_opts *o, int latest_only) {
  qrpc_dgram_opts_default(o);
  o->max_message = MAX_MSG;
  o->latest_only = latest_only;
}

static void server_start(server_side *s, const qrpc_dgram_opts *o,
                         qrpc_dgram_fn fn, void *ud) {
  memset(s, 0, sizeof(*s));
  qrpc_server_opts so;
  qrpc_server_opts_default(&so);
  so.on_peer_open = peer_open;
  so.on_peer_close = peer_close;
  so.user_data = s;
  qrpc_tls_config *tls = qt_server_tls(&certs);
  ck_assert_int_eq(qrpc_server_new(loop, "127.0.0.1:0", tls, &so, &s->srv), 0);
  qrpc_tls_config_free(tls);
  snprintf(s->addr, sizeof(s->addr), "127.0.0.1:%u", qrpc_server_port(s->srv));
  ck_assert_int_eq(qrpc_server_register_dgram(s->srv, CH_BIG, o, fn, ud), 0);
}

static void client_start(client_side *c, const char *addr,
                         const qrpc_dgram_opts *o) {
  memset(c, 0, sizeof(*c));
  qrpc_client_opts co;
  qrpc_client_opts_default(&co);
  co.server_name = "localhost";
  co.on_connect = on_connect;
  co.on_disconnect = on_disconnect;
  co.user_data = c;
  co.conn.max_udp_payload = 1200; /* the smallest path */
  qrpc_tls_config *tls = qt_client_tls(certs.ca_pem);
  ck_assert_int_eq(qrpc_client_new(loop, addr, tls, &co, &c->cli), 0);
  qrpc_tls_config_free(tls);
  ck_assert_int_eq(qrpc_client_register_dgram(c->cli, CH_BIG, o, on_big, c), 0);
}

static int connected(void *arg) {
  server_side *s = ((void **)arg)[0];
  client_side *c = ((void **)arg)[1];
  return c->connected && s->peer;
}

static void connect_pair(server_side *s, client_side *c) {
  void *pair[2] = {s, c};
  ck_assert(qt_run_until(loop, connected, pair, QT_WAIT_MS));
}

static void setup(void) { ck_assert_int_eq(qrpc_loop_new(NULL, &loop), 0); }

static void teardown(void) {
  qrpc_loop_free(loop);
  loop = NULL;
}

static int delivered_at_least(void *arg) {
  client_side *c = ((void **)arg)[0];
  uint64_t *n = ((void **)arg)[1];
  return c->delivered >= *n;
}

START_TEST(test_40k_message_arrives_intact) {
  server_side s;
  client_side c;
  qrpc_dgram_opts o;
  big_opts(&o, 0);
  server_start(&s, &o, NULL, NULL);
  client_start(&c, s.addr, &o);
  connect_pair(&s, &c);
  ck_assert_uint_eq(qrpc_peer_max_dgram_payload(s.peer, CH_BIG), MAX_MSG);
  uint8_t *msg = malloc(BIG_LEN);
  qt_dgram_fill(1, msg, BIG_LEN);
  /* Encode-once and the per-peer send take the same path. */
  qrpc_dgram *d;
  ck_assert_int_eq(qrpc_server_dgram_encode(s.srv, CH_BIG, msg, BIG_LEN, &d),
                   0);
  ck_assert_int_eq(qrpc_peer_send_encoded(s.peer, d), 0);
  qrpc_dgram_free(d);
  ck_assert_int_eq(qrpc_peer_send_dgram(s.peer, CH_BIG, msg, BIG_LEN), 0);
  uint64_t want = 2;
  void *arg[2] = {&c, &want};
  ck_assert(qt_run_until(loop, delivered_at_least, arg, QT_WAIT_MS));
  ck_assert_uint_eq(c.last_len, BIG_LEN);
  ck_assert_uint_eq(c.corrupt, 0);
  /* Over the limit: refused at the call. */
  uint8_t *huge = calloc(1, MAX_MSG + 1);
  ck_assert_int_eq(qrpc_peer_send_dgram(s.peer, CH_BIG, huge, MAX_MSG + 1),
                   QRPC_EMSGSIZE);
  free(huge);
  qrpc_dgram_stats st;
  qrpc_peer_dgram_stats(s.peer, CH_BIG, &st);
  /* 1140-byte datagrams: 37 fragments per 40 KB message. */
  ck_assert_uint_ge(st.sent, 2 * 36);
  qrpc_peer *cp = qrpc_client_peer(c.cli);
  qrpc_peer_dgram_stats(cp, CH_BIG, &st);
  ck_assert_uint_eq(st.received, 2);
  ck_assert_uint_eq(st.delivered, 2);
  ck_assert_uint_ge(st.frags_received, 2 * 36);
  ck_assert_uint_eq(st.reassembly_held, 0);
  free(msg);
  qrpc_client_free(c.cli);
  qrpc_server_free(s.srv);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

typedef struct lossy_run {
  server_side *s;
  int sent, total;
  uint64_t max_held;
  client_side *c;
} lossy_run;

static void lossy_tick(evutil_socket_t fd, short what, void *arg) {
  lossy_run *r = arg;
  if (r->sent >= r->total || !r->s->peer) return;
  size_t len = 8 * 1024 + (size_t)(r->sent % 16) * 1024;
  uint8_t *msg = malloc(len);
  qt_dgram_fill((uint32_t)r->sent, msg, len);
  if (qrpc_peer_send_dgram(r->s->peer, CH_BIG, msg, len) == 0) r->sent++;
  free(msg);
  qrpc_dgram_stats st;
  qrpc_peer_dgram_stats(qrpc_client_peer(r->c->cli), CH_BIG, &st);
  if (st.reassembly_held > r->max_held) r->max_held = st.reassembly_held;
}

static int lossy_done(void *arg) {
  lossy_run *r = arg;
  return r->sent >= r->total;
}

static void run_lossy(int latest_only) {
  server_side s;
  client_side c;
  qrpc_dgram_opts o;
  big_opts(&o, latest_only);
  o.reassembly_bytes = 2 * (MAX_MSG + MAX_MSG / 8 + 64);
  o.reassembly_ms = 200;
  server_start(&s, &o, NULL, NULL);
  qt_proxy *px;
  ck_assert_int_eq(qt_proxy_new(qrpc_loop_base(loop), s.addr, 7, &px), 0);
  client_start(&c, qt_proxy_addr(px), &o);
  connect_pair(&s, &c);
  qt_link_conf lc = {.loss = 0.05, .reorder = 0.05, .reorder_ms = 5};
  qt_proxy_set(px, QT_DOWN, &lc);
  lossy_run r = {.s = &s, .c = &c, .total = 200};
  struct event *ev =
      event_new(qrpc_loop_base(loop), -1, EV_PERSIST, lossy_tick, &r);
  struct timeval tv = {0, 5000};
  event_add(ev, &tv);
  ck_assert(qt_run_until(loop, lossy_done, &r, 30000));
  qt_run_for(loop, 300);
  event_free(ev);
  qrpc_dgram_stats st;
  qrpc_peer_dgram_stats(qrpc_client_peer(c.cli), CH_BIG, &st);
  fprintf(stderr,
          "fragment loss (latest_only=%d): sent 200, delivered %llu, "
          "incomplete %llu, stale %llu, peak held %llu of %zu\n",
          latest_only, (unsigned long long)st.delivered,
          (unsigned long long)st.dropped_incomplete,
          (unsigned long long)st.dropped_stale,
          (unsigned long long)st.reassembly_peak, o.reassembly_bytes);
  ck_assert_uint_eq(c.corrupt, 0);
  ck_assert_uint_gt(c.delivered, 0);
  ck_assert_uint_lt(c.delivered, 200); /* 5% loss of ~10-25 datagrams each */
  ck_assert_uint_gt(st.dropped_incomplete, 0);
  ck_assert_uint_le(st.reassembly_peak, o.reassembly_bytes);
  ck_assert_uint_le(r.max_held, o.reassembly_bytes);
  ck_assert_uint_eq(c.disconnected, 0);
  qrpc_client_free(c.cli);
  qrpc_server_free(s.srv);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
  qt_proxy_free(px);
}

START_TEST(test_loss_delivers_only_whole_messages) { run_lossy(0); }
END_TEST

START_TEST(test_loss_latest_only_bounded) { run_lossy(1); }
END_TEST

/* ---- Hostile fragment headers --------------------------------------- */

typedef struct bad_case {
  const char *name;
  uint8_t frags[2][16]; /* payloads after Channel and Seq */
  size_t lens[2];
} bad_case;

typedef struct srv_got {
  int n;
  size_t last_len;
  int corrupt;
} srv_got;

static void srv_big(qrpc_peer *peer, uint32_t ch, uint64_t seq,
                    const uint8_t *p, size_t n, void *ud) {
  srv_got *g = ud;
  g->n++;
  g->last_len = n;
  if (n < 8 || !qt_dgram_check(p, n)) g->corrupt++;
}

typedef struct invalid_wait {
  server_side *s;
  uint64_t want;
} invalid_wait;

static int invalid_reached(void *arg) {
  invalid_wait *w = arg;
  qrpc_dgram_stats st;
  qrpc_peer_dgram_stats(w->s->peer, CH_BIG, &st);
  return st.frags_invalid >= w->want;
}

START_TEST(test_hostile_fragment_headers) {
  /* Total Length, Offset, bytes. 0x80 0x10 0x00 0x01 is 1 MiB + 1, over
   * max_message. In the last two cases the first fragment is good and the
   * second contradicts it: one bad datagram per case. */
  static const bad_case cases[] = {
      {"cut off", {{0x05}}, {1}},
      {"past the end", {{0x04, 0x02, 1, 2, 3}}, {5}},
      {"empty fragment", {{0x04, 0x00}}, {2}},
      {"over max_message", {{0x80, 0x10, 0x00, 0x01, 0x00, 7}}, {6}},
      {"overlap", {{0x08, 0x00, 1, 2, 3}, {0x08, 0x02, 3, 4}}, {5, 4}},
      {"lengths disagree", {{0x08, 0x00, 1, 2}, {0x09, 0x02, 3, 4}}, {4, 4}},
  };
  server_side s;
  qrpc_dgram_opts o;
  big_opts(&o, 0);
  o.max_message = 1024 * 1024;
  srv_got got = {0};
  server_start(&s, &o, srv_big, &got);
  /* One client sends every bad datagram raw on the channel, then a good
   * message through the channel on the same connection. */
  client_side c;
  big_opts(&o, 0);
  client_start(&c, s.addr, &o);
  connect_pair(&s, &c);
  qrpc_conn *conn = qrpc_peer_conn(qrpc_client_peer(c.cli));
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    /* Channel and Seq by hand: fragments of one message share a Seq, and
     * each case has its own (40 + i), far from the channel's own Seqs. */
    for (int f = 0; f < 2 && cases[i].lens[f]; f++) {
      uint8_t dg[32] = {CH_BIG, (uint8_t)(40 + i)};
      memcpy(dg + 2, cases[i].frags[f], cases[i].lens[f]);
      ck_assert_int_eq(qrpc_conn_send_datagram(conn, dg, 2 + cases[i].lens[f]),
                       0);
    }
    invalid_wait w = {&s, i + 1};
    ck_assert_msg(qt_run_until(loop, invalid_reached, &w, QT_WAIT_MS),
                  "%s: not counted", cases[i].name);
    qrpc_dgram_stats st;
    qrpc_peer_dgram_stats(s.peer, CH_BIG, &st);
    ck_assert_msg(st.frags_invalid == i + 1, "%s: frags_invalid %llu",
                  cases[i].name, (unsigned long long)st.frags_invalid);
    /* Nothing held: never taken, or the contradicted partial dropped. */
    ck_assert_msg(st.reassembly_held == 0, "%s: %llu bytes held", cases[i].name,
                  (unsigned long long)st.reassembly_held);
    ck_assert_msg(c.disconnected == 0 && s.closed == 0 && s.peer,
                  "%s: connection closed", cases[i].name);
  }
  ck_assert_int_eq(got.n, 0);
  /* The same connection still carries a good 40 KB message. */
  uint8_t *msg = malloc(BIG_LEN);
  qt_dgram_fill(3, msg, BIG_LEN);
  ck_assert_int_eq(
      qrpc_peer_send_dgram(qrpc_client_peer(c.cli), CH_BIG, msg, BIG_LEN), 0);
  free(msg);
  ck_assert(qt_run_until_count(loop, &got.n, 1, QT_WAIT_MS));
  ck_assert_uint_eq(got.last_len, BIG_LEN);
  ck_assert_int_eq(got.corrupt, 0);
  qrpc_dgram_stats st;
  qrpc_peer_dgram_stats(s.peer, CH_BIG, &st);
  ck_assert_uint_eq(st.frags_invalid, 6);
  ck_assert_uint_eq(st.delivered, 1);
  ck_assert_int_eq(c.disconnected, 0);
  ck_assert_int_eq(s.closed, 0);
  qrpc_server_dgram_stats(s.srv, &st);
  ck_assert_uint_eq(st.frags_invalid, 6);
  qrpc_client_free(c.cli);
  qrpc_server_free(s.srv);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

START_TEST(test_bad_options_refused) {
  server_side s;
  qrpc_dgram_opts o;
  big_opts(&o, 0);
  server_start(&s, &o, NULL, NULL);
  o.max_message = QRPC_DGRAM_MAX_MESSAGE + 1;
  ck_assert_int_eq(qrpc_server_register_dgram(s.srv, 30, &o, NULL, NULL),
                   QRPC_EINVAL);
  big_opts(&o, 0);
  o.fragment_size = 20;
  ck_assert_int_eq(qrpc_server_register_dgram(s.srv, 30, &o, NULL, NULL),
                   QRPC_EINVAL);
  big_opts(&o, 0);
  o.reassembly_bytes = MAX_MSG;
  ck_assert_int_eq(qrpc_server_register_dgram(s.srv, 30, &o, NULL, NULL),
                   QRPC_EINVAL);
  qrpc_server_free(s.srv);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

static Suite *suite(void) {
  Suite *su = suite_create("dgram_fragment");
  TCase *tc = tcase_create("fragment");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_40k_message_arrives_intact);
  tcase_add_test(tc, test_loss_delivers_only_whole_messages);
  tcase_add_test(tc, test_loss_latest_only_bounded);
  tcase_add_test(tc, test_hostile_fragment_headers);
  tcase_add_test(tc, test_bad_options_refused);
  suite_add_tcase(su, tc);
  return su;
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
