/*
 * Outgoing connections sharing one UDP socket (qrpc_conn_opts.via and
 * qrpc_endpoint_open()): many connections on one local port, each with its
 * own bytes, over real handshakes; what such an endpoint refuses; and what
 * happens to its connections when it is freed first.
 */
#include <check.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "harness.h"
#include "qrpc/qrpc.h"

#define NCONNS 8

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls, *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

static int xfers_closed(void *arg) {
  qt_xfer_stats *st = arg;
  return st->closed == st->opened;
}

/* Echoes len pattern bytes on every connection of cls at once, each with
 * its own seed, and checks each got its own bytes back. */
static void echo_all(qt_client *cls, size_t n, uint64_t len, uint64_t seed) {
  qt_xfer x[NCONNS];
  qt_xfer_stats st;
  memset(x, 0, sizeof(x));
  memset(&st, 0, sizeof(st));
  for (size_t i = 0; i < n; i++)
    ck_assert_int_eq(
        qt_xfer_start(&x[i], cls[i].conn, "echo", len, seed + i, 0, &st), 0);
  ck_assert(qt_run_until(loop, xfers_closed, &st, QT_WAIT_MS));
  for (size_t i = 0; i < n; i++) {
    ck_assert_msg(x[i].ok, "connection %zu: echo not intact", i);
    ck_assert_uint_eq(x[i].recvd, len);
  }
}

static uint16_t port_of(const struct sockaddr_storage *ss) {
  return qt_sockaddr_port(ss);
}

START_TEST(test_many_connections_one_socket) {
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  qrpc_endpoint *ep;
  ck_assert_int_eq(qrpc_endpoint_open(loop, "127.0.0.1:0", NULL, &ep), 0);
  uint16_t port = qrpc_endpoint_port(ep);
  ck_assert_uint_ne(port, 0);

  qrpc_conn_opts o;
  qrpc_conn_opts_default(&o);
  o.via = ep;
  qt_client cls[NCONNS];
  memset(cls, 0, sizeof(cls));
  for (size_t i = 0; i < NCONNS; i++)
    ck_assert_int_eq(qt_client_connect_wait(&cls[i], loop, &srv, ctls, &o), 0);
  ck_assert_int_eq(srv.established, NCONNS);

  /* One local port for all, and the server sees each from it. */
  for (size_t i = 0; i < NCONNS; i++) {
    struct sockaddr_storage ss;
    socklen_t len;
    ck_assert_int_eq(qrpc_conn_local_addr(cls[i].conn, &ss, &len), 0);
    ck_assert_uint_eq(port_of(&ss), port);
    ck_assert_int_eq(qrpc_conn_remote_addr(srv.conns[i], &ss, &len), 0);
    ck_assert_uint_eq(port_of(&ss), port);
  }

  /* Concurrent transfers keep their bytes apart, large ones included. */
  echo_all(cls, NCONNS, 1000, 100);
  echo_all(cls, NCONNS, 300000, 200);

  /* The endpoint's counters hold the traffic of its connections; it
   * accepted none. */
  qrpc_endpoint_stats st;
  qrpc_endpoint_get_stats(ep, &st);
  ck_assert_uint_eq(st.accepted, 0);
  ck_assert_uint_ge(st.bytes_recv, NCONNS * 300000);

  /* A shared socket cannot move. */
  ck_assert_int_eq(qrpc_conn_rebind(cls[0].conn), QRPC_ESTATE);

  /* One closing leaves the others working. */
  qt_client_close(&cls[0]);
  ck_assert(qt_run_until_count(loop, &srv.closed, 1, QT_WAIT_MS));
  echo_all(cls + 1, NCONNS - 1, 50000, 300);
  ck_assert_int_eq(srv.closed, 1);

  qt_close_all(loop, &srv, cls, NCONNS);
  qrpc_endpoint_free(ep);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

/* An endpoint for outgoing connections answers no handshake. */
START_TEST(test_open_endpoint_accepts_nothing) {
  qrpc_endpoint *ep;
  ck_assert_int_eq(qrpc_endpoint_open(loop, "127.0.0.1:0", NULL, &ep), 0);
  char addr[64];
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", qrpc_endpoint_port(ep));
  qrpc_conn_opts o;
  qrpc_conn_opts_default(&o);
  o.handshake_timeout_ms = 300;
  qt_client cl;
  memset(&cl, 0, sizeof(cl));
  ck_assert_int_eq(qt_client_connect(&cl, loop, addr, "localhost", ctls, &o),
                   0);
  ck_assert(qt_run_until_count(loop, &cl.closed, 1, QT_WAIT_MS));
  ck_assert_int_eq(cl.established, 0);
  ck_assert_int_eq(cl.close.error, QRPC_ETIMEDOUT);
  qrpc_endpoint_stats st;
  qrpc_endpoint_get_stats(ep, &st);
  ck_assert_uint_ge(st.packets_dropped, 1);
  ck_assert_uint_eq(st.accepted, 0);
  qrpc_endpoint_free(ep);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

/* Options that cannot work are refused at once or reported by on_closed. */
START_TEST(test_via_refused) {
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  qrpc_loop *other;
  ck_assert_int_eq(qrpc_loop_new(NULL, &other), 0);
  qrpc_endpoint *ep;
  ck_assert_int_eq(qrpc_endpoint_open(other, "127.0.0.1:0", NULL, &ep), 0);
  qrpc_conn_opts o;
  qrpc_conn_opts_default(&o);
  o.via = ep;
  qrpc_conn *c = NULL;
  /* Another loop's socket. */
  ck_assert_int_eq(
      qrpc_conn_connect(loop, srv.addr, "localhost", ctls, &o, NULL, NULL, &c),
      QRPC_EINVAL);
  qrpc_endpoint_free(ep);
  ck_assert(qt_run_until_released(other, QT_WAIT_MS));
  qrpc_loop_free(other);

  /* A socket of the other address family: the server is IPv4. */
  if (qrpc_endpoint_open(loop, "[::1]:0", NULL, &ep) == 0) {
    o.via = ep;
    qt_client cl;
    memset(&cl, 0, sizeof(cl));
    ck_assert_int_eq(
        qt_client_connect(&cl, loop, srv.addr, "localhost", ctls, &o), 0);
    ck_assert(qt_run_until_count(loop, &cl.closed, 1, QT_WAIT_MS));
    ck_assert_int_eq(cl.established, 0);
    ck_assert_int_eq(cl.close.error, QRPC_EINVAL);
    ck_assert_ptr_nonnull(strstr(cl.close.reason, "address family"));
    qrpc_endpoint_free(ep);
  }
  ck_assert_int_eq(srv.established, 0);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

/* Freed before its connections: open ones close with QRPC_ECLOSED (once
 * each) and the server hears it; one still starting fails the same way
 * when it would start. Nothing is touched after it is gone (ASan). */
START_TEST(test_endpoint_freed_first) {
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  qrpc_endpoint *ep;
  ck_assert_int_eq(qrpc_endpoint_open(loop, "127.0.0.1:0", NULL, &ep), 0);
  qrpc_conn_opts o;
  qrpc_conn_opts_default(&o);
  o.via = ep;
  qt_client cls[3];
  memset(cls, 0, sizeof(cls));
  for (size_t i = 0; i < 2; i++)
    ck_assert_int_eq(qt_client_connect_wait(&cls[i], loop, &srv, ctls, &o), 0);
  echo_all(cls, 2, 20000, 400);
  /* Still resolving its server's name when the endpoint goes. */
  ck_assert_int_eq(
      qt_client_connect(&cls[2], loop, srv.addr, "localhost", ctls, &o), 0);

  qrpc_endpoint_free(ep);
  for (size_t i = 0; i < 3; i++) {
    ck_assert(qt_run_until_count(loop, &cls[i].closed, 1, QT_WAIT_MS));
    ck_assert_int_eq(cls[i].close.error, QRPC_ECLOSED);
  }
  ck_assert(qt_run_until_count(loop, &srv.closed, 2, QT_WAIT_MS));
  qt_run_for(loop, 50);
  for (size_t i = 0; i < 3; i++) ck_assert_int_eq(cls[i].closed, 1);
  ck_assert_int_eq(cls[2].established, 0);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("shared_socket");
  TCase *tc = tcase_create("via");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_many_connections_one_socket);
  tcase_add_test(tc, test_open_endpoint_accepts_nothing);
  tcase_add_test(tc, test_via_refused);
  tcase_add_test(tc, test_endpoint_freed_first);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
