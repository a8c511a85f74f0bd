/*
 * Mutual TLS over loopback UDP with real handshakes: each client
 * authentication mode of a server against clients with a good
 * certificate, none, or one the server's CA did not sign; the identities
 * both sides report; the server's verification callback; the setters'
 * errors; and certificate files that are missing, mismatched, expired or
 * hold no certificate. Nothing here depends on the TLS backend.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qrpc/qrpc.h"

/* Longer than a loopback round trip by far: long enough for a late
 * callback (a second on_closed, an on_established after a refusal) to
 * show. */
#define SETTLE_MS 200

/* RFC 8446 6.2: a server that requires a certificate and gets none. */
#define ALERT_CERTIFICATE_REQUIRED 116

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

/* ---- Configs ---------------------------------------------------------- */

/* A server config with the generated certificate that asks clients for
 * theirs in mode and verifies them against the test CA. */
static qrpc_tls_config *server_tls(qrpc_client_auth mode) {
  qrpc_tls_config *cfg = qt_server_tls(&certs);
  ck_assert_ptr_nonnull(cfg);
  ck_assert_int_eq(qrpc_tls_config_set_ca_pem(cfg, certs.ca_pem), 0);
  ck_assert_int_eq(qrpc_tls_config_set_client_auth(cfg, mode), 0);
  return cfg;
}

/* A client config trusting the test CA that presents cert_pem when a
 * server asks (none when cert_pem is NULL). */
static qrpc_tls_config *client_tls(const char *cert_pem, const char *key_pem) {
  qrpc_tls_config *cfg = qt_client_tls(certs.ca_pem);
  ck_assert_ptr_nonnull(cfg);
  if (cert_pem)
    ck_assert_int_eq(qrpc_tls_config_set_cert_pem(cfg, cert_pem, key_pem), 0);
  return cfg;
}

/* Starts the echo server; the endpoint keeps its own reference to stls,
 * so the test's is released here. */
static void start_server(qt_server *srv, qrpc_tls_config *stls) {
  ck_assert_int_eq(qt_server_start(srv, loop, "127.0.0.1:0", stls, NULL), 0);
  qrpc_tls_config_free(stls);
}

/* Connects and waits until both sides report the handshake. */
static void connect_accepted(qt_server *srv, qt_client *cl,
                             qrpc_tls_config *ctls) {
  int rv = qt_client_connect_wait(cl, loop, srv, ctls, NULL);
  qrpc_tls_config_free(ctls);
  ck_assert_msg(rv == 0, "handshake: %s (client closed %d, error %s)",
                qrpc_strerror(rv), cl->closed, qrpc_strerror(cl->close.error));
  ck_assert_int_eq(cl->established, 1);
  ck_assert_int_eq(srv->established, 1);
  ck_assert_ptr_nonnull(srv->last_conn);
}

typedef struct refusal {
  qt_client *cl;
  qrpc_endpoint *ep;
} refusal;

static int refusal_done(void *arg) {
  refusal *r = arg;
  qrpc_endpoint_stats st;
  qrpc_endpoint_get_stats(r->ep, &st);
  return r->cl->closed > 0 && st.handshake_failed > 0;
}

/* Connects a client the server must refuse for its certificate, and
 * checks what both sides report. The client completes its half of the
 * TLS 1.3 handshake when it sends its Finished, right after its
 * Certificate message (empty when it has no certificate), so it reports
 * the connection established before the server has looked at it; the
 * server's refusal then closes it with a certificate alert (alert, when
 * not 0, says which). The server never shows the application the
 * connection: it only counts a failed handshake. */
static void connect_refused(qt_server *srv, qt_client *cl,
                            qrpc_tls_config *ctls, uint64_t alert) {
  refusal r = {cl, srv->ep};
  qrpc_endpoint_stats st;
  int rv = qt_client_connect(cl, loop, srv->addr, NULL, ctls, NULL);
  qrpc_tls_config_free(ctls);
  ck_assert_int_eq(rv, 0);
  ck_assert_msg(qt_run_until(loop, refusal_done, &r, QT_WAIT_MS),
                "no refusal: client closed %d, established %d", cl->closed,
                cl->established);
  qt_run_for(loop, SETTLE_MS);

  ck_assert_int_eq(cl->established, 1);
  ck_assert_int_eq(cl->closed, 1);
  ck_assert_ptr_null(cl->conn);
  ck_assert_msg(cl->close.error == QRPC_ECERT, "client closed with %s (%s)",
                qrpc_strerror(cl->close.error), cl->close.reason);
  ck_assert_int_eq(cl->close.kind, QRPC_CLOSE_TLS);
  ck_assert_int_eq(cl->close.local, 0);
  ck_assert_uint_gt(cl->close.code, 0);
  ck_assert_uint_lt(cl->close.code, 256);
  if (alert) ck_assert_uint_eq(cl->close.code, alert);

  qrpc_endpoint_get_stats(srv->ep, &st);
  ck_assert_uint_eq(st.handshake_failed, 1);
  ck_assert_uint_eq(st.accepted, 0);
  ck_assert_uint_eq(st.connections, 0);
  ck_assert_int_eq(srv->established, 0);
  ck_assert_int_eq(srv->closed, 0);
}

/* ---- Identities ------------------------------------------------------- */

/* s holds exactly the bytes of want, with the NUL quic.h promises after
 * them. */
static void assert_str(qrpc_str s, const char *want, const char *what) {
  size_t n = strlen(want);
  ck_assert_ptr_nonnull(s.ptr);
  ck_assert_msg(s.len == n && memcmp(s.ptr, want, n) == 0,
                "%s is \"%.*s\" (%zu bytes), expected \"%s\"", what, (int)s.len,
                s.ptr, s.len, want);
  ck_assert_int_eq(s.ptr[s.len], '\0');
}

static void assert_client_identity(const qrpc_identity *id) {
  ck_assert_ptr_nonnull(id);
  assert_str(id->subject, "CN=qrpc-test-client,O=qrpc tests", "subject");
  ck_assert_uint_eq(id->ndns, 1);
  assert_str(id->dns[0], QT_CLIENT_DNS, "DNS name");
  ck_assert_uint_eq(id->nuri, 1);
  assert_str(id->uri[0], QT_CLIENT_URI, "URI");
  ck_assert_uint_eq(id->nemail, 1);
  assert_str(id->email[0], QT_CLIENT_EMAIL, "email");
  ck_assert_uint_eq(id->nip, 1);
  assert_str(id->ip[0], "127.0.0.2", "IP address");
}

static void assert_server_identity(const qrpc_identity *id) {
  ck_assert_ptr_nonnull(id);
  assert_str(id->subject, "CN=localhost", "subject");
  ck_assert_uint_eq(id->ndns, 1);
  assert_str(id->dns[0], "localhost", "DNS name");
  ck_assert_uint_eq(id->nip, 2);
  assert_str(id->ip[0], "127.0.0.1", "IP address");
  assert_str(id->ip[1], "::1", "IP address");
  ck_assert_uint_eq(id->nuri, 0);
  ck_assert_uint_eq(id->nemail, 0);
}

/* The server holds the client's certificate, byte for byte. */
static void assert_client_chain(qrpc_conn *server_conn) {
  size_t n = 0;
  const qrpc_cert *chain = qrpc_conn_peer_certs(server_conn, &n);
  ck_assert_ptr_nonnull(chain);
  ck_assert_uint_ge(n, 1);
  ck_assert_uint_eq(chain[0].len, certs.client_cert_der_len);
  ck_assert_mem_eq(chain[0].der, certs.client_cert_der, chain[0].len);
}

/* The connection carries data: an echo stream round trip. */
static void assert_echo(qt_client *cl) {
  qt_xfer x;
  ck_assert_int_eq(qt_xfer_start(&x, cl->conn, "echo", 4096, 7, 0, NULL), 0);
  ck_assert(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS));
  ck_assert(x.ok);
}

/* ---- REQUIRE ---------------------------------------------------------- */

START_TEST(test_require_accepts_ca_signed_client) {
  qt_server srv;
  qt_client cl;
  qrpc_tls_config *ctls;
  qrpc_endpoint_stats st;
  const qrpc_identity *id;

  start_server(&srv, server_tls(QRPC_CLIENT_AUTH_REQUIRE));
  ctls = client_tls(certs.client_cert_pem, certs.client_key_pem);
  ck_assert_int_eq(qt_client_connect(&cl, loop, srv.addr, NULL, ctls, NULL), 0);
  qrpc_tls_config_free(ctls);
  /* Nobody is identified before the handshake. */
  ck_assert_ptr_null(qrpc_conn_peer_identity(cl.conn));
  ck_assert(qt_run_until_count(loop, &srv.established, 1, QT_WAIT_MS));
  ck_assert_int_eq(cl.established, 1);
  ck_assert_int_eq(cl.closed, 0);

  id = qrpc_conn_peer_identity(srv.last_conn);
  assert_client_identity(id);
  assert_client_chain(srv.last_conn);
  assert_server_identity(qrpc_conn_peer_identity(cl.conn));
  assert_echo(&cl);
  /* The identity stays put while the connection lives. */
  ck_assert_ptr_eq(qrpc_conn_peer_identity(srv.last_conn), id);
  assert_client_identity(id);

  qrpc_endpoint_get_stats(srv.ep, &st);
  ck_assert_uint_eq(st.accepted, 1);
  ck_assert_uint_eq(st.handshake_failed, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_require_refuses_client_without_cert) {
  qt_server srv;
  qt_client cl;

  start_server(&srv, server_tls(QRPC_CLIENT_AUTH_REQUIRE));
  connect_refused(&srv, &cl, client_tls(NULL, NULL),
                  ALERT_CERTIFICATE_REQUIRED);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

START_TEST(test_require_refuses_other_ca_client) {
  qt_server srv;
  qt_client cl;

  start_server(&srv, server_tls(QRPC_CLIENT_AUTH_REQUIRE));
  connect_refused(
      &srv, &cl,
      client_tls(certs.other_client_cert_pem, certs.other_client_key_pem), 0);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

/* tls.h: client certificates are verified "for TLS client use": one the
 * CA made for servers only is refused. */
START_TEST(test_require_refuses_server_only_cert) {
  qt_server srv;
  qt_client cl;

  start_server(&srv, server_tls(QRPC_CLIENT_AUTH_REQUIRE));
  connect_refused(&srv, &cl,
                  client_tls(certs.server_cert_pem, certs.server_key_pem), 0);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

/* ---- REQUEST ---------------------------------------------------------- */

START_TEST(test_request_accepts_client_without_cert) {
  qt_server srv;
  qt_client cl;
  size_t n = 99;

  start_server(&srv, server_tls(QRPC_CLIENT_AUTH_REQUEST));
  connect_accepted(&srv, &cl, client_tls(NULL, NULL));
  ck_assert_ptr_null(qrpc_conn_peer_identity(srv.last_conn));
  ck_assert_ptr_null(qrpc_conn_peer_certs(srv.last_conn, &n));
  ck_assert_uint_eq(n, 0);
  assert_server_identity(qrpc_conn_peer_identity(cl.conn));
  assert_echo(&cl);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_request_identifies_ca_signed_client) {
  qt_server srv;
  qt_client cl;

  start_server(&srv, server_tls(QRPC_CLIENT_AUTH_REQUEST));
  connect_accepted(&srv, &cl,
                   client_tls(certs.client_cert_pem, certs.client_key_pem));
  assert_client_identity(qrpc_conn_peer_identity(srv.last_conn));
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_request_refuses_other_ca_client) {
  qt_server srv;
  qt_client cl;

  start_server(&srv, server_tls(QRPC_CLIENT_AUTH_REQUEST));
  connect_refused(
      &srv, &cl,
      client_tls(certs.other_client_cert_pem, certs.other_client_key_pem), 0);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

/* quic.h: IP entries are written as inet_ntop writes addresses. An
 * iPAddress entry of 8 bytes (an address and mask, allowed only in name
 * constraints) is no address, so the identity leaves it out and keeps the
 * entries after it. */
START_TEST(test_identity_skips_ip_entry_that_is_no_address) {
  qt_server srv;
  qt_client cl;
  const qrpc_identity *id;

  start_server(&srv, server_tls(QRPC_CLIENT_AUTH_REQUIRE));
  connect_accepted(&srv, &cl,
                   client_tls(certs.odd_ip_cert_pem, certs.odd_ip_key_pem));
  id = qrpc_conn_peer_identity(srv.last_conn);
  ck_assert_ptr_nonnull(id);
  assert_str(id->subject, "CN=qrpc-odd-ip-client,O=qrpc tests", "subject");
  ck_assert_uint_eq(id->nip, 1);
  assert_str(id->ip[0], "127.0.0.2", "IP address");
  ck_assert_uint_eq(id->ndns, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* tls.h: the certificate setters set the certificate, so a second call
 * replaces the first on either side. */
START_TEST(test_cert_set_twice_replaces) {
  qt_server srv;
  qt_client cl;
  qrpc_tls_config *stls = server_tls(QRPC_CLIENT_AUTH_REQUIRE);
  qrpc_tls_config *ctls =
      client_tls(certs.other_client_cert_pem, certs.other_client_key_pem);

  ck_assert_int_eq(qrpc_tls_config_set_cert_pem(stls, certs.client_cert_pem,
                                                certs.client_key_pem),
                   0);
  ck_assert_int_eq(qrpc_tls_config_set_cert_pem(stls, certs.server_cert_pem,
                                                certs.server_key_pem),
                   0);
  ck_assert_int_eq(qrpc_tls_config_set_cert_pem(ctls, certs.client_cert_pem,
                                                certs.client_key_pem),
                   0);
  start_server(&srv, stls);
  connect_accepted(&srv, &cl, ctls);
  assert_client_identity(qrpc_conn_peer_identity(srv.last_conn));
  assert_server_identity(qrpc_conn_peer_identity(cl.conn));
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* ---- NONE ------------------------------------------------------------- */

START_TEST(test_none_ignores_client_cert) {
  qt_server srv;
  qt_client cl;
  size_t n = 99;

  /* The default: a server config that never mentions client auth. */
  start_server(&srv, qt_server_tls(&certs));
  connect_accepted(&srv, &cl,
                   client_tls(certs.client_cert_pem, certs.client_key_pem));
  ck_assert_ptr_null(qrpc_conn_peer_identity(srv.last_conn));
  ck_assert_ptr_null(qrpc_conn_peer_certs(srv.last_conn, &n));
  ck_assert_uint_eq(n, 0);
  assert_server_identity(qrpc_conn_peer_identity(cl.conn));
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* ---- The server's verification callback ------------------------------- */

/* The certificate the callback should see first. */
static qrpc_cert client_der(void) {
  qrpc_cert c = {certs.client_cert_der, certs.client_cert_der_len};
  return c;
}

static qrpc_tls_config *server_tls_verify(qrpc_client_auth mode,
                                          qt_verify_rec *v) {
  qrpc_tls_config *cfg = server_tls(mode);
  ck_assert_int_eq(
      qrpc_tls_config_set_verify_callback(cfg, qt_verify_record, v), 0);
  return cfg;
}

START_TEST(test_verify_callback_sees_client_chain) {
  qt_server srv;
  qt_client cl;
  qt_verify_rec v = {.verdict = 0, .expect = client_der()};

  start_server(&srv, server_tls_verify(QRPC_CLIENT_AUTH_REQUIRE, &v));
  connect_accepted(&srv, &cl,
                   client_tls(certs.client_cert_pem, certs.client_key_pem));
  ck_assert_int_eq(v.calls, 1);
  ck_assert_int_eq(v.ok, 1);
  ck_assert_uint_ge(v.chain_len, 1);
  ck_assert(v.chain0_matches);
  ck_assert_ptr_eq(v.conn, srv.last_conn);
  assert_client_identity(qrpc_conn_peer_identity(srv.last_conn));
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_verify_callback_refuses_client) {
  qt_server srv;
  qt_client cl;
  qt_verify_rec v = {.verdict = 1, .expect = client_der()};

  start_server(&srv, server_tls_verify(QRPC_CLIENT_AUTH_REQUIRE, &v));
  connect_refused(&srv, &cl,
                  client_tls(certs.client_cert_pem, certs.client_key_pem), 0);
  ck_assert_int_eq(v.calls, 1);
  ck_assert_int_eq(v.ok, 1);
  ck_assert(v.chain0_matches);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

/* The callback has the last word, but only a chain that verified gives an
 * identity: an accepted client its CA did not sign has none. */
START_TEST(test_verify_callback_accepts_untrusted_client) {
  qt_server srv;
  qt_client cl;
  qt_verify_rec v = {.verdict = 0, .expect = client_der()};
  size_t n = 0;

  start_server(&srv, server_tls_verify(QRPC_CLIENT_AUTH_REQUIRE, &v));
  connect_accepted(
      &srv, &cl,
      client_tls(certs.other_client_cert_pem, certs.other_client_key_pem));
  ck_assert_int_eq(v.calls, 1);
  ck_assert_int_eq(v.ok, 0);
  ck_assert_uint_ge(v.chain_len, 1);
  ck_assert(!v.chain0_matches);
  ck_assert_ptr_null(qrpc_conn_peer_identity(srv.last_conn));
  ck_assert_ptr_nonnull(qrpc_conn_peer_certs(srv.last_conn, &n));
  ck_assert_uint_ge(n, 1);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* ---- Setter and listen errors ----------------------------------------- */

START_TEST(test_client_auth_errors) {
  static const qrpc_conn_callbacks no_cbs;
  qrpc_tls_config *cfg;
  qrpc_endpoint *ep = NULL;

  ck_assert_int_eq(
      qrpc_tls_config_set_client_auth(NULL, QRPC_CLIENT_AUTH_REQUIRE),
      QRPC_EINVAL);
  cfg = qt_server_tls(&certs);
  ck_assert_ptr_nonnull(cfg);
  ck_assert_int_eq(qrpc_tls_config_set_client_auth(cfg, (qrpc_client_auth)(-1)),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_tls_config_set_client_auth(
                       cfg, (qrpc_client_auth)(QRPC_CLIENT_AUTH_REQUIRE + 1)),
                   QRPC_EINVAL);

  /* Client authentication without a CA to verify clients against: the
   * system store is never trusted for client certificates. */
  ck_assert_int_eq(
      qrpc_tls_config_set_client_auth(cfg, QRPC_CLIENT_AUTH_REQUEST), 0);
  ck_assert_int_eq(
      qrpc_endpoint_listen(loop, "127.0.0.1:0", cfg, NULL, &no_cbs, NULL, &ep),
      QRPC_EINVAL);
  ck_assert_ptr_null(ep);
  ck_assert_int_eq(
      qrpc_tls_config_set_client_auth(cfg, QRPC_CLIENT_AUTH_REQUIRE), 0);
  ck_assert_int_eq(
      qrpc_endpoint_listen(loop, "127.0.0.1:0", cfg, NULL, &no_cbs, NULL, &ep),
      QRPC_EINVAL);
  ck_assert_ptr_null(ep);

  /* A refused listen did not put the config in use: it can still be
   * completed, and then serves. */
  ck_assert_int_eq(qrpc_tls_config_set_ca_pem(cfg, certs.ca_pem), 0);
  ck_assert_int_eq(
      qrpc_endpoint_listen(loop, "127.0.0.1:0", cfg, NULL, &no_cbs, NULL, &ep),
      0);
  ck_assert_ptr_nonnull(ep);

  /* In use now: the mode can no longer change, invalid or not. */
  ck_assert_int_eq(qrpc_tls_config_set_client_auth(cfg, QRPC_CLIENT_AUTH_NONE),
                   QRPC_ESTATE);
  ck_assert_int_eq(
      qrpc_tls_config_set_client_auth(cfg, QRPC_CLIENT_AUTH_REQUEST),
      QRPC_ESTATE);
  qrpc_endpoint_free(ep);
  qrpc_tls_config_free(cfg);

  /* Without client authentication a server needs no CA. */
  cfg = qt_server_tls(&certs);
  ck_assert_ptr_nonnull(cfg);
  ck_assert_int_eq(qrpc_tls_config_set_client_auth(cfg, QRPC_CLIENT_AUTH_NONE),
                   0);
  ep = NULL;
  ck_assert_int_eq(
      qrpc_endpoint_listen(loop, "127.0.0.1:0", cfg, NULL, &no_cbs, NULL, &ep),
      0);
  qrpc_endpoint_free(ep);
  qrpc_tls_config_free(cfg);
}
END_TEST

/* ---- Bad certificate input -------------------------------------------- */

/* The last error the library logged, to check that it names the file
 * and the cause. */
static char last_error[1024];
static int errors_logged;

static void record_log(qrpc_log_level level, const char *msg, void *ud) {
  (void)ud;
  if (level < QRPC_LOG_ERROR) return;
  errors_logged++;
  snprintf(last_error, sizeof(last_error), "%s", msg);
}

typedef struct bad_files {
  char dir[256];
  char cert[320];    /* the CA-signed client certificate */
  char key[320];     /* its key */
  char ca_key[320];  /* the CA's key: matches neither certificate */
  char expired[320]; /* the expired certificate */
  char expired_key[320];
  char empty[320];   /* no bytes at all */
  char missing[320]; /* never written */
} bad_files;

/* Removed by the teardown, even after a failed assertion. */
static bad_files files;

static void log_setup(void) {
  memset(&files, 0, sizeof(files));
  ck_assert_int_eq(qt_certs_generate(&certs), 0);
  last_error[0] = '\0';
  errors_logged = 0;
  qrpc_log_set_handler(record_log, NULL);
}

static void log_teardown(void) {
  if (files.dir[0]) qt_tmpdir_remove(files.dir);
  qrpc_log_set_handler(NULL, NULL);
  qt_certs_free(&certs);
}

/* rv is the error expected, and the error logged for it contains name1
 * and name2 (each when not NULL): the file, or the cause. */
static void assert_failed(int rv, int want, const char *name1,
                          const char *name2) {
  ck_assert_msg(rv == want, "got %s, expected %s", qrpc_strerror(rv),
                qrpc_strerror(want));
  ck_assert_msg(errors_logged > 0, "nothing was logged");
  if (name1)
    ck_assert_msg(strstr(last_error, name1), "\"%s\" does not name \"%s\"",
                  last_error, name1);
  if (name2)
    ck_assert_msg(strstr(last_error, name2), "\"%s\" does not name \"%s\"",
                  last_error, name2);
  errors_logged = 0;
  last_error[0] = '\0';
}

static void path_in(char *out, size_t cap, const char *dir, const char *name) {
  int n = snprintf(out, cap, "%s/%s", dir, name);
  ck_assert(n > 0 && (size_t)n < cap);
}

static void bad_files_write(bad_files *f) {
  ck_assert_int_eq(qt_tmpdir_make(f->dir, sizeof(f->dir)), 0);
  path_in(f->cert, sizeof(f->cert), f->dir, "client.pem");
  path_in(f->key, sizeof(f->key), f->dir, "client.key");
  path_in(f->ca_key, sizeof(f->ca_key), f->dir, "ca.key");
  path_in(f->expired, sizeof(f->expired), f->dir, "expired.pem");
  path_in(f->expired_key, sizeof(f->expired_key), f->dir, "expired.key");
  path_in(f->empty, sizeof(f->empty), f->dir, "empty.pem");
  path_in(f->missing, sizeof(f->missing), f->dir, "absent.pem");
  ck_assert_int_eq(qt_file_write(f->cert, certs.client_cert_pem), 0);
  ck_assert_int_eq(qt_file_write(f->key, certs.client_key_pem), 0);
  ck_assert_int_eq(qt_file_write(f->ca_key, certs.ca_key_pem), 0);
  ck_assert_int_eq(qt_file_write(f->expired, certs.expired_cert_pem), 0);
  ck_assert_int_eq(qt_file_write(f->expired_key, certs.expired_key_pem), 0);
  ck_assert_int_eq(qt_file_write(f->empty, ""), 0);
}

START_TEST(test_cert_files_bad_input) {
  bad_files *f = &files;
  qrpc_tls_config *cfg;

  bad_files_write(f);
  ck_assert_int_eq(qrpc_tls_config_new(&cfg), 0);

  assert_failed(qrpc_tls_config_set_cert_files(cfg, f->missing, f->key),
                QRPC_ETLS, f->missing, NULL);
  assert_failed(qrpc_tls_config_set_cert_files(cfg, f->cert, f->missing),
                QRPC_ETLS, f->missing, NULL);
  assert_failed(qrpc_tls_config_set_cert_files(cfg, f->cert, f->ca_key),
                QRPC_ETLS, f->ca_key, "does not match");
  assert_failed(qrpc_tls_config_set_cert_files(cfg, f->expired, f->expired_key),
                QRPC_ETLS, f->expired, "expired");
  assert_failed(qrpc_tls_config_set_cert_pem(cfg, certs.expired_cert_pem,
                                             certs.expired_key_pem),
                QRPC_ETLS, "expired", NULL);
  assert_failed(qrpc_tls_config_set_cert_files(cfg, f->empty, f->key),
                QRPC_ETLS, f->empty, NULL);

  /* The refusals left nothing half-loaded: the good pair still loads. */
  ck_assert_int_eq(qrpc_tls_config_set_cert_files(cfg, f->cert, f->key), 0);
  ck_assert_int_eq(errors_logged, 0);
  qrpc_tls_config_free(cfg);
}
END_TEST

START_TEST(test_ca_bad_input) {
  bad_files *f = &files;
  qrpc_tls_config *cfg;

  bad_files_write(f);
  ck_assert_int_eq(qrpc_tls_config_new(&cfg), 0);

  assert_failed(qrpc_tls_config_set_ca_file(cfg, f->missing), QRPC_ETLS,
                f->missing, NULL);
  /* A key is PEM too, but holds no certificate. */
  assert_failed(qrpc_tls_config_set_ca_file(cfg, f->ca_key), QRPC_ETLS,
                f->ca_key, NULL);
  assert_failed(qrpc_tls_config_set_ca_file(cfg, f->empty), QRPC_ETLS, f->empty,
                NULL);
  assert_failed(qrpc_tls_config_set_ca_pem(cfg, "garbage"), QRPC_ETLS, NULL,
                NULL);
  assert_failed(qrpc_tls_config_set_ca_pem(cfg, ""), QRPC_ETLS, NULL, NULL);

  ck_assert_int_eq(qrpc_tls_config_set_ca_pem(cfg, certs.ca_pem), 0);
  ck_assert_int_eq(errors_logged, 0);
  qrpc_tls_config_free(cfg);
}
END_TEST

/* A server whose CA setter failed has no CA: client authentication then
 * still cannot be served. */
START_TEST(test_failed_ca_leaves_no_ca) {
  static const qrpc_conn_callbacks no_cbs;
  qrpc_tls_config *cfg = qt_server_tls(&certs);
  qrpc_endpoint *ep = NULL;

  ck_assert_ptr_nonnull(cfg);
  ck_assert_int_eq(qrpc_tls_config_set_ca_pem(cfg, "garbage"), QRPC_ETLS);
  ck_assert_int_eq(
      qrpc_tls_config_set_client_auth(cfg, QRPC_CLIENT_AUTH_REQUIRE), 0);
  ck_assert_int_eq(
      qrpc_endpoint_listen(loop, "127.0.0.1:0", cfg, NULL, &no_cbs, NULL, &ep),
      QRPC_EINVAL);
  ck_assert_ptr_null(ep);
  qrpc_tls_config_free(cfg);
}
END_TEST

static Suite *mtls_suite(void) {
  Suite *s = suite_create("quic_mtls");
  TCase *tc = tcase_create("mtls");
  TCase *bad = tcase_create("bad_input");

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_require_accepts_ca_signed_client);
  tcase_add_test(tc, test_require_refuses_client_without_cert);
  tcase_add_test(tc, test_require_refuses_other_ca_client);
  tcase_add_test(tc, test_require_refuses_server_only_cert);
  tcase_add_test(tc, test_request_accepts_client_without_cert);
  tcase_add_test(tc, test_request_identifies_ca_signed_client);
  tcase_add_test(tc, test_request_refuses_other_ca_client);
  tcase_add_test(tc, test_identity_skips_ip_entry_that_is_no_address);
  tcase_add_test(tc, test_cert_set_twice_replaces);
  tcase_add_test(tc, test_none_ignores_client_cert);
  tcase_add_test(tc, test_verify_callback_sees_client_chain);
  tcase_add_test(tc, test_verify_callback_refuses_client);
  tcase_add_test(tc, test_verify_callback_accepts_untrusted_client);
  tcase_add_test(tc, test_client_auth_errors);
  tcase_add_test(tc, test_failed_ca_leaves_no_ca);
  suite_add_tcase(s, tc);

  /* No loop here: the log handler is set before any loop exists. */
  tcase_add_checked_fixture(bad, log_setup, log_teardown);
  tcase_set_timeout(bad, 30);
  tcase_add_test(bad, test_cert_files_bad_input);
  tcase_add_test(bad, test_ca_bad_input);
  suite_add_tcase(s, bad);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(mtls_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
