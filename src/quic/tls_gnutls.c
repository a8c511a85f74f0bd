/*
 * TLS 1.3 for QUIC with GnuTLS. Everything GnuTLS-specific lives in this
 * file, behind the interface declared in tls.h; tls_openssl.c is the other
 * backend.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/crypto.h>
#include <gnutls/x509.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qrpc/error.h"
#include "quic/conn.h"
#include "quic/tls.h"
#include "util/log.h"

/* TLS 1.3 only, with the AEADs and groups QUIC peers commonly offer. The
 * compatibility mode of TLS 1.3 must be off inside QUIC (RFC 9001 8.4). */
static const char tls_priority[] =
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"
    "+CHACHA20-POLY1305:+AES-128-CCM:-GROUP-ALL:+GROUP-X25519:"
    "+GROUP-SECP256R1:+GROUP-SECP384R1:+GROUP-SECP521R1:"
    "%DISABLE_TLS13_COMPAT_MODE";

/* The most certificates of a peer's chain handed to a verify callback. */
#define MAX_CHAIN 16

/* GnuTLS's session-ticket master key: GnuTLS derives the key of each
 * period from it (rotating them itself), so it is derived once from the
 * server key. */
#define TICKET_MASTER_LEN 64

struct qrpci_tlsb {
  gnutls_certificate_credentials_t cred;
  int has_system_ca;
  pthread_mutex_t mu;               /* guards the two below */
  gnutls_anti_replay_t anti_replay; /* servers: made on first use */
  uint8_t ticket_master[TICKET_MASTER_LEN];
  int has_ticket_master;
};

int qrpci_tlsb_new(qrpc_tls_config *cfg) {
  qrpci_tlsb *be = calloc(1, sizeof(*be));
  if (!be) return QRPC_ENOMEM;
  if (gnutls_certificate_allocate_credentials(&be->cred) < 0) {
    free(be);
    return QRPC_ETLS;
  }
  pthread_mutex_init(&be->mu, NULL);
  cfg->be = be;
  return 0;
}

void qrpci_tlsb_free(qrpc_tls_config *cfg) {
  qrpci_tlsb *be = cfg->be;
  gnutls_certificate_free_credentials(be->cred);
  if (be->anti_replay) gnutls_anti_replay_deinit(be->anti_replay);
  gnutls_memset(be->ticket_master, 0, sizeof(be->ticket_master));
  pthread_mutex_destroy(&be->mu);
  free(be);
}

int qrpci_tlsb_hmac(const uint8_t *key, size_t keylen, const uint8_t *data,
                    size_t len, uint8_t out[QRPCI_HMAC_LEN]) {
  return gnutls_hmac_fast(GNUTLS_MAC_SHA256, key, keylen, data, len, out) == 0
             ? 0
             : QRPC_ESYSTEM;
}

const char *qrpc_tls_backend(void) { return "gnutls"; }

int qrpci_tls_rand(void *dest, size_t len) {
  return gnutls_rnd(GNUTLS_RND_RANDOM, dest, len) == 0 ? 0 : QRPC_ESYSTEM;
}

static int tls_err(const char *what, const char *where, int rv) {
  QRPCI_ERROR("tls: %s%s%s: %s", what, where ? " " : "", where ? where : "",
              gnutls_strerror(rv));
  return QRPC_ETLS;
}

/* Reads a whole PEM file or takes a PEM string. */
static int pem_load(const char *src, int file, gnutls_datum_t *d) {
  if (!file) {
    d->data = (unsigned char *)src;
    d->size = (unsigned int)strlen(src);
    return 0;
  }
  /* GnuTLS would only say "Error while reading file.": errno says why. */
  FILE *f = fopen(src, "rb");
  if (!f) {
    QRPCI_ERROR("tls: cannot read %s: %s", src, strerror(errno));
    return QRPC_ETLS;
  }
  fclose(f);
  int rv = gnutls_load_file(src, d);
  return rv < 0 ? tls_err("cannot read", src, rv) : 0;
}

static void pem_done(int file, gnutls_datum_t *d) {
  if (file) gnutls_free(d->data);
}

/* The chain must parse, and its leaf be valid now: a server with an
 * expired certificate would only be refused by every client. Parsed on
 * its own first also because GnuTLS 3.7 leaks when the combined loader
 * meets a malformed certificate. */
static int check_chain(const gnutls_datum_t *c, const char *where) {
  gnutls_x509_crt_t *crts = NULL;
  unsigned int n = 0;
  int rv = gnutls_x509_crt_list_import2(&crts, &n, c, GNUTLS_X509_FMT_PEM, 0);
  if (rv < 0) return tls_err("no certificate in", where, rv);
  time_t now = time(NULL);
  time_t expires = n ? gnutls_x509_crt_get_expiration_time(crts[0]) : now;
  time_t starts = n ? gnutls_x509_crt_get_activation_time(crts[0]) : now;
  for (unsigned int i = 0; i < n; i++) gnutls_x509_crt_deinit(crts[i]);
  gnutls_free(crts);
  if (expires < now) {
    QRPCI_ERROR("tls: the certificate in %s has expired", where);
    return QRPC_ETLS;
  }
  if (starts > now) {
    QRPCI_ERROR("tls: the certificate in %s is not valid yet", where);
    return QRPC_ETLS;
  }
  return 0;
}

/* The setter replaces the pair set before, but GnuTLS adds one to a
 * credential's list (a server then picks among them, and a client that
 * gets no CA names from the server presents none of several). The new
 * pair is tried on a scratch credential first, so a bad one leaves the
 * old in place. */
static int replace_pair(qrpc_tls_config *cfg, const gnutls_datum_t *c,
                        const gnutls_datum_t *k) {
  gnutls_certificate_credentials_t scratch;
  int rv = gnutls_certificate_allocate_credentials(&scratch);
  if (rv < 0) return rv;
  rv = gnutls_certificate_set_x509_key_mem(scratch, c, k, GNUTLS_X509_FMT_PEM);
  gnutls_certificate_free_credentials(scratch);
  if (rv < 0) return rv;
  gnutls_certificate_free_keys(cfg->be->cred);
  rv = gnutls_certificate_set_x509_key_mem(cfg->be->cred, c, k,
                                           GNUTLS_X509_FMT_PEM);
  /* Only memory can fail the second time; the old pair is gone. */
  if (rv < 0) cfg->has_cert = 0;
  return rv;
}

int qrpci_tlsb_set_cert(qrpc_tls_config *cfg, const char *cert,
                        const char *key, int files) {
  const char *cwhere = files ? cert : "the certificate PEM";
  gnutls_datum_t c, k;
  int rv = pem_load(cert, files, &c);
  if (rv != 0) return rv;
  if ((rv = pem_load(key, files, &k)) != 0) {
    pem_done(files, &c);
    return rv;
  }
  rv = check_chain(&c, cwhere);
  if (rv == 0) {
    int grv = replace_pair(cfg, &c, &k);
    if (grv == GNUTLS_E_CERTIFICATE_KEY_MISMATCH) {
      QRPCI_ERROR("tls: the key in %s does not match the certificate in %s",
                  files ? key : "the key PEM", cwhere);
      rv = QRPC_ETLS;
    } else if (grv < 0) {
      rv = tls_err("cannot load the certificate and key of", cwhere, grv);
    }
  }
  pem_done(files, &c);
  pem_done(files, &k);
  return rv;
}

int qrpci_tlsb_add_ca(qrpc_tls_config *cfg, const char *ca, int file) {
  const char *where = file ? ca : "the CA PEM";
  gnutls_datum_t d;
  int rv = pem_load(ca, file, &d);
  if (rv != 0) return rv;
  int n = gnutls_certificate_set_x509_trust_mem(cfg->be->cred, &d,
                                                GNUTLS_X509_FMT_PEM);
  pem_done(file, &d);
  if (n < 0) return tls_err("cannot load CA certificates from", where, n);
  if (n == 0) {
    QRPCI_ERROR("tls: no CA certificate in %s", where);
    return QRPC_ETLS;
  }
  return 0;
}

static qrpc_conn *session_conn(gnutls_session_t s) {
  ngtcp2_crypto_conn_ref *ref = gnutls_session_get_ptr(s);
  return ref->user_data;
}

static size_t chain_of(gnutls_session_t s, qrpc_cert *out, size_t max) {
  unsigned int cnt = 0;
  const gnutls_datum_t *raw = gnutls_certificate_get_peers(s, &cnt);
  size_t n = 0;
  for (unsigned int i = 0; raw && i < cnt && n < max; i++, n++) {
    out[n].der = raw[i].data;
    out[n].len = raw[i].size;
  }
  return n;
}

/* The built-in verdict: a chain to a trusted CA, valid for the server
 * name and for TLS servers on a client, for TLS clients on a server. */
static int builtin_verify(gnutls_session_t s, qrpc_conn *c) {
  gnutls_typed_vdata_st vd[2];
  memset(vd, 0, sizeof(vd));
  unsigned int nvd = 0;
  if (!c->is_server) {
    vd[nvd].type = GNUTLS_DT_DNS_HOSTNAME;
    vd[nvd++].data = (unsigned char *)c->server_name;
  }
  vd[nvd].type = GNUTLS_DT_KEY_PURPOSE_OID;
  vd[nvd++].data = (unsigned char *)(c->is_server ? GNUTLS_KP_TLS_WWW_CLIENT
                                                  : GNUTLS_KP_TLS_WWW_SERVER);
  unsigned int status = 0;
  int rv = gnutls_certificate_verify_peers(s, vd, nvd, &status);
  if (rv == 0 && status == 0) return 1;
  const char *who = c->is_server ? "the client" : c->server_name;
  gnutls_datum_t msg = {0};
  char why[256];
  if (rv == 0 && gnutls_certificate_verification_status_print(
                     status, GNUTLS_CRT_X509, &msg, 0) == 0) {
    snprintf(why, sizeof(why), "certificate of %s not trusted: %s", who,
             (const char *)msg.data);
    gnutls_free(msg.data);
  } else {
    snprintf(why, sizeof(why), "certificate of %s not verified: %s", who,
             gnutls_strerror(rv));
  }
  qrpci_tls_verify_failed(c, why);
  return 0;
}

static int verify_peer(gnutls_session_t s) {
  qrpc_conn *c = session_conn(s);
  qrpc_tls_config *cfg = c->tlscfg;
  qrpc_cert chain[MAX_CHAIN];
  size_t n = chain_of(s, chain, MAX_CHAIN);
  /* A server that only requests a certificate lets a client without one
   * in, unidentified. */
  if (c->is_server && n == 0) {
    if (cfg->client_auth != QRPC_CLIENT_AUTH_REQUIRE) return 0;
    qrpci_tls_verify_failed(c, "the client presented no certificate");
    c->cert_rejected = 1;
    return GNUTLS_E_NO_CERTIFICATE_FOUND;
  }
  /* Nothing would read the verdict. */
  if (cfg->insecure && !c->is_server && !cfg->verify_fn) return 0;
  int verified = builtin_verify(s, c);
  return qrpci_tls_decide(c, verified, chain, n)
             ? 0
             : GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR;
}

/* The priority string parsed once for the process: parsing it for every
 * session cost a few percent of a handshake and 8 KiB per connection.
 * GnuTLS reference-counts the cache per session; this reference lives as
 * long as the process. */
/* ---- Session tickets and 0-RTT ------------------------------------------ */

/* GnuTLS's anti-replay asks whether it saw a ClientHello before: the
 * config's record answers (tickets.c). GnuTLS itself refuses tickets
 * issued before the record started and ClientHellos outside its window. */
static int replay_add(void *ptr, time_t exp, const gnutls_datum_t *key,
                      const gnutls_datum_t *data) {
  (void)exp, (void)data;
  qrpc_tls_config *cfg = ptr;
  return qrpci_tls_early_fresh(cfg, key->data, key->size, UINT64_MAX)
             ? 0
             : GNUTLS_E_DB_ENTRY_EXISTS;
}

/* Server: tickets and early data for s, unless the server asks for client
 * certificates (a handler of an early call could not know who calls, and
 * a resumed client would come without its certificate). */
static int server_tickets(gnutls_session_t s, qrpc_tls_config *cfg) {
  qrpci_tlsb *be = cfg->be;
  int rv = 0;
  pthread_mutex_lock(&be->mu);
  if (!be->has_ticket_master &&
      qrpci_tls_derive(cfg, "qrpc gnutls ticket master", 0, be->ticket_master,
                       sizeof(be->ticket_master)) == 0)
    be->has_ticket_master = 1;
  if (!be->anti_replay && gnutls_anti_replay_init(&be->anti_replay) == 0) {
    gnutls_anti_replay_set_window(be->anti_replay, QRPCI_EARLY_WINDOW_MS);
    gnutls_anti_replay_set_add_function(be->anti_replay, replay_add);
    gnutls_anti_replay_set_ptr(be->anti_replay, cfg);
  }
  if (!be->has_ticket_master || !be->anti_replay) rv = GNUTLS_E_MEMORY_ERROR;
  pthread_mutex_unlock(&be->mu);
  if (rv < 0) return tls_err("session tickets", NULL, rv);
  gnutls_datum_t key = {.data = be->ticket_master,
                        .size = sizeof(be->ticket_master)};
  if ((rv = gnutls_session_ticket_enable_server(s, &key)) < 0)
    return tls_err("session tickets", NULL, rv);
  gnutls_anti_replay_enable(s, be->anti_replay);
  gnutls_record_set_max_early_data_size(s, UINT32_MAX);
  return 0;
}

/* Client: a ticket arrived; it goes to the config's cache. */
static int ticket_hook(gnutls_session_t s, unsigned int htype, unsigned when,
                       unsigned int incoming, const gnutls_datum_t *msg) {
  (void)when, (void)incoming, (void)msg;
  qrpc_conn *c = session_conn(s);
  gnutls_datum_t d = {0};
  if (!c || htype != GNUTLS_HANDSHAKE_NEW_SESSION_TICKET ||
      gnutls_session_get_data2(s, &d) < 0)
    return 0;
  time_t exp = gnutls_db_check_entry_expire_time(&d);
  time_t now = time(NULL);
  if (exp > now)
    qrpci_tls_ticket_received(c, d.data, d.size, (uint64_t)(exp - now), 1,
                              NULL);
  gnutls_free(d.data);
  return 0;
}

int qrpci_tlsb_resume(qrpc_conn *c, const qrpci_ticket *t, int early) {
  (void)early; /* GnuTLS sends early data whenever the session allows */
  return gnutls_session_set_data(c->tls, t->data, t->len) == 0 ? 0 : QRPC_ETLS;
}

/* GnuTLS keeps no decoded form: it is never given one. */
void qrpci_tlsb_session_drop(void *session) { (void)session; }

int qrpci_tlsb_resumed(qrpc_conn *c) {
  return gnutls_session_is_resumed(c->tls) != 0;
}

int qrpci_tlsb_early_accepted(qrpc_conn *c) {
  return (gnutls_session_get_flags(c->tls) & GNUTLS_SFLAGS_EARLY_DATA) != 0;
}

static gnutls_priority_t prio_cache;
static int prio_rv;
static pthread_once_t prio_once = PTHREAD_ONCE_INIT;

static void prio_init(void) {
  prio_rv = gnutls_priority_init(&prio_cache, tls_priority, NULL);
}

/* Everything a session needs beyond the QUIC glue; logs what failed. */
static int session_setup(gnutls_session_t s, qrpc_tls_config *cfg,
                         int server, const char *server_name) {
  qrpci_tlsb *be = cfg->be;
  int rv;
  if ((rv = gnutls_priority_set(s, prio_cache)) < 0)
    return tls_err("priority", NULL, rv);
  if (!server && !cfg->has_ca && !be->has_system_ca && !cfg->insecure) {
    rv = gnutls_certificate_set_x509_system_trust(be->cred);
    if (rv < 0) QRPCI_WARN("tls: no system CA store: %s", gnutls_strerror(rv));
    be->has_system_ca = 1;
  }
  if ((rv = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, be->cred)) < 0)
    return tls_err("credentials", NULL, rv);
  gnutls_datum_t alpn = {.data = (unsigned char *)cfg->alpn,
                         .size = (unsigned int)cfg->alpn_len};
  if ((rv = gnutls_alpn_set_protocols(s, &alpn, 1, GNUTLS_ALPN_MANDATORY)) < 0)
    return tls_err("ALPN", NULL, rv);
  if (server) {
    if (cfg->client_auth == QRPC_CLIENT_AUTH_NONE)
      return server_tickets(s, cfg) == 0 ? 0 : QRPC_ETLS;
    gnutls_certificate_server_set_request(
        s, cfg->client_auth == QRPC_CLIENT_AUTH_REQUIRE ? GNUTLS_CERT_REQUIRE
                                                        : GNUTLS_CERT_REQUEST);
    /* No CA names in the request (the OpenSSL backend sends none either):
     * a GnuTLS client withholds a certificate whose issuer is not among
     * them, so under REQUEST a client with an untrusted certificate would
     * come in as one without any instead of being refused. */
    gnutls_certificate_send_x509_rdn_sequence(s, 1);
  } else {
    /* RFC 6066: SNI carries host names only, never address literals. */
    if (!qrpci_tls_is_ip_literal(server_name) &&
        (rv = gnutls_server_name_set(s, GNUTLS_NAME_DNS, server_name,
                                     strlen(server_name))) < 0)
      return tls_err("server name", NULL, rv);
    qrpci_tls_warn_insecure(cfg, server_name);
    gnutls_handshake_set_hook_function(s, GNUTLS_HANDSHAKE_NEW_SESSION_TICKET,
                                       GNUTLS_HOOK_POST, ticket_hook);
  }
  gnutls_session_set_verify_function(s, verify_peer);
  return 0;
}

int qrpci_tls_session_new(qrpc_tls_config *cfg, qrpc_conn *c, int server,
                          const char *server_name) {
  gnutls_session_t s;
  unsigned int flags = server ? GNUTLS_SERVER : GNUTLS_CLIENT;
  pthread_once(&prio_once, prio_init);
  if (prio_rv < 0) return tls_err("priority", NULL, prio_rv);
  /* A server without client authentication takes early data; a client
   * sends it whenever its ticket allows (qrpci_tls_client_resume() gave
   * it one, and the transport parameters to go with it). */
  if (!server || cfg->client_auth == QRPC_CLIENT_AUTH_NONE)
    flags |= GNUTLS_ENABLE_EARLY_DATA;
  int rv = gnutls_init(&s, flags | GNUTLS_NO_END_OF_EARLY_DATA);
  if (rv < 0) return tls_err("gnutls_init", NULL, rv);
  rv = server ? ngtcp2_crypto_gnutls_configure_server_session(s)
              : ngtcp2_crypto_gnutls_configure_client_session(s);
  if (rv != 0) {
    QRPCI_ERROR("tls: cannot configure the QUIC session");
    gnutls_deinit(s);
    return QRPC_ETLS;
  }
  /* ngtcp2's GnuTLS glue owns the session pointer: it must be the
   * ngtcp2_crypto_conn_ref, whose user_data leads back to the connection. */
  gnutls_session_set_ptr(s, &c->ref);
  if (session_setup(s, cfg, server, server_name) != 0) {
    gnutls_deinit(s);
    return QRPC_ETLS;
  }
  c->tls = s;
  ngtcp2_conn_set_tls_native_handle(c->q, s);
  return 0;
}

void qrpci_tls_session_free(qrpc_conn *c) {
  if (c->tls) gnutls_deinit(c->tls);
  c->tls = NULL;
}

/* Adds the subject and subjectAltName entries of the peer's certificate
 * to parts; returns how many, or 0 if it does not parse. buf keeps the
 * strings (the caller frees what it holds). */
static size_t identity_parts(const gnutls_datum_t *der, qrpci_id_part *parts,
                             size_t max, gnutls_datum_t *dn, char **names,
                             size_t *nnames) {
  gnutls_x509_crt_t crt;
  size_t n = 0;
  *nnames = 0;
  if (gnutls_x509_crt_init(&crt) < 0) return 0;
  if (gnutls_x509_crt_import(crt, der, GNUTLS_X509_FMT_DER) < 0 ||
      gnutls_x509_crt_get_dn3(crt, dn, 0) < 0) {
    gnutls_x509_crt_deinit(crt);
    return 0;
  }
  parts[n++] = (qrpci_id_part){QRPCI_ID_SUBJECT, (const char *)dn->data,
                               dn->size};
  for (unsigned int i = 0; n < max; i++) {
    char buf[1024];
    size_t len = sizeof(buf);
    int type = gnutls_x509_crt_get_subject_alt_name(crt, i, buf, &len, NULL);
    if (type == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE) break;
    if (type < 0) continue;
    qrpci_id_kind kind;
    char text[64];
    const char *p = buf;
    switch (type) {
    case GNUTLS_SAN_DNSNAME: kind = QRPCI_ID_DNS; break;
    case GNUTLS_SAN_URI: kind = QRPCI_ID_URI; break;
    case GNUTLS_SAN_RFC822NAME: kind = QRPCI_ID_EMAIL; break;
    case GNUTLS_SAN_IPADDRESS:
      kind = QRPCI_ID_IP;
      /* Only 4 or 16 bytes are an address: inet_ntop would read 16 from
       * a shorter entry, past what GnuTLS wrote into buf. */
      if ((len != 4 && len != 16) ||
          !inet_ntop(len == 4 ? AF_INET : AF_INET6, buf, text, sizeof(text)))
        continue;
      p = text;
      len = strlen(text);
      break;
    default: continue;
    }
    char *copy = malloc(len ? len : 1);
    if (!copy) break;
    memcpy(copy, p, len);
    names[(*nnames)++] = copy;
    parts[n++] = (qrpci_id_part){kind, copy, len};
  }
  gnutls_x509_crt_deinit(crt);
  return n;
}

/* The identity of a verified peer, from its own certificate. */
static void cache_identity(qrpc_conn *c) {
  if (!c->peer_verified || c->npeer_certs == 0) return;
  enum { MAX_PARTS = 64 };
  qrpci_id_part parts[MAX_PARTS];
  char *names[MAX_PARTS];
  size_t nnames = 0;
  gnutls_datum_t dn = {0};
  gnutls_datum_t der = {.data = (unsigned char *)c->peer_certs[0].der,
                        .size = (unsigned int)c->peer_certs[0].len};
  size_t n = identity_parts(&der, parts, MAX_PARTS, &dn, names, &nnames);
  if (n) c->peer_identity = qrpci_identity_pack(parts, n);
  for (size_t i = 0; i < nnames; i++) free(names[i]);
  gnutls_free(dn.data);
}

/* Copies the peer's chain into c: the TLS session may be gone before the
 * application stops looking (it is valid until on_closed returns). */
static void cache_chain(qrpc_conn *c) {
  unsigned int cnt = 0;
  const gnutls_datum_t *raw = gnutls_certificate_get_peers(c->tls, &cnt);
  if (!raw || cnt == 0) return;
  qrpc_cert chain[MAX_CHAIN];
  size_t n = 0;
  for (; n < cnt && n < MAX_CHAIN; n++) {
    chain[n].der = raw[n].data;
    chain[n].len = raw[n].size;
  }
  qrpci_conn_keep_chain(c, chain, n);
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
  cache_identity(c);
  return 0;
}
