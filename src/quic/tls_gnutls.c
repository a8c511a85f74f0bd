/*
 * TLS 1.3 for QUIC with GnuTLS. Everything GnuTLS-specific lives in this
 * file, behind the interface declared in tls.h, so another TLS backend is
 * a sibling file.
 */
#include <arpa/inet.h>
#include <gnutls/crypto.h>
#include <gnutls/x509.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>

#include "qrpc/error.h"
#include "quic/conn.h"
#include "quic/testing.h"
#include "quic/tls.h"
#include "util/log.h"
#include "wire/protocol.h"

/* TLS 1.3 only, with the AEADs and groups QUIC peers commonly offer. The
 * compatibility mode of TLS 1.3 must be off inside QUIC (RFC 9001 8.4). */
static const char tls_priority[] =
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"
    "+CHACHA20-POLY1305:+AES-128-CCM:-GROUP-ALL:+GROUP-X25519:"
    "+GROUP-SECP256R1:+GROUP-SECP384R1:+GROUP-SECP521R1:"
    "%DISABLE_TLS13_COMPAT_MODE";

struct qrpc_tls_config {
  int refs;
  int in_use;
  gnutls_certificate_credentials_t cred;
  int has_cert;
  int has_ca;
  int has_system_ca;
  int insecure;
  int insecure_warned; /* the warning was logged once */
  qrpc_verify_fn verify_fn;
  void *verify_ud;
  char alpn[256];
  size_t alpn_len;
};

int qrpc_tls_config_new(qrpc_tls_config **out) {
  if (!out) return QRPC_EINVAL;
  qrpc_tls_config *cfg = calloc(1, sizeof(*cfg));
  if (!cfg) return QRPC_ENOMEM;
  if (gnutls_certificate_allocate_credentials(&cfg->cred) < 0) {
    free(cfg);
    return QRPC_ETLS;
  }
  cfg->refs = 1;
  memcpy(cfg->alpn, QRPCI_ALPN, QRPCI_ALPN_LEN);
  cfg->alpn_len = QRPCI_ALPN_LEN;
  *out = cfg;
  return 0;
}

void qrpci_tls_config_ref(qrpc_tls_config *cfg) {
  cfg->refs++;
  cfg->in_use = 1;
}

int qrpci_tls_config_has_cert(const qrpc_tls_config *cfg) {
  return cfg->has_cert;
}

int qrpci_tls_rand(void *dest, size_t len) {
  return gnutls_rnd(GNUTLS_RND_RANDOM, dest, len) == 0 ? 0 : QRPC_ESYSTEM;
}

void qrpc_tls_config_free(qrpc_tls_config *cfg) {
  if (!cfg || --cfg->refs > 0) return;
  gnutls_certificate_free_credentials(cfg->cred);
  free(cfg);
}

static int tls_err(const char *what, int rv) {
  QRPCI_ERROR("tls: %s: %s", what, gnutls_strerror(rv));
  return QRPC_ETLS;
}

int qrpc_tls_config_set_cert_files(qrpc_tls_config *cfg, const char *cert_path,
                                   const char *key_path) {
  if (!cfg || !cert_path || !key_path) return QRPC_EINVAL;
  if (cfg->in_use) return QRPC_ESTATE;
  int rv = gnutls_certificate_set_x509_key_file(cfg->cred, cert_path, key_path,
                                                GNUTLS_X509_FMT_PEM);
  if (rv < 0) return tls_err("loading certificate/key files", rv);
  cfg->has_cert = 1;
  return 0;
}

static gnutls_datum_t pem_datum(const char *pem) {
  gnutls_datum_t d = {.data = (unsigned char *)pem,
                      .size = (unsigned int)strlen(pem)};
  return d;
}

int qrpc_tls_config_set_cert_pem(qrpc_tls_config *cfg, const char *cert_pem,
                                 const char *key_pem) {
  if (!cfg || !cert_pem || !key_pem) return QRPC_EINVAL;
  if (cfg->in_use) return QRPC_ESTATE;
  gnutls_datum_t c = pem_datum(cert_pem), k = pem_datum(key_pem);
  /* Parsed on its own first: GnuTLS 3.7 leaks when the combined loader
   * meets a malformed certificate. */
  gnutls_x509_crt_t *crts = NULL;
  unsigned int n = 0;
  int rv = gnutls_x509_crt_list_import2(&crts, &n, &c, GNUTLS_X509_FMT_PEM, 0);
  if (rv < 0) return tls_err("loading certificate PEM", rv);
  for (unsigned int i = 0; i < n; i++) gnutls_x509_crt_deinit(crts[i]);
  gnutls_free(crts);
  rv = gnutls_certificate_set_x509_key_mem(cfg->cred, &c, &k,
                                           GNUTLS_X509_FMT_PEM);
  if (rv < 0) return tls_err("loading certificate/key PEM", rv);
  cfg->has_cert = 1;
  return 0;
}

int qrpc_tls_config_set_ca_file(qrpc_tls_config *cfg, const char *path) {
  if (!cfg || !path) return QRPC_EINVAL;
  if (cfg->in_use) return QRPC_ESTATE;
  int rv = gnutls_certificate_set_x509_trust_file(cfg->cred, path,
                                                  GNUTLS_X509_FMT_PEM);
  if (rv < 0) return tls_err("loading CA file", rv);
  if (rv == 0) return tls_err("loading CA file", GNUTLS_E_NO_CERTIFICATE_FOUND);
  cfg->has_ca = 1;
  return 0;
}

int qrpc_tls_config_set_ca_pem(qrpc_tls_config *cfg, const char *pem) {
  if (!cfg || !pem) return QRPC_EINVAL;
  if (cfg->in_use) return QRPC_ESTATE;
  gnutls_datum_t d = pem_datum(pem);
  int rv = gnutls_certificate_set_x509_trust_mem(cfg->cred, &d,
                                                 GNUTLS_X509_FMT_PEM);
  if (rv < 0) return tls_err("loading CA PEM", rv);
  if (rv == 0) return tls_err("loading CA PEM", GNUTLS_E_NO_CERTIFICATE_FOUND);
  cfg->has_ca = 1;
  return 0;
}

int qrpc_tls_config_set_verify_callback(qrpc_tls_config *cfg,
                                        qrpc_verify_fn fn, void *user_data) {
  if (!cfg) return QRPC_EINVAL;
  if (cfg->in_use) return QRPC_ESTATE;
  cfg->verify_fn = fn;
  cfg->verify_ud = user_data;
  return 0;
}

int qrpc_tls_config_INSECURE_skip_verify(qrpc_tls_config *cfg) {
  if (!cfg) return QRPC_EINVAL;
  if (cfg->in_use) return QRPC_ESTATE;
  cfg->insecure = 1;
  return 0;
}

int qrpci_tls_config_set_alpn(qrpc_tls_config *cfg, const char *alpn) {
  size_t n = alpn ? strlen(alpn) : 0;
  if (!cfg || n == 0 || n >= sizeof(cfg->alpn)) return QRPC_EINVAL;
  memcpy(cfg->alpn, alpn, n);
  cfg->alpn_len = n;
  return 0;
}

static qrpc_conn *session_conn(gnutls_session_t s) {
  ngtcp2_crypto_conn_ref *ref = gnutls_session_get_ptr(s);
  return ref->user_data;
}

static void chain_of(gnutls_session_t s, qrpc_cert *out, size_t max,
                     size_t *n) {
  unsigned int cnt = 0;
  const gnutls_datum_t *raw = gnutls_certificate_get_peers(s, &cnt);
  *n = 0;
  for (unsigned int i = 0; raw && i < cnt && *n < max; i++) {
    out[*n].der = raw[i].data;
    out[*n].len = raw[i].size;
    (*n)++;
  }
}

/* Client-side certificate check: the built-in verdict (chain to a trusted
 * CA, valid for the server name and for TLS servers), then the
 * application's callback, which has the last word. */
static int verify_peer(gnutls_session_t s) {
  qrpc_conn *c = session_conn(s);
  qrpc_tls_config *cfg = c->tlscfg;
  /* Nothing would read the verdict. */
  if (cfg->insecure && !cfg->verify_fn) return 0;
  gnutls_typed_vdata_st vd[2];
  memset(vd, 0, sizeof(vd));
  vd[0].type = GNUTLS_DT_DNS_HOSTNAME;
  vd[0].data = (unsigned char *)c->server_name;
  vd[1].type = GNUTLS_DT_KEY_PURPOSE_OID;
  vd[1].data = (unsigned char *)GNUTLS_KP_TLS_WWW_SERVER;
  unsigned int status = 0;
  int rv = gnutls_certificate_verify_peers(s, vd, 2, &status);
  int verified = rv == 0 && status == 0;
  if (!verified) {
    gnutls_datum_t msg = {0};
    if (rv == 0 &&
        gnutls_certificate_verification_status_print(
            status, GNUTLS_CRT_X509, &msg, 0) == 0) {
      QRPCI_WARN("tls: certificate of %s not trusted: %s", c->server_name,
                 msg.data);
      gnutls_free(msg.data);
    } else {
      QRPCI_WARN("tls: certificate of %s not verified: %s", c->server_name,
                 gnutls_strerror(rv));
    }
  }
  int accept = verified || cfg->insecure;
  if (cfg->verify_fn) {
    qrpc_cert chain[16];
    size_t n;
    chain_of(s, chain, 16, &n);
    accept = cfg->verify_fn(c, chain, n, verified, cfg->verify_ud) == 0;
  }
  if (accept) return 0;
  c->cert_rejected = 1;
  return GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR;
}

static int is_ip_literal(const char *name) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, name, buf) == 1 ||
         inet_pton(AF_INET6, name, buf) == 1;
}

/* The priority string parsed once for the process: parsing it for every
 * session cost a few percent of a handshake and 8 KiB per connection.
 * GnuTLS reference-counts the cache per session; this reference lives as
 * long as the process. */
static gnutls_priority_t prio_cache;
static int prio_rv;
static pthread_once_t prio_once = PTHREAD_ONCE_INIT;

static void prio_init(void) {
  prio_rv = gnutls_priority_init(&prio_cache, tls_priority, NULL);
}

int qrpci_tls_session_new(qrpc_tls_config *cfg, qrpc_conn *c, int server,
                          const char *server_name) {
  gnutls_session_t s;
  unsigned int flags = server ? GNUTLS_SERVER : GNUTLS_CLIENT;
  pthread_once(&prio_once, prio_init);
  if (prio_rv < 0) return tls_err("priority", prio_rv);
  int rv = gnutls_init(&s, flags | GNUTLS_NO_END_OF_EARLY_DATA);
  if (rv < 0) return tls_err("gnutls_init", rv);
  if ((rv = gnutls_priority_set(s, prio_cache)) < 0) {
    tls_err("priority", rv);
    goto fail;
  }
  rv = server ? ngtcp2_crypto_gnutls_configure_server_session(s)
              : ngtcp2_crypto_gnutls_configure_client_session(s);
  if (rv != 0) {
    QRPCI_ERROR("tls: cannot configure the QUIC session");
    goto fail;
  }
  /* ngtcp2's GnuTLS glue owns the session pointer: it must be the
   * ngtcp2_crypto_conn_ref, whose user_data leads back to the connection. */
  gnutls_session_set_ptr(s, &c->ref);
  if (!server && !cfg->has_ca && !cfg->has_system_ca && !cfg->insecure) {
    rv = gnutls_certificate_set_x509_system_trust(cfg->cred);
    if (rv < 0) QRPCI_WARN("tls: no system CA store: %s", gnutls_strerror(rv));
    cfg->has_system_ca = 1;
  }
  if ((rv = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cfg->cred)) < 0) {
    tls_err("credentials", rv);
    goto fail;
  }
  gnutls_datum_t alpn = {.data = (unsigned char *)cfg->alpn,
                         .size = (unsigned int)cfg->alpn_len};
  if ((rv = gnutls_alpn_set_protocols(s, &alpn, 1, GNUTLS_ALPN_MANDATORY)) < 0) {
    tls_err("ALPN", rv);
    goto fail;
  }
  if (!server) {
    /* RFC 6066: SNI carries host names only, never address literals. */
    if (!is_ip_literal(server_name) &&
        (rv = gnutls_server_name_set(s, GNUTLS_NAME_DNS, server_name,
                                     strlen(server_name))) < 0) {
      tls_err("server name", rv);
      goto fail;
    }
    if (cfg->insecure && !cfg->insecure_warned) {
      QRPCI_WARN("tls: certificate verification is DISABLED (first "
                 "connection: %s)",
                 server_name);
      cfg->insecure_warned = 1;
    }
    gnutls_session_set_verify_function(s, verify_peer);
  }
  c->tls = s;
  ngtcp2_conn_set_tls_native_handle(c->q, s);
  return 0;
fail:
  gnutls_deinit(s);
  return QRPC_ETLS;
}

/* Copies the peer's chain into c: the TLS session may be gone before
 * the application stops looking (it is valid until on_closed returns). */
static void cache_chain(qrpc_conn *c) {
  unsigned int cnt = 0;
  const gnutls_datum_t *raw = gnutls_certificate_get_peers(c->tls, &cnt);
  if (!raw || cnt == 0) return;
  size_t total = 0;
  for (unsigned int i = 0; i < cnt; i++) total += raw[i].size;
  c->peer_certs = calloc(cnt, sizeof(*c->peer_certs));
  c->peer_cert_data = malloc(total);
  if (!c->peer_certs || !c->peer_cert_data) {
    free(c->peer_certs);
    free(c->peer_cert_data);
    c->peer_certs = NULL;
    c->peer_cert_data = NULL;
    return;
  }
  size_t off = 0;
  for (unsigned int i = 0; i < cnt; i++) {
    memcpy(c->peer_cert_data + off, raw[i].data, raw[i].size);
    c->peer_certs[i].der = c->peer_cert_data + off;
    c->peer_certs[i].len = raw[i].size;
    off += raw[i].size;
  }
  c->npeer_certs = cnt;
}

void qrpci_tls_session_free(qrpc_conn *c) {
  if (c->tls) gnutls_deinit(c->tls);
  c->tls = NULL;
}

int qrpci_tls_handshake_done(qrpc_conn *c) {
  gnutls_datum_t proto = {0};
  qrpc_tls_config *cfg = c->tlscfg;
  if (gnutls_alpn_get_selected_protocol(c->tls, &proto) == 0 &&
      proto.size < sizeof(c->alpn)) {
    memcpy(c->alpn, proto.data, proto.size);
    c->alpn[proto.size] = '\0';
  }
  /* GnuTLS enforces the ALPN already; this guards the invariant that an
   * established connection always speaks the config's protocol. */
  if (proto.size != cfg->alpn_len ||
      memcmp(proto.data, cfg->alpn, cfg->alpn_len) != 0)
    return QRPC_EALPN;
  cache_chain(c);
  return 0;
}
