/*
 * NAT rebinding in the middle of calls: a qrpc_client talks to a
 * qrpc_server through the UDP proxy (lossy_proxy.h), and the proxy moves
 * the client's flow to a new upstream port, as a NAT does when its mapping
 * changes, while unary calls, streams and datagram channels are in flight.
 * The client knows nothing of it. The server must follow the client to its
 * new address on the same connection (no reconnect), and everything in
 * flight must complete, intact and in order.
 */
#include <check.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fault_fixtures.h"
#include "harness.h"
#include "lossy_proxy.h"
#include "qrpc/qrpc.h"
#include "rpc_harness.h"

/* Unary: held by a qt_holder until the test answers, so the calls are in
 * flight across the rebinding and the answers leave after it. */
#define M_HELD 20
/* Bidi: echoes every item, and ends once the caller has. */
#define M_BIDI 21
/* Server streaming: the request is a 4-byte count n; one item
 * (qf_item_fill(i)) leaves every TICK_MS, then END. */
#define M_TICKS 22
/* Datagram channels: client to server, and server to client. */
#define CH_UP 30
#define CH_DOWN 31

#define TICK_MS 5
#define HELD_CALLS 8
#define STREAM_ITEMS 200
/* Items delivered before the rebinding, and datagrams each way after it:
 * enough to show a stream or channel that carries on, far fewer than it
 * carries in QT_WAIT_MS. */
#define ITEMS_BEFORE 50
#define DGRAMS_AFTER 50
#define DGRAM_LEN 64
/* Long enough for the client to have sent every acknowledgement it owed
 * (QUIC delays them 25 ms at most), so it is silent when it moves. */
#define QUIET_MS 100

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

/* ---- Server methods -------------------------------------------------------
 */

typedef struct server_counts {
  int bidi_send_errors;
  int ticks_open;
  int ticks_send_errors;
  uint64_t dgrams_up;
  uint64_t dgrams_up_bad;
} server_counts;

static server_counts srv_counts;

static void bidi_on_item(qrpc_req *req, const uint8_t *data, size_t len,
                         void *ud) {
  (void)ud;
  if (qrpc_req_send(req, data, len) != 0) srv_counts.bidi_send_errors++;
}

static void bidi_on_end(qrpc_req *req, void *ud) {
  (void)ud;
  if (qrpc_req_end(req) != 0) srv_counts.bidi_send_errors++;
}

static void m_bidi(qrpc_req *req, const uint8_t *p, size_t len, void *ud) {
  (void)p;
  (void)len;
  static const qrpc_req_callbacks cbs = {.on_item = bidi_on_item,
                                         .on_end = bidi_on_end};
  qrpc_req_set_callbacks(req, &cbs, ud);
}

typedef struct ticks_req {
  qrpc_req *req;
  struct event *ev;
  uint32_t n;
  uint32_t next;
} ticks_req;

static void ticks_release(ticks_req *t) {
  event_free(t->ev);
  free(t);
  srv_counts.ticks_open--;
}

static void ticks_on_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  ticks_req *t = arg;
  uint8_t item[QF_ITEM_LEN];
  qf_item_fill(t->next, item);
  int rv = qrpc_req_send(t->req, item, sizeof(item));
  if (rv == QRPC_EAGAIN) return; /* the next tick tries again */
  if (rv != 0) srv_counts.ticks_send_errors++;
  if (++t->next < t->n) return;
  if (qrpc_req_end(t->req) != 0) srv_counts.ticks_send_errors++;
  ticks_release(t);
}

static void ticks_on_cancel(qrpc_req *req, int status, void *ud) {
  (void)req;
  (void)status;
  ticks_release(ud);
}

static void m_ticks(qrpc_req *req, const uint8_t *p, size_t len, void *ud) {
  (void)ud;
  static const qrpc_req_callbacks cbs = {.on_cancel = ticks_on_cancel};
  struct timeval tv = {0, TICK_MS * 1000};
  if (qrpc_req_is_notify(req)) return;
  ticks_req *t = len == 4 ? calloc(1, sizeof(*t)) : NULL;
  if (!t) {
    qrpc_req_error(req, QRPC_STATUS_INVALID_ARGUMENT, "want a 4-byte count");
    return;
  }
  t->req = req;
  t->n = qf_get_be32(p);
  t->ev = event_new(qrpc_loop_base(loop), -1, EV_PERSIST, ticks_on_tick, t);
  if (!t->ev || event_add(t->ev, &tv) != 0) {
    if (t->ev) event_free(t->ev);
    free(t);
    qrpc_req_error(req, QRPC_STATUS_RESOURCE_EXHAUSTED, "no timer");
    return;
  }
  srv_counts.ticks_open++;
  qrpc_req_set_callbacks(req, &cbs, t);
}

static void srv_on_up(qrpc_peer *peer, uint32_t ch, uint64_t seq,
                      const uint8_t *p, size_t n, void *ud) {
  (void)peer;
  (void)ch;
  (void)seq;
  (void)ud;
  srv_counts.dgrams_up++;
  if (!qt_dgram_check(p, n)) srv_counts.dgrams_up_bad++;
}

/* ---- The world: server, proxy, client -------------------------------------
 */

/* What the client sees of a stream: every item in order, once, intact. */
typedef struct items_check {
  qrpc_call *call; /* NULL once done */
  uint32_t next;
  uint64_t bad;
  int done;
  int status;
} items_check;

typedef struct world {
  qrpc_server *srv;
  char srv_addr[64];
  qt_rpc_peers peers;
  qt_proxy *proxy;
  qt_rpc_client cl;
  qrpc_conn *srv_conn; /* the server's side of the connection */
  qt_holder holder;

  struct event *tick; /* the client's and server's periodic sends */
  int dgrams_on;
  uint32_t dgram_seq;
  uint64_t dgrams_down;
  uint64_t dgrams_down_bad;
  uint64_t dgram_send_errors;

  uint32_t bidi_sent; /* items the client has sent on the bidi call */
  int bidi_ended;
  int bidi_send_errors;
  items_check bidi;
  items_check ticks;

  uint16_t port_before, port_after;
} world;

static void cli_on_down(qrpc_peer *peer, uint32_t ch, uint64_t seq,
                        const uint8_t *p, size_t n, void *ud) {
  (void)peer;
  (void)ch;
  (void)seq;
  world *w = ud;
  w->dgrams_down++;
  if (!qt_dgram_check(p, n)) w->dgrams_down_bad++;
}

static void send_dgrams(world *w) {
  uint8_t buf[DGRAM_LEN];
  qrpc_peer *cp = qrpc_client_peer(w->cl.cli);
  qt_dgram_fill(++w->dgram_seq, buf, sizeof(buf));
  if (!cp || qrpc_peer_send_dgram(cp, CH_UP, buf, sizeof(buf)) != 0)
    w->dgram_send_errors++;
  if (!w->peers.last ||
      qrpc_peer_send_dgram(w->peers.last, CH_DOWN, buf, sizeof(buf)) != 0)
    w->dgram_send_errors++;
}

/* One bidi item per tick until STREAM_ITEMS, then END. */
static void send_bidi(world *w) {
  uint8_t item[QF_ITEM_LEN];
  if (w->bidi_sent < STREAM_ITEMS) {
    qf_item_fill(w->bidi_sent, item);
    int rv = qrpc_call_send(w->bidi.call, item, sizeof(item));
    if (rv == 0)
      w->bidi_sent++;
    else if (rv != QRPC_EAGAIN)
      w->bidi_send_errors++;
  } else if (!w->bidi_ended) {
    w->bidi_ended = 1;
    if (qrpc_call_end(w->bidi.call) != 0) w->bidi_send_errors++;
  }
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  world *w = arg;
  if (w->dgrams_on) send_dgrams(w);
  if (w->bidi.call && !w->bidi.done) send_bidi(w);
}

/* idle_ms: both sides' idle timeout, 0 for the default. threaded: the
 * proxy runs on a thread of its own, so rebinding races its reading. */
static void world_start(world *w, uint64_t idle_ms, int threaded) {
  qrpc_server_opts so;
  qrpc_client_opts co;
  struct timeval tv = {0, TICK_MS * 1000};
  memset(w, 0, sizeof(*w));
  memset(&srv_counts, 0, sizeof(srv_counts));
  qt_holder_init(&w->holder);
  qrpc_server_opts_default(&so);
  qrpc_client_opts_default(&co);
  if (idle_ms) so.endpoint.conn.idle_timeout_ms = idle_ms;
  if (idle_ms) co.conn.idle_timeout_ms = idle_ms;
  qt_rpc_peers_install(&so, &w->peers);
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, &so, &w->srv,
                                       w->srv_addr, sizeof(w->srv_addr)),
                   0);
  ck_assert_int_eq(qrpc_server_register(w->srv, M_HELD, QRPC_SHAPE_UNARY,
                                        qt_holder_handler, &w->holder),
                   0);
  ck_assert_int_eq(
      qrpc_server_register(w->srv, M_BIDI, QRPC_SHAPE_BIDI_STREAM, m_bidi, w),
      0);
  ck_assert_int_eq(qrpc_server_register(w->srv, M_TICKS,
                                        QRPC_SHAPE_SERVER_STREAM, m_ticks, w),
                   0);
  ck_assert_int_eq(
      qrpc_server_register_dgram(w->srv, CH_UP, NULL, srv_on_up, NULL), 0);
  ck_assert_int_eq(
      qrpc_server_register_dgram(w->srv, CH_DOWN, NULL, NULL, NULL), 0);
  if (threaded)
    ck_assert_int_eq(qt_proxy_start_thread(w->srv_addr, 1, &w->proxy), 0);
  else
    ck_assert_int_eq(
        qt_proxy_new(qrpc_loop_base(loop), w->srv_addr, 1, &w->proxy), 0);
  ck_assert_int_eq(
      qt_rpc_client_start(&w->cl, loop, qt_proxy_addr(w->proxy), ctls, &co), 0);
  ck_assert_int_eq(
      qrpc_client_register_dgram(w->cl.cli, CH_DOWN, NULL, cli_on_down, w), 0);
  ck_assert_int_eq(
      qrpc_client_register_dgram(w->cl.cli, CH_UP, NULL, NULL, NULL), 0);
  ck_assert(qt_rpc_client_wait_connects(&w->cl, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &w->peers.opened, 1, QT_WAIT_MS));
  w->srv_conn = qrpc_peer_conn(w->peers.last);
  ck_assert_ptr_nonnull(w->srv_conn);
  w->tick = event_new(qrpc_loop_base(loop), -1, EV_PERSIST, on_tick, w);
  ck_assert_ptr_nonnull(w->tick);
  ck_assert_int_eq(event_add(w->tick, &tv), 0);
}

static void world_stop(world *w) {
  event_free(w->tick);
  ck_assert_int_eq(qt_rpc_close_all(loop, &w->srv, &w->cl, 1), 1);
  ck_assert_int_eq(srv_counts.ticks_open, 0);
  qt_proxy_free(w->proxy);
}

/* ---- Streams as the client sees them --------------------------------------
 */

static void check_on_item(qrpc_call *call, const uint8_t *data, size_t len,
                          void *ud) {
  (void)call;
  items_check *ic = ud;
  uint8_t want[QF_ITEM_LEN];
  qf_item_fill(ic->next, want);
  if (ic->done || len != QF_ITEM_LEN || memcmp(data, want, len) != 0) ic->bad++;
  ic->next++;
}

static void check_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  (void)call;
  items_check *ic = ud;
  ic->done++;
  ic->status = res->status;
  ic->call = NULL;
}

static const qrpc_call_callbacks check_cbs = {.on_done = check_on_done,
                                              .on_item = check_on_item};

static void start_bidi(world *w) {
  ck_assert_int_eq(qrpc_client_stream(w->cl.cli, M_BIDI, QRPC_SHAPE_BIDI_STREAM,
                                      NULL, 0, NULL, &check_cbs, &w->bidi,
                                      &w->bidi.call),
                   0);
}

static void start_ticks(world *w) {
  uint8_t req[4];
  qf_put_be32(req, STREAM_ITEMS);
  ck_assert_int_eq(qrpc_client_stream(w->cl.cli, M_TICKS,
                                      QRPC_SHAPE_SERVER_STREAM, req,
                                      sizeof(req), NULL, &check_cbs, &w->ticks,
                                      &w->ticks.call),
                   0);
}

static void assert_stream_ok(const items_check *ic) {
  ck_assert_int_eq(ic->done, 1);
  ck_assert_int_eq(ic->status, QRPC_STATUS_OK);
  ck_assert_uint_eq(ic->next, STREAM_ITEMS);
  ck_assert_uint_eq(ic->bad, 0);
}

/* ---- Unary calls in flight -----------------------------------------------
 */

typedef struct held_calls {
  qt_call_tally tally;
  qt_call_rec recs[HELD_CALLS];
  uint8_t payloads[HELD_CALLS][QF_PAYLOAD];
} held_calls;

static void start_held(world *w, held_calls *h) {
  memset(h, 0, sizeof(*h));
  for (int i = 0; i < HELD_CALLS; i++) {
    qt_pattern_fill(UINT64_C(0xbead) + (uint64_t)i, 0, h->payloads[i],
                    QF_PAYLOAD);
    ck_assert_int_eq(qt_call_rec_start(&h->recs[i], &h->tally, w->cl.cli,
                                       M_HELD, h->payloads[i], QF_PAYLOAD,
                                       NULL),
                     0);
  }
  ck_assert(qt_run_until_count(loop, &w->holder.held, HELD_CALLS, QT_WAIT_MS));
  ck_assert_int_eq(h->tally.done, 0);
}

static void assert_held_ok(const held_calls *h) {
  ck_assert_int_eq(h->tally.done, HELD_CALLS);
  ck_assert_int_eq(h->tally.ok, HELD_CALLS);
  for (int i = 0; i < HELD_CALLS; i++)
    ck_assert_msg(qt_call_rec_replied(&h->recs[i], h->payloads[i], QF_PAYLOAD),
                  "call %d: status %d, %zu reply bytes", i, h->recs[i].status,
                  h->recs[i].reply_len);
}

/* ---- The rebinding --------------------------------------------------------
 */

static void rebind(world *w) {
  w->port_before = qt_proxy_flow_port(w->proxy, 0);
  ck_assert_uint_ne(w->port_before, 0);
  ck_assert_int_eq(qt_proxy_rebind(w->proxy, 0), 0);
  w->port_after = qt_proxy_flow_port(w->proxy, 0);
  ck_assert_uint_ne(w->port_after, 0);
  ck_assert_uint_ne(w->port_after, w->port_before);
}

static uint16_t server_sees_port(world *w) {
  struct sockaddr_storage ss;
  socklen_t len;
  if (qrpc_conn_remote_addr(w->srv_conn, &ss, &len) != 0) return 0;
  return qt_sockaddr_port(&ss);
}

static int server_followed(void *arg) {
  world *w = arg;
  return server_sees_port(w) == w->port_after;
}

/* The server talks to the client's new address, on the connection it had:
 * the client connected once and lost nothing, the server saw one peer. */
static void assert_same_connection_moved(world *w) {
  ck_assert_msg(qt_run_until(loop, server_followed, w, QT_WAIT_MS),
                "the server still sends to port %u, not %u",
                (unsigned)server_sees_port(w), (unsigned)w->port_after);
  ck_assert_int_eq(w->cl.connects, 1);
  ck_assert_int_eq(w->cl.disconnects, 0);
  ck_assert_int_eq(w->peers.opened, 1);
  ck_assert_int_eq(w->peers.closed, 0);
  ck_assert_ptr_eq(qrpc_peer_conn(w->peers.last), w->srv_conn);
  ck_assert_int_eq(qt_proxy_flows(w->proxy), 1);
}

static int held_done(void *arg) {
  return ((held_calls *)arg)->tally.done == HELD_CALLS;
}

/* Calls wait on the server; the NAT moves the client; then the answers
 * leave. The client has nothing to send when it moves, so the server's
 * answers go to the old port and are lost there until the client speaks. */
START_TEST(test_unary_in_flight) {
  world *w = calloc(1, sizeof(*w));
  held_calls *h = calloc(1, sizeof(*h));
  ck_assert_ptr_nonnull(w);
  ck_assert_ptr_nonnull(h);
  world_start(w, 0, 0);
  start_held(w, h);
  qt_run_for(loop, QUIET_MS);
  rebind(w);
  uint64_t t0 = qt_now_ms();
  ck_assert_int_eq(qt_holder_reply_all(&w->holder), HELD_CALLS);
  ck_assert_msg(qt_run_until(loop, held_done, h, QT_WAIT_MS),
                "%d of %d calls done", h->tally.done, HELD_CALLS);
  qt_link_stats down;
  qt_proxy_get_stats(w->proxy, QT_DOWN, &down);
  printf("%d unary calls answered after a rebinding: done in %llu ms; %llu "
         "packets to the old port dropped\n",
         HELD_CALLS, (unsigned long long)(qt_now_ms() - t0),
         (unsigned long long)down.unmapped);
  assert_held_ok(h);
  /* The answers went to the old port first: the server had to learn the
   * new one from the client. */
  ck_assert_uint_gt(down.unmapped, 0);
  assert_same_connection_moved(w);
  world_stop(w);
  free(h);
  free(w);
}
END_TEST

static int streams_half_way(void *arg) {
  world *w = arg;
  return w->bidi.next >= ITEMS_BEFORE && w->ticks.next >= ITEMS_BEFORE;
}

static int streams_done(void *arg) {
  world *w = arg;
  return w->bidi.done && w->ticks.done;
}

/* A bidi stream the client feeds and a server stream the server feeds,
 * each one item per tick, move half way through. */
START_TEST(test_streams_in_flight) {
  world *w = calloc(1, sizeof(*w));
  ck_assert_ptr_nonnull(w);
  world_start(w, 0, 0);
  start_bidi(w);
  start_ticks(w);
  ck_assert(qt_run_until(loop, streams_half_way, w, QT_WAIT_MS));
  rebind(w);
  ck_assert_msg(qt_run_until(loop, streams_done, w, QT_WAIT_MS),
                "bidi: %u items, done %d; server stream: %u items, done %d",
                w->bidi.next, w->bidi.done, w->ticks.next, w->ticks.done);
  assert_stream_ok(&w->bidi);
  assert_stream_ok(&w->ticks);
  ck_assert_uint_eq(w->bidi_sent, STREAM_ITEMS);
  ck_assert_int_eq(w->bidi_send_errors, 0);
  ck_assert_int_eq(srv_counts.bidi_send_errors, 0);
  ck_assert_int_eq(srv_counts.ticks_send_errors, 0);
  assert_same_connection_moved(w);
  world_stop(w);
  free(w);
}
END_TEST

typedef struct dgram_mark {
  world *w;
  uint64_t up, down;
} dgram_mark;

static dgram_mark dgram_mark_now(world *w) {
  dgram_mark m = {w, srv_counts.dgrams_up, w->dgrams_down};
  return m;
}

static int dgrams_flowed(void *arg) {
  dgram_mark *m = arg;
  return srv_counts.dgrams_up >= m->up + DGRAMS_AFTER &&
         m->w->dgrams_down >= m->down + DGRAMS_AFTER;
}

/* Both channels carry on after the move. A datagram sent meanwhile may be
 * lost (they are unreliable); the flow must come back. */
START_TEST(test_dgram_channel) {
  world *w = calloc(1, sizeof(*w));
  ck_assert_ptr_nonnull(w);
  world_start(w, 0, 0);
  w->dgrams_on = 1;
  dgram_mark m = dgram_mark_now(w);
  ck_assert(qt_run_until(loop, dgrams_flowed, &m, QT_WAIT_MS));
  rebind(w);
  m = dgram_mark_now(w);
  ck_assert_msg(qt_run_until(loop, dgrams_flowed, &m, QT_WAIT_MS),
                "after the rebinding: %llu up, %llu down",
                (unsigned long long)(srv_counts.dgrams_up - m.up),
                (unsigned long long)(w->dgrams_down - m.down));
  w->dgrams_on = 0;
  ck_assert_uint_eq(srv_counts.dgrams_up_bad, 0);
  ck_assert_uint_eq(w->dgrams_down_bad, 0);
  ck_assert_uint_eq(w->dgram_send_errors, 0);
  assert_same_connection_moved(w);
  world_stop(w);
  free(w);
}
END_TEST

/* Everything at once, and the NAT moves the client twice. */
static void everything_twice(int threaded) {
  world *w = calloc(1, sizeof(*w));
  held_calls *h = calloc(1, sizeof(*h));
  ck_assert_ptr_nonnull(w);
  ck_assert_ptr_nonnull(h);
  world_start(w, 0, threaded);
  w->dgrams_on = 1;
  start_held(w, h);
  start_bidi(w);
  start_ticks(w);
  ck_assert(qt_run_until(loop, streams_half_way, w, QT_WAIT_MS));
  rebind(w);
  assert_same_connection_moved(w);
  rebind(w);
  dgram_mark m = dgram_mark_now(w);
  ck_assert_int_eq(qt_holder_reply_all(&w->holder), HELD_CALLS);
  ck_assert(qt_run_until(loop, held_done, h, QT_WAIT_MS));
  ck_assert(qt_run_until(loop, streams_done, w, QT_WAIT_MS));
  ck_assert(qt_run_until(loop, dgrams_flowed, &m, QT_WAIT_MS));
  w->dgrams_on = 0;
  assert_held_ok(h);
  assert_stream_ok(&w->bidi);
  assert_stream_ok(&w->ticks);
  ck_assert_uint_eq(srv_counts.dgrams_up_bad + w->dgrams_down_bad, 0);
  assert_same_connection_moved(w);
  world_stop(w);
  free(h);
  free(w);
}

START_TEST(test_everything_twice) { everything_twice(0); }
END_TEST

START_TEST(test_everything_twice_proxy_thread) { everything_twice(1); }
END_TEST

/* The PINGs that let a silent client be found also keep it alive: calls
 * answered after several idle timeouts complete on the first connection. */
#define SHORT_IDLE_MS 600
#define LONG_CALL_MS 2000

START_TEST(test_silent_call_outlives_idle_timeout) {
  world *w = calloc(1, sizeof(*w));
  held_calls *h = calloc(1, sizeof(*h));
  ck_assert_ptr_nonnull(w);
  ck_assert_ptr_nonnull(h);
  world_start(w, SHORT_IDLE_MS, 0);
  start_held(w, h);
  qt_run_for(loop, LONG_CALL_MS);
  ck_assert_int_eq(h->tally.done, 0);
  ck_assert_int_eq(qt_holder_reply_all(&w->holder), HELD_CALLS);
  ck_assert(qt_run_until(loop, held_done, h, QT_WAIT_MS));
  assert_held_ok(h);
  ck_assert_int_eq(w->cl.connects, 1);
  ck_assert_int_eq(w->cl.disconnects, 0);
  ck_assert_int_eq(w->peers.closed, 0);
  world_stop(w);
  free(h);
  free(w);
}
END_TEST

/* ---- The proxy's rebinding itself -----------------------------------------
 */

START_TEST(test_rebind_unknown_flow) {
  qt_proxy *p;
  ck_assert_int_eq(qt_proxy_new(qrpc_loop_base(loop), "127.0.0.1:9", 1, &p), 0);
  ck_assert_int_eq(qt_proxy_rebind(p, 0), -1);
  ck_assert_uint_eq(qt_proxy_flow_port(p, 0), 0);
  qt_proxy_free(p);
}
END_TEST

static Suite *rebind_suite(void) {
  Suite *s = suite_create("faults");
  TCase *tc = tcase_create("rebind");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_unary_in_flight);
  tcase_add_test(tc, test_streams_in_flight);
  tcase_add_test(tc, test_dgram_channel);
  tcase_add_test(tc, test_everything_twice);
  tcase_add_test(tc, test_everything_twice_proxy_thread);
  tcase_add_test(tc, test_silent_call_outlives_idle_timeout);
  tcase_add_test(tc, test_rebind_unknown_flow);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(rebind_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
