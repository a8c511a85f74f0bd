/*
 * One process, two OpenSSLs: qrpc's own (built in, with its symbols
 * hidden) and the system's libssl, which programs link for other reasons
 * (libevent_openssl, curl). A qrpc call and a TLS handshake of the
 * system's library run side by side, and each library reports its own
 * version.
 *
 *   coexist CERTDIR   (ca.pem, server.pem, server-key.pem from
 *                      scripts/gen-certs.sh)
 *
 * Exits 0 when both worked, 1 otherwise, with the reason on stderr.
 */
#include <openssl/err.h>
#include <openssl/opensslv.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>

#include <qrpc/qrpc.h>

#define METHOD_ECHO 1
#define WAIT_MS 5000

static int fail(const char *what) {
  fprintf(stderr, "coexist: %s\n", what);
  ERR_print_errors_fp(stderr);
  return 1;
}

/* ---- The system's libssl: a TLS 1.3 handshake in memory ---------------- */

static SSL_CTX *system_ctx(const char *dir, int server) {
  char cert[4096], key[4096], ca[4096];
  snprintf(cert, sizeof(cert), "%s/server.pem", dir);
  snprintf(key, sizeof(key), "%s/server-key.pem", dir);
  snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
  SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (!ctx) return NULL;
  int ok = SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) == 1;
  if (ok && server)
    ok = SSL_CTX_use_certificate_file(ctx, cert, SSL_FILETYPE_PEM) == 1 &&
         SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1;
  if (ok && !server) {
    ok = SSL_CTX_load_verify_locations(ctx, ca, NULL) == 1;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  }
  if (!ok) {
    SSL_CTX_free(ctx);
    return NULL;
  }
  return ctx;
}

static int system_handshake(const char *dir) {
  SSL_CTX *sctx = system_ctx(dir, 1), *cctx = system_ctx(dir, 0);
  if (!sctx || !cctx) return fail("system libssl: cannot load certificates");
  SSL *s = SSL_new(sctx), *c = SSL_new(cctx);
  BIO *sb, *cb;
  int rv = 1;
  if (s && c && BIO_new_bio_pair(&sb, 0, &cb, 0) == 1) {
    SSL_set_bio(s, sb, sb);
    SSL_set_bio(c, cb, cb);
    SSL_set_accept_state(s);
    SSL_set_connect_state(c);
    SSL_set1_host(c, "localhost");
    int sdone = 0, cdone = 0;
    for (int i = 0; i < 100 && !(sdone && cdone); i++) {
      if (!cdone) cdone = SSL_do_handshake(c) == 1;
      if (!sdone) sdone = SSL_do_handshake(s) == 1;
    }
    if (!sdone || !cdone) {
      fail("system libssl: the handshake did not complete");
    } else if (SSL_get_verify_result(c) != X509_V_OK) {
      fail("system libssl: the server certificate did not verify");
    } else {
      printf("coexist: system %s: %s handshake, certificate verified\n",
             OpenSSL_version(OPENSSL_VERSION), SSL_get_version(c));
      rv = 0;
    }
  } else {
    fail("system libssl: cannot make sessions");
  }
  SSL_free(s);
  SSL_free(c);
  SSL_CTX_free(sctx);
  SSL_CTX_free(cctx);
  return rv;
}

/* ---- qrpc: a unary call over QUIC on its own OpenSSL -------------------- */

static void echo(qrpc_req *req, const uint8_t *payload, size_t len, void *ud) {
  qrpc_req_reply(req, payload, len);
}

static void done(qrpc_call *call, const qrpc_result *res, void *ud) {
  int *status = ud;
  *status = res->status == QRPC_STATUS_OK && res->len == 5 &&
                    memcmp(res->payload, "hello", 5) == 0
                ? 1
                : -1;
}

static int qrpc_round_trip(const char *dir) {
  char cert[4096], key[4096], ca[4096], addr[64];
  snprintf(cert, sizeof(cert), "%s/server.pem", dir);
  snprintf(key, sizeof(key), "%s/server-key.pem", dir);
  snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
  qrpc_loop *loop = NULL;
  qrpc_tls_config *stls = NULL, *ctls = NULL;
  qrpc_server *srv = NULL;
  qrpc_client *cli = NULL;
  int status = 0;
  int rv = qrpc_loop_new(NULL, &loop);
  if (rv == 0) rv = qrpc_tls_config_new(&stls);
  if (rv == 0) rv = qrpc_tls_config_set_cert_files(stls, cert, key);
  if (rv == 0) rv = qrpc_tls_config_new(&ctls);
  if (rv == 0) rv = qrpc_tls_config_set_ca_file(ctls, ca);
  if (rv == 0) rv = qrpc_server_new(loop, "127.0.0.1:0", stls, NULL, &srv);
  if (rv == 0)
    rv = qrpc_server_register(srv, METHOD_ECHO, QRPC_SHAPE_UNARY, echo, NULL);
  if (rv == 0) {
    snprintf(addr, sizeof(addr), "127.0.0.1:%u",
             (unsigned)qrpc_server_port(srv));
    qrpc_client_opts co;
    qrpc_client_opts_default(&co);
    co.server_name = "localhost";
    co.default_timeout_ms = WAIT_MS;
    rv = qrpc_client_new(loop, addr, ctls, &co, &cli);
  }
  qrpc_call_callbacks cbs = {.on_done = done};
  if (rv == 0)
    rv = qrpc_client_call(cli, METHOD_ECHO, "hello", 5, NULL, &cbs, &status,
                          NULL);
  for (int i = 0; rv == 0 && status == 0 && i < WAIT_MS / 10; i++)
    qrpc_loop_run_for(loop, 10);
  qrpc_client_free(cli);
  qrpc_server_free(srv);
  qrpc_tls_config_free(stls);
  qrpc_tls_config_free(ctls);
  qrpc_loop_free(loop);
  if (rv != 0) return fail(qrpc_strerror(rv));
  if (status != 1) return fail("qrpc: the call did not come back intact");
  printf("coexist: qrpc on its %s backend: unary call over QUIC answered\n",
         qrpc_tls_backend());
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: coexist CERTDIR\n");
    return 2;
  }
  /* The system's library is Debian 12's 3.0; qrpc's is 3.5 or newer. */
  if (OPENSSL_VERSION_MAJOR != 3 || OPENSSL_VERSION_MINOR >= 5)
    return fail("built against the wrong OpenSSL headers: this test needs "
                "the system's libssl 3.0-3.4 next to qrpc's");
  if (strcmp(qrpc_tls_backend(), "openssl") != 0)
    return fail("qrpc is not on its OpenSSL backend");
  /* Twice, interleaved, so each library runs after the other has. */
  int rv = system_handshake(argv[1]) || qrpc_round_trip(argv[1]) ||
           system_handshake(argv[1]) || qrpc_round_trip(argv[1]);
  return rv ? 1 : 0;
}
