/*
 * End-to-end handshake tests over loopback UDP: success, every way a
 * client refuses a server (or is refused), certificate loading, timeouts,
 * name resolution and IPv6.
 */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qrpc/qrpc.h"
#include "quic/testing.h"

/* The TLS alert RFC 9001 section 8.1 maps to QUIC error 0x178. */
#define ALERT_NO_APPLICATION_PROTOCOL 120

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

/* Starts the echo server with the generated certificate. The config is
 * released at once: the endpoint holds its own reference. */
static void start_server(qt_server *srv, const char *bind,
                         const qrpc_endpoint_opts *opts) {
  qrpc_tls_config *tls = qt_server_tls(&certs);
  ck_assert_ptr_nonnull(tls);
  ck_assert_int_eq(qt_server_start(srv, loop, bind, tls, opts), 0);
  qrpc_tls_config_free(tls);
  ck_assert_uint_ne(srv->port, 0);
}

typedef struct pair {
  qt_server *srv;
  qt_client *cl;
} pair;

static int pair_established(void *arg) {
  pair *p = arg;
  return p->cl->closed > 0 ||
         (p->cl->established > 0 && p->srv->established > 0);
}

static int client_closed(void *arg) {
  qt_client *cl = arg;
  return cl->closed > 0;
}

/* A client whose handshake must fail: runs until its on_closed, then a
 * little longer so a second on_closed or a late on_established would be
 * seen. */
static void expect_refused(qt_client *cl) {
  ck_assert_msg(qt_run_until(loop, client_closed, cl, QT_WAIT_MS),
                "the refused client was never closed");
  qt_run_for(loop, 200);
  ck_assert_int_eq(cl->closed, 1);
  ck_assert_int_eq(cl->established, 0);
  ck_assert_ptr_null(cl->conn);
}

static void assert_loopback4(const struct sockaddr_storage *ss, uint16_t port) {
  const struct sockaddr_in *a4 = (const struct sockaddr_in *)ss;
  ck_assert_int_eq(ss->ss_family, AF_INET);
  ck_assert_uint_eq(ntohl(a4->sin_addr.s_addr), INADDR_LOOPBACK);
  if (port)
    ck_assert_uint_eq(ntohs(a4->sin_port), port);
  else
    ck_assert_uint_ne(ntohs(a4->sin_port), 0);
}

START_TEST(test_handshake_ok) {
  qt_server srv;
  qt_client cl;
  pair p = {&srv, &cl};
  qrpc_tls_config *ctls;
  const qrpc_cert *chain;
  size_t n = 99;
  struct sockaddr_storage ss, cl_local;
  socklen_t len;
  qrpc_endpoint_stats st;

  start_server(&srv, "127.0.0.1:0", NULL);
  len = sizeof(ss);
  ck_assert_int_eq(qrpc_endpoint_local_addr(srv.ep, &ss, &len), 0);
  assert_loopback4(&ss, srv.port);

  ctls = qt_client_tls(certs.ca_pem);
  ck_assert_ptr_nonnull(ctls);
  ck_assert_int_eq(qt_client_connect(&cl, loop, srv.addr, NULL, ctls, NULL), 0);
  qrpc_tls_config_free(ctls);
  ck_assert_ptr_nonnull(cl.conn);
  /* The handshake is asynchronous: nothing can have completed yet. */
  ck_assert_int_eq(cl.established, 0);
  ck_assert_int_eq(qrpc_conn_is_established(cl.conn), 0);
  ck_assert_int_eq(qrpc_conn_is_server(cl.conn), 0);
  ck_assert_ptr_eq(qrpc_conn_user_data(cl.conn), &cl);
  ck_assert_ptr_null(qrpc_conn_alpn(cl.conn));
  ck_assert_ptr_null(qrpc_conn_peer_certs(cl.conn, &n));
  ck_assert_uint_eq(n, 0);

  ck_assert(qt_run_until(loop, pair_established, &p, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(cl.established, 1);
  ck_assert_int_eq(srv.established, 1);
  ck_assert_int_eq(cl.closed, 0);
  ck_assert_int_eq(srv.closed, 0);
  ck_assert_ptr_nonnull(srv.last_conn);

  /* ALPN on both sides, already at on_established on the client. */
  ck_assert(cl.alpn_ok_at_established);
  ck_assert_ptr_nonnull(qrpc_conn_alpn(cl.conn));
  ck_assert_str_eq(qrpc_conn_alpn(cl.conn), "qrpc/1");
  ck_assert_ptr_nonnull(qrpc_conn_alpn(srv.last_conn));
  ck_assert_str_eq(qrpc_conn_alpn(srv.last_conn), "qrpc/1");
  ck_assert_int_eq(qrpc_conn_is_established(cl.conn), 1);
  ck_assert_int_eq(qrpc_conn_is_established(srv.last_conn), 1);
  ck_assert_int_eq(qrpc_conn_is_server(srv.last_conn), 1);
  ck_assert_ptr_eq(qrpc_conn_user_data(srv.last_conn), &srv);

  /* The client sees the server's certificate, byte for byte. */
  n = 0;
  chain = qrpc_conn_peer_certs(cl.conn, &n);
  ck_assert_ptr_nonnull(chain);
  ck_assert_uint_ge(n, 1);
  ck_assert_uint_eq(chain[0].len, certs.server_cert_der_len);
  ck_assert_mem_eq(chain[0].der, certs.server_cert_der, chain[0].len);
  /* The client presented none. */
  n = 99;
  ck_assert_ptr_null(qrpc_conn_peer_certs(srv.last_conn, &n));
  ck_assert_uint_eq(n, 0);

  /* Both ends agree on the path. */
  len = sizeof(cl_local);
  ck_assert_int_eq(qrpc_conn_local_addr(cl.conn, &cl_local, &len), 0);
  assert_loopback4(&cl_local, 0);
  len = sizeof(ss);
  ck_assert_int_eq(qrpc_conn_remote_addr(cl.conn, &ss, &len), 0);
  assert_loopback4(&ss, srv.port);
  len = sizeof(ss);
  ck_assert_int_eq(qrpc_conn_local_addr(srv.last_conn, &ss, &len), 0);
  ck_assert_uint_eq(qt_sockaddr_port(&ss), srv.port);
  len = sizeof(ss);
  ck_assert_int_eq(qrpc_conn_remote_addr(srv.last_conn, &ss, &len), 0);
  assert_loopback4(&ss, qt_sockaddr_port(&cl_local));

  qrpc_endpoint_get_stats(srv.ep, &st);
  ck_assert_uint_eq(st.accepted, 1);
  ck_assert_uint_eq(st.connections, 1);
  ck_assert_uint_eq(st.handshake_failed, 0);

  qt_close_all(loop, &srv, &cl, 1);
  ck_assert_int_eq(cl.closed, 1);
  ck_assert_int_eq(srv.closed, 1);
}
END_TEST

static int handshake_failure_counted(void *arg) {
  qrpc_endpoint_stats st;
  qrpc_endpoint_get_stats(arg, &st);
  return st.handshake_failed > 0;
}

/* A refused handshake is never accepted on the server: no on_established
 * and therefore (it is the first callback) no on_closed either. */
static void assert_server_never_accepted(qt_server *srv) {
  qrpc_endpoint_stats st;
  ck_assert_msg(
      qt_run_until(loop, handshake_failure_counted, srv->ep, QT_WAIT_MS),
      "endpoint stats never counted the failed handshake");
  qrpc_endpoint_get_stats(srv->ep, &st);
  ck_assert_uint_eq(st.accepted, 0);
  ck_assert_int_eq(srv->established, 0);
  ck_assert_int_eq(srv->closed, 0);
}

static void assert_cert_refused(const qt_client *cl) {
  ck_assert_int_eq(cl->close.count, 1);
  ck_assert_int_eq(cl->close.error, QRPC_ECERT);
  ck_assert_int_eq(cl->close.kind, QRPC_CLOSE_TLS);
  ck_assert_int_eq(cl->close.local, 1);
  /* code is the TLS alert the client sent. */
  ck_assert_uint_gt(cl->close.code, 0);
  ck_assert_uint_lt(cl->close.code, 256);
}

static int xfer_closed(void *arg) {
  qt_xfer *x = arg;
  return x->closes > 0;
}

/* A server frees its TLS session once its handshake completed (a client
 * keeps its own, for tickets). A client that still speaks TLS after that,
 * here with a KeyUpdate message, which QUIC forbids, is closed with the
 * alert TLS itself would send (unexpected_message, CRYPTO_ERROR 0x10a),
 * and the server goes on serving its other clients. */
START_TEST(test_tls_after_handshake) {
  qt_server srv;
  qt_client cl[2];
  static const uint8_t key_update[] = {24, 0, 0, 1, 0};

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl[0], NULL), 0);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  ck_assert_ptr_nonnull(ctls);
  ck_assert_int_eq(qt_client_connect_wait(&cl[1], loop, &srv, ctls, NULL), 0);
  qrpc_tls_config_free(ctls);
  qt_run_for(loop, 50);
  ck_assert_int_eq(srv.live, 2);
  for (int i = 0; i < 2; i++) {
    ck_assert_ptr_nonnull(srv.conns[i]);
    ck_assert_int_eq(qrpci_conn_has_tls(srv.conns[i]), 0);
    ck_assert_int_eq(qrpci_conn_has_tls(cl[i].conn), 1);
  }

  ck_assert_int_eq(
      qrpci_conn_send_tls_data(cl[0].conn, key_update, sizeof(key_update)), 0);
  ck_assert(qt_run_until(loop, client_closed, &cl[0], QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(cl[0].closed, 1);
  ck_assert_int_eq(cl[0].close.kind, QRPC_CLOSE_TLS);
  ck_assert_int_eq(cl[0].close.local, 0);
  ck_assert_uint_eq(cl[0].close.code, 10);
  ck_assert_int_eq(srv.closed, 1);
  ck_assert_int_eq(srv.last_close.kind, QRPC_CLOSE_TLS);
  ck_assert_int_eq(srv.last_close.local, 1);
  ck_assert_uint_eq(srv.last_close.code, 10);
  ck_assert_ptr_nonnull(strstr(srv.last_close.reason, "after the handshake"));

  /* The other client is served as before, 64 KiB echoed intact, across a
   * key update it starts: the server derives its next keys without TLS. */
  ck_assert_int_eq(cl[1].closed, 0);
  ck_assert_int_eq(qrpci_conn_update_key(cl[1].conn), 0);
  qt_xfer x;
  ck_assert_int_eq(qt_xfer_start(&x, cl[1].conn, "echo", 65536, 7, 0, NULL), 0);
  ck_assert(qt_run_until(loop, xfer_closed, &x, QT_WAIT_MS));
  ck_assert_int_eq(x.ok, 1);
  ck_assert_uint_eq(x.recvd, 65536);
  /* ngtcp2 allows the next update only once the peer has answered in the
   * new key phase, three PTOs have passed, and a packet read since has
   * made the next keys (slow under valgrind): so once it is allowed, the
   * update above took place. Small echoes until then. */
  int updated = 0;
  uint64_t until = qt_now_ms() + QT_WAIT_MS;
  for (uint64_t seed = 8; !updated && qt_now_ms() < until; seed++) {
    qt_xfer y;
    qt_run_for(loop, 50);
    ck_assert_int_eq(qt_xfer_start(&y, cl[1].conn, "echo", 4096, seed, 0, NULL),
                     0);
    ck_assert(qt_run_until(loop, xfer_closed, &y, QT_WAIT_MS));
    ck_assert_int_eq(y.ok, 1);
    updated = qrpci_conn_update_key(cl[1].conn) == 0;
  }
  ck_assert_msg(updated, "the first key update was never confirmed");
  qt_xfer z;
  ck_assert_int_eq(qt_xfer_start(&z, cl[1].conn, "echo", 4096, 99, 0, NULL), 0);
  ck_assert(qt_run_until(loop, xfer_closed, &z, QT_WAIT_MS));
  ck_assert_int_eq(z.ok, 1);
  ck_assert_int_eq(cl[1].closed, 0);

  qt_close_all(loop, &srv, &cl[1], 1);
}
END_TEST

START_TEST(test_handshake_wrong_ca) {
  qt_server srv;
  qt_client cl;
  qrpc_tls_config *ctls;

  start_server(&srv, "127.0.0.1:0", NULL);
  ctls = qt_client_tls(certs.other_ca_pem);
  ck_assert_ptr_nonnull(ctls);
  ck_assert_int_eq(qt_client_connect(&cl, loop, srv.addr, NULL, ctls, NULL), 0);
  qrpc_tls_config_free(ctls);
  expect_refused(&cl);
  assert_cert_refused(&cl);
  assert_server_never_accepted(&srv);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

START_TEST(test_handshake_wrong_server_name) {
  qt_server srv;
  qt_client cl;
  qrpc_tls_config *ctls;

  start_server(&srv, "127.0.0.1:0", NULL);
  ctls = qt_client_tls(certs.ca_pem);
  ck_assert_ptr_nonnull(ctls);
  ck_assert_int_eq(qt_client_connect(&cl, loop, srv.addr,
                                     "not-this-server.example", ctls, NULL),
                   0);
  qrpc_tls_config_free(ctls);
  expect_refused(&cl);
  assert_cert_refused(&cl);
  assert_server_never_accepted(&srv);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

/* PROTOCOL.md section 1: no common ALPN is refused with TLS alert 120
 * (QUIC 0x178); tls.h: kind QRPC_CLOSE_TLS carries the alert as code. */
static void assert_alpn_refused(const qt_client *cl) {
  ck_assert_int_eq(cl->close.count, 1);
  ck_assert_int_eq(cl->close.kind, QRPC_CLOSE_TLS);
  ck_assert_uint_eq(cl->close.code, ALERT_NO_APPLICATION_PROTOCOL);
  ck_assert_int_eq(cl->close.error, QRPC_EALPN);
}

START_TEST(test_handshake_client_wrong_alpn) {
  qt_server srv;
  qt_client cl;
  qrpc_tls_config *ctls;

  start_server(&srv, "127.0.0.1:0", NULL);
  ctls = qt_client_tls(certs.ca_pem);
  ck_assert_ptr_nonnull(ctls);
  ck_assert_int_eq(qrpci_tls_config_set_alpn(ctls, "h3"), 0);
  ck_assert_int_eq(qt_client_connect(&cl, loop, srv.addr, NULL, ctls, NULL), 0);
  qrpc_tls_config_free(ctls);
  expect_refused(&cl);
  assert_alpn_refused(&cl);
  /* The server is the side that refused. */
  ck_assert_int_eq(cl.close.local, 0);
  assert_server_never_accepted(&srv);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

START_TEST(test_handshake_server_wrong_alpn) {
  qt_server srv;
  qt_client cl;
  qrpc_tls_config *stls, *ctls;

  stls = qt_server_tls(&certs);
  ck_assert_ptr_nonnull(stls);
  ck_assert_int_eq(qrpci_tls_config_set_alpn(stls, "h3"), 0);
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  qrpc_tls_config_free(stls);
  ctls = qt_client_tls(certs.ca_pem);
  ck_assert_ptr_nonnull(ctls);
  ck_assert_int_eq(qt_client_connect(&cl, loop, srv.addr, NULL, ctls, NULL), 0);
  qrpc_tls_config_free(ctls);
  expect_refused(&cl);
  assert_alpn_refused(&cl);
  ck_assert_int_eq(srv.established, 0);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

/* The certificate the callback should see first. */
static qrpc_cert server_der(void) {
  qrpc_cert c = {certs.server_cert_der, certs.server_cert_der_len};
  return c;
}

/* Connects with a client config trusting ca_pem and running the recording
 * callback; returns after the outcome is known. */
static void connect_with_verify(qt_server *srv, qt_client *cl,
                                const char *ca_pem, qt_verify_rec *v) {
  pair p = {srv, cl};
  qrpc_tls_config *ctls = qt_client_tls(ca_pem);
  ck_assert_ptr_nonnull(ctls);
  ck_assert_int_eq(
      qrpc_tls_config_set_verify_callback(ctls, qt_verify_record, v), 0);
  ck_assert_int_eq(qt_client_connect(cl, loop, srv->addr, NULL, ctls, NULL), 0);
  qrpc_tls_config_free(ctls);
  qt_run_until(loop, pair_established, &p, QT_WAIT_MS);
  qt_run_for(loop, 100);
  ck_assert_int_eq(v->calls, 1);
  ck_assert_uint_ge(v->chain_len, 1);
  ck_assert(v->chain0_matches);
}

START_TEST(test_verify_callback_refuses) {
  qt_server srv;
  qt_client cl;
  qt_verify_rec v = {.verdict = 1, .expect = server_der()};

  start_server(&srv, "127.0.0.1:0", NULL);
  connect_with_verify(&srv, &cl, certs.ca_pem, &v);
  ck_assert_int_eq(v.ok, 1);
  expect_refused(&cl);
  ck_assert_int_eq(cl.close.error, QRPC_ECERT);
  ck_assert_int_eq(cl.close.kind, QRPC_CLOSE_TLS);
  ck_assert_int_eq(cl.close.local, 1);
  ck_assert_int_eq(srv.established, 0);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

START_TEST(test_verify_callback_accepts) {
  qt_server srv;
  qt_client cl;
  qt_verify_rec v = {.verdict = 0, .expect = server_der()};

  start_server(&srv, "127.0.0.1:0", NULL);
  connect_with_verify(&srv, &cl, certs.ca_pem, &v);
  ck_assert_int_eq(v.ok, 1);
  ck_assert_int_eq(cl.established, 1);
  ck_assert_int_eq(cl.closed, 0);
  ck_assert_ptr_eq(v.conn, cl.conn);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* tls.h: the callback gets the built-in verdict and its return value
 * decides, so a chain the CA does not vouch for can still be accepted
 * (certificate pinning). */
START_TEST(test_verify_callback_overrides_failed_chain) {
  qt_server srv;
  qt_client cl;
  qt_verify_rec v = {.verdict = 0, .expect = server_der()};

  start_server(&srv, "127.0.0.1:0", NULL);
  connect_with_verify(&srv, &cl, certs.other_ca_pem, &v);
  ck_assert_int_eq(v.ok, 0);
  ck_assert_int_eq(cl.established, 1);
  ck_assert_int_eq(cl.closed, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_handshake_cert_files) {
  qt_cert_files files;
  qt_server srv;
  qt_client cl;
  pair p = {&srv, &cl};
  qrpc_tls_config *stls, *ctls;

  ck_assert_int_eq(qt_cert_files_write(&certs, &files), 0);
  ck_assert_int_eq(qrpc_tls_config_new(&stls), 0);
  ck_assert_int_eq(
      qrpc_tls_config_set_cert_files(stls, files.cert_path, files.key_path), 0);
  ck_assert_int_eq(qrpc_tls_config_new(&ctls), 0);
  ck_assert_int_eq(qrpc_tls_config_set_ca_file(ctls, files.ca_path), 0);
  /* Loaded means copied: the files can go before the handshake. */
  qt_cert_files_remove(&files);

  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  ck_assert_int_eq(qt_client_connect(&cl, loop, srv.addr, NULL, ctls, NULL), 0);
  qrpc_tls_config_free(stls);
  qrpc_tls_config_free(ctls);
  ck_assert(qt_run_until(loop, pair_established, &p, QT_WAIT_MS));
  ck_assert_int_eq(cl.established, 1);
  ck_assert_int_eq(srv.established, 1);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* The last error logged, to check what a failed setter says. */
static char last_error[1024];
static void keep_error(qrpc_log_level level, const char *msg, void *ud) {
  (void)ud;
  if (level >= QRPC_LOG_ERROR)
    snprintf(last_error, sizeof(last_error), "%s", msg);
}

/* A missing file is named, with the system's reason. */
static void said_missing(const char *path) {
  ck_assert_msg(strstr(last_error, path) != NULL &&
                    strstr(last_error, "No such file or directory") != NULL,
                "logged: %s", last_error);
  last_error[0] = '\0';
}

START_TEST(test_tls_config_errors) {
  qt_cert_files files;
  qrpc_tls_config *cfg;
  qrpc_endpoint *ep = NULL;
  static const qrpc_conn_callbacks no_cbs;
  static const char bad_key[] = "-----BEGIN PRIVATE KEY-----\n"
                                "AAAAAAAAAAAAAAAAAAAAAAAA\n"
                                "-----END PRIVATE KEY-----\n";
  char *half_ca = strdup(certs.ca_pem);
  char missing[400];

  ck_assert_ptr_nonnull(half_ca);
  half_ca[strlen(half_ca) / 2] = '\0';
  ck_assert_int_eq(qrpc_tls_config_new(&cfg), 0);

  /* Malformed or mismatched PEM. */
  ck_assert_int_eq(qrpc_tls_config_set_cert_pem(cfg, "not a certificate",
                                                certs.server_key_pem),
                   QRPC_ETLS);
  ck_assert_int_eq(
      qrpc_tls_config_set_cert_pem(cfg, certs.server_cert_pem, bad_key),
      QRPC_ETLS);
  ck_assert_int_eq(qrpc_tls_config_set_cert_pem(cfg, certs.server_cert_pem,
                                                certs.ca_key_pem),
                   QRPC_ETLS);
  ck_assert_int_eq(qrpc_tls_config_set_ca_pem(cfg, "not a certificate"),
                   QRPC_ETLS);
  ck_assert_int_eq(qrpc_tls_config_set_ca_pem(cfg, half_ca), QRPC_ETLS);

  /* Missing arguments. */
  ck_assert_int_eq(
      qrpc_tls_config_set_cert_pem(cfg, NULL, certs.server_key_pem),
      QRPC_EINVAL);
  ck_assert_int_eq(
      qrpc_tls_config_set_cert_pem(cfg, certs.server_cert_pem, NULL),
      QRPC_EINVAL);
  ck_assert_int_eq(qrpc_tls_config_set_ca_pem(cfg, NULL), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_tls_config_set_cert_files(cfg, NULL, NULL),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_tls_config_set_ca_file(cfg, NULL), QRPC_EINVAL);

  /* Unreadable files. */
  ck_assert_int_eq(qt_cert_files_write(&certs, &files), 0);
  snprintf(missing, sizeof(missing), "%s/absent.pem", files.dir);
  qrpc_log_set_handler(keep_error, NULL);
  ck_assert_int_eq(qrpc_tls_config_set_ca_file(cfg, missing), QRPC_ETLS);
  said_missing(missing);
  ck_assert_int_eq(qrpc_tls_config_set_cert_files(cfg, missing, files.key_path),
                   QRPC_ETLS);
  said_missing(missing);
  ck_assert_int_eq(
      qrpc_tls_config_set_cert_files(cfg, files.cert_path, missing), QRPC_ETLS);
  said_missing(missing);
  qrpc_log_set_handler(NULL, NULL);
  /* A CA file is not a key. */
  ck_assert_int_eq(
      qrpc_tls_config_set_cert_files(cfg, files.cert_path, files.ca_path),
      QRPC_ETLS);
  qt_cert_files_remove(&files);

  /* A server needs a certificate: the failed setters above left none. */
  ck_assert_int_eq(
      qrpc_endpoint_listen(loop, "127.0.0.1:0", cfg, NULL, &no_cbs, NULL, &ep),
      QRPC_ETLS);
  ck_assert_ptr_null(ep);

  /* The failures did not spoil the config. */
  ck_assert_int_eq(qrpc_tls_config_set_cert_pem(cfg, certs.server_cert_pem,
                                                certs.server_key_pem),
                   0);
  ck_assert_int_eq(
      qrpc_endpoint_listen(loop, "127.0.0.1:0", cfg, NULL, &no_cbs, NULL, &ep),
      0);
  /* tls.h: a config in use can no longer change. */
  ck_assert_int_eq(qrpc_tls_config_set_ca_pem(cfg, certs.ca_pem), QRPC_ESTATE);
  ck_assert_int_eq(qrpc_tls_config_set_cert_pem(cfg, certs.server_cert_pem,
                                                certs.server_key_pem),
                   QRPC_ESTATE);
  ck_assert_int_eq(
      qrpc_tls_config_set_verify_callback(cfg, qt_verify_record, NULL),
      QRPC_ESTATE);
  ck_assert_int_eq(qrpc_tls_config_INSECURE_skip_verify(cfg), QRPC_ESTATE);
  qrpc_endpoint_free(ep);
  qrpc_tls_config_free(cfg);
  free(half_ca);
}
END_TEST

START_TEST(test_address_errors) {
  static const qrpc_conn_callbacks no_cbs;
  static const char *const bad[] = {"",           "127.0.0.1",
                                    "127.0.0.1:", "127.0.0.1:65536",
                                    "[::1:4433",  "127.0.0.1:-1"};
  qrpc_tls_config *stls = qt_server_tls(&certs);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qrpc_endpoint *ep = NULL, *ep2 = NULL;
  qrpc_conn *conn = NULL;
  char addr[64];
  size_t i;
  int rv;

  ck_assert_ptr_nonnull(stls);
  ck_assert_ptr_nonnull(ctls);
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    ck_assert_msg(qrpc_endpoint_listen(loop, bad[i], stls, NULL, &no_cbs, NULL,
                                       &ep) == QRPC_EINVAL,
                  "listen accepted \"%s\"", bad[i]);
    ck_assert_msg(qrpc_conn_connect(loop, bad[i], NULL, ctls, NULL, &no_cbs,
                                    NULL, &conn) == QRPC_EINVAL,
                  "connect accepted \"%s\"", bad[i]);
  }
  /* No config at all: either documented error fits. */
  rv =
      qrpc_endpoint_listen(loop, "127.0.0.1:0", NULL, NULL, &no_cbs, NULL, &ep);
  ck_assert_msg(rv == QRPC_EINVAL || rv == QRPC_ETLS, "listen: %s",
                qrpc_strerror(rv));
  ck_assert_ptr_null(ep);

  /* A second endpoint on a taken address. */
  ck_assert_int_eq(
      qrpc_endpoint_listen(loop, "127.0.0.1:0", stls, NULL, &no_cbs, NULL, &ep),
      0);
  snprintf(addr, sizeof(addr), "127.0.0.1:%u",
           (unsigned)qrpc_endpoint_port(ep));
  ck_assert_int_eq(
      qrpc_endpoint_listen(loop, addr, stls, NULL, &no_cbs, NULL, &ep2),
      QRPC_EADDRINUSE);
  ck_assert_ptr_null(ep2);
  qrpc_endpoint_free(ep);
  qrpc_endpoint_free(NULL);
  qrpc_tls_config_free(stls);
  qrpc_tls_config_free(ctls);
}
END_TEST

START_TEST(test_handshake_timeout) {
  qt_udp_sink sink;
  qt_client cl;
  qrpc_conn_opts opts;
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  uint64_t t0, elapsed;

  ck_assert_ptr_nonnull(ctls);
  ck_assert_int_eq(qt_udp_sink_open(&sink, loop), 0);
  qrpc_conn_opts_default(&opts);
  opts.handshake_timeout_ms = 300;
  t0 = qt_now_ms();
  ck_assert_int_eq(
      qt_client_connect(&cl, loop, sink.addr, "localhost", ctls, &opts), 0);
  qrpc_tls_config_free(ctls);
  expect_refused(&cl);
  elapsed = qt_now_ms() - t0;
  ck_assert_uint_ge(elapsed, 250);
  ck_assert_uint_lt(elapsed, 3000);
  ck_assert_int_gt(sink.received, 0);
  ck_assert_int_eq(cl.close.kind, QRPC_CLOSE_HANDSHAKE_TIMEOUT);
  ck_assert_int_eq(cl.close.error, QRPC_ETIMEDOUT);
  ck_assert_int_eq(cl.close.local, 1);
  qt_run_until_released(loop, QT_WAIT_MS);
  qt_udp_sink_close(&sink);
}
END_TEST

/* "localhost" resolves through the loop's resolver without blocking. The
 * server listens on 127.0.0.1 and, where possible, on ::1 with the same
 * port, so the test does not depend on which address the hosts file lists
 * first. */
START_TEST(test_handshake_by_name) {
  qt_server srv4, srv6;
  qt_client cl;
  int have6 = 0;
  char addr[64];
  qrpc_tls_config *stls = qt_server_tls(&certs);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  uint64_t t0, call_ms;

  ck_assert_ptr_nonnull(stls);
  ck_assert_ptr_nonnull(ctls);
  ck_assert_int_eq(qt_server_start(&srv4, loop, "127.0.0.1:0", stls, NULL), 0);
  if (qt_ipv6_available()) {
    snprintf(addr, sizeof(addr), "[::1]:%u", (unsigned)srv4.port);
    have6 = qt_server_start(&srv6, loop, addr, stls, NULL) == 0;
  }
  snprintf(addr, sizeof(addr), "localhost:%u", (unsigned)srv4.port);
  t0 = qt_now_ms();
  ck_assert_int_eq(qt_client_connect(&cl, loop, addr, NULL, ctls, NULL), 0);
  call_ms = qt_now_ms() - t0;
  ck_assert_int_eq(cl.established, 0);
  ck_assert_int_eq(cl.closed, 0);
  ck_assert_uint_lt(call_ms, 100);
  qrpc_tls_config_free(stls);
  qrpc_tls_config_free(ctls);

  ck_assert(qt_run_until_count(loop, &cl.established, 1, QT_WAIT_MS));
  ck_assert_int_eq(cl.closed, 0);
  ck_assert_int_eq(qrpc_conn_remote_addr(cl.conn, &ss, &len), 0);
  ck_assert_uint_eq(qt_sockaddr_port(&ss), srv4.port);
  qt_client_close(&cl);
  if (have6) qt_server_stop(&srv6);
  qt_close_all(loop, &srv4, NULL, 0);
}
END_TEST

START_TEST(test_handshake_ipv6) {
  qt_server srv;
  qt_client cl;
  qt_xfer x;
  qrpc_tls_config *ctls;
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);

  if (!qt_ipv6_available()) {
    fprintf(stderr, "test_handshake_ipv6: no ::1 here, nothing to test\n");
    return;
  }
  start_server(&srv, "[::1]:0", NULL);
  ck_assert_int_eq(strncmp(srv.addr, "[::1]:", 6), 0);
  ctls = qt_client_tls(certs.ca_pem);
  ck_assert_ptr_nonnull(ctls);
  /* The server name defaults to "::1": verified against the IP SAN. */
  ck_assert_int_eq(qt_client_connect_wait(&cl, loop, &srv, ctls, NULL), 0);
  qrpc_tls_config_free(ctls);
  ck_assert_int_eq(qrpc_conn_remote_addr(cl.conn, &ss, &len), 0);
  ck_assert_int_eq(ss.ss_family, AF_INET6);
  ck_assert_uint_eq(qt_sockaddr_port(&ss), srv.port);

  ck_assert_int_eq(qt_xfer_start(&x, cl.conn, "echo", 4096, 6, 0, NULL), 0);
  ck_assert(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS));
  ck_assert(x.ok);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

static Suite *handshake_suite(void) {
  Suite *s = suite_create("quic_handshake");
  TCase *tc = tcase_create("handshake");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_handshake_ok);
  tcase_add_test(tc, test_handshake_wrong_ca);
  tcase_add_test(tc, test_tls_after_handshake);
  tcase_add_test(tc, test_handshake_wrong_server_name);
  tcase_add_test(tc, test_handshake_client_wrong_alpn);
  tcase_add_test(tc, test_handshake_server_wrong_alpn);
  tcase_add_test(tc, test_verify_callback_refuses);
  tcase_add_test(tc, test_verify_callback_accepts);
  tcase_add_test(tc, test_verify_callback_overrides_failed_chain);
  tcase_add_test(tc, test_handshake_cert_files);
  tcase_add_test(tc, test_tls_config_errors);
  tcase_add_test(tc, test_address_errors);
  tcase_add_test(tc, test_handshake_timeout);
  tcase_add_test(tc, test_handshake_by_name);
  tcase_add_test(tc, test_handshake_ipv6);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(handshake_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
