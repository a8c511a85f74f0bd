/*
 * A client moving to a new local port mid-connection (network change or
 * NAT rebinding): streams keep working, both sides see the new path.
 */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "certs.h"
#include "harness.h"
#include "qrpc/qrpc.h"

static qt_certs certs;

typedef struct side {
  qrpc_conn *conn;
  int established;
  int path_changes;
  int closed;
  size_t echoed;
  int fins;
} side;

static void srv_read(qrpc_stream *s, const uint8_t *d, size_t n, int fin,
                     void *ud) {
  if (n) ck_assert_int_eq(qrpc_stream_write(s, d, n), 0);
  if (fin) qrpc_stream_finish(s);
}

static void srv_stream(qrpc_conn *c, qrpc_stream *s, const char *name,
                       size_t len, void *ud) {
  static const qrpc_stream_callbacks cbs = {.on_read = srv_read};
  qrpc_stream_set_callbacks(s, &cbs, ud);
}

static void on_established(qrpc_conn *c, void *ud) {
  side *sd = ud;
  sd->conn = c;
  sd->established++;
}

static void on_path(qrpc_conn *c, void *ud) { ((side *)ud)->path_changes++; }

static void on_closed(qrpc_conn *c, const qrpc_close_info *i, void *ud) {
  ((side *)ud)->closed++;
}

static void cli_read(qrpc_stream *s, const uint8_t *d, size_t n, int fin,
                     void *ud) {
  side *sd = ud;
  sd->echoed += n;
  if (fin) sd->fins++;
}

static void echo_once(qrpc_loop *loop, side *cl, size_t len) {
  static const qrpc_stream_callbacks cbs = {.on_read = cli_read};
  qrpc_stream *s;
  static uint8_t buf[65536];
  int fins = cl->fins;
  size_t before = cl->echoed;
  ck_assert_int_eq(qrpc_stream_open(cl->conn, "echo", &cbs, cl, &s), 0);
  ck_assert_int_eq(qrpc_stream_write(s, buf, len), 0);
  ck_assert_int_eq(qrpc_stream_finish(s), 0);
  int want = fins + 1;
  ck_assert(qt_run_until_count(loop, &cl->fins, want, QT_WAIT_MS));
  ck_assert_uint_eq(cl->echoed - before, len);
}

static int same_addr(const struct sockaddr_storage *a, socklen_t al,
                     const struct sockaddr_storage *b, socklen_t bl) {
  return al == bl && memcmp(a, b, al) == 0;
}

START_TEST(test_rebind_keeps_connection) {
  qrpc_loop *loop;
  ck_assert_int_eq(qrpc_loop_new(NULL, &loop), 0);
  side srv, cl;
  memset(&srv, 0, sizeof(srv));
  memset(&cl, 0, sizeof(cl));
  qrpc_conn_callbacks scb = {.on_established = on_established,
                             .on_stream = srv_stream,
                             .on_path_changed = on_path,
                             .on_closed = on_closed};
  qrpc_conn_callbacks ccb = {.on_established = on_established,
                             .on_path_changed = on_path,
                             .on_closed = on_closed};
  qrpc_tls_config *st = qt_server_tls(&certs);
  qrpc_tls_config *ct = qt_client_tls(certs.ca_pem);
  qrpc_endpoint *ep;
  ck_assert_int_eq(
      qrpc_endpoint_listen(loop, "127.0.0.1:0", st, NULL, &scb, &srv, &ep), 0);
  char addr[64];
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", qrpc_endpoint_port(ep));
  qrpc_conn *c;
  ck_assert_int_eq(
      qrpc_conn_connect(loop, addr, "localhost", ct, NULL, &ccb, &cl, &c), 0);
  ck_assert(qt_run_until_count(loop, &cl.established, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &srv.established, 1, QT_WAIT_MS));
  /* Traffic first, so the handshake is confirmed and spare ids arrived. */
  echo_once(loop, &cl, 1000);

  struct sockaddr_storage before, after, seen;
  socklen_t bl, al, sl;
  ck_assert_int_eq(qrpc_conn_local_addr(c, &before, &bl), 0);
  ck_assert_int_eq(qrpc_conn_rebind(c), 0);
  ck_assert_int_eq(cl.path_changes, 1);
  ck_assert_int_eq(qrpc_conn_local_addr(c, &after, &al), 0);
  ck_assert_int_ne(qt_sockaddr_port(&before), qt_sockaddr_port(&after));

  /* Streams carry on over the new path, and the server follows it. */
  echo_once(loop, &cl, 40000);
  ck_assert(qt_run_until_count(loop, &srv.path_changes, 1, QT_WAIT_MS));
  ck_assert_int_eq(qrpc_conn_remote_addr(srv.conn, &seen, &sl), 0);
  ck_assert(same_addr(&seen, sl, &after, al));
  ck_assert_int_eq(cl.closed, 0);
  ck_assert_int_eq(srv.closed, 0);

  /* A server connection cannot rebind. */
  ck_assert_int_eq(qrpc_conn_rebind(srv.conn), QRPC_EINVAL);

  qrpc_conn_close(c, 0, "done");
  ck_assert(qt_run_until_count(loop, &srv.closed, 1, QT_WAIT_MS));
  qrpc_endpoint_free(ep);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
  qrpc_loop_free(loop);
  qrpc_tls_config_free(st);
  qrpc_tls_config_free(ct);
}
END_TEST

int main(void) {
  if (qt_certs_generate(&certs) != 0) return 1;
  Suite *s = suite_create("migration");
  TCase *tc = tcase_create("rebind");
  tcase_add_test(tc, test_rebind_keeps_connection);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  qt_certs_free(&certs);
  return failed ? 1 : 0;
}
