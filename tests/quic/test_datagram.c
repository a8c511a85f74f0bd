/*
 * End-to-end QUIC datagram tests (RFC 9221) over loopback UDP: delivery
 * both ways, the size limit, peers without datagrams, and the bounded send
 * queue.
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

#define ECHO_COUNT 200

START_TEST(test_datagram_echo) {
  qt_server srv;
  qt_client cl;
  qrpc_conn_stats cst, sst;
  uint8_t buf[1000];
  int i, errors = 0;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  ck_assert_uint_ge(qrpc_conn_max_datagram_size(cl.conn), sizeof(buf));
  for (i = 0; i < ECHO_COUNT; i++) {
    size_t len = QT_DGRAM_MIN + ((size_t)i * 37u) % (sizeof(buf) - 7);
    qt_dgram_fill((uint32_t)i + 1, buf, len);
    if (qrpc_conn_send_datagram(cl.conn, buf, len) != 0) errors++;
  }
  ck_assert_int_eq(errors, 0);
  /* Loopback may drop a few under load: wait for all, settle for most. */
  qt_run_until_count(loop, &cl.datagrams, ECHO_COUNT, 2000);
  ck_assert_int_ge(srv.datagrams, ECHO_COUNT * 9 / 10);
  ck_assert_int_le(srv.datagrams, ECHO_COUNT);
  ck_assert_int_eq(srv.datagrams_bad, 0);
  ck_assert_int_eq(srv.datagram_echo_errors, 0);
  ck_assert_int_ge(cl.datagrams, ECHO_COUNT * 8 / 10);
  ck_assert_int_le(cl.datagrams, srv.datagrams);
  ck_assert_int_eq(cl.datagrams_bad, 0);

  qrpc_conn_get_stats(cl.conn, &cst);
  qrpc_conn_get_stats(srv.last_conn, &sst);
  ck_assert_uint_ge(cst.datagrams_sent, (uint64_t)srv.datagrams);
  ck_assert_uint_eq(cst.datagrams_recv, (uint64_t)cl.datagrams);
  ck_assert_uint_eq(sst.datagrams_recv, (uint64_t)srv.datagrams);
  ck_assert_uint_ge(sst.datagrams_sent, (uint64_t)cl.datagrams);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

typedef struct max_wait {
  qt_server *srv;
  qrpc_conn *conn;
  size_t size;
  uint8_t *buf;
  uint64_t next_send_ms;
} max_wait;

/* Resends the largest datagram every 200 ms until one arrives, so a single
 * loss on loopback does not fail the test. */
static int max_arrived(void *arg) {
  max_wait *w = arg;
  if (w->srv->datagram_max_len == w->size) return 1;
  if (qt_now_ms() >= w->next_send_ms) {
    qrpc_conn_send_datagram(w->conn, w->buf, w->size);
    w->next_send_ms = qt_now_ms() + 200;
  }
  return 0;
}

START_TEST(test_datagram_max_size) {
  qt_server srv;
  qt_client cl;
  size_t max;
  uint8_t *buf;
  max_wait w;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  srv.echo_datagrams = 0;
  max = qrpc_conn_max_datagram_size(cl.conn);
  ck_assert_uint_gt(max, 1000);
  ck_assert_uint_lt(max, 65536);
  ck_assert_uint_gt(qrpc_conn_max_datagram_size(srv.last_conn), 1000);

  buf = malloc(max + 1);
  ck_assert_ptr_nonnull(buf);
  qt_dgram_fill(42, buf, max + 1);
  ck_assert_int_eq(qrpc_conn_send_datagram(cl.conn, buf, max + 1),
                   QRPC_EMSGSIZE);
  qt_dgram_fill(43, buf, max);
  ck_assert_int_eq(qrpc_conn_send_datagram(cl.conn, buf, max), 0);
  w.srv = &srv;
  w.conn = cl.conn;
  w.size = max;
  w.buf = buf;
  w.next_send_ms = qt_now_ms() + 200;
  ck_assert_msg(qt_run_until(loop, max_arrived, &w, QT_WAIT_MS),
                "a datagram of the advertised maximum (%zu) never arrived",
                max);
  ck_assert_int_eq(srv.datagrams_bad, 0);
  /* The oversized one was refused locally, never sent. */
  ck_assert_uint_eq(srv.datagram_max_len, max);
  free(buf);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* max_udp_payload 1200 on one side makes loopback behave like the
 * smallest path QUIC allows, in both directions: what fits there fits
 * everywhere. The limit stays put while path MTU discovery would have
 * grown it, a datagram of exactly the limit arrives, and one byte more is
 * refused at the call. */
START_TEST(test_datagram_smallest_path) {
  qt_server srv;
  qt_client cl;
  qrpc_conn_opts copts;
  max_wait w;

  qrpc_conn_opts_default(&copts);
  copts.max_udp_payload = 1200;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, &copts), 0);
  srv.echo_datagrams = 0;
  qt_run_for(loop, 300);
  size_t max = qrpc_conn_max_datagram_size(cl.conn);
  size_t srv_max = qrpc_conn_max_datagram_size(srv.last_conn);
  fprintf(stderr, "smallest path: %zu bytes of datagram each way\n", max);
  ck_assert_uint_gt(max, 1100);
  ck_assert_uint_lt(max, 1200);
  ck_assert_uint_gt(srv_max, 1100);
  ck_assert_uint_lt(srv_max, 1200);

  uint8_t *buf = malloc(max + 1);
  ck_assert_ptr_nonnull(buf);
  qt_dgram_fill(44, buf, max + 1);
  ck_assert_int_eq(qrpc_conn_send_datagram(cl.conn, buf, max + 1),
                   QRPC_EMSGSIZE);
  qt_dgram_fill(45, buf, max);
  ck_assert_int_eq(qrpc_conn_send_datagram(cl.conn, buf, max), 0);
  w.srv = &srv;
  w.conn = cl.conn;
  w.size = max;
  w.buf = buf;
  w.next_send_ms = qt_now_ms() + 200;
  ck_assert(qt_run_until(loop, max_arrived, &w, QT_WAIT_MS));
  ck_assert_int_eq(srv.datagrams_bad, 0);
  ck_assert_int_eq(qrpc_conn_send_datagram(srv.last_conn, buf, srv_max + 1),
                   QRPC_EMSGSIZE);
  free(buf);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* RFC 9221 allows an empty datagram; it travels and echoes like any
 * other (the harness counts it as bad content, having no checksum). */
START_TEST(test_datagram_empty) {
  qt_server srv;
  qt_client cl;
  uint8_t byte = 0;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  ck_assert_int_eq(qrpc_conn_send_datagram(cl.conn, NULL, 0), 0);
  ck_assert_int_eq(qrpc_conn_send_datagram(cl.conn, &byte, 0), 0);
  ck_assert(qt_run_until_count(loop, &cl.datagrams, 2, QT_WAIT_MS));
  ck_assert_int_eq(srv.datagrams, 2);
  ck_assert_uint_eq(srv.datagram_max_len, 0);
  ck_assert_int_eq(srv.datagram_echo_errors, 0);
  ck_assert_uint_eq(cl.datagram_bytes, 0);
  ck_assert_int_eq(qrpc_conn_is_established(cl.conn), 1);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_datagram_server_disabled) {
  qt_server srv;
  qt_client cl;
  qrpc_endpoint_opts sopts;
  uint8_t buf[100];

  qrpc_endpoint_opts_default(&sopts);
  sopts.conn.enable_datagrams = 0;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, &sopts, &cl, NULL), 0);
  qt_dgram_fill(1, buf, sizeof(buf));
  ck_assert_uint_eq(qrpc_conn_max_datagram_size(cl.conn), 0);
  ck_assert_int_eq(qrpc_conn_send_datagram(cl.conn, buf, sizeof(buf)),
                   QRPC_ENODGRAM);
  qt_run_for(loop, 100);
  ck_assert_int_eq(srv.datagrams, 0);
  ck_assert_int_eq(cl.closed, 0);
  ck_assert_int_eq(srv.closed, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_datagram_client_disabled) {
  qt_server srv;
  qt_client cl;
  qrpc_conn_opts copts;
  uint8_t buf[100];

  qrpc_conn_opts_default(&copts);
  copts.enable_datagrams = 0;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, &copts), 0);
  qt_dgram_fill(1, buf, sizeof(buf));
  ck_assert_uint_eq(qrpc_conn_max_datagram_size(srv.last_conn), 0);
  ck_assert_int_eq(qrpc_conn_send_datagram(srv.last_conn, buf, sizeof(buf)),
                   QRPC_ENODGRAM);
  qt_run_for(loop, 100);
  ck_assert_int_eq(cl.datagrams, 0);
  ck_assert_int_eq(cl.closed, 0);
  ck_assert_int_eq(srv.closed, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* quic.h ties both the size and QRPC_ENODGRAM to the peer's setting only
 * (RFC 9221 too: max_datagram_frame_size limits what the peer receives),
 * so a side that disabled datagrams for itself may still send them to a
 * peer that enabled them. */
START_TEST(test_datagram_sender_with_own_disabled) {
  qt_server srv;
  qt_client cl;
  qrpc_endpoint_opts sopts;
  uint8_t buf[100];

  qrpc_endpoint_opts_default(&sopts);
  sopts.conn.enable_datagrams = 0;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, &sopts, &cl, NULL), 0);
  qt_dgram_fill(1, buf, sizeof(buf));
  ck_assert_uint_gt(qrpc_conn_max_datagram_size(srv.last_conn), 1000);
  ck_assert_int_eq(qrpc_conn_send_datagram(srv.last_conn, buf, sizeof(buf)), 0);
  ck_assert(qt_run_until_count(loop, &cl.datagrams, 1, QT_WAIT_MS));
  ck_assert_int_eq(cl.datagrams_bad, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_datagram_before_established) {
  qrpc_tls_config *stls = qt_server_tls(&certs);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qt_server srv;
  qt_client cl;
  uint8_t buf[100];

  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  ck_assert_int_eq(qt_client_connect(&cl, loop, srv.addr, NULL, ctls, NULL), 0);
  qrpc_tls_config_free(stls);
  qrpc_tls_config_free(ctls);
  qt_dgram_fill(1, buf, sizeof(buf));
  ck_assert_int_eq(qrpc_conn_send_datagram(cl.conn, buf, sizeof(buf)),
                   QRPC_ESTATE);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

typedef struct drain_wait {
  qrpc_conn *conn;
  uint8_t buf[200];
} drain_wait;

static int queue_has_room(void *arg) {
  drain_wait *w = arg;
  qt_dgram_fill(999, w->buf, sizeof(w->buf));
  return qrpc_conn_send_datagram(w->conn, w->buf, sizeof(w->buf)) == 0;
}

#define BURST 200
#define QUEUE_LEN 4

/* Full-size datagrams far beyond the initial congestion window, all sent
 * before the loop runs again: whatever the library writes at once, the
 * window fills and then the 4-slot queue does, deterministically. */
START_TEST(test_datagram_queue_full) {
  qt_server srv;
  qt_client cl;
  qrpc_conn_opts copts;
  drain_wait w;
  size_t max;
  uint8_t *buf;
  int i, accepted = 0, enobufs = 0, other = 0, first_refusal = -1;

  qrpc_conn_opts_default(&copts);
  copts.datagram_queue_len = QUEUE_LEN;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, &copts), 0);
  srv.echo_datagrams = 0;
  max = qrpc_conn_max_datagram_size(cl.conn);
  ck_assert_uint_gt(max, 1000);
  buf = malloc(max);
  ck_assert_ptr_nonnull(buf);
  for (i = 0; i < BURST; i++) {
    int rv;
    qt_dgram_fill((uint32_t)i + 1, buf, max);
    rv = qrpc_conn_send_datagram(cl.conn, buf, max);
    if (rv == 0) {
      accepted++;
    } else if (rv == QRPC_ENOBUFS) {
      enobufs++;
      if (first_refusal < 0) first_refusal = i;
    } else {
      other++;
    }
    /* Accepted bytes are copied: scribbling over ours must not matter. */
    memset(buf, 0xa5, max);
  }
  free(buf);
  ck_assert_int_eq(other, 0);
  ck_assert_int_gt(enobufs, 0);
  ck_assert_int_ge(first_refusal, QUEUE_LEN);
  ck_assert_int_lt(accepted, BURST);

  /* The queue drains as the loop runs, and what was accepted arrives. */
  w.conn = cl.conn;
  ck_assert(qt_run_until(loop, queue_has_room, &w, QT_WAIT_MS));
  qt_run_until_count(loop, &srv.datagrams, accepted + 1, 2000);
  ck_assert_int_ge(srv.datagrams, accepted * 8 / 10);
  ck_assert_int_eq(srv.datagrams_bad, 0);
  ck_assert_int_eq(cl.closed, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* ---- A one-way flow's acknowledgements ------------------------------- */

#define TRICKLE_COUNT 60

typedef struct trickle {
  qrpc_conn *conn;
  int sent, errors;
} trickle;

static void trickle_tick(qrpc_timer *t, void *arg) {
  trickle *k = arg;
  uint8_t buf[100];
  qt_dgram_fill((uint32_t)k->sent + 1, buf, sizeof(buf));
  if (qrpc_conn_send_datagram(k->conn, buf, sizeof(buf)) != 0) k->errors++;
  if (++k->sent == TRICKLE_COUNT) qrpc_timer_stop(t);
}

/* The server only receives: a datagram every millisecond, one packet at a
 * time. Its ACK waits for the next packet and covers both, so it sends
 * about one packet per two datagrams (conn.ack_wait_ms); the last one's
 * ACK still comes, and the sender declares nothing lost. */
START_TEST(test_datagram_one_way_acks_wait) {
  qt_server srv;
  qt_client cl;
  qrpc_conn_stats s0, s1, cst;
  qrpc_timer *t;
  trickle k = {0};

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  srv.echo_datagrams = 0;
  /* The handshake's last packets and the path MTU probes settle. */
  qt_run_for(loop, 200);
  qrpc_conn_get_stats(srv.last_conn, &s0);

  k.conn = cl.conn;
  ck_assert_int_eq(qrpc_timer_new(loop, trickle_tick, &k, &t), 0);
  ck_assert_int_eq(qrpc_timer_start(t, 1000000, 1000000), 0);
  qt_run_until_count(loop, &srv.datagrams, TRICKLE_COUNT, QT_WAIT_MS);
  qt_run_for(loop, 100);
  qrpc_timer_free(t);

  ck_assert_int_eq(k.errors, 0);
  ck_assert_int_eq(k.sent, TRICKLE_COUNT);
  ck_assert_int_ge(srv.datagrams, TRICKLE_COUNT * 9 / 10);
  ck_assert_int_eq(srv.datagrams_bad, 0);
  qrpc_conn_get_stats(srv.last_conn, &s1);
  qrpc_conn_get_stats(cl.conn, &cst);
  uint64_t recv = s1.pkts_recv - s0.pkts_recv,
           sent = s1.pkts_sent - s0.pkts_sent;
  ck_assert_uint_ge(recv, (uint64_t)srv.datagrams);
  ck_assert_uint_gt(sent, 0);
  /* One packet back per two datagrams (and for the few packets of the
   * client's own ACKs that ask for one); one per datagram without the
   * wait. */
  ck_assert_uint_le(sent, (uint64_t)srv.datagrams * 3 / 4);
  ck_assert_uint_eq(cst.bytes_in_flight, 0);
  ck_assert_uint_eq(cst.datagrams_lost, 0);
  ck_assert_uint_eq(cst.pkts_lost, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST
static Suite *datagram_suite(void) {
  Suite *s = suite_create("quic_datagram");
  TCase *tc = tcase_create("datagram");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_datagram_echo);
  tcase_add_test(tc, test_datagram_max_size);
  tcase_add_test(tc, test_datagram_smallest_path);
  tcase_add_test(tc, test_datagram_empty);
  tcase_add_test(tc, test_datagram_server_disabled);
  tcase_add_test(tc, test_datagram_client_disabled);
  tcase_add_test(tc, test_datagram_sender_with_own_disabled);
  tcase_add_test(tc, test_datagram_before_established);
  tcase_add_test(tc, test_datagram_queue_full);
  tcase_add_test(tc, test_datagram_one_way_acks_wait);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(datagram_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
