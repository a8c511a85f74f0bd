/*
 * The link conditioner (qrpc_conn_opts.sim_*) over loopback: off by
 * default; its delay shows in the RTT the transport measures; its loss
 * drops datagrams in about the share asked and counts them; and a stream
 * crosses loss, jitter and reordering in both directions intact, as QUIC
 * promises.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qrpc/qrpc.h"

static qt_certs certs;
static qrpc_loop *loop;

static void setup(void) {
  ck_assert_int_eq(qt_certs_generate(&certs), 0);
  ck_assert_int_eq(qrpc_loop_new(NULL, &loop), 0);
}

static void teardown(void) {
  qrpc_loop_free(loop);
  loop = NULL;
  qt_certs_free(&certs);
}

static qrpc_conn_stats stats_of(qrpc_conn *c) {
  qrpc_conn_stats st;
  qrpc_conn_get_stats(c, &st);
  return st;
}

/* Runs one echo stream of len bytes on cl and checks it came back whole. */
static void echo_intact(qt_client *cl, uint64_t len, uint64_t seed) {
  qt_xfer x;
  ck_assert_int_eq(qt_xfer_start(&x, cl->conn, "echo", len, seed, 0, NULL), 0);
  ck_assert_msg(qt_run_until_count(loop, &x.closes, 1, 4 * QT_WAIT_MS),
                "the echo stream did not finish: %llu of %llu bytes back",
                (unsigned long long)x.recvd, (unsigned long long)len);
  ck_assert_int_eq(x.mismatch, 0);
  ck_assert_msg(x.ok, "the echo stream failed (error %d)", x.close_error);
}

START_TEST(test_off_by_default) {
  qrpc_conn_opts o;
  qrpc_conn_opts_default(&o);
  ck_assert(o.sim_loss_pct == 0 && o.sim_reorder_pct == 0);
  ck_assert_uint_eq(o.sim_delay_ms + o.sim_jitter_ms, 0);
  qt_server srv;
  qt_client cl;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  echo_intact(&cl, 64 * 1024, 1);
  ck_assert_uint_eq(stats_of(cl.conn).sim_dropped, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* 40 ms on the client's packets: every round trip the transport measures
 * takes at least that long. */
START_TEST(test_delay_shows_in_rtt) {
  qrpc_conn_opts o;
  qrpc_conn_opts_default(&o);
  o.sim_delay_ms = 40;
  qt_server srv;
  qt_client cl;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, &o), 0);
  echo_intact(&cl, 16 * 1024, 2);
  qrpc_conn_stats st = stats_of(cl.conn);
  ck_assert_msg(st.min_rtt_ns >= 40000000u, "min RTT %llu ns",
                (unsigned long long)st.min_rtt_ns);
  ck_assert_uint_eq(st.sim_dropped, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

typedef struct sent_wait {
  qrpc_conn *conn;
  uint64_t want;
} sent_wait;

static int datagrams_sent(void *arg) {
  sent_wait *w = arg;
  return stats_of(w->conn).datagrams_sent >= w->want;
}

/* 30% loss on the client's packets: of 400 datagrams, about 280 arrive
 * (the bounds are over eight standard deviations away), and the
 * conditioner counts what it dropped. Each datagram is queued only once
 * the one before has gone out, so every packet carries at most one and
 * no dropped packet takes several along (under valgrind, or once loss has
 * shrunk the congestion window, a backlog would otherwise share
 * packets). */
START_TEST(test_loss_drops_datagrams) {
  qrpc_conn_opts o;
  qrpc_conn_opts_default(&o);
  o.sim_loss_pct = 30;
  o.sim_seed = 42;
  qt_server srv;
  qt_client cl;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, &o), 0);
  uint8_t buf[200];
  int sent = 0;
  for (int i = 0; i < 400; i++) {
    qt_dgram_fill((uint32_t)i, buf, sizeof(buf));
    if (qrpc_conn_send_datagram(cl.conn, buf, sizeof(buf)) == 0) sent++;
    sent_wait w = {cl.conn, (uint64_t)sent};
    ck_assert_msg(qt_run_until(loop, datagrams_sent, &w, QT_WAIT_MS),
                  "datagram %d did not go out", i);
  }
  ck_assert_int_eq(sent, 400);
  qt_run_for(loop, 200);
  ck_assert_int_eq(srv.datagrams_bad, 0);
  ck_assert_msg(srv.datagrams > 160 && srv.datagrams < 360,
                "%d of 400 datagrams arrived at 30%% loss", srv.datagrams);
  ck_assert_uint_ge(stats_of(cl.conn).sim_dropped, (uint64_t)(400 - srv.datagrams));
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* Loss, delay, jitter and reordering on both sides: a 512 KiB echo stream
 * still comes back byte for byte. */
START_TEST(test_stream_intact_through_everything) {
  qrpc_conn_opts o;
  qrpc_conn_opts_default(&o);
  o.sim_loss_pct = 5;
  o.sim_reorder_pct = 20;
  o.sim_reorder_ms = 3;
  o.sim_delay_ms = 2;
  o.sim_jitter_ms = 4;
  o.sim_seed = 7;
  qrpc_endpoint_opts so;
  qrpc_endpoint_opts_default(&so);
  so.conn.sim_loss_pct = 5;
  so.conn.sim_reorder_pct = 20;
  so.conn.sim_jitter_ms = 4;
  so.conn.sim_seed = 8;
  qt_server srv;
  qt_client cl;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, &so, &cl, &o), 0);
  echo_intact(&cl, 512 * 1024, 3);
  ck_assert_uint_gt(stats_of(cl.conn).sim_dropped, 0);
  ck_assert_ptr_nonnull(srv.last_conn);
  ck_assert_uint_gt(stats_of(srv.last_conn).sim_dropped, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("conditioner");
  TCase *t = tcase_create("e2e");
  tcase_add_checked_fixture(t, setup, teardown);
  tcase_set_timeout(t, 120);
  tcase_add_test(t, test_off_by_default);
  tcase_add_test(t, test_delay_shows_in_rtt);
  tcase_add_test(t, test_loss_drops_datagrams);
  tcase_add_test(t, test_stream_intact_through_everything);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
