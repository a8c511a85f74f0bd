#include "wire/metadata.h"

#include <string.h>

#include "util/varint.h"

int qrpci_md_key_valid(const uint8_t *key, size_t len) {
  if (len == 0 || len > QRPCI_MD_KEY_MAX || key == NULL) return 0;
  for (size_t i = 0; i < len; i++) {
    uint8_t c = key[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
          c == '_' || c == '.'))
      return 0;
  }
  return 1;
}

/* Reads one pair; *err says why none could be read. */
static size_t read_pair(const uint8_t *p, size_t len, qrpci_md_pair *out,
                        qrpci_md_err *err) {
  uint64_t kl, vl;
  size_t o = qrpci_varint_get(p, len, &kl);
  if (o == 0) {
    *err = QRPCI_MD_KEY_LEN_TRUNC;
    return 0;
  }
  if (kl == 0 || kl > QRPCI_MD_KEY_MAX) {
    *err = QRPCI_MD_KEY_LEN_BAD;
    return 0;
  }
  if (kl > len - o) {
    *err = QRPCI_MD_KEY_PAST;
    return 0;
  }
  out->key = p + o;
  out->key_len = (size_t)kl;
  if (!qrpci_md_key_valid(out->key, out->key_len)) {
    *err = QRPCI_MD_KEY_CHAR;
    return 0;
  }
  o += out->key_len;
  size_t n = qrpci_varint_get(p + o, len - o, &vl);
  if (n == 0) {
    *err = QRPCI_MD_VALUE_LEN_TRUNC;
    return 0;
  }
  o += n;
  if (vl > len - o) {
    *err = QRPCI_MD_VALUE_PAST;
    return 0;
  }
  out->value = p + o;
  out->value_len = (size_t)vl;
  *err = QRPCI_MD_OK;
  return o + out->value_len;
}

qrpci_md_err qrpci_md_check(const uint8_t *p, size_t len, size_t *count,
                            size_t *total) {
  size_t c = 0, t = 0, o = 0;
  while (o < len) {
    qrpci_md_pair pr;
    qrpci_md_err err;
    size_t n = read_pair(p + o, len - o, &pr, &err);
    if (n == 0) return err;
    o += n;
    c++;
    /* Both sizes are bounded by len, so the sum cannot wrap. */
    t += pr.key_len + pr.value_len;
  }
  if (count) *count = c;
  if (total) *total = t;
  return QRPCI_MD_OK;
}

size_t qrpci_md_next(const uint8_t *p, size_t len, qrpci_md_pair *out) {
  qrpci_md_err err;
  if (len == 0) return 0;
  return read_pair(p, len, out, &err);
}

size_t qrpci_md_pair_len(size_t key_len, size_t value_len) {
  if (key_len == 0 || key_len > QRPCI_MD_KEY_MAX ||
      value_len > QRPCI_VARINT_MAX || value_len > SIZE_MAX / 2)
    return 0;
  return qrpci_varint_len(key_len) + key_len + qrpci_varint_len(value_len) +
         value_len;
}

size_t qrpci_md_put(uint8_t *out, const uint8_t *key, size_t key_len,
                    const uint8_t *value, size_t value_len) {
  size_t n = qrpci_md_pair_len(key_len, value_len);
  if (n == 0 || !qrpci_md_key_valid(key, key_len) ||
      (value_len != 0 && value == NULL))
    return 0;
  size_t o = qrpci_varint_put(out, key_len);
  memcpy(out + o, key, key_len);
  o += key_len;
  o += qrpci_varint_put(out + o, value_len);
  if (value_len) memcpy(out + o, value, value_len);
  return o + value_len;
}
