/*
 * What every TLS backend shares: the public configuration calls (the
 * backend loads what they name), the last word on a peer's chain, the
 * meaning of TLS alerts, and peer identities.
 */
#include "quic/tls.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qrpc/error.h"
#include "quic/conn.h"
#include "quic/testing.h"
#include "util/log.h"
#include "wire/protocol.h"

/* TLS alerts (RFC 8446 6.2) that mean a certificate was refused or
 * missing. */
#define ALERT_BAD_CERTIFICATE 42
#define ALERT_UNSUPPORTED_CERTIFICATE 43
#define ALERT_CERTIFICATE_REVOKED 44
#define ALERT_CERTIFICATE_EXPIRED 45
#define ALERT_CERTIFICATE_UNKNOWN 46
#define ALERT_UNKNOWN_CA 48
#define ALERT_CERTIFICATE_REQUIRED 116

int qrpc_tls_config_new(qrpc_tls_config **out) {
  if (!out) return QRPC_EINVAL;
  qrpc_tls_config *cfg = calloc(1, sizeof(*cfg));
  if (!cfg) return QRPC_ENOMEM;
  int rv = qrpci_tlsb_new(cfg);
  if (rv != 0) {
    free(cfg);
    return rv;
  }
  atomic_init(&cfg->refs, 1);
  pthread_mutex_init(&cfg->mu, NULL);
  cfg->created_s = (uint64_t)time(NULL);
  memcpy(cfg->alpn, QRPCI_ALPN, QRPCI_ALPN_LEN);
  cfg->alpn_len = QRPCI_ALPN_LEN;
  *out = cfg;
  return 0;
}

void qrpci_tls_config_ref(qrpc_tls_config *cfg) {
  atomic_fetch_add(&cfg->refs, 1);
  /* Written once, before a server's workers start; read by them after. */
  if (!cfg->in_use) cfg->in_use = 1;
}

void qrpc_tls_config_free(qrpc_tls_config *cfg) {
  if (!cfg || atomic_fetch_sub(&cfg->refs, 1) > 1) return;
  qrpci_tlsb_free(cfg);
  qrpci_tls_tickets_free(cfg);
  pthread_mutex_destroy(&cfg->mu);
  memset(cfg->server_key, 0, sizeof(cfg->server_key));
  free(cfg);
}

/* The checks every setter makes before the backend loads anything. */
static int settable(const qrpc_tls_config *cfg) {
  if (!cfg) return QRPC_EINVAL;
  return cfg->in_use ? QRPC_ESTATE : 0;
}

static int set_cert(qrpc_tls_config *cfg, const char *cert, const char *key,
                    int files) {
  int rv = settable(cfg);
  if (rv == 0 && (!cert || !key)) rv = QRPC_EINVAL;
  if (rv == 0) rv = qrpci_tlsb_set_cert(cfg, cert, key, files);
  if (rv == 0) cfg->has_cert = 1;
  return rv;
}

int qrpc_tls_config_set_cert_files(qrpc_tls_config *cfg, const char *cert_path,
                                   const char *key_path) {
  return set_cert(cfg, cert_path, key_path, 1);
}

int qrpc_tls_config_set_cert_pem(qrpc_tls_config *cfg, const char *cert_pem,
                                 const char *key_pem) {
  return set_cert(cfg, cert_pem, key_pem, 0);
}

static int add_ca(qrpc_tls_config *cfg, const char *ca, int file) {
  int rv = settable(cfg);
  if (rv == 0 && !ca) rv = QRPC_EINVAL;
  if (rv == 0) rv = qrpci_tlsb_add_ca(cfg, ca, file);
  if (rv == 0) cfg->has_ca = 1;
  return rv;
}

int qrpc_tls_config_set_ca_file(qrpc_tls_config *cfg, const char *path) {
  return add_ca(cfg, path, 1);
}

int qrpc_tls_config_set_ca_pem(qrpc_tls_config *cfg, const char *pem) {
  return add_ca(cfg, pem, 0);
}

int qrpc_tls_config_set_verify_callback(qrpc_tls_config *cfg,
                                        qrpc_verify_fn fn, void *user_data) {
  int rv = settable(cfg);
  if (rv != 0) return rv;
  cfg->verify_fn = fn;
  cfg->verify_ud = user_data;
  return 0;
}

int qrpc_tls_config_set_client_auth(qrpc_tls_config *cfg,
                                    qrpc_client_auth mode) {
  int rv = settable(cfg);
  if (rv != 0) return rv;
  if (mode != QRPC_CLIENT_AUTH_NONE && mode != QRPC_CLIENT_AUTH_REQUEST &&
      mode != QRPC_CLIENT_AUTH_REQUIRE)
    return QRPC_EINVAL;
  cfg->client_auth = mode;
  return 0;
}

int qrpc_tls_config_INSECURE_skip_verify(qrpc_tls_config *cfg) {
  int rv = settable(cfg);
  if (rv != 0) return rv;
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

int qrpci_tls_config_check_server(const qrpc_tls_config *cfg) {
  if (!cfg->has_cert) {
    QRPCI_ERROR("tls: a server's config needs a certificate and key");
    return QRPC_ETLS;
  }
  if (cfg->client_auth != QRPC_CLIENT_AUTH_NONE && !cfg->has_ca) {
    QRPCI_ERROR("tls: client authentication needs the CA certificates that "
                "client certificates are verified against "
                "(qrpc_tls_config_set_ca_file)");
    return QRPC_EINVAL;
  }
  return 0;
}

int qrpci_tls_decide(qrpc_conn *c, int verified, const qrpc_cert *chain,
                     size_t n) {
  qrpc_tls_config *cfg = c->tlscfg;
  int accept = verified || (cfg->insecure && !c->is_server);
  if (cfg->verify_fn)
    accept = cfg->verify_fn(c, chain, n, verified, cfg->verify_ud) == 0;
  c->peer_verified = accept && verified;
  if (!accept) c->cert_rejected = 1;
  if (verified) {
    pthread_mutex_lock(&cfg->mu);
    cfg->last_refusal[0] = '\0';
    pthread_mutex_unlock(&cfg->mu);
  }
  if (!accept && verified && !c->refusal[0])
    snprintf(c->refusal, sizeof(c->refusal),
             "the verification callback refused the certificate of %s",
             c->is_server ? "the client" : c->server_name);
  return accept;
}

void qrpci_tls_verify_failed(qrpc_conn *c, const char *why) {
  qrpc_tls_config *cfg = c->tlscfg;
  snprintf(c->refusal, sizeof(c->refusal), "%s", why);
  pthread_mutex_lock(&cfg->mu);
  int repeat = strcmp(cfg->last_refusal, c->refusal) == 0;
  if (!repeat) memcpy(cfg->last_refusal, c->refusal, sizeof(c->refusal));
  pthread_mutex_unlock(&cfg->mu);
  if (repeat)
    QRPCI_INFO("tls: %s (again)", why);
  else
    QRPCI_WARN("tls: %s", why);
}

void qrpci_tls_warn_insecure(qrpc_tls_config *cfg, const char *server_name) {
  if (!cfg->insecure || cfg->insecure_warned) return;
  QRPCI_WARN("tls: certificate verification is DISABLED (first "
             "connection: %s)",
             server_name);
  cfg->insecure_warned = 1;
}

int qrpci_tls_is_ip_literal(const char *name) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, name, buf) == 1 ||
         inet_pton(AF_INET6, name, buf) == 1;
}

int qrpci_tls_alert_error(uint8_t alert) {
  switch (alert) {
  case QRPCI_TLS_ALERT_NO_APP_PROTOCOL: return QRPC_EALPN;
  case ALERT_BAD_CERTIFICATE:
  case ALERT_UNSUPPORTED_CERTIFICATE:
  case ALERT_CERTIFICATE_REVOKED:
  case ALERT_CERTIFICATE_EXPIRED:
  case ALERT_CERTIFICATE_UNKNOWN:
  case ALERT_UNKNOWN_CA:
  case ALERT_CERTIFICATE_REQUIRED: return QRPC_ECERT;
  default: return QRPC_ETLS;
  }
}

qrpc_identity *qrpci_identity_pack(const qrpci_id_part *parts, size_t n) {
  size_t count[QRPCI_ID_IP + 1] = {0};
  size_t bytes = 0;
  for (size_t i = 0; i < n; i++) {
    count[parts[i].kind]++;
    bytes += parts[i].len + 1;
  }
  size_t nstr = n - count[QRPCI_ID_SUBJECT];
  qrpc_identity *id =
      calloc(1, sizeof(*id) + nstr * sizeof(qrpc_str) + bytes + 1);
  if (!id) return NULL;
  qrpc_str *slots = (qrpc_str *)(id + 1);
  char *text = (char *)(slots + nstr);
  qrpc_str *next[QRPCI_ID_IP + 1] = {NULL};
  next[QRPCI_ID_DNS] = slots;
  next[QRPCI_ID_URI] = next[QRPCI_ID_DNS] + count[QRPCI_ID_DNS];
  next[QRPCI_ID_EMAIL] = next[QRPCI_ID_URI] + count[QRPCI_ID_URI];
  next[QRPCI_ID_IP] = next[QRPCI_ID_EMAIL] + count[QRPCI_ID_EMAIL];
  id->dns = next[QRPCI_ID_DNS];
  id->uri = next[QRPCI_ID_URI];
  id->email = next[QRPCI_ID_EMAIL];
  id->ip = next[QRPCI_ID_IP];
  id->ndns = count[QRPCI_ID_DNS];
  id->nuri = count[QRPCI_ID_URI];
  id->nemail = count[QRPCI_ID_EMAIL];
  id->nip = count[QRPCI_ID_IP];
  /* An identity always has a subject, if only an empty one. */
  id->subject.ptr = text + bytes;
  for (size_t i = 0; i < n; i++) {
    qrpc_str *s = parts[i].kind == QRPCI_ID_SUBJECT ? &id->subject
                                                      : next[parts[i].kind]++;
    if (parts[i].len) memcpy(text, parts[i].ptr, parts[i].len);
    text[parts[i].len] = '\0';
    s->ptr = text;
    s->len = parts[i].len;
    text += parts[i].len + 1;
  }
  return id;
}
