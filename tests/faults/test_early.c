/*
 * 0-RTT in the transport over loopback UDP with real handshakes, through
 * the project's UDP proxy: a resumed client writes a stream before its
 * handshake completes and the server takes it as early data; a server
 * that refuses the early data (its replay record cannot vouch for a ticket
 * issued before it started) still gets the stream, sent again after the
 * handshake, exactly once; and the client's first flight, captured and
 * sent again, never opens a second stream on the server.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "lossy_proxy.h"
#include "qrpc/qrpc.h"
#include "quic/rpcstream.h"

#define PAYLOAD 3000
/* More than a small server's windows take in 0-RTT. */
#define BIG_PAYLOAD (1024 * 1024)
/* Datagrams of the client's first flight kept for the replay. */
#define CAPTURE_MAX 8

static qt_certs certs;
static qrpc_loop *loop;

static const uint8_t server_key[QRPC_SERVER_KEY_LEN] = {42, 7, 1};

static void setup(void) {
  ck_assert_int_eq(qt_certs_generate(&certs), 0);
  ck_assert_int_eq(qrpc_loop_new(NULL, &loop), 0);
}

static void teardown(void) {
  qrpc_loop_free(loop);
  loop = NULL;
  qt_certs_free(&certs);
}

static qrpc_tls_config *server_tls(void) {
  qrpc_tls_config *cfg = qt_server_tls(&certs);
  ck_assert_ptr_nonnull(cfg);
  ck_assert_int_eq(
      qrpc_tls_config_set_server_key(cfg, server_key, sizeof(server_key)), 0);
  return cfg;
}

/* A client that writes one echo stream as soon as it can: in its 0-RTT
 * phase when it has one, else once established. */
typedef struct early_client {
  qt_client cl; /* first: the connection's user data is this */
  int early_hooks;
  int in_early_at_open;
  int opened;
  int open_error;
  size_t echoed;
  size_t len; /* bytes the stream carries */
  int fins;
  int bad;
} early_client;

static void ec_read(qrpc_stream *s, const uint8_t *d, size_t n, int fin,
                    void *ud) {
  early_client *ec = ud;
  if (n && !qt_pattern_check(7, ec->echoed, d, n)) ec->bad++;
  ec->echoed += n;
  if (fin) ec->fins++;
}

static void ec_open(early_client *ec, qrpc_conn *c) {
  static const qrpc_stream_callbacks cbs = {.on_read = ec_read};
  static uint8_t buf[BIG_PAYLOAD];
  if (ec->opened) return;
  ec->opened = 1;
  ec->in_early_at_open = qrpci_conn_in_early(c);
  qrpc_stream *s;
  int rv = qrpc_stream_open(c, "echo", &cbs, ec, &s);
  if (rv == 0) {
    qt_pattern_fill(7, 0, buf, ec->len);
    rv = qrpc_stream_write(s, buf, ec->len);
  }
  if (rv == 0) rv = qrpc_stream_finish(s);
  ec->open_error = rv;
}

static void ec_early(qrpc_conn *c, void *ud) {
  early_client *ec = ud;
  ec->early_hooks++;
  ec_open(ec, c);
}

static int ec_done(void *arg) {
  early_client *ec = arg;
  if (ec->cl.established && !ec->opened) ec_open(ec, ec->cl.conn);
  return ec->fins > 0 || ec->cl.closed > 0 || ec->open_error != 0;
}

/* Connects through addr, writes the stream, waits for its echo. */
static void run_client_len(early_client *ec, const char *addr,
                           qrpc_tls_config *ctls, size_t len) {
  memset(ec, 0, sizeof(*ec));
  ec->len = len;
  ck_assert_int_eq(
      qt_client_connect(&ec->cl, loop, addr, "127.0.0.1", ctls, NULL), 0);
  qrpci_conn_set_early_hook(ec->cl.conn, ec_early);
  ck_assert(qt_run_until(loop, ec_done, ec, QT_WAIT_MS));
  ck_assert_int_eq(ec->open_error, 0);
  ck_assert_int_eq(ec->fins, 1);
  ck_assert_uint_eq(ec->echoed, len);
  ck_assert_int_eq(ec->bad, 0);
}

static void run_client(early_client *ec, const char *addr,
                       qrpc_tls_config *ctls) {
  run_client_len(ec, addr, ctls, PAYLOAD);
}

static void close_client(early_client *ec) {
  qt_client_close(&ec->cl);
  ck_assert(qt_run_until_count(loop, &ec->cl.closed, 1, QT_WAIT_MS));
}

typedef struct tickets_arg {
  qrpc_tls_config *cfg;
} tickets_arg;

static int have_ticket(void *arg) {
  return qrpc_tls_config_tickets(((tickets_arg *)arg)->cfg) > 0;
}

/* A first connection, for a ticket. */
static void get_ticket(const char *addr, qrpc_tls_config *ctls) {
  early_client ec;
  run_client(&ec, addr, ctls);
  ck_assert_int_eq(ec.early_hooks, 0);
  tickets_arg ta = {ctls};
  ck_assert(qt_run_until(loop, have_ticket, &ta, QT_WAIT_MS));
  close_client(&ec);
}

START_TEST(test_stream_in_0rtt_accepted) {
  qrpc_tls_config *stls = server_tls();
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  /* A ticket issued in the server's first second is never good for early
   * data (its clock counts seconds), so the first one comes later. */
  qt_run_for(loop, 1100);
  get_ticket(srv.addr, ctls);

  early_client ec;
  run_client(&ec, srv.addr, ctls);
  ck_assert_int_eq(ec.early_hooks, 1);
  ck_assert_int_eq(ec.in_early_at_open, 1);
  qrpc_conn_stats st, sst;
  qrpc_conn_get_stats(ec.cl.conn, &st);
  ck_assert_int_eq(st.resumed, 1);
  ck_assert_int_eq(st.early_data, QRPC_EARLY_ACCEPTED);
  /* The echo may come back before the server's handshake completes. */
  ck_assert(qt_run_until_count(loop, &srv.established, 2, QT_WAIT_MS));
  ck_assert_ptr_nonnull(srv.last_conn);
  qrpc_conn_get_stats(srv.last_conn, &sst);
  ck_assert_int_eq(sst.resumed, 1);
  ck_assert_int_eq(sst.early_data, QRPC_EARLY_ACCEPTED);
  ck_assert_int_eq(srv.streams, 2);
  close_client(&ec);
  qt_close_all(loop, &srv, NULL, 0);
  qrpc_tls_config_free(ctls);
  qrpc_tls_config_free(stls);
}
END_TEST

START_TEST(test_rejected_0rtt_sent_again) {
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qrpc_tls_config *s1 = server_tls();
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", s1, NULL), 0);
  qt_run_for(loop, 1100);
  char bind[64];
  snprintf(bind, sizeof(bind), "127.0.0.1:%u", srv.port);
  get_ticket(srv.addr, ctls);
  qt_close_all(loop, &srv, NULL, 0);
  qrpc_tls_config_free(s1);

  /* The same key, so the ticket resumes; but it was issued before this
   * server started, so its early data is refused. */
  qrpc_tls_config *s2 = server_tls();
  ck_assert_int_eq(qt_server_start(&srv, loop, bind, s2, NULL), 0);
  early_client ec;
  run_client(&ec, srv.addr, ctls);
  ck_assert_int_eq(ec.early_hooks, 1);
  qrpc_conn_stats st, sst;
  qrpc_conn_get_stats(ec.cl.conn, &st);
  ck_assert_int_eq(st.resumed, 1);
  ck_assert_int_eq(st.early_data, QRPC_EARLY_REJECTED);
  ck_assert(qt_run_until_count(loop, &srv.established, 1, QT_WAIT_MS));
  qrpc_conn_get_stats(srv.last_conn, &sst);
  ck_assert_int_eq(sst.early_data, QRPC_EARLY_NONE);
  /* The stream reached the server once, after the handshake. */
  qt_run_for(loop, 100);
  ck_assert_int_eq(srv.streams, 1);
  ck_assert_int_eq(srv.stream_fins, 1);
  close_client(&ec);
  qt_close_all(loop, &srv, NULL, 0);
  qrpc_tls_config_free(s2);
  qrpc_tls_config_free(ctls);
}
END_TEST

typedef struct capture {
  size_t flow;
  size_t n;
  uint8_t pkt[CAPTURE_MAX][1500];
  size_t len[CAPTURE_MAX];
} capture;

static int tap(qt_proxy *p, qt_dir dir, size_t flow, uint8_t *pkt, size_t *len,
               size_t cap, void *ud) {
  capture *c = ud;
  if (dir == QT_UP && flow == c->flow && c->n < CAPTURE_MAX &&
      *len <= sizeof(c->pkt[0])) {
    memcpy(c->pkt[c->n], pkt, *len);
    c->len[c->n++] = *len;
  }
  return 0;
}

static int server_idle(void *arg) { return ((qt_server *)arg)->live == 0; }

START_TEST(test_replayed_0rtt_runs_once) {
  qrpc_tls_config *stls = server_tls();
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  qt_proxy *px;
  ck_assert_int_eq(qt_proxy_new(qrpc_loop_base(loop), srv.addr, 1, &px), 0);
  static capture cap;
  memset(&cap, 0, sizeof(cap));
  cap.flow = 1; /* the second client */
  qt_proxy_set_tap(px, tap, &cap);
  qt_run_for(loop, 1100);
  get_ticket(qt_proxy_addr(px), ctls);

  early_client ec;
  run_client(&ec, qt_proxy_addr(px), ctls);
  qrpc_conn_stats st;
  qrpc_conn_get_stats(ec.cl.conn, &st);
  ck_assert_int_eq(st.early_data, QRPC_EARLY_ACCEPTED);
  ck_assert_int_eq(srv.streams, 2);
  ck_assert_uint_ge(cap.n, 1);
  close_client(&ec);
  ck_assert(qt_run_until(loop, server_idle, &srv, QT_WAIT_MS));
  qt_run_for(loop, 200);

  /* The attacker sends the captured first flight again, twice. */
  for (int round = 0; round < 2; round++) {
    for (size_t i = 0; i < cap.n; i++)
      ck_assert_int_eq(qt_proxy_inject(px, QT_UP, 1, cap.pkt[i], cap.len[i]),
                       0);
    qt_run_for(loop, 300);
  }
  ck_assert_int_eq(srv.streams, 2);
  ck_assert_int_eq(srv.established, 2);
  qt_proxy_free(px);
  qt_close_all(loop, &srv, NULL, 0);
  qrpc_tls_config_free(ctls);
  qrpc_tls_config_free(stls);
}
END_TEST

/* The server's remembered windows bound what 0-RTT carries; the rest of a
 * large write waits for the handshake and for credit, and all of it
 * arrives once. */
START_TEST(test_0rtt_beyond_the_windows) {
  qrpc_tls_config *stls = server_tls();
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qrpc_endpoint_opts eo;
  qrpc_endpoint_opts_default(&eo);
  eo.conn.stream_window = 64 * 1024;
  eo.conn.conn_window = 128 * 1024;
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, &eo), 0);
  qt_run_for(loop, 1100);
  get_ticket(srv.addr, ctls);
  early_client ec;
  run_client_len(&ec, srv.addr, ctls, BIG_PAYLOAD);
  qrpc_conn_stats st;
  qrpc_conn_get_stats(ec.cl.conn, &st);
  ck_assert_int_eq(st.early_data, QRPC_EARLY_ACCEPTED);
  ck_assert_int_eq(srv.streams, 2);
  close_client(&ec);
  qt_close_all(loop, &srv, NULL, 0);
  qrpc_tls_config_free(ctls);
  qrpc_tls_config_free(stls);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("quic_early");
  TCase *tc = tcase_create("early");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_stream_in_0rtt_accepted);
  tcase_add_test(tc, test_rejected_0rtt_sent_again);
  tcase_add_test(tc, test_replayed_0rtt_runs_once);
  tcase_add_test(tc, test_0rtt_beyond_the_windows);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
