#include "certs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

/* Validity is back-dated an hour so a clock a little off between the
 * signer and the verifier (same process here) cannot matter. */
#define CERT_BACKDATE_S 3600
#define CERT_LIFETIME_S (2 * 24 * 3600)
/* The expired certificate ran out this long ago: a clock skew of minutes
 * cannot make it valid again. */
#define EXPIRED_AGE_S (24 * 3600)

typedef struct keyed_cert {
  gnutls_x509_privkey_t key;
  gnutls_x509_crt_t crt;
} keyed_cert;

static void keyed_cert_free(keyed_cert *k) {
  if (k->crt) gnutls_x509_crt_deinit(k->crt);
  if (k->key) gnutls_x509_privkey_deinit(k->key);
  k->crt = NULL;
  k->key = NULL;
}

/* Copies a GnuTLS datum into a NUL-terminated heap string and frees it. */
static char *datum_to_string(gnutls_datum_t *d) {
  char *s = malloc((size_t)d->size + 1);
  if (s) {
    memcpy(s, d->data, d->size);
    s[d->size] = '\0';
  }
  gnutls_free(d->data);
  d->data = NULL;
  return s;
}

static int export_cert_pem(gnutls_x509_crt_t crt, char **out) {
  gnutls_datum_t d = {NULL, 0};
  int rv = gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &d);
  if (rv < 0) return rv;
  *out = datum_to_string(&d);
  return *out ? 0 : GNUTLS_E_MEMORY_ERROR;
}

static int export_key_pem(gnutls_x509_privkey_t key, char **out) {
  gnutls_datum_t d = {NULL, 0};
  int rv = gnutls_x509_privkey_export2_pkcs8(key, GNUTLS_X509_FMT_PEM, NULL,
                                             GNUTLS_PKCS_PLAIN, &d);
  if (rv < 0) return rv;
  *out = datum_to_string(&d);
  return *out ? 0 : GNUTLS_E_MEMORY_ERROR;
}

static int export_cert_der(gnutls_x509_crt_t crt, unsigned char **out,
                           size_t *len) {
  gnutls_datum_t d = {NULL, 0};
  int rv = gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER, &d);
  if (rv < 0) return rv;
  *out = malloc(d.size);
  if (*out) {
    memcpy(*out, d.data, d.size);
    *len = d.size;
  }
  gnutls_free(d.data);
  return *out ? 0 : GNUTLS_E_MEMORY_ERROR;
}

/* A fresh key and a version 3 certificate for it with the fields every
 * certificate here shares; the caller adds extensions and signs. The
 * certificate is valid from not_before to not_after (seconds from now). The
 * subject is O=org (when given), then CN=cn: in RFC 4514 order, most specific
 * first, "CN=cn,O=org". */
static int cert_begin_valid(keyed_cert *k, const char *cn, const char *org,
                            long not_before, long not_after) {
  unsigned char serial[16];
  unsigned char keyid[64];
  size_t keyid_len = sizeof(keyid);
  time_t now = time(NULL);
  int rv;

  if ((rv = gnutls_x509_privkey_init(&k->key)) < 0) return rv;
  rv = gnutls_x509_privkey_generate(
      k->key, GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1),
      0);
  if (rv < 0) return rv;
  if ((rv = gnutls_x509_crt_init(&k->crt)) < 0) return rv;
  if ((rv = gnutls_x509_crt_set_version(k->crt, 3)) < 0) return rv;
  /* Serials must be positive and unique per issuer: random, top bit 0. */
  if ((rv = gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof(serial))) < 0)
    return rv;
  serial[0] &= 0x7f;
  serial[0] |= 0x01;
  if ((rv = gnutls_x509_crt_set_serial(k->crt, serial, sizeof(serial))) < 0)
    return rv;
  if ((rv = gnutls_x509_crt_set_activation_time(k->crt, now + not_before)) < 0)
    return rv;
  if ((rv = gnutls_x509_crt_set_expiration_time(k->crt, now + not_after)) < 0)
    return rv;
  if (org) {
    rv =
        gnutls_x509_crt_set_dn_by_oid(k->crt, GNUTLS_OID_X520_ORGANIZATION_NAME,
                                      0, org, (unsigned)strlen(org));
    if (rv < 0) return rv;
  }
  rv = gnutls_x509_crt_set_dn_by_oid(k->crt, GNUTLS_OID_X520_COMMON_NAME, 0, cn,
                                     (unsigned)strlen(cn));
  if (rv < 0) return rv;
  if ((rv = gnutls_x509_crt_set_key(k->crt, k->key)) < 0) return rv;
  rv = gnutls_x509_privkey_get_key_id(k->key, GNUTLS_KEYID_USE_SHA1, keyid,
                                      &keyid_len);
  if (rv < 0) return rv;
  return gnutls_x509_crt_set_subject_key_id(k->crt, keyid, keyid_len);
}

/* A certificate valid now, with a subject of its common name only. */
static int cert_begin(keyed_cert *k, const char *cn) {
  return cert_begin_valid(k, cn, NULL, -CERT_BACKDATE_S, CERT_LIFETIME_S);
}

/* Marks the certificate as issued by ca and signs it. */
static int cert_sign(keyed_cert *k, const keyed_cert *ca) {
  unsigned char keyid[64];
  size_t keyid_len = sizeof(keyid);
  int rv = gnutls_x509_crt_get_subject_key_id(ca->crt, keyid, &keyid_len, NULL);
  if (rv < 0) return rv;
  rv = gnutls_x509_crt_set_authority_key_id(k->crt, keyid, keyid_len);
  if (rv < 0) return rv;
  return gnutls_x509_crt_sign2(k->crt, ca->crt, ca->key, GNUTLS_DIG_SHA256, 0);
}

/* The extensions of an end-entity certificate for one TLS purpose. */
static int set_leaf_usage(keyed_cert *k, const char *purpose_oid) {
  int rv = gnutls_x509_crt_set_basic_constraints(k->crt, 0, -1);
  if (rv < 0) return rv;
  rv = gnutls_x509_crt_set_key_usage(k->crt, GNUTLS_KEY_DIGITAL_SIGNATURE);
  if (rv < 0) return rv;
  return gnutls_x509_crt_set_key_purpose_oid(k->crt, purpose_oid, 0);
}

static int add_san(keyed_cert *k, gnutls_x509_subject_alt_name_t type,
                   const void *data, size_t len) {
  return gnutls_x509_crt_set_subject_alt_name(k->crt, type, data, (unsigned)len,
                                              GNUTLS_FSAN_APPEND);
}

static int make_ca(keyed_cert *ca, const char *cn) {
  int rv = cert_begin(ca, cn);
  if (rv < 0) return rv;
  if ((rv = gnutls_x509_crt_set_basic_constraints(ca->crt, 1, -1)) < 0)
    return rv;
  rv = gnutls_x509_crt_set_key_usage(ca->crt, GNUTLS_KEY_KEY_CERT_SIGN |
                                                  GNUTLS_KEY_CRL_SIGN |
                                                  GNUTLS_KEY_DIGITAL_SIGNATURE);
  if (rv < 0) return rv;
  return gnutls_x509_crt_sign2(ca->crt, ca->crt, ca->key, GNUTLS_DIG_SHA256, 0);
}

static int make_server(keyed_cert *srv, const keyed_cert *ca) {
  static const unsigned char ip4[4] = {127, 0, 0, 1};
  static const unsigned char ip6[16] = {0, 0, 0, 0, 0, 0, 0, 0,
                                        0, 0, 0, 0, 0, 0, 0, 1};
  int rv = cert_begin(srv, "localhost");
  if (rv < 0) return rv;
  if ((rv = set_leaf_usage(srv, GNUTLS_KP_TLS_WWW_SERVER)) < 0) return rv;
  if ((rv = add_san(srv, GNUTLS_SAN_DNSNAME, "localhost", 9)) < 0) return rv;
  if ((rv = add_san(srv, GNUTLS_SAN_IPADDRESS, ip4, sizeof(ip4))) < 0)
    return rv;
  if ((rv = add_san(srv, GNUTLS_SAN_IPADDRESS, ip6, sizeof(ip6))) < 0)
    return rv;
  return cert_sign(srv, ca);
}

/* A certificate for TLS client authentication, valid now, with one
 * subjectAltName of each kind an identity reports. */
static int make_client(keyed_cert *cl, const keyed_cert *ca, const char *cn) {
  static const unsigned char ip4[4] = {127, 0, 0, 2};
  int rv = cert_begin_valid(cl, cn, QT_CLIENT_ORG, -CERT_BACKDATE_S,
                            CERT_LIFETIME_S);
  if (rv < 0) return rv;
  if ((rv = set_leaf_usage(cl, GNUTLS_KP_TLS_WWW_CLIENT)) < 0) return rv;
  rv = add_san(cl, GNUTLS_SAN_DNSNAME, QT_CLIENT_DNS, strlen(QT_CLIENT_DNS));
  if (rv < 0) return rv;
  rv = add_san(cl, GNUTLS_SAN_URI, QT_CLIENT_URI, strlen(QT_CLIENT_URI));
  if (rv < 0) return rv;
  rv = add_san(cl, GNUTLS_SAN_RFC822NAME, QT_CLIENT_EMAIL,
               strlen(QT_CLIENT_EMAIL));
  if (rv < 0) return rv;
  if ((rv = add_san(cl, GNUTLS_SAN_IPADDRESS, ip4, sizeof(ip4))) < 0) return rv;
  return cert_sign(cl, ca);
}

/* A client certificate whose first iPAddress entry is 8 bytes, an address
 * and mask (RFC 5280 allows those only in name constraints), before IP
 * 127.0.0.2. */
static int make_odd_ip_client(keyed_cert *cl, const keyed_cert *ca) {
  static const unsigned char subnet[8] = {10, 0, 0, 0, 255, 0, 0, 0};
  static const unsigned char ip4[4] = {127, 0, 0, 2};
  int rv = cert_begin_valid(cl, "qrpc-odd-ip-client", QT_CLIENT_ORG,
                            -CERT_BACKDATE_S, CERT_LIFETIME_S);
  if (rv < 0) return rv;
  if ((rv = set_leaf_usage(cl, GNUTLS_KP_TLS_WWW_CLIENT)) < 0) return rv;
  rv = add_san(cl, GNUTLS_SAN_IPADDRESS, subnet, sizeof(subnet));
  if (rv < 0) return rv;
  if ((rv = add_san(cl, GNUTLS_SAN_IPADDRESS, ip4, sizeof(ip4))) < 0) return rv;
  return cert_sign(cl, ca);
}

/* Signed by the test CA, fit for both TLS purposes, and no longer valid:
 * its whole validity lies in the past. */
static int make_expired(keyed_cert *k, const keyed_cert *ca) {
  int rv = cert_begin_valid(k, "qrpc-test-expired", QT_CLIENT_ORG,
                            -EXPIRED_AGE_S - CERT_LIFETIME_S, -EXPIRED_AGE_S);
  if (rv < 0) return rv;
  if ((rv = set_leaf_usage(k, GNUTLS_KP_TLS_WWW_CLIENT)) < 0) return rv;
  rv = gnutls_x509_crt_set_key_purpose_oid(k->crt, GNUTLS_KP_TLS_WWW_SERVER, 0);
  if (rv < 0) return rv;
  return cert_sign(k, ca);
}

/* Exports a certificate and its key as PEM. */
static int export_pair(const keyed_cert *k, char **cert_pem, char **key_pem) {
  int rv = export_cert_pem(k->crt, cert_pem);
  if (rv < 0) return rv;
  return export_key_pem(k->key, key_pem);
}

/* Everything signed: the CAs must exist first. */
static int make_all(qt_certs *c, keyed_cert *ca, keyed_cert *other,
                    keyed_cert *leaf) {
  int rv;
  if ((rv = make_ca(ca, "qrpc test CA")) < 0) return rv;
  if ((rv = make_ca(other, "qrpc unrelated CA")) < 0) return rv;
  if ((rv = export_cert_pem(ca->crt, &c->ca_pem)) < 0) return rv;
  if ((rv = export_key_pem(ca->key, &c->ca_key_pem)) < 0) return rv;
  if ((rv = export_cert_pem(other->crt, &c->other_ca_pem)) < 0) return rv;

  if ((rv = make_server(&leaf[0], ca)) < 0) return rv;
  rv = export_pair(&leaf[0], &c->server_cert_pem, &c->server_key_pem);
  if (rv < 0) return rv;
  rv = export_cert_der(leaf[0].crt, &c->server_cert_der,
                       &c->server_cert_der_len);
  if (rv < 0) return rv;

  if ((rv = make_client(&leaf[1], ca, QT_CLIENT_CN)) < 0) return rv;
  rv = export_pair(&leaf[1], &c->client_cert_pem, &c->client_key_pem);
  if (rv < 0) return rv;
  rv = export_cert_der(leaf[1].crt, &c->client_cert_der,
                       &c->client_cert_der_len);
  if (rv < 0) return rv;

  if ((rv = make_client(&leaf[2], other, "qrpc-other-client")) < 0) return rv;
  rv = export_pair(&leaf[2], &c->other_client_cert_pem,
                   &c->other_client_key_pem);
  if (rv < 0) return rv;

  if ((rv = make_odd_ip_client(&leaf[3], ca)) < 0) return rv;
  rv = export_pair(&leaf[3], &c->odd_ip_cert_pem, &c->odd_ip_key_pem);
  if (rv < 0) return rv;

  if ((rv = make_expired(&leaf[4], ca)) < 0) return rv;
  return export_pair(&leaf[4], &c->expired_cert_pem, &c->expired_key_pem);
}

int qt_certs_generate(qt_certs *c) {
  keyed_cert ca = {NULL, NULL}, other = {NULL, NULL};
  keyed_cert leaf[5];
  size_t i;
  int rv;

  memset(c, 0, sizeof(*c));
  memset(leaf, 0, sizeof(leaf));
  rv = make_all(c, &ca, &other, leaf);
  keyed_cert_free(&ca);
  keyed_cert_free(&other);
  for (i = 0; i < sizeof(leaf) / sizeof(leaf[0]); i++)
    keyed_cert_free(&leaf[i]);
  if (rv < 0) qt_certs_free(c);
  return rv;
}

void qt_certs_free(qt_certs *c) {
  free(c->ca_pem);
  free(c->ca_key_pem);
  free(c->server_cert_pem);
  free(c->server_key_pem);
  free(c->server_cert_der);
  free(c->other_ca_pem);
  free(c->client_cert_pem);
  free(c->client_key_pem);
  free(c->client_cert_der);
  free(c->other_client_cert_pem);
  free(c->other_client_key_pem);
  free(c->odd_ip_cert_pem);
  free(c->odd_ip_key_pem);
  free(c->expired_cert_pem);
  free(c->expired_key_pem);
  memset(c, 0, sizeof(*c));
}

int qt_tmpdir_make(char *dir, size_t cap) {
  const char *base = getenv("TMPDIR");
  int n;
  if (!base || !*base) base = P_tmpdir;
  n = snprintf(dir, cap, "%s/qrpc-test-XXXXXX", base);
  if (n < 0 || (size_t)n >= cap) {
    errno = ENAMETOOLONG;
    return -1;
  }
  return mkdtemp(dir) ? 0 : -1;
}

void qt_tmpdir_remove(const char *dir) {
  char path[512];
  struct dirent *e;
  DIR *d = opendir(dir);
  if (d) {
    while ((e = readdir(d)) != NULL) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      if (snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) <
          (int)sizeof(path))
        unlink(path);
    }
    closedir(d);
  }
  rmdir(dir);
}

static int write_file(const char *path, const char *text, mode_t mode) {
  size_t len = strlen(text), off = 0;
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return -1;
  while (off < len) {
    ssize_t n = write(fd, text + off, len - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int saved = errno;
      close(fd);
      errno = saved;
      return -1;
    }
    off += (size_t)n;
  }
  return close(fd);
}

int qt_file_write(const char *path, const char *text) {
  return write_file(path, text, 0600);
}

int qt_cert_files_write(const qt_certs *c, qt_cert_files *f) {
  memset(f, 0, sizeof(*f));
  if (qt_tmpdir_make(f->dir, sizeof(f->dir)) != 0) return -1;
  snprintf(f->ca_path, sizeof(f->ca_path), "%s/ca.pem", f->dir);
  snprintf(f->cert_path, sizeof(f->cert_path), "%s/server.pem", f->dir);
  snprintf(f->key_path, sizeof(f->key_path), "%s/server.key", f->dir);
  if (write_file(f->ca_path, c->ca_pem, 0644) != 0 ||
      write_file(f->cert_path, c->server_cert_pem, 0644) != 0 ||
      write_file(f->key_path, c->server_key_pem, 0600) != 0) {
    int saved = errno;
    qt_cert_files_remove(f);
    errno = saved;
    return -1;
  }
  return 0;
}

void qt_cert_files_remove(qt_cert_files *f) {
  if (f->dir[0]) qt_tmpdir_remove(f->dir);
  memset(f, 0, sizeof(*f));
}
