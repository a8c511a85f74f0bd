/*
 * TLS 1.3 for QUIC with OpenSSL (3.5 or newer, through ngtcp2's
 * crypto_ossl helper). Everything OpenSSL-specific lives in this file,
 * behind the interface declared in tls.h; tls_gnutls.c is the other
 * backend.
 *
 * A config's certificate, key and CA store are loaded by the setters; the
 * SSL_CTX of each role (client, server) is made from them on first use,
 * when the config can no longer change.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_ossl.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qrpc/error.h"
#include "quic/conn.h"
#include "quic/tls.h"
#include "util/log.h"

/* The most certificates of a peer's chain handed to a verify callback or
 * kept for qrpc_conn_peer_certs(). */
#define MAX_CHAIN 16
/* The most subjectAltName entries kept in an identity. */
#define MAX_ID_PARTS 64
/* Session tickets: a new key every period, the two before it still
 * accepted, and tickets that say they live no longer than that. */
#define TICKET_PERIOD_S 3600
#define TICKET_KEYS_ACCEPTED 3
#define TICKET_LIFETIME_S 7200
/* A ticket key: its name (in the ticket, to find the key), the AES-256
 * key and the HMAC-SHA256 key. */
#define TICKET_NAME_LEN 16
#define TICKET_KEY_LEN (TICKET_NAME_LEN + 32 + 32)
/* What a server puts in its tickets: a version, whether the client's
 * chain verified, and an id unique to the ticket (for anti-replay). */
#define APPDATA_VERSION 1
#define APPDATA_ID_LEN 16
#define APPDATA_LEN (2 + APPDATA_ID_LEN)

/* A certificate to present and its key. */
typedef struct own_cert {
  X509 *leaf;            /* NULL: none */
  STACK_OF(X509) *chain; /* the intermediates sent after it */
  EVP_PKEY *key;
} own_cert;

static void own_cert_free(own_cert *c) {
  X509_free(c->leaf);
  OSSL_STACK_OF_X509_free(c->chain);
  EVP_PKEY_free(c->key);
  memset(c, 0, sizeof(*c));
}

struct qrpci_tlsb {
  own_cert cert;
  X509_STORE *store;      /* trusted CAs */
  pthread_mutex_t mu;     /* guards ctx creation */
  SSL_CTX *ctx[2];        /* [server]: made on first use */
};

/* ---- Process-wide state ------------------------------------------------ */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_ok;
static FILE *keylog; /* SSLKEYLOGFILE, opened once when set */

static void init_process(void) {
  init_ok = ngtcp2_crypto_ossl_init() == 0;
  const char *path = getenv("SSLKEYLOGFILE");
  if (path && *path && !(keylog = fopen(path, "a")))
    QRPCI_WARN("tls: cannot open SSLKEYLOGFILE %s: %s", path,
               strerror(errno));
}

static void keylog_line(const SSL *ssl, const char *line) {
  (void)ssl;
  fprintf(keylog, "%s\n", line);
  fflush(keylog);
}

/* Logs what failed with OpenSSL's reason, and empties its error queue. */
static int ossl_err(const char *what, const char *where) {
  unsigned long e = ERR_peek_last_error();
  const char *why = e ? ERR_reason_error_string(e) : NULL;
  QRPCI_ERROR("tls: %s%s%s%s%s", what, where ? " " : "", where ? where : "",
              why ? ": " : "", why ? why : "");
  ERR_clear_error();
  return QRPC_ETLS;
}

const char *qrpc_tls_backend(void) { return "openssl"; }

int qrpci_tls_rand(void *dest, size_t len) {
  return RAND_bytes(dest, (int)len) == 1 ? 0 : QRPC_ESYSTEM;
}

int qrpci_tlsb_hmac(const uint8_t *key, size_t keylen, const uint8_t *data,
                    size_t len, uint8_t out[QRPCI_HMAC_LEN]) {
  unsigned int olen = 0;
  if (!HMAC(EVP_sha256(), key, (int)keylen, data, len, out, &olen) ||
      olen != QRPCI_HMAC_LEN) {
    ERR_clear_error();
    return QRPC_ESYSTEM;
  }
  return 0;
}

/* ---- Configs ----------------------------------------------------------- */

int qrpci_tlsb_new(qrpc_tls_config *cfg) {
  pthread_once(&init_once, init_process);
  if (!init_ok) {
    QRPCI_ERROR("tls: cannot initialize ngtcp2's OpenSSL support");
    return QRPC_ETLS;
  }
  qrpci_tlsb *be = calloc(1, sizeof(*be));
  if (!be) return QRPC_ENOMEM;
  if (!(be->store = X509_STORE_new())) {
    free(be);
    return QRPC_ENOMEM;
  }
  pthread_mutex_init(&be->mu, NULL);
  cfg->be = be;
  return 0;
}

void qrpci_tlsb_free(qrpc_tls_config *cfg) {
  qrpci_tlsb *be = cfg->be;
  SSL_CTX_free(be->ctx[0]);
  SSL_CTX_free(be->ctx[1]);
  own_cert_free(&be->cert);
  X509_STORE_free(be->store);
  pthread_mutex_destroy(&be->mu);
  free(be);
}

/* A BIO over a PEM file or string; NULL (logged) when it cannot be read. */
static BIO *pem_bio(const char *src, int file) {
  if (!file) return BIO_new_mem_buf(src, -1);
  BIO *b = BIO_new_file(src, "r");
  if (!b) {
    QRPCI_ERROR("tls: cannot read %s: %s", src, strerror(errno));
    ERR_clear_error();
  }
  return b;
}

/* The leaf must be valid now: a server with an expired certificate would
 * only be refused by every client. */
static int check_validity(X509 *leaf, const char *where) {
  if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
    QRPCI_ERROR("tls: the certificate in %s has expired", where);
    return QRPC_ETLS;
  }
  if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
    QRPCI_ERROR("tls: the certificate in %s is not valid yet", where);
    return QRPC_ETLS;
  }
  return 0;
}

/* Reads the leaf and the intermediates after it. */
static int read_chain(const char *cert, int files, const char *where,
                      X509 **leaf, STACK_OF(X509) **chain) {
  BIO *b = pem_bio(cert, files);
  if (!b) return QRPC_ETLS;
  *leaf = PEM_read_bio_X509(b, NULL, NULL, NULL);
  *chain = sk_X509_new_null();
  X509 *x;
  while (*leaf && *chain && (x = PEM_read_bio_X509(b, NULL, NULL, NULL)))
    if (!sk_X509_push(*chain, x)) X509_free(x);
  BIO_free(b);
  /* The loop ends on the end of the input, which is not an error. */
  ERR_clear_error();
  if (!*leaf) {
    QRPCI_ERROR("tls: no certificate in %s", where);
    return QRPC_ETLS;
  }
  return *chain ? 0 : QRPC_ENOMEM;
}

int qrpci_tlsb_set_cert(qrpc_tls_config *cfg, const char *cert,
                        const char *key, int files) {
  const char *cwhere = files ? cert : "the certificate PEM";
  const char *kwhere = files ? key : "the key PEM";
  own_cert fresh = {0};
  int rv = read_chain(cert, files, cwhere, &fresh.leaf, &fresh.chain);
  if (rv == 0) rv = check_validity(fresh.leaf, cwhere);
  if (rv == 0) {
    BIO *b = pem_bio(key, files);
    fresh.key = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    if (b && !fresh.key) rv = ossl_err("no private key in", kwhere);
    if (!b) rv = QRPC_ETLS;
  }
  if (rv == 0 && X509_check_private_key(fresh.leaf, fresh.key) != 1) {
    QRPCI_ERROR("tls: the key in %s does not match the certificate in %s",
                kwhere, cwhere);
    ERR_clear_error();
    rv = QRPC_ETLS;
  }
  if (rv != 0) {
    own_cert_free(&fresh);
    return rv;
  }
  /* A certificate set again replaces the one before. */
  own_cert_free(&cfg->be->cert);
  cfg->be->cert = fresh;
  return 0;
}

int qrpci_tlsb_add_ca(qrpc_tls_config *cfg, const char *ca, int file) {
  const char *where = file ? ca : "the CA PEM";
  BIO *b = pem_bio(ca, file);
  if (!b) return QRPC_ETLS;
  int n = 0, rv = 0;
  X509 *x;
  while (rv == 0 && (x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
    /* The same CA twice is harmless. */
    if (X509_STORE_add_cert(cfg->be->store, x) == 1)
      n++;
    else if (ERR_GET_REASON(ERR_peek_last_error()) !=
             X509_R_CERT_ALREADY_IN_HASH_TABLE)
      rv = ossl_err("cannot add a CA certificate from", where);
    X509_free(x);
  }
  BIO_free(b);
  ERR_clear_error();
  if (rv == 0 && n == 0) {
    QRPCI_ERROR("tls: no CA certificate in %s", where);
    rv = QRPC_ETLS;
  }
  return rv;
}

/* ---- Verification ------------------------------------------------------ */

static qrpc_conn *ssl_conn(SSL *ssl) {
  ngtcp2_crypto_conn_ref *ref = SSL_get_app_data(ssl);
  return ref ? ref->user_data : NULL;
}

/* Gives qrpc's verdict instead of OpenSSL's: its own check (the chain to
 * a trusted CA; the name and TLS server use on a client, TLS client use on
 * a server), then the config's flags and callback (tls.c). */
static int verify_chain(X509_STORE_CTX *sctx, void *arg) {
  (void)arg;
  SSL *ssl =
      X509_STORE_CTX_get_ex_data(sctx, SSL_get_ex_data_X509_STORE_CTX_idx());
  qrpc_conn *c = ssl ? ssl_conn(ssl) : NULL;
  if (!c) return 0;
  qrpc_tls_config *cfg = c->tlscfg;
  /* Nothing would read the verdict. */
  if (cfg->insecure && !c->is_server && !cfg->verify_fn) return 1;
  int verified = X509_verify_cert(sctx) == 1;
  if (!verified) {
    int err = X509_STORE_CTX_get_error(sctx);
    char why[256];
    snprintf(why, sizeof(why), "certificate of %s not trusted: %s",
             c->is_server ? "the client" : c->server_name,
             X509_verify_cert_error_string(err));
    qrpci_tls_verify_failed(c, why);
  }
  ERR_clear_error();
  /* The peer's chain as it sent it, its own certificate first. */
  STACK_OF(X509) *sent = X509_STORE_CTX_get0_untrusted(sctx);
  qrpc_cert chain[MAX_CHAIN];
  unsigned char *der[MAX_CHAIN];
  size_t n = 0;
  for (int i = 0; sent && i < sk_X509_num(sent) && n < MAX_CHAIN; i++) {
    der[n] = NULL;
    int len = i2d_X509(sk_X509_value(sent, i), &der[n]);
    if (len <= 0) break;
    chain[n].der = der[n];
    chain[n].len = (size_t)len;
    n++;
  }
  int accept = qrpci_tls_decide(c, verified, chain, n);
  for (size_t i = 0; i < n; i++) OPENSSL_free(der[i]);
  if (!accept && verified)
    X509_STORE_CTX_set_error(sctx, X509_V_ERR_CERT_REJECTED);
  return accept;
}

/* A server takes the config's ALPN or fails the handshake with
 * no_application_protocol. */
static int alpn_select(SSL *ssl, const unsigned char **out,
                       unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg) {
  (void)ssl;
  const qrpc_tls_config *cfg = arg;
  for (unsigned int i = 0; i < inlen;) {
    unsigned int len = in[i];
    if (i + 1 + len > inlen) break;
    if (len == cfg->alpn_len && memcmp(in + i + 1, cfg->alpn, len) == 0) {
      *out = in + i + 1;
      *outlen = (unsigned char)len;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* ---- Session tickets and 0-RTT ------------------------------------------ */

/* The ticket key of a period, derived from the server key, so that servers
 * sharing that key rotate together without talking. */
static int ticket_key(qrpc_tls_config *cfg, uint64_t period,
                      uint8_t k[TICKET_KEY_LEN]) {
  return qrpci_tls_derive(cfg, "qrpc ticket key", period, k, TICKET_KEY_LEN);
}

static int ticket_crypto(EVP_CIPHER_CTX *ectx, EVP_MAC_CTX *hctx,
                         const uint8_t k[TICKET_KEY_LEN], const uint8_t *iv,
                         int enc) {
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY,
                                        (void *)(k + TICKET_NAME_LEN + 32),
                                        32),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
      OSSL_PARAM_construct_end(),
  };
  const uint8_t *aes = k + TICKET_NAME_LEN;
  int ok = enc ? EVP_EncryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, aes, iv)
               : EVP_DecryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, aes, iv);
  return ok == 1 && EVP_MAC_CTX_set_params(hctx, params) == 1;
}

/* OpenSSL's ticket key callback: encrypts with this period's key, and
 * decrypts with it or one of the periods before (asking for a fresh
 * ticket then). 0 means unknown key: a full handshake. */
static int ticket_key_cb(SSL *ssl, unsigned char *name, unsigned char *iv,
                         EVP_CIPHER_CTX *ectx, EVP_MAC_CTX *hctx, int enc) {
  qrpc_conn *c = ssl_conn(ssl);
  if (!c) return -1;
  uint64_t period = (uint64_t)time(NULL) / TICKET_PERIOD_S;
  uint8_t k[TICKET_KEY_LEN];
  int rv = -1;
  if (enc) {
    if (ticket_key(c->tlscfg, period, k) == 0 &&
        RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) == 1 &&
        ticket_crypto(ectx, hctx, k, iv, 1)) {
      memcpy(name, k, TICKET_NAME_LEN);
      rv = 1;
    }
  } else {
    rv = 0;
    for (uint64_t back = 0; back < TICKET_KEYS_ACCEPTED && back <= period;
         back++) {
      if (ticket_key(c->tlscfg, period - back, k) != 0) break;
      if (memcmp(name, k, TICKET_NAME_LEN) != 0) continue;
      rv = !ticket_crypto(ectx, hctx, k, iv, 0) ? -1 : back ? 2 : 1;
      break;
    }
  }
  OPENSSL_cleanse(k, sizeof(k));
  return rv;
}

/* Server: what a new ticket carries besides the session. */
static int gen_ticket(SSL *ssl, void *arg) {
  (void)arg;
  qrpc_conn *c = ssl_conn(ssl);
  uint8_t ad[APPDATA_LEN];
  ad[0] = APPDATA_VERSION;
  ad[1] = c && c->peer_verified;
  if (!c || RAND_bytes(ad + 2, APPDATA_ID_LEN) != 1) return 0;
  return SSL_SESSION_set1_ticket_appdata(SSL_get0_session(ssl), ad,
                                         sizeof(ad)) == 1;
}

/* Server: a ticket the client offered was decrypted (or not). */
static SSL_TICKET_RETURN dec_ticket(SSL *ssl, SSL_SESSION *sess,
                                    const unsigned char *keyname,
                                    size_t keynamelen,
                                    SSL_TICKET_STATUS status, void *arg) {
  (void)keyname, (void)keynamelen, (void)arg;
  qrpc_conn *c = ssl_conn(ssl);
  if (status != SSL_TICKET_SUCCESS && status != SSL_TICKET_SUCCESS_RENEW)
    return SSL_TICKET_RETURN_IGNORE_RENEW;
  void *p = NULL;
  size_t len = 0;
  if (!c || !SSL_SESSION_get0_ticket_appdata(sess, &p, &len) ||
      len != APPDATA_LEN || ((uint8_t *)p)[0] != APPDATA_VERSION)
    return SSL_TICKET_RETURN_IGNORE_RENEW;
  const uint8_t *ad = p;
  c->resume_verified = ad[1];
  time_t issued = SSL_SESSION_get_time_ex(sess);
  c->ticket_early_ok = qrpci_tls_early_fresh(
      c->tlscfg, ad + 2, APPDATA_ID_LEN, issued > 0 ? (uint64_t)issued : 0);
  /* Always renewed: a client uses each ticket once, and OpenSSL sends a
   * resumed connection a new ticket only when asked to, so with plain USE
   * the two tickets of a full handshake would last two reconnects. */
  return SSL_TICKET_RETURN_USE_RENEW;
}

/* Server: early data only on a ticket's first use within the window, and
 * never when the server asks for client certificates (a handler of an
 * early call could not know who calls). */
static int allow_early(SSL *ssl, void *arg) {
  const qrpc_tls_config *cfg = arg;
  qrpc_conn *c = ssl_conn(ssl);
  return c && c->ticket_early_ok && cfg->client_auth == QRPC_CLIENT_AUTH_NONE;
}

static int server_tickets(SSL_CTX *ctx, qrpc_tls_config *cfg) {
  static const unsigned char sid_ctx[] = "qrpc";
  /* Stateless tickets only: nothing is kept per session on the server. */
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(ctx, SSL_OP_NO_ANTI_REPLAY);
  SSL_CTX_set_timeout(ctx, TICKET_LIFETIME_S);
  if (cfg->client_auth == QRPC_CLIENT_AUTH_NONE)
    SSL_CTX_set_max_early_data(ctx, UINT32_MAX);
  SSL_CTX_set_allow_early_data_cb(ctx, allow_early, cfg);
  return SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1) ==
             1 &&
         SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_key_cb) == 1 &&
         SSL_CTX_set_session_ticket_cb(ctx, gen_ticket, dec_ticket, cfg) == 1;
}

/* Client: a ticket arrived; it goes to the config's cache, encoded (for
 * cache files) and as a session object: decoding it again for every
 * resumption parses the server's certificate again, which cost a client
 * about 6 % of its CPU per resumed connection. A copy, not sess itself:
 * OpenSSL marks the session of a connection freed without a TLS shutdown
 * (every QUIC connection) as not resumable. */
static int new_session(SSL *ssl, SSL_SESSION *sess) {
  qrpc_conn *c = ssl_conn(ssl);
  int len = c ? i2d_SSL_SESSION(sess, NULL) : 0;
  unsigned char *buf = len > 0 ? malloc((size_t)len) : NULL;
  unsigned char *p = buf;
  if (buf && i2d_SSL_SESSION(sess, &p) == len)
    qrpci_tls_ticket_received(
        c, buf, (size_t)len, SSL_SESSION_get_ticket_lifetime_hint(sess),
        SSL_SESSION_get_max_early_data(sess) == UINT32_MAX,
        SSL_SESSION_dup(sess));
  free(buf);
  ERR_clear_error();
  return 0; /* OpenSSL keeps no reference */
}

void qrpci_tlsb_session_drop(void *session) { SSL_SESSION_free(session); }

int qrpci_tlsb_resume(qrpc_conn *c, const qrpci_ticket *t, int early) {
  SSL *ssl = ngtcp2_crypto_ossl_ctx_get_ssl(c->tls);
  SSL_SESSION *sess = t->session;
  if (sess) {
    SSL_SESSION_up_ref(sess);
  } else {
    const unsigned char *p = t->data;
    sess = d2i_SSL_SESSION(NULL, &p, (long)t->len);
  }
  int ok = sess && SSL_set_session(ssl, sess) == 1;
  SSL_SESSION_free(sess);
  if (ok && early) SSL_set_quic_tls_early_data_enabled(ssl, 1);
  ERR_clear_error();
  return ok ? 0 : QRPC_ETLS;
}

int qrpci_tlsb_resumed(qrpc_conn *c) {
  return SSL_session_reused(ngtcp2_crypto_ossl_ctx_get_ssl(c->tls)) == 1;
}

int qrpci_tlsb_early_accepted(qrpc_conn *c) {
  return SSL_get_early_data_status(ngtcp2_crypto_ossl_ctx_get_ssl(c->tls)) ==
         SSL_EARLY_DATA_ACCEPTED;
}

/* ---- Contexts and sessions --------------------------------------------- */

static SSL_CTX *ctx_new(qrpc_tls_config *cfg, int server) {
  qrpci_tlsb *be = cfg->be;
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  if (!ctx) return NULL;
  int ok = SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) == 1 &&
           SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) == 1;
  const own_cert *oc = &be->cert;
  if (ok && oc->leaf) {
    ok = SSL_CTX_use_certificate(ctx, oc->leaf) == 1 &&
         SSL_CTX_use_PrivateKey(ctx, oc->key) == 1;
    for (int i = 0; ok && i < sk_X509_num(oc->chain); i++)
      ok = SSL_CTX_add1_chain_cert(ctx, sk_X509_value(oc->chain, i)) == 1;
  }
  if (ok && !server && !cfg->has_ca && !cfg->insecure)
    ok = X509_STORE_set_default_paths(be->store) == 1;
  if (ok) SSL_CTX_set1_cert_store(ctx, be->store);
  SSL_CTX_set_cert_verify_callback(ctx, verify_chain, NULL);
  if (server) {
    int mode = SSL_VERIFY_NONE;
    if (cfg->client_auth != QRPC_CLIENT_AUTH_NONE) mode = SSL_VERIFY_PEER;
    if (cfg->client_auth == QRPC_CLIENT_AUTH_REQUIRE)
      mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    SSL_CTX_set_verify(ctx, mode, NULL);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, cfg);
    if (ok) ok = server_tickets(ctx, cfg);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* Tickets go to the config's cache (tickets.c), not OpenSSL's. */
    SSL_CTX_set_session_cache_mode(
        ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_session);
  }
  if (keylog) SSL_CTX_set_keylog_callback(ctx, keylog_line);
  if (!ok) {
    SSL_CTX_free(ctx);
    return NULL;
  }
  return ctx;
}

/* The context of a role, made on first use by whichever loop gets there
 * first. */
static SSL_CTX *ctx_for(qrpc_tls_config *cfg, int server) {
  qrpci_tlsb *be = cfg->be;
  pthread_mutex_lock(&be->mu);
  if (!be->ctx[server]) be->ctx[server] = ctx_new(cfg, server);
  SSL_CTX *ctx = be->ctx[server];
  pthread_mutex_unlock(&be->mu);
  return ctx;
}

/* Everything a client session needs beyond the QUIC glue. */
static int client_setup(SSL *ssl, qrpc_tls_config *cfg,
                        const char *server_name) {
  unsigned char alpn[256];
  alpn[0] = (unsigned char)cfg->alpn_len;
  memcpy(alpn + 1, cfg->alpn, cfg->alpn_len);
  if (SSL_set_alpn_protos(ssl, alpn, (unsigned int)cfg->alpn_len + 1) != 0)
    return 0;
  SSL_set_connect_state(ssl);
  qrpci_tls_warn_insecure(cfg, server_name);
  /* RFC 6066: SNI carries host names only, never address literals, which
   * are verified against iPAddress entries instead. */
  if (qrpci_tls_is_ip_literal(server_name))
    return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), server_name);
  X509_VERIFY_PARAM_set_hostflags(SSL_get0_param(ssl),
                                  X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  return SSL_set_tlsext_host_name(ssl, server_name) == 1 &&
         SSL_set1_host(ssl, server_name) == 1;
}

int qrpci_tls_session_new(qrpc_tls_config *cfg, qrpc_conn *c, int server,
                          const char *server_name) {
  SSL_CTX *ctx = ctx_for(cfg, server);
  if (!ctx) return ossl_err("cannot set up a TLS context", NULL);
  SSL *ssl = SSL_new(ctx);
  if (!ssl) return ossl_err("cannot make a TLS session", NULL);
  ngtcp2_crypto_ossl_ctx *octx = NULL;
  int ok = (server ? ngtcp2_crypto_ossl_configure_server_session(ssl)
                   : ngtcp2_crypto_ossl_configure_client_session(ssl)) == 0;
  /* ngtcp2's glue finds the connection through the app data, which must
   * be the ngtcp2_crypto_conn_ref. */
  SSL_set_app_data(ssl, &c->ref);
  if (ok && server) SSL_set_accept_state(ssl);
  /* A server takes early data (allow_early() decides per connection). */
  if (ok && server && cfg->client_auth == QRPC_CLIENT_AUTH_NONE)
    SSL_set_quic_tls_early_data_enabled(ssl, 1);
  if (ok && !server) ok = client_setup(ssl, cfg, server_name);
  if (ok) ok = ngtcp2_crypto_ossl_ctx_new(&octx, ssl) == 0;
  if (!ok) {
    SSL_set_app_data(ssl, NULL);
    SSL_free(ssl);
    return ossl_err("cannot configure the QUIC session", NULL);
  }
  c->tls = octx;
  ngtcp2_conn_set_tls_native_handle(c->q, octx);
  return 0;
}

void qrpci_tls_session_free(qrpc_conn *c) {
  ngtcp2_crypto_ossl_ctx *octx = c->tls;
  if (!octx) return;
  SSL *ssl = ngtcp2_crypto_ossl_ctx_get_ssl(octx);
  if (ssl) {
    SSL_set_app_data(ssl, NULL);
    SSL_free(ssl);
  }
  ngtcp2_crypto_ossl_ctx_del(octx);
  c->tls = NULL;
}

/* ---- After the handshake ----------------------------------------------- */

/* Copies the peer's chain into c: the session may be gone before the
 * application stops looking (it is valid until on_closed returns). Which
 * side holds the peer's own certificate in the chain OpenSSL reports
 * differs between clients and servers, so it is skipped there. */
static void cache_chain(qrpc_conn *c, SSL *ssl) {
  X509 *leaf = SSL_get0_peer_certificate(ssl);
  if (!leaf) return;
  STACK_OF(X509) *rest = SSL_get_peer_cert_chain(ssl);
  X509 *certs[MAX_CHAIN];
  size_t n = 0;
  certs[n++] = leaf;
  for (int i = 0; rest && i < sk_X509_num(rest) && n < MAX_CHAIN; i++)
    if (X509_cmp(sk_X509_value(rest, i), leaf) != 0)
      certs[n++] = sk_X509_value(rest, i);
  qrpc_cert chain[MAX_CHAIN];
  unsigned char *der[MAX_CHAIN];
  size_t m = 0;
  for (; m < n; m++) {
    der[m] = NULL;
    int len = i2d_X509(certs[m], &der[m]);
    if (len <= 0) break;
    chain[m].der = der[m];
    chain[m].len = (size_t)len;
  }
  if (m == n) qrpci_conn_keep_chain(c, chain, m);
  for (size_t i = 0; i < m; i++) OPENSSL_free(der[i]);
}

/* Adds one subjectAltName entry to parts; ip holds the text of an
 * address. */
static size_t san_part(const GENERAL_NAME *g, qrpci_id_part *p, char *ip,
                       size_t iplen) {
  const ASN1_STRING *s;
  qrpci_id_kind kind;
  switch (g->type) {
  case GEN_DNS: kind = QRPCI_ID_DNS, s = g->d.dNSName; break;
  case GEN_URI: kind = QRPCI_ID_URI, s = g->d.uniformResourceIdentifier; break;
  case GEN_EMAIL: kind = QRPCI_ID_EMAIL, s = g->d.rfc822Name; break;
  case GEN_IPADD: {
    s = g->d.iPAddress;
    int len = ASN1_STRING_length(s);
    if ((len != 4 && len != 16) ||
        !inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(s),
                   ip, (socklen_t)iplen))
      return 0;
    *p = (qrpci_id_part){QRPCI_ID_IP, ip, strlen(ip)};
    return 1;
  }
  default: return 0;
  }
  *p = (qrpci_id_part){kind, (const char *)ASN1_STRING_get0_data(s),
                       (size_t)ASN1_STRING_length(s)};
  return 1;
}

/* The identity of a verified peer, from its own certificate. */
static void cache_identity(qrpc_conn *c, SSL *ssl) {
  X509 *leaf = SSL_get0_peer_certificate(ssl);
  if (!c->peer_verified || !leaf) return;
  BIO *b = BIO_new(BIO_s_mem());
  if (!b) return;
  X509_NAME_print_ex(b, X509_get_subject_name(leaf), 0,
                     XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
  char *dn = NULL;
  long dnlen = BIO_get_mem_data(b, &dn);
  qrpci_id_part parts[MAX_ID_PARTS];
  char ips[MAX_ID_PARTS][INET6_ADDRSTRLEN];
  size_t n = 0;
  parts[n++] = (qrpci_id_part){QRPCI_ID_SUBJECT, dn, (size_t)dnlen};
  GENERAL_NAMES *sans =
      X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
  for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans) && n < MAX_ID_PARTS;
       i++)
    n += san_part(sk_GENERAL_NAME_value(sans, i), &parts[n], ips[n],
                  sizeof(ips[n]));
  c->peer_identity = qrpci_identity_pack(parts, n);
  GENERAL_NAMES_free(sans);
  BIO_free(b);
  ERR_clear_error();
}

int qrpci_tls_handshake_done(qrpc_conn *c) {
  SSL *ssl = ngtcp2_crypto_ossl_ctx_get_ssl(c->tls);
  const unsigned char *proto = NULL;
  unsigned int len = 0;
  SSL_get0_alpn_selected(ssl, &proto, &len);
  if (proto && len < sizeof(c->alpn)) {
    memcpy(c->alpn, proto, len);
    c->alpn[len] = '\0';
  }
  /* The handshake enforces the ALPN already; this guards the invariant
   * that an established connection always speaks the config's protocol. */
  qrpc_tls_config *cfg = c->tlscfg;
  if (!proto || len != cfg->alpn_len || memcmp(proto, cfg->alpn, len) != 0)
    return QRPC_EALPN;
  cache_chain(c, ssl);
  cache_identity(c, ssl);
  return 0;
}
