/*
 * The broker's ACL by client certificate, end to end over loopback with
 * real mutual-TLS handshakes: a cert section grants its rights to the
 * clients whose verified certificate carries its subject or URI, and to
 * nobody else (another certificate of the same CA, no certificate, a
 * certificate the broker did not ask for); a Hello token takes precedence
 * over the certificate; a broker that requires certificates refuses a
 * client without one, or with one from another CA.
 *
 * Client certificates are made here, at run time, signed by the test CA of
 * tests/support (whose key it exports) or by a CA of this file's own.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "harness.h"
#include "qrpc/broker.h"
#include "qrpc/qrpc.h"

#define SENSOR7 "CN=sensor 7,O=qrpc test"
#define SENSOR8 "CN=sensor 8,O=qrpc test"
#define WORKER_URI "spiffe://qrpc.test/worker"
/* RFC 4514 escapes a comma inside a value; the ACL quotes it as it is. */
#define SMITH "CN=Smith\\, John,O=qrpc test"

static const char acl_text[] = "cert subject \"" SENSOR7 "\"\n"
                               "  publish sensors.7\n"
                               "cert uri " WORKER_URI "\n"
                               "  publish jobs.done\n"
                               "cert subject \"" SMITH "\"\n"
                               "  publish smith.only\n"
                               "token s3cret\n"
                               "  publish tokens.only\n"
                               "anonymous\n"
                               "  subscribe sensors.>\n";

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls; /* unused: each test makes its broker's own */
static qrpc_tls_config *ctls; /* trusts the test CA, presents nothing */
static char tmpdir[256];
static char acl_path[512];

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
  ck_assert_int_eq(qt_tmpdir_make(tmpdir, sizeof(tmpdir)), 0);
  snprintf(acl_path, sizeof(acl_path), "%s/broker.acl", tmpdir);
  FILE *f = fopen(acl_path, "w");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(acl_text, 1, strlen(acl_text), f), strlen(acl_text));
  ck_assert_int_eq(fclose(f), 0);
}

static void teardown(void) {
  qt_tmpdir_remove(tmpdir);
  qt_env_teardown(&certs, &loop, &stls, &ctls);
}

/* ---- Certificates ------------------------------------------------------ */

/* A certificate and its key, PEM. */
typedef struct pem_cert {
  char *cert;
  char *key;
} pem_cert;

static void pem_cert_free(pem_cert *p) {
  free(p->cert);
  free(p->key);
  memset(p, 0, sizeof(*p));
}

static char *take(gnutls_datum_t *d) {
  char *s = malloc((size_t)d->size + 1);
  ck_assert_ptr_nonnull(s);
  memcpy(s, d->data, d->size);
  s[d->size] = '\0';
  gnutls_free(d->data);
  return s;
}

/* A fresh key and a certificate for it named dn (RFC 4514, most specific
 * first), valid now; the caller adds extensions and signs. */
static void cert_new(gnutls_x509_crt_t *crt, gnutls_x509_privkey_t *key,
                     const char *dn) {
  unsigned char serial[16];
  time_t now = time(NULL);
  ck_assert_int_ge(gnutls_x509_privkey_init(key), 0);
  ck_assert_int_ge(gnutls_x509_privkey_generate(
                       *key, GNUTLS_PK_ECDSA,
                       GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0),
                   0);
  ck_assert_int_ge(gnutls_x509_crt_init(crt), 0);
  ck_assert_int_ge(gnutls_x509_crt_set_version(*crt, 3), 0);
  ck_assert_int_ge(gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof(serial)), 0);
  serial[0] = (unsigned char)((serial[0] & 0x7f) | 0x01);
  ck_assert_int_ge(gnutls_x509_crt_set_serial(*crt, serial, sizeof(serial)), 0);
  ck_assert_int_ge(gnutls_x509_crt_set_activation_time(*crt, now - 3600), 0);
  ck_assert_int_ge(gnutls_x509_crt_set_expiration_time(*crt, now + 86400), 0);
  ck_assert_int_ge(gnutls_x509_crt_set_dn(*crt, dn, NULL), 0);
  ck_assert_int_ge(gnutls_x509_crt_set_key(*crt, *key), 0);
}

static void export(gnutls_x509_crt_t crt, gnutls_x509_privkey_t key,
                   pem_cert *out) {
  gnutls_datum_t d;
  ck_assert_int_ge(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &d), 0);
  out->cert = take(&d);
  ck_assert_int_ge(gnutls_x509_privkey_export2_pkcs8(
                       key, GNUTLS_X509_FMT_PEM, NULL, GNUTLS_PKCS_PLAIN, &d),
                   0);
  out->key = take(&d);
  gnutls_x509_crt_deinit(crt);
  gnutls_x509_privkey_deinit(key);
}

/* A client certificate for dn (and the URI SAN uri, unless NULL), for TLS
 * client authentication, signed by the CA ca_pem whose key is ca_key_pem. */
static void client_cert(const char *ca_pem, const char *ca_key_pem,
                        const char *dn, const char *uri, pem_cert *out) {
  gnutls_x509_crt_t ca, crt;
  gnutls_x509_privkey_t ca_key, key;
  gnutls_datum_t d = {(unsigned char *)ca_pem, (unsigned)strlen(ca_pem)};
  ck_assert_int_ge(gnutls_x509_crt_init(&ca), 0);
  ck_assert_int_ge(gnutls_x509_crt_import(ca, &d, GNUTLS_X509_FMT_PEM), 0);
  d.data = (unsigned char *)ca_key_pem;
  d.size = (unsigned)strlen(ca_key_pem);
  ck_assert_int_ge(gnutls_x509_privkey_init(&ca_key), 0);
  ck_assert_int_ge(
      gnutls_x509_privkey_import2(ca_key, &d, GNUTLS_X509_FMT_PEM, NULL, 0), 0);
  cert_new(&crt, &key, dn);
  ck_assert_int_ge(gnutls_x509_crt_set_basic_constraints(crt, 0, -1), 0);
  ck_assert_int_ge(
      gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE), 0);
  ck_assert_int_ge(
      gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_CLIENT, 0), 0);
  if (uri)
    ck_assert_int_ge(gnutls_x509_crt_set_subject_alt_name(
                         crt, GNUTLS_SAN_URI, uri, (unsigned)strlen(uri),
                         GNUTLS_FSAN_APPEND),
                     0);
  ck_assert_int_ge(gnutls_x509_crt_sign2(crt, ca, ca_key, GNUTLS_DIG_SHA256, 0),
                   0);
  gnutls_x509_crt_deinit(ca);
  gnutls_x509_privkey_deinit(ca_key);
  export(crt, key, out);
}

/* A CA of its own, which the broker does not trust. */
static void other_ca(pem_cert *out) {
  gnutls_x509_crt_t crt;
  gnutls_x509_privkey_t key;
  cert_new(&crt, &key, "CN=qrpc other test CA");
  ck_assert_int_ge(gnutls_x509_crt_set_basic_constraints(crt, 1, -1), 0);
  ck_assert_int_ge(gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_KEY_CERT_SIGN),
                   0);
  ck_assert_int_ge(gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0),
                   0);
  export(crt, key, out);
}

/* A client config trusting the test CA and presenting p (none if NULL). */
static qrpc_tls_config *client_tls(const pem_cert *p) {
  qrpc_tls_config *t = qt_client_tls(certs.ca_pem);
  ck_assert_ptr_nonnull(t);
  if (p) ck_assert_int_eq(qrpc_tls_config_set_cert_pem(t, p->cert, p->key), 0);
  return t;
}

/* ---- Broker and clients ------------------------------------------------ */

/* A broker with the ACL above whose TLS config asks clients for a
 * certificate (mode) verified against the test CA. */
static qrpc_broker *broker_start(qrpc_client_auth mode, char *addr,
                                 size_t cap) {
  qrpc_tls_config *t = qt_server_tls(&certs);
  ck_assert_ptr_nonnull(t);
  if (mode != QRPC_CLIENT_AUTH_NONE) {
    ck_assert_int_eq(qrpc_tls_config_set_ca_pem(t, certs.ca_pem), 0);
    ck_assert_int_eq(qrpc_tls_config_set_client_auth(t, mode), 0);
  }
  qrpc_broker_opts bo;
  qrpc_broker_opts_default(&bo);
  bo.acl_path = acl_path;
  qrpc_broker *b = NULL;
  char err[256] = "";
  int rv = qrpc_broker_new(loop, "127.0.0.1:0", t, &bo, &b, err, sizeof(err));
  qrpc_tls_config_free(t);
  ck_assert_msg(rv == 0, "qrpc_broker_new: %s (%s)", qrpc_strerror(rv), err);
  snprintf(addr, cap, "127.0.0.1:%u",
           (unsigned)qrpc_server_port(qrpc_broker_server(b)));
  return b;
}

typedef struct client {
  qrpc_broker_client *bc;
  int ready;
  int refused;
  int acked, denied, failed; /* publishes */
  uint64_t received;
} client;

static void on_ready(qrpc_broker_client *bc, int status, const char *detail,
                     void *ud) {
  client *c = ud;
  if (status == 0)
    c->ready++;
  else
    c->refused = status;
}

/* Starts a client with tls (NULL: trusting the CA, presenting nothing) and
 * token, and waits until it is ready. */
static void client_start(client *c, const char *addr, qrpc_tls_config *tls,
                         const char *token) {
  memset(c, 0, sizeof(*c));
  qrpc_broker_client_opts o;
  qrpc_broker_client_opts_default(&o);
  o.token = token;
  o.client_name = "cert-test";
  o.on_ready = on_ready;
  o.user_data = c;
  ck_assert_int_eq(
      qrpc_broker_client_new(loop, addr, tls ? tls : ctls, &o, &c->bc), 0);
  ck_assert(qt_run_until_count(loop, &c->ready, 1, QT_WAIT_MS));
}

static void p_done(qrpc_broker_client *bc, int status, uint32_t n,
                   const char *detail, void *ud) {
  client *c = ud;
  if (status == 0)
    c->acked++;
  else if (status == QRPC_STATUS_PERMISSION_DENIED)
    c->denied++;
  else
    c->failed++;
}

/* Publishes on topic and waits for the answer: 1 if it was accepted, 0 if
 * it was denied. */
static int try_publish(client *c, const char *topic) {
  int acked = c->acked, denied = c->denied;
  ck_assert_int_eq(qrpc_broker_publish(c->bc, topic, "x", 1, 0, p_done, c), 0);
  uint64_t end = qt_now_ms() + QT_WAIT_MS;
  while (c->acked == acked && c->denied == denied && c->failed == 0 &&
         qt_now_ms() < end)
    qrpc_loop_run_for(loop, 5);
  ck_assert_int_eq(c->failed, 0);
  ck_assert_int_eq(c->acked - acked + c->denied - denied, 1);
  return c->acked > acked;
}

static void on_message(qrpc_broker_sub *h, const qrpc_broker_msg *m, void *ud) {
  ((client *)ud)->received++;
}

static void on_subscribed(qrpc_broker_sub *h, uint64_t id, void *ud) {
  ((client *)ud)->ready++;
}

static const qrpc_broker_sub_callbacks sub_cbs = {
    .on_message = on_message,
    .on_subscribed = on_subscribed,
};

/* ---- Tests ------------------------------------------------------------- */

/* The certificate's subject selects its section: sensor 7 may publish to
 * sensors.7 and nothing else; sensor 8 (same CA), a client without a
 * certificate and one whose certificate the broker did not ask for get
 * the anonymous rights, which do not include it. */
START_TEST(test_cert_subject_grants_publish) {
  char addr[64];
  qrpc_broker *b = broker_start(QRPC_CLIENT_AUTH_REQUEST, addr, sizeof(addr));
  pem_cert s7, s8;
  client_cert(certs.ca_pem, certs.ca_key_pem, SENSOR7, NULL, &s7);
  client_cert(certs.ca_pem, certs.ca_key_pem, SENSOR8, NULL, &s8);
  qrpc_tls_config *t7 = client_tls(&s7), *t8 = client_tls(&s8);

  client watcher, c7, c8, none;
  client_start(&watcher, addr, NULL, NULL);
  qrpc_broker_sub *h = NULL;
  ck_assert_int_eq(qrpc_broker_subscribe(watcher.bc, "sensors.>", NULL,
                                         &sub_cbs, &watcher, &h),
                   0);
  ck_assert(qt_run_until_count(loop, &watcher.ready, 2, QT_WAIT_MS));

  client_start(&c7, addr, t7, NULL);
  client_start(&c8, addr, t8, NULL);
  client_start(&none, addr, NULL, NULL);
  ck_assert(try_publish(&c7, "sensors.7"));
  ck_assert_int_eq(c7.acked, 1);
  ck_assert(!try_publish(&c7, "sensors.8"));
  ck_assert(!try_publish(&c7, "tokens.only"));
  ck_assert(!try_publish(&c8, "sensors.7"));
  ck_assert(!try_publish(&none, "sensors.7"));
  ck_assert_int_eq(c7.acked, 1);
  ck_assert_int_eq(c7.denied, 2);
  ck_assert_int_eq(c8.denied, 1);
  ck_assert_int_eq(none.denied, 1);

  /* The one accepted message reached the anonymous subscriber. */
  uint64_t end = qt_now_ms() + QT_WAIT_MS;
  while (watcher.received < 1 && qt_now_ms() < end) qrpc_loop_run_for(loop, 5);
  qt_run_for(loop, 50);
  ck_assert_uint_eq(watcher.received, 1);
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.denied, 4);
  ck_assert_uint_eq(st.published, 1);

  qrpc_broker_client_free(watcher.bc);
  qrpc_broker_client_free(c7.bc);
  qrpc_broker_client_free(c8.bc);
  qrpc_broker_client_free(none.bc);
  qrpc_broker_free(b);

  /* A broker that does not ask for certificates never sees one: sensor 7
   * is anonymous there. */
  b = broker_start(QRPC_CLIENT_AUTH_NONE, addr, sizeof(addr));
  client_start(&c7, addr, t7, NULL);
  ck_assert(!try_publish(&c7, "sensors.7"));
  qrpc_broker_client_free(c7.bc);
  qrpc_broker_free(b);

  qrpc_tls_config_free(t7);
  qrpc_tls_config_free(t8);
  pem_cert_free(&s7);
  pem_cert_free(&s8);
}
END_TEST

/* A URI subjectAltName selects its section, compared exactly. */
START_TEST(test_cert_uri_grants_publish) {
  char addr[64];
  qrpc_broker *b = broker_start(QRPC_CLIENT_AUTH_REQUIRE, addr, sizeof(addr));
  pem_cert w, w2;
  client_cert(certs.ca_pem, certs.ca_key_pem, "CN=worker,O=qrpc test",
              WORKER_URI, &w);
  client_cert(certs.ca_pem, certs.ca_key_pem, "CN=worker,O=qrpc test",
              WORKER_URI "2", &w2);
  qrpc_tls_config *tw = client_tls(&w), *tw2 = client_tls(&w2);
  client cw, cw2;
  client_start(&cw, addr, tw, NULL);
  client_start(&cw2, addr, tw2, NULL);
  ck_assert(try_publish(&cw, "jobs.done"));
  ck_assert(!try_publish(&cw, "sensors.7"));
  ck_assert(!try_publish(&cw2, "jobs.done"));
  qrpc_broker_client_free(cw.bc);
  qrpc_broker_client_free(cw2.bc);
  qrpc_broker_free(b);
  qrpc_tls_config_free(tw);
  qrpc_tls_config_free(tw2);
  pem_cert_free(&w);
  pem_cert_free(&w2);
}
END_TEST

/* A subject with an RFC 4514 escape is written in the ACL as the library
 * reports it, backslash included. */
START_TEST(test_cert_subject_escaped) {
  char addr[64];
  qrpc_broker *b = broker_start(QRPC_CLIENT_AUTH_REQUIRE, addr, sizeof(addr));
  pem_cert smith;
  client_cert(certs.ca_pem, certs.ca_key_pem, SMITH, NULL, &smith);
  qrpc_tls_config *t = client_tls(&smith);
  client c;
  client_start(&c, addr, t, NULL);
  ck_assert(try_publish(&c, "smith.only"));
  qrpc_broker_client_free(c.bc);
  qrpc_broker_free(b);
  qrpc_tls_config_free(t);
  pem_cert_free(&smith);
}
END_TEST

/* A token given in Hello selects its section, whatever the certificate. */
START_TEST(test_token_takes_precedence) {
  char addr[64];
  qrpc_broker *b = broker_start(QRPC_CLIENT_AUTH_REQUIRE, addr, sizeof(addr));
  pem_cert s7;
  client_cert(certs.ca_pem, certs.ca_key_pem, SENSOR7, NULL, &s7);
  qrpc_tls_config *t7 = client_tls(&s7);
  client both;
  client_start(&both, addr, t7, "s3cret");
  ck_assert(try_publish(&both, "tokens.only"));
  ck_assert(!try_publish(&both, "sensors.7"));
  qrpc_broker_client_free(both.bc);
  qrpc_broker_free(b);
  qrpc_tls_config_free(t7);
  pem_cert_free(&s7);
}
END_TEST

typedef struct probe {
  int established, closed, error;
} probe;

static void probe_established(qrpc_conn *c, void *ud) {
  ((probe *)ud)->established = 1;
}

static void probe_closed(qrpc_conn *c, const qrpc_close_info *info, void *ud) {
  probe *p = ud;
  p->error = info->error;
  p->closed = 1;
}

/* Connects with tls and returns the error the connection closed with. */
static int refused_with(const char *addr, qrpc_tls_config *tls) {
  probe p = {0};
  qrpc_conn_callbacks cbs = {.on_established = probe_established,
                             .on_closed = probe_closed};
  qrpc_conn *conn = NULL;
  ck_assert_int_eq(
      qrpc_conn_connect(loop, addr, "localhost", tls, NULL, &cbs, &p, &conn),
      0);
  ck_assert(qt_run_until_count(loop, &p.closed, 1, QT_WAIT_MS));
  return p.error;
}

/* Requiring certificates (the daemon's --client-ca): no certificate, or
 * one from a CA the broker does not trust, and the handshake fails with
 * QRPC_ECERT; the broker never counts such a client. */
START_TEST(test_require_refuses) {
  char addr[64];
  qrpc_broker *b = broker_start(QRPC_CLIENT_AUTH_REQUIRE, addr, sizeof(addr));
  pem_cert ca2, stranger;
  other_ca(&ca2);
  client_cert(ca2.cert, ca2.key, SENSOR7, NULL, &stranger);
  qrpc_tls_config *ts = client_tls(&stranger);
  ck_assert_int_eq(refused_with(addr, ctls), QRPC_ECERT);
  ck_assert_int_eq(refused_with(addr, ts), QRPC_ECERT);
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.connections, 0);
  qrpc_endpoint_stats es;
  qrpc_endpoint_get_stats(qrpc_server_endpoint(qrpc_broker_server(b)), &es);
  ck_assert_uint_eq(es.handshake_failed, 2);
  ck_assert_uint_eq(es.accepted, 0);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
  qrpc_broker_free(b);
  qrpc_tls_config_free(ts);
  pem_cert_free(&ca2);
  pem_cert_free(&stranger);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("broker_cert");
  TCase *t = tcase_create("cert");
  tcase_add_checked_fixture(t, setup, teardown);
  tcase_set_timeout(t, 60);
  tcase_add_test(t, test_cert_subject_grants_publish);
  tcase_add_test(t, test_cert_uri_grants_publish);
  tcase_add_test(t, test_cert_subject_escaped);
  tcase_add_test(t, test_token_takes_precedence);
  tcase_add_test(t, test_require_refuses);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
