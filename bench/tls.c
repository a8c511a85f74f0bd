/*
 * TLS for the benchmark: certificate files when given, otherwise a
 * throwaway self-signed certificate made in memory with GnuTLS (no key
 * ever touches the disk), and on clients either a CA file or no
 * verification at all. Mutual TLS when asked: servers require client
 * certificates from a CA file, clients present certificate files.
 */
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

/* Valid from an hour ago (a clock a little off cannot matter) for a day:
 * a benchmark run is far shorter. */
#define CERT_BACKDATE_S 3600
#define CERT_LIFETIME_S (24 * 3600)
#define CERT_NAME "localhost"

typedef struct pem_pair {
  char *cert;
  char *key;
} pem_pair;

/* Moves a GnuTLS datum into a NUL-terminated malloc'd string. */
static char *take_datum(gnutls_datum_t *d) {
  char *s = malloc((size_t)d->size + 1);
  if (s != NULL) {
    memcpy(s, d->data, d->size);
    s[d->size] = '\0';
  }
  gnutls_free(d->data);
  d->data = NULL;
  return s;
}

static int set_names(gnutls_x509_crt_t crt) {
  static const unsigned char ip4[4] = {127, 0, 0, 1};
  static const unsigned char ip6[16] = {0, 0, 0, 0, 0, 0, 0, 0,
                                        0, 0, 0, 0, 0, 0, 0, 1};
  int rv = gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0,
                                         CERT_NAME, strlen(CERT_NAME));
  if (rv < 0) return rv;
  rv = gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, CERT_NAME,
                                            strlen(CERT_NAME),
                                            GNUTLS_FSAN_APPEND);
  if (rv < 0) return rv;
  rv = gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_IPADDRESS, ip4,
                                            sizeof(ip4), GNUTLS_FSAN_APPEND);
  if (rv < 0) return rv;
  return gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_IPADDRESS, ip6,
                                              sizeof(ip6), GNUTLS_FSAN_APPEND);
}

static int fill_cert(gnutls_x509_crt_t crt, gnutls_x509_privkey_t key) {
  unsigned char serial[16];
  time_t now = time(NULL);
  int rv = gnutls_x509_crt_set_version(crt, 3);
  if (rv < 0) return rv;
  /* A positive random serial: its top bit clear, not all zero. */
  if ((rv = gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof(serial))) < 0)
    return rv;
  serial[0] = (unsigned char)((serial[0] & 0x7f) | 0x01);
  if ((rv = gnutls_x509_crt_set_serial(crt, serial, sizeof(serial))) < 0)
    return rv;
  rv = gnutls_x509_crt_set_activation_time(crt, now - CERT_BACKDATE_S);
  if (rv < 0) return rv;
  rv = gnutls_x509_crt_set_expiration_time(crt, now + CERT_LIFETIME_S);
  if (rv < 0) return rv;
  if ((rv = set_names(crt)) < 0) return rv;
  if ((rv = gnutls_x509_crt_set_key(crt, key)) < 0) return rv;
  if ((rv = gnutls_x509_crt_set_basic_constraints(crt, 0, -1)) < 0) return rv;
  rv = gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE);
  if (rv < 0) return rv;
  rv = gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_SERVER, 0);
  if (rv < 0) return rv;
  return gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0);
}

/* An ECDSA P-256 key and a certificate for it signed by itself. Returns 0,
 * or a negative GnuTLS error with *out empty. */
static int make_self_signed(pem_pair *out) {
  gnutls_x509_privkey_t key = NULL;
  gnutls_x509_crt_t crt = NULL;
  gnutls_datum_t d = {NULL, 0};
  memset(out, 0, sizeof(*out));
  int rv = gnutls_x509_privkey_init(&key);
  if (rv >= 0)
    rv = gnutls_x509_privkey_generate(
        key, GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1),
        0);
  if (rv >= 0) rv = gnutls_x509_crt_init(&crt);
  if (rv >= 0) rv = fill_cert(crt, key);
  if (rv >= 0 &&
      (rv = gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &d)) >= 0 &&
      (out->cert = take_datum(&d)) == NULL)
    rv = GNUTLS_E_MEMORY_ERROR;
  if (rv >= 0 &&
      (rv = gnutls_x509_privkey_export2_pkcs8(key, GNUTLS_X509_FMT_PEM, NULL,
                                              GNUTLS_PKCS_PLAIN, &d)) >= 0 &&
      (out->key = take_datum(&d)) == NULL)
    rv = GNUTLS_E_MEMORY_ERROR;
  if (crt != NULL) gnutls_x509_crt_deinit(crt);
  if (key != NULL) gnutls_x509_privkey_deinit(key);
  if (rv < 0) {
    free(out->cert);
    free(out->key);
    memset(out, 0, sizeof(*out));
  }
  return rv < 0 ? rv : 0;
}

/* Requires client certificates verified against client_ca, if given. */
static int require_clients(const char *prog, qrpc_tls_config *tls,
                           const char *client_ca) {
  if (client_ca == NULL) return 0;
  int rc = qrpc_tls_config_set_ca_file(tls, client_ca);
  if (rc == 0)
    rc = qrpc_tls_config_set_client_auth(tls, QRPC_CLIENT_AUTH_REQUIRE);
  if (rc == 0) return 0;
  fprintf(stderr, "%s: cannot load --tls-client-ca %s: %s\n", prog, client_ca,
          qrpc_strerror(rc));
  return 1;
}

int bench_tls_server(const char *prog, const char *cert, const char *key,
                     const char *client_ca, qrpc_tls_config **out) {
  if ((cert == NULL) != (key == NULL)) {
    fprintf(stderr,
            "%s: --tls-cert and --tls-key go together: give both "
            "PEM files, or neither for a throwaway certificate\n",
            prog);
    return 1;
  }
  qrpc_tls_config *tls = NULL;
  int rc = qrpc_tls_config_new(&tls);
  if (rc != 0) {
    fprintf(stderr, "%s: cannot create a TLS config: %s\n", prog,
            qrpc_strerror(rc));
    return 1;
  }
  if (cert != NULL) {
    if ((rc = qrpc_tls_config_set_cert_files(tls, cert, key)) != 0) {
      fprintf(stderr, "%s: cannot load --tls-cert %s and --tls-key %s: %s\n",
              prog, cert, key, qrpc_strerror(rc));
      qrpc_tls_config_free(tls);
      return 1;
    }
    if (require_clients(prog, tls, client_ca) != 0) {
      qrpc_tls_config_free(tls);
      return 1;
    }
    *out = tls;
    return 0;
  }
  pem_pair pem;
  int grv = make_self_signed(&pem);
  if (grv != 0) {
    fprintf(stderr, "%s: cannot make a self-signed certificate: %s\n", prog,
            gnutls_strerror(grv));
    qrpc_tls_config_free(tls);
    return 1;
  }
  rc = qrpc_tls_config_set_cert_pem(tls, pem.cert, pem.key);
  free(pem.cert);
  free(pem.key);
  if (rc != 0) {
    fprintf(stderr, "%s: cannot use the self-signed certificate: %s\n", prog,
            qrpc_strerror(rc));
    qrpc_tls_config_free(tls);
    return 1;
  }
  if (require_clients(prog, tls, client_ca) != 0) {
    qrpc_tls_config_free(tls);
    return 1;
  }
  fprintf(stderr,
          "%s: using a throwaway self-signed certificate for "
          "\"" CERT_NAME "\" (give --tls-cert and --tls-key for "
          "your own)\n",
          prog);
  *out = tls;
  return 0;
}

int bench_tls_client(const char *prog, const char *ca, const char *cert,
                     const char *key, qrpc_tls_config **out) {
  if ((cert == NULL) != (key == NULL)) {
    fprintf(stderr,
            "%s: --tls-cert and --tls-key go together: give both PEM files "
            "of the client certificate, or neither\n",
            prog);
    return 1;
  }
  qrpc_tls_config *tls = NULL;
  int rc = qrpc_tls_config_new(&tls);
  if (rc != 0) {
    fprintf(stderr, "%s: cannot create a TLS config: %s\n", prog,
            qrpc_strerror(rc));
    return 1;
  }
  if (ca != NULL) {
    rc = qrpc_tls_config_set_ca_file(tls, ca);
    if (rc != 0)
      fprintf(stderr, "%s: cannot load --tls-ca %s: %s\n", prog, ca,
              qrpc_strerror(rc));
  } else {
    rc = qrpc_tls_config_INSECURE_skip_verify(tls);
    if (rc != 0) {
      fprintf(stderr, "%s: cannot turn verification off: %s\n", prog,
              qrpc_strerror(rc));
    } else {
      bench_log_unverified();
      fprintf(stderr,
              "%s: no --tls-ca given: the server's certificate is "
              "NOT verified (TLS still encrypts everything)\n",
              prog);
    }
  }
  if (rc == 0 && cert != NULL &&
      (rc = qrpc_tls_config_set_cert_files(tls, cert, key)) != 0)
    fprintf(stderr, "%s: cannot load --tls-cert %s and --tls-key %s: %s\n",
            prog, cert, key, qrpc_strerror(rc));
  if (rc != 0) {
    qrpc_tls_config_free(tls);
    return 1;
  }
  *out = tls;
  return 0;
}
