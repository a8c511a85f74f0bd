/*
 * Fault injection: a qrpc_client talks to a qrpc_server through the lossy
 * UDP proxy (lossy_proxy.h), which drops, duplicates, delays and reorders
 * packets, or blacks the path out. Nothing may be lost, duplicated or
 * corrupted on the reliable paths: every call completes exactly once with
 * its own reply, streams arrive intact, a short outage is ridden out, and a
 * long one fails the calls in flight with UNAVAILABLE, once each, after
 * which the client reconnects by itself.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fault_fixtures.h"
#include "harness.h"
#include "lossy_proxy.h"
#include "qrpc/qrpc.h"
#include "rpc_harness.h"

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

/* ---- A server behind the proxy and a client in front of it ------------ */

typedef struct env {
  qrpc_server *srv;
  char srv_addr[64];
  qt_rpc_peers peers;
  qt_proxy *proxy;
  qt_rpc_client cl;
} env;

/* Starts the server with opts so (peers installed here), the proxy and
 * the client. */
static void env_start_with(env *e, qrpc_server_opts *so,
                           const qrpc_client_opts *copts, uint64_t seed) {
  memset(e, 0, sizeof(*e));
  qt_rpc_peers_install(so, &e->peers);
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, so, &e->srv,
                                       e->srv_addr, sizeof(e->srv_addr)),
                   0);
  ck_assert_int_eq(qf_register_methods(e->srv), 0);
  ck_assert_int_eq(
      qt_proxy_new(qrpc_loop_base(loop), e->srv_addr, seed, &e->proxy), 0);
  ck_assert_int_eq(
      qt_rpc_client_start(&e->cl, loop, qt_proxy_addr(e->proxy), ctls, copts),
      0);
}

static void env_start(env *e, uint64_t idle_ms, const qrpc_client_opts *copts,
                      uint64_t seed) {
  qrpc_server_opts so;
  qrpc_server_opts_default(&so);
  if (idle_ms) so.endpoint.conn.idle_timeout_ms = idle_ms;
  /* The blackouts here test what the idle timeout does; dead-peer
   * detection would end the connections first. */
  so.endpoint.conn.dead_peer_timeout_ms = 0;
  env_start_with(e, &so, copts, seed);
}

static void env_stop(env *e) {
  qt_link_conf clean = {0};
  qt_proxy_set_both(e->proxy, &clean);
  qt_proxy_blackout(e->proxy, QT_BOTH_DIRS, 0);
  ck_assert_int_eq(qt_rpc_close_all(loop, &e->srv, &e->cl, 1), 1);
  qt_proxy_free(e->proxy);
  e->proxy = NULL;
}

static int pump_finished(void *arg) { return qf_pump_finished(arg); }

static void print_link(const char *what, qt_proxy *p) {
  qt_link_stats up, down;
  qt_proxy_get_stats(p, QT_UP, &up);
  qt_proxy_get_stats(p, QT_DOWN, &down);
  printf("%s: up %llu packets (%llu dropped, %llu reordered, %llu "
         "duplicated); down %llu packets (%llu dropped, %llu reordered, "
         "%llu duplicated)\n",
         what, (unsigned long long)up.packets, (unsigned long long)up.dropped,
         (unsigned long long)up.reordered, (unsigned long long)up.duplicated,
         (unsigned long long)down.packets, (unsigned long long)down.dropped,
         (unsigned long long)down.reordered,
         (unsigned long long)down.duplicated);
}

/* ---- Unary calls under loss ---------------------------------------------- */

#define UNARY_CALLS 10000
#define UNARY_WINDOW 64
/* Far beyond what 20% loss needs (a few seconds here), far below the
 * suite's timeout. */
#define UNARY_DEADLINE_MS 120000

static void unary_under_loss(double loss, uint64_t seed) {
  env e;
  qf_pump p;
  /* Loss, plus reordering, duplication and jitter in both directions. */
  qt_link_conf lc = {.loss = loss,
                     .duplicate = 0.02,
                     .reorder = 0.10,
                     .reorder_ms = 8,
                     .delay_ms = 1,
                     .jitter_ms = 2};
  uint64_t t0 = qt_now_ms();
  env_start(&e, 0, NULL, seed);
  qt_proxy_set_both(e.proxy, &lc);
  ck_assert_int_eq(qf_pump_start(&p, e.cl.cli, UNARY_CALLS, UNARY_WINDOW, 0),
                   0);
  ck_assert_msg(qt_run_until(loop, pump_finished, &p, UNARY_DEADLINE_MS),
                "%llu of %d calls completed", (unsigned long long)p.completed,
                UNARY_CALLS);
  /* A late second completion would show up here. */
  qt_run_for(loop, 300);
  printf("%d unary calls at %.0f%% loss: %llu ms\n", UNARY_CALLS, loss * 100,
         (unsigned long long)(qt_now_ms() - t0));
  print_link("  proxy", e.proxy);

  ck_assert_uint_eq(p.completed, UNARY_CALLS);
  ck_assert_uint_eq(p.done_twice, 0);
  ck_assert_uint_eq(qf_pump_not_once(&p), 0);
  ck_assert_uint_eq(p.ok, UNARY_CALLS);
  ck_assert_uint_eq(p.wrong_payload, 0);
  ck_assert_uint_eq(p.failed, 0);
  ck_assert_uint_eq(p.start_errors, 0);
  /* One connection carried it all. */
  ck_assert_int_eq(e.cl.connects, 1);
  ck_assert_int_eq(e.cl.lost, 0);

  qt_link_stats up, down;
  qt_proxy_get_stats(e.proxy, QT_UP, &up);
  qt_proxy_get_stats(e.proxy, QT_DOWN, &down);
  ck_assert_uint_gt(up.dropped, 0);
  ck_assert_uint_gt(down.dropped, 0);
  ck_assert_uint_gt(up.reordered + down.reordered, 0);
  ck_assert_uint_gt(up.duplicated + down.duplicated, 0);
  qf_pump_free(&p);
  env_stop(&e);
}

START_TEST(test_unary_10k_loss5) { unary_under_loss(0.05, 5); }
END_TEST

START_TEST(test_unary_10k_loss20) { unary_under_loss(0.20, 20); }
END_TEST

/* ---- Streams under loss -------------------------------------------------- */

#define STREAM_ITEMS 2000
#define STREAM_DEADLINE_MS 60000

static int items_done(void *arg) { return ((qf_items *)arg)->done > 0; }

START_TEST(test_server_stream_loss5) {
  env e;
  qf_items it;
  qt_link_conf lc = {.loss = 0.05,
                     .reorder = 0.05,
                     .reorder_ms = 5,
                     .delay_ms = 1,
                     .jitter_ms = 1};
  env_start(&e, 0, NULL, 105);
  qt_proxy_set_both(e.proxy, &lc);
  ck_assert_int_eq(qf_items_start(&it, e.cl.cli, STREAM_ITEMS, NULL), 0);
  ck_assert(qt_run_until(loop, items_done, &it, STREAM_DEADLINE_MS));
  qt_run_for(loop, 200);
  print_link("2000 streamed items at 5% loss", e.proxy);
  ck_assert_int_eq(it.done, 1);
  ck_assert_int_eq(it.status, QRPC_STATUS_OK);
  ck_assert_uint_eq(it.next, STREAM_ITEMS);
  ck_assert_uint_eq(it.bad, 0);
  ck_assert_int_eq(it.after_done, 0);
  ck_assert_int_eq(qf_items_streams_open(), 0);
  env_stop(&e);
}
END_TEST

#define RAW_BYTES (4u << 20)

static int xfer_closed(void *arg) { return ((qt_xfer *)arg)->closes > 0; }

START_TEST(test_raw_stream_4mib_loss5) {
  qt_server srv;
  qt_client cl;
  qt_xfer x;
  qt_proxy *proxy;
  qt_link_conf lc = {.loss = 0.05,
                     .reorder = 0.05,
                     .reorder_ms = 5,
                     .duplicate = 0.01,
                     .delay_ms = 1,
                     .jitter_ms = 1};
  memset(&x, 0, sizeof(x));
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  ck_assert_int_eq(qt_proxy_new(qrpc_loop_base(loop), srv.addr, 4, &proxy), 0);
  qt_proxy_set_both(proxy, &lc);
  memset(&cl, 0, sizeof(cl));
  ck_assert_int_eq(qt_client_connect(&cl, loop, qt_proxy_addr(proxy),
                                     "localhost", ctls, NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &cl.established, 1, STREAM_DEADLINE_MS));
  /* A sink stream answers with the byte count and hash of what it got. */
  ck_assert_int_eq(qt_xfer_start(&x, cl.conn, "sink", RAW_BYTES, 44, 0, NULL),
                   0);
  ck_assert(qt_run_until(loop, xfer_closed, &x, STREAM_DEADLINE_MS));
  print_link("4 MiB raw stream at 5% loss", proxy);
  ck_assert_int_eq(x.close_error, 0);
  ck_assert_int_eq(x.mismatch, 0);
  ck_assert_int_eq(x.ok, 1);
  ck_assert_uint_eq(srv.sink_bytes, RAW_BYTES);
  ck_assert_int_eq(srv.sinks_done, 1);

  qt_link_conf clean = {0};
  qt_proxy_set_both(proxy, &clean);
  qt_close_all(loop, &srv, &cl, 1);
  qt_proxy_free(proxy);
}
END_TEST

/* ---- Blackouts ------------------------------------------------------------
 */

/* Shorter than the idle timeout: QUIC's probes get through once the path
 * is back (the probe interval has grown to about a second by then), and
 * the calls sent into the outage complete. */
#define SHORT_IDLE_MS 8000
#define SHORT_BLACKOUT_MS 2500
#define BLACKOUT_CALLS 100

START_TEST(test_blackout_shorter_than_idle) {
  env e;
  qf_pump warm, p;
  qrpc_client_opts co;
  qrpc_client_opts_default(&co);
  co.conn.idle_timeout_ms = SHORT_IDLE_MS;
  co.conn.dead_peer_timeout_ms = 0;
  env_start(&e, SHORT_IDLE_MS, &co, 7);
  ck_assert_int_eq(qf_pump_start(&warm, e.cl.cli, 20, 20, 0), 0);
  ck_assert(qt_run_until(loop, pump_finished, &warm, QT_WAIT_MS));
  ck_assert_uint_eq(warm.ok, 20);

  uint64_t t0 = qt_now_ms();
  qt_proxy_blackout(e.proxy, QT_BOTH_DIRS, SHORT_BLACKOUT_MS);
  ck_assert_int_eq(
      qf_pump_start(&p, e.cl.cli, BLACKOUT_CALLS, BLACKOUT_CALLS, 0), 0);
  ck_assert(qt_run_until(loop, pump_finished, &p, 4 * SHORT_IDLE_MS));
  uint64_t took = qt_now_ms() - t0;
  qt_run_for(loop, 200);
  printf("blackout of %d ms with a %d ms idle timeout: %d calls done after "
         "%llu ms\n",
         SHORT_BLACKOUT_MS, SHORT_IDLE_MS, BLACKOUT_CALLS,
         (unsigned long long)took);

  ck_assert_uint_ge(took, SHORT_BLACKOUT_MS);
  ck_assert_uint_eq(p.ok, BLACKOUT_CALLS);
  ck_assert_uint_eq(qf_pump_not_once(&p), 0);
  ck_assert_uint_eq(p.failed, 0);
  ck_assert_int_eq(e.cl.connects, 1);
  ck_assert_int_eq(e.cl.lost, 0);
  ck_assert_int_eq(e.peers.closed, 0);
  qt_link_stats up;
  qt_proxy_get_stats(e.proxy, QT_UP, &up);
  ck_assert_uint_gt(up.blacked_out, 0);
  qf_pump_free(&warm);
  qf_pump_free(&p);
  env_stop(&e);
}
END_TEST

/* Longer than the idle timeout: the connection dies on both sides, every
 * call in flight fails with UNAVAILABLE exactly once, calls made while
 * disconnected wait, and the client reconnects once the path is back. */
#define LONG_IDLE_MS 1500
#define LONG_BLACKOUT_MS 4000

static int lost_once(void *arg) { return ((env *)arg)->cl.lost >= 1; }

START_TEST(test_blackout_longer_than_idle) {
  env e;
  qf_pump warm, p, after;
  qrpc_client_opts co;
  qrpc_client_opts_default(&co);
  co.conn.idle_timeout_ms = LONG_IDLE_MS;
  co.conn.dead_peer_timeout_ms = 0;
  co.conn.handshake_timeout_ms = 2 * LONG_IDLE_MS;
  co.backoff_initial_ms = 100;
  co.backoff_max_ms = 500;
  env_start(&e, LONG_IDLE_MS, &co, 8);
  ck_assert_int_eq(qf_pump_start(&warm, e.cl.cli, 20, 20, 0), 0);
  ck_assert(qt_run_until(loop, pump_finished, &warm, QT_WAIT_MS));
  ck_assert_uint_eq(warm.ok, 20);

  uint64_t t0 = qt_now_ms();
  qt_proxy_blackout(e.proxy, QT_BOTH_DIRS, LONG_BLACKOUT_MS);
  ck_assert_int_eq(
      qf_pump_start(&p, e.cl.cli, BLACKOUT_CALLS, BLACKOUT_CALLS, 0), 0);
  ck_assert(qt_run_until(loop, pump_finished, &p, LONG_BLACKOUT_MS));
  uint64_t failed_at = qt_now_ms() - t0;
  ck_assert(qt_run_until(loop, lost_once, &e, QT_WAIT_MS));
  ck_assert_uint_eq(p.by_status[QRPC_STATUS_UNAVAILABLE], BLACKOUT_CALLS);
  ck_assert_uint_eq(qf_pump_not_once(&p), 0);
  ck_assert_uint_eq(p.ok, 0);

  /* Calls made now wait for the next connection. */
  ck_assert_int_eq(qf_pump_start(&after, e.cl.cli, 20, 20, 0), 0);
  ck_assert(qt_rpc_client_wait_connects(&e.cl, 2, 4 * LONG_BLACKOUT_MS));
  uint64_t back_at = qt_now_ms() - t0;
  ck_assert(qt_run_until(loop, pump_finished, &after, QT_WAIT_MS));
  qt_run_for(loop, 200);
  printf("blackout of %d ms with a %d ms idle timeout: calls failed after "
         "%llu ms, reconnected after %llu ms\n",
         LONG_BLACKOUT_MS, LONG_IDLE_MS, (unsigned long long)failed_at,
         (unsigned long long)back_at);

  ck_assert_uint_ge(back_at, LONG_BLACKOUT_MS);
  ck_assert_uint_eq(after.ok, 20);
  ck_assert_uint_eq(qf_pump_not_once(&after), 0);
  /* Still exactly once each, long after. */
  ck_assert_uint_eq(p.completed, BLACKOUT_CALLS);
  ck_assert_uint_eq(p.done_twice, 0);
  ck_assert_int_eq(e.cl.connects, 2);
  ck_assert_int_eq(e.cl.lost, 1);
  ck_assert_int_eq(e.cl.last_lost.kind, QRPC_CLOSE_IDLE);
  /* The server's side of the dead connection is gone too. */
  ck_assert_int_eq(e.peers.closed, 1);
  ck_assert_int_eq(e.peers.live, 1);
  qf_pump_free(&warm);
  qf_pump_free(&p);
  qf_pump_free(&after);
  env_stop(&e);
}
END_TEST

/* ---- The proxy itself ------------------------------------------------------
 */

/* ---- A path with an Ethernet MTU ----------------------------------------- */

/* The largest UDP payload a 1500-byte IPv6 path carries. */
#define ETHERNET_PAYLOAD 1452
/* Longer than both sides' dead-peer timeouts (1 s client, 3 s server). */
#define ETHERNET_IDLE_MS 4500

/* Drops what a 1500-byte path would not carry: path MTU discovery's
 * larger probes. */
static int drop_jumbo(qt_proxy *p, qt_dir dir, size_t flow, uint8_t *pkt,
                      size_t *len, size_t cap, void *user_data) {
  (void)p, (void)dir, (void)flow, (void)pkt, (void)cap, (void)user_data;
  return *len > ETHERNET_PAYLOAD;
}

/* On an Ethernet path, discovery's probes past 1452 bytes are lost. A
 * connection left idle then has only those probes outstanding, which no
 * peer can answer: neither side may take that for a dead peer. Default
 * options on both sides. */
START_TEST(test_idle_on_ethernet_path) {
  env e;
  qf_pump warm, p;
  qrpc_server_opts so;
  qrpc_server_opts_default(&so);
  env_start_with(&e, &so, NULL, 11);
  qt_proxy_set_tap(e.proxy, drop_jumbo, NULL);
  ck_assert_int_eq(qf_pump_start(&warm, e.cl.cli, 20, 20, 0), 0);
  ck_assert(qt_run_until(loop, pump_finished, &warm, QT_WAIT_MS));
  ck_assert_uint_eq(warm.ok, 20);

  qt_run_for(loop, ETHERNET_IDLE_MS);
  qt_link_stats up, down;
  qt_proxy_get_stats(e.proxy, QT_UP, &up);
  qt_proxy_get_stats(e.proxy, QT_DOWN, &down);
  printf("idle on a 1452-byte path: %llu probes dropped up, %llu down; "
         "connects %d, lost %d, server closed %d\n",
         (unsigned long long)up.dropped, (unsigned long long)down.dropped,
         e.cl.connects, e.cl.lost, e.peers.closed);
  ck_assert_uint_gt(up.dropped, 0);
  ck_assert_uint_gt(down.dropped, 0);
  ck_assert_int_eq(e.cl.lost, 0);
  ck_assert_int_eq(e.peers.closed, 0);

  ck_assert_int_eq(qf_pump_start(&p, e.cl.cli, 20, 20, 0), 0);
  ck_assert(qt_run_until(loop, pump_finished, &p, QT_WAIT_MS));
  ck_assert_uint_eq(p.ok, 20);
  ck_assert_int_eq(e.cl.connects, 1);
  qf_pump_free(&warm);
  qf_pump_free(&p);
  env_stop(&e);
}
END_TEST

/* The proxy on a thread of its own, and its statistics: with no faults
 * configured it passes everything, so calls through it just work. */
START_TEST(test_proxy_thread_mode) {
  qrpc_server *srv;
  char addr[64];
  qt_proxy *proxy;
  qt_rpc_client cl;
  qf_pump p;
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, NULL, &srv,
                                       addr, sizeof(addr)),
                   0);
  ck_assert_int_eq(qf_register_methods(srv), 0);
  ck_assert_int_eq(qt_proxy_start_thread(addr, 3, &proxy), 0);
  ck_assert_int_eq(
      qt_rpc_client_start(&cl, loop, qt_proxy_addr(proxy), ctls, NULL), 0);
  ck_assert_int_eq(qf_pump_start(&p, cl.cli, 500, 64, 0), 0);
  ck_assert(qt_run_until(loop, pump_finished, &p, QT_WAIT_MS));
  ck_assert_uint_eq(p.ok, 500);
  qt_link_stats up, down;
  qt_proxy_get_stats(proxy, QT_UP, &up);
  qt_proxy_get_stats(proxy, QT_DOWN, &down);
  ck_assert_uint_gt(up.packets, 0);
  ck_assert_uint_eq(up.delivered, up.packets);
  ck_assert_uint_eq(up.dropped + down.dropped, 0);
  ck_assert_uint_eq(qt_proxy_flows(proxy), 1);
  qf_pump_free(&p);
  ck_assert_int_eq(qt_rpc_close_all(loop, &srv, &cl, 1), 1);
  qt_proxy_free(proxy);
}
END_TEST

START_TEST(test_link_conf_parse) {
  qt_link_conf c;
  ck_assert_int_eq(
      qt_link_conf_parse("loss=5,dup=1,reorder=10:20,delay=2,jitter=3", &c), 0);
  ck_assert(c.loss > 0.049 && c.loss < 0.051);
  ck_assert(c.duplicate > 0.0099 && c.duplicate < 0.0101);
  ck_assert(c.reorder > 0.099 && c.reorder < 0.101);
  ck_assert_uint_eq(c.reorder_ms, 20);
  ck_assert_uint_eq(c.delay_ms, 2);
  ck_assert_uint_eq(c.jitter_ms, 3);
  ck_assert_int_eq(qt_link_conf_parse("loss=101", &c), -1);
  ck_assert_int_eq(qt_link_conf_parse("drop=5", &c), -1);
  ck_assert_int_eq(qt_link_conf_parse("loss", &c), -1);
}
END_TEST

static Suite *faults_suite(void) {
  Suite *s = suite_create("faults");
  TCase *tc = tcase_create("lossy");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, test_unary_10k_loss5);
  tcase_add_test(tc, test_unary_10k_loss20);
  tcase_add_test(tc, test_server_stream_loss5);
  tcase_add_test(tc, test_raw_stream_4mib_loss5);
  tcase_add_test(tc, test_blackout_shorter_than_idle);
  tcase_add_test(tc, test_blackout_longer_than_idle);
  tcase_add_test(tc, test_idle_on_ethernet_path);
  tcase_add_test(tc, test_proxy_thread_mode);
  tcase_add_test(tc, test_link_conf_parse);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(faults_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
