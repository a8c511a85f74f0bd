/*
 * Packet sizes over loopback: path MTU discovery grows packets past the
 * Ethernet-sized 1452 bytes (loopback's MTU is 65536) so bulk transfers
 * cost fewer packets; qrpc_conn_opts.max_udp_payload caps them on either
 * side; datagram sizes follow the grown path; bad sizes are refused.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qrpc/qrpc.h"

#define MIB (1024u * 1024u)
/* The largest UDP payload of a 1500-byte Ethernet frame over IPv6, and
 * what packets stayed within before discovery went further. */
#define ETHERNET_PAYLOAD 1452
/* Enough bytes for discovery to finish early on and for the large packets
 * to dominate the average, yet quick under valgrind. */
#define BULK_BYTES (4u * MIB)

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

static uint64_t avg_sent(qrpc_conn *c) {
  qrpc_conn_stats st;
  qrpc_conn_get_stats(c, &st);
  return st.pkts_sent ? st.bytes_sent / st.pkts_sent : 0;
}

/* Echoes BULK_BYTES through a stream and checks they came back intact. */
static void echo_bulk(qt_client *cl, uint64_t seed) {
  qt_xfer x;
  ck_assert_int_eq(
      qt_xfer_start(&x, cl->conn, "echo", BULK_BYTES, seed, 0, NULL), 0);
  ck_assert_msg(qt_run_until_count(loop, &x.closes, 1, 60000),
                "stalled: %llu written, %llu echoed",
                (unsigned long long)x.sent, (unsigned long long)x.recvd);
  ck_assert_int_eq(x.write_error, 0);
  ck_assert_int_eq(x.mismatch, 0);
  ck_assert_uint_eq(x.recvd, BULK_BYTES);
  ck_assert(x.ok);
}

typedef struct dgram_wait {
  qt_server *srv;
  qrpc_conn *conn;
  const uint8_t *buf;
  size_t size;
  uint64_t next_send_ms;
} dgram_wait;

/* Datagrams may be lost: resend until one of the size arrives. */
static int dgram_arrived(void *arg) {
  dgram_wait *w = arg;
  if (w->srv->datagrams > 0) return 1;
  if (qt_now_ms() >= w->next_send_ms) {
    qrpc_conn_send_datagram(w->conn, w->buf, w->size);
    w->next_send_ms = qt_now_ms() + 200;
  }
  return 0;
}

/* A datagram of exactly qrpc_conn_max_datagram_size() is accepted and
 * arrives whole; one byte more is refused. */
static void check_max_datagram(qt_server *srv, qrpc_conn *c, size_t max) {
  uint8_t *buf = malloc(max + 1);
  dgram_wait w;
  ck_assert_ptr_nonnull(buf);
  qt_dgram_fill(7, buf, max + 1);
  ck_assert_int_eq(qrpc_conn_send_datagram(c, buf, max + 1), QRPC_EMSGSIZE);
  qt_dgram_fill(8, buf, max);
  srv->echo_datagrams = 0;
  srv->datagrams = 0;
  ck_assert_int_eq(qrpc_conn_send_datagram(c, buf, max), 0);
  w.srv = srv;
  w.conn = c;
  w.buf = buf;
  w.size = max;
  w.next_send_ms = qt_now_ms() + 200;
  ck_assert_msg(qt_run_until(loop, dgram_arrived, &w, QT_WAIT_MS),
                "a datagram of the advertised maximum (%zu) never arrived",
                max);
  ck_assert_int_eq(srv->datagrams_bad, 0);
  ck_assert_uint_eq(srv->datagram_max_len, max);
  free(buf);
}

/* With the defaults, a bulk transfer over loopback ends up in packets
 * larger than an Ethernet frame in both directions, and the data arrives
 * intact. */
START_TEST(test_pmtud_bulk_uses_large_packets) {
  qt_server srv;
  qt_client cl;
  size_t max;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  echo_bulk(&cl, 91);
  ck_assert_ptr_nonnull(srv.last_conn);
  ck_assert_uint_gt(avg_sent(cl.conn), 1500);
  ck_assert_uint_gt(avg_sent(srv.last_conn), 1500);

  /* Datagram sizes follow the grown path, and what the maximum says fits
   * does. */
  max = qrpc_conn_max_datagram_size(cl.conn);
  ck_assert_uint_gt(max, 1500);
  ck_assert_uint_lt(max, 65536);
  check_max_datagram(&srv, cl.conn, max);
  ck_assert_int_eq(cl.closed, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* Bytes of c's packets that reached the peer, per cent. Loopback loses
 * next to nothing, so a GSO send the kernel refused stands out. */
static uint64_t delivered_pct(qrpc_conn *from, qrpc_conn *to) {
  qrpc_conn_stats tx, rx;
  qrpc_conn_get_stats(from, &tx);
  qrpc_conn_get_stats(to, &rx);
  return tx.bytes_sent ? rx.bytes_recv * 100 / tx.bytes_sent : 0;
}

/* 16 KiB packets: four of them make 65536 bytes, over what one GSO send
 * may carry (65507), so batches hold three. Were they to hold four, the
 * kernel would refuse every full batch and the transfer would crawl. */
START_TEST(test_pmtud_gso_batches_stay_under_udp_limit) {
  qt_server srv;
  qt_client cl;
  qrpc_conn_opts copts;
  qrpc_endpoint_opts sopts;

  qrpc_conn_opts_default(&copts);
  copts.max_udp_payload = 16384;
  qrpc_endpoint_opts_default(&sopts);
  sopts.conn.max_udp_payload = 16384;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, &sopts, &cl, &copts), 0);
  echo_bulk(&cl, 95);
  ck_assert_uint_gt(avg_sent(cl.conn), 9000);
  ck_assert_uint_le(avg_sent(cl.conn), 16384);
  ck_assert_uint_gt(avg_sent(srv.last_conn), 9000);
  ck_assert_uint_ge(delivered_pct(cl.conn, srv.last_conn), 90);
  ck_assert_uint_ge(delivered_pct(srv.last_conn, cl.conn), 90);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* A client that asks for Ethernet-sized packets gets them both ways: the
 * server, though its own limit is larger, honours the client's
 * max_udp_payload_size transport parameter. */
START_TEST(test_pmtud_client_cap_binds_server) {
  qt_server srv;
  qt_client cl;
  qrpc_conn_opts copts;
  size_t max;

  qrpc_conn_opts_default(&copts);
  copts.max_udp_payload = ETHERNET_PAYLOAD;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, &copts), 0);
  echo_bulk(&cl, 92);
  ck_assert_uint_le(avg_sent(cl.conn), ETHERNET_PAYLOAD);
  ck_assert_uint_gt(avg_sent(cl.conn), 1200);
  ck_assert_uint_le(avg_sent(srv.last_conn), ETHERNET_PAYLOAD);
  max = qrpc_conn_max_datagram_size(cl.conn);
  ck_assert_uint_lt(max, ETHERNET_PAYLOAD);
  check_max_datagram(&srv, cl.conn, max);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* The same the other way round: a server capped at 1452 keeps the client
 * there too. */
START_TEST(test_pmtud_server_cap_binds_client) {
  qt_server srv;
  qt_client cl;
  qrpc_endpoint_opts sopts;

  qrpc_endpoint_opts_default(&sopts);
  sopts.conn.max_udp_payload = ETHERNET_PAYLOAD;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, &sopts, &cl, NULL), 0);
  echo_bulk(&cl, 93);
  ck_assert_uint_le(avg_sent(cl.conn), ETHERNET_PAYLOAD);
  ck_assert_uint_le(avg_sent(srv.last_conn), ETHERNET_PAYLOAD);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* 1200, the least every QUIC path carries, turns discovery off: no packet
 * is larger, and transfers still work. */
START_TEST(test_pmtud_minimum_size) {
  qt_server srv;
  qt_client cl;
  qrpc_conn_opts copts;

  qrpc_conn_opts_default(&copts);
  copts.max_udp_payload = 1200;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, &copts), 0);
  echo_bulk(&cl, 94);
  ck_assert_uint_le(avg_sent(cl.conn), 1200);
  ck_assert_uint_le(avg_sent(srv.last_conn), 1200);
  ck_assert_uint_lt(qrpc_conn_max_datagram_size(cl.conn), 1200);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* Sizes outside 1200..65527 are refused up front, by a client and by an
 * endpoint alike, rather than failing every connection later. */
START_TEST(test_pmtud_bad_sizes_refused) {
  static const size_t bad[] = {0, 1199, 65528, 1u << 20};
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qrpc_tls_config *stls = qt_server_tls(&certs);
  ck_assert_ptr_nonnull(ctls);
  ck_assert_ptr_nonnull(stls);
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    qrpc_conn_opts copts;
    qrpc_endpoint_opts sopts;
    qrpc_conn *c = NULL;
    qrpc_endpoint *ep = NULL;
    qrpc_conn_opts_default(&copts);
    copts.max_udp_payload = bad[i];
    ck_assert_int_eq(qrpc_conn_connect(loop, "127.0.0.1:9", NULL, ctls, &copts,
                                       NULL, NULL, &c),
                     QRPC_EINVAL);
    qrpc_endpoint_opts_default(&sopts);
    sopts.conn.max_udp_payload = bad[i];
    ck_assert_int_eq(qrpc_endpoint_listen(loop, "127.0.0.1:0", stls, &sopts,
                                          NULL, NULL, &ep),
                     QRPC_EINVAL);
  }
  qrpc_tls_config_free(ctls);
  qrpc_tls_config_free(stls);
}
END_TEST

static Suite *pmtud_suite(void) {
  Suite *s = suite_create("quic_pmtud");
  TCase *tc = tcase_create("pmtud");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 90);
  tcase_add_test(tc, test_pmtud_bulk_uses_large_packets);
  tcase_add_test(tc, test_pmtud_gso_batches_stay_under_udp_limit);
  tcase_add_test(tc, test_pmtud_client_cap_binds_server);
  tcase_add_test(tc, test_pmtud_server_cap_binds_client);
  tcase_add_test(tc, test_pmtud_minimum_size);
  tcase_add_test(tc, test_pmtud_bad_sizes_refused);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(pmtud_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
