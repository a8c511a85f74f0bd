/*
 * Fuzz target: the TLS configuration's in-memory PEM loaders,
 * qrpc_tls_config_set_cert_pem() and qrpc_tls_config_set_ca_pem().
 *
 * Input: one byte chooses what is fuzzed; the rest is PEM text (parts
 * separated by NUL bytes) or an edit script. Real certificates and a real
 * key are generated once per process (tests/support/certs.h), so no key is
 * stored in the corpus; the edit modes mutate those at positions the input
 * gives, which reaches deep into the parsers with well-formed surroundings.
 *
 * Properties: the loaders never crash, leak or read past the string; they
 * answer 0, QRPC_EINVAL or QRPC_ETLS and nothing else; a config that
 * refused a certificate still accepts a good one afterwards; unmodified
 * inputs load.
 */
#include <stdlib.h>
#include <string.h>

#include "certs.h"
#include "fuzz.h"
#include "qrpc/error.h"
#include "qrpc/log.h"
#include "qrpc/tls.h"

static qt_certs certs;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  qrpc_log_set_level(QRPC_LOG_NONE);
  FZ_CHECK(qt_certs_generate(&certs) == 0);
  return 0;
}

enum {
  MODE_CA,           /* the input as CA PEM */
  MODE_CERT_AND_KEY, /* certificate NUL key, both from the input */
  MODE_CERT,         /* the input as certificate, the generated key */
  MODE_EDIT_CERT,    /* the generated certificate, edited */
  MODE_EDIT_KEY,     /* the generated key, edited */
  MODE_EDIT_CA,      /* the generated CA certificate, edited */
  MODE_COUNT
};

/* NUL-terminated copy of the next part of the input (up to a NUL byte). */
static char *next_part(fz_input *in) {
  const uint8_t *nul = memchr(in->p, 0, in->len);
  size_t n = nul ? (size_t)(nul - in->p) : in->len;
  char *s = malloc(n + 1);
  FZ_CHECK(s != NULL);
  memcpy(s, in->p, n);
  s[n] = '\0';
  in->p += nul ? n + 1 : n;
  in->len -= nul ? n + 1 : n;
  return s;
}

/* Applies edits of four bytes each: operation, 16-bit position, value.
 * Operations: overwrite, insert, delete, cut the text short. Positions
 * wrap around the current length. */
static char *edited(const char *orig, fz_input *in) {
  size_t len = strlen(orig), cap = len + in->len / 4 + 1;
  char *s = malloc(cap);
  FZ_CHECK(s != NULL);
  memcpy(s, orig, len + 1);
  while (in->len >= 4) {
    uint8_t op = fz_u8(in);
    size_t pos = fz_u16(in);
    uint8_t val = fz_u8(in);
    if (val == 0) val = '\n'; /* a NUL would only cut the text short */
    switch (op % 4) {
    case 0:
      if (len) s[pos % len] = (char)val;
      break;
    case 1:
      pos = len ? pos % (len + 1) : 0;
      memmove(s + pos + 1, s + pos, len - pos + 1);
      s[pos] = (char)val;
      len++;
      break;
    case 2:
      if (len) {
        pos %= len;
        memmove(s + pos, s + pos + 1, len - pos);
        len--;
      }
      break;
    default:
      len = len ? pos % len : 0;
      s[len] = '\0';
      break;
    }
  }
  return s;
}

static void check_rv(int rv) {
  FZ_CHECK(rv == 0 || rv == QRPC_EINVAL || rv == QRPC_ETLS);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_input in = {data, size};
  qrpc_tls_config *cfg = NULL;
  char *a = NULL, *b = NULL;
  int rv = 0, cert_attempted = 1;
  FZ_CHECK(qrpc_tls_config_new(&cfg) == 0);

  switch (fz_u8(&in) % MODE_COUNT) {
  case MODE_CA:
    a = next_part(&in);
    rv = qrpc_tls_config_set_ca_pem(cfg, a);
    cert_attempted = 0;
    break;
  case MODE_CERT_AND_KEY:
    a = next_part(&in);
    b = next_part(&in);
    rv = qrpc_tls_config_set_cert_pem(cfg, a, b);
    break;
  case MODE_CERT:
    a = next_part(&in);
    rv = qrpc_tls_config_set_cert_pem(cfg, a, certs.server_key_pem);
    break;
  case MODE_EDIT_CERT:
    a = edited(certs.server_cert_pem, &in);
    rv = qrpc_tls_config_set_cert_pem(cfg, a, certs.server_key_pem);
    if (strcmp(a, certs.server_cert_pem) == 0) FZ_CHECK(rv == 0);
    break;
  case MODE_EDIT_KEY:
    a = edited(certs.server_key_pem, &in);
    rv = qrpc_tls_config_set_cert_pem(cfg, certs.server_cert_pem, a);
    if (strcmp(a, certs.server_key_pem) == 0) FZ_CHECK(rv == 0);
    break;
  default:
    a = edited(certs.ca_pem, &in);
    rv = qrpc_tls_config_set_ca_pem(cfg, a);
    if (strcmp(a, certs.ca_pem) == 0) FZ_CHECK(rv == 0);
    cert_attempted = 0;
    break;
  }
  check_rv(rv);

  /* Whatever was refused or loaded before, the good pair and CA load. */
  if (cert_attempted)
    FZ_CHECK(qrpc_tls_config_set_ca_pem(cfg, certs.ca_pem) == 0);
  else
    FZ_CHECK(qrpc_tls_config_set_cert_pem(cfg, certs.server_cert_pem,
                                          certs.server_key_pem) == 0);
  qrpc_tls_config_free(cfg);
  free(a);
  free(b);
  return 0;
}
